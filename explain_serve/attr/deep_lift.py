"""DeepLift with the Rescale rule (Shrikumar et al., 2017) and DeepLiftShap (Lundberg & Lee, 2017).

Inputs and baselines go through the model as one batch ``[x; b]``; at every supported
nonlinearity the gradient is replaced by the multiplier ``delta_out / delta_in`` (the true gradient
where ``|delta_in| < eps``), so backpropagation yields the DeepLift multipliers and
``(x - b) * multipliers`` sums to ``f(x) - f(b)``. Max pooling uses the rule that routes the
output difference through the argmax of the input and of the baseline; softmax is re-centred.
The rules are gradient overrides registered through the one hook owner.
"""
from __future__ import annotations

import inspect
from functools import lru_cache
from typing import Callable, Dict, Optional, Tuple, Type

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._core.gradients import gradients, leaf_inputs
from .._core.hooks import GradRecord, HookedMethod, HookSession
from .._core.inputs import (
    as_tuple,
    baseline_distribution,
    expand_args,
    expand_for_baseline_distribution,
    format_args,
    format_baselines,
    format_output,
    is_tuple,
    tensorize_baselines,
)
from .._core.targets import expand_target
from ._base import GradientAttribution
from .._core.errors import AttributionArgumentError


def _halves(t: Tensor) -> Tensor:
    """``[x; b]`` viewed as (2, n, ...): the input rows and the baseline rows."""
    return t.view((2, t.shape[0] // 2) + tuple(t.shape[1:]))


def _any_small(d_in: Tensor, eps: float) -> bool:
    """Whether some ``|d_in| < eps`` (then the module's own gradient is used there); ``d_in``
    becomes ``|d_in|``. One in-place pass and a reduction, no mask: the common case needs none."""
    return d_in.numel() > 0 and d_in.abs_().amin().item() < eps


def _rescale_prepare(eps: float) -> Callable:
    """In the forward: the Rescale multipliers ``delta_out / delta_in`` (one half: the differences
    are the same for both rows of a pair), and the input only where some ``delta_in`` is tiny."""
    def prepare(module: nn.Module, x: Tensor, y: Tensor):
        (x0, x1), (y0, y1) = x.chunk(2), y.detach().chunk(2)
        d_in = x0 - x1
        ratio = (y0 - y1).div_(d_in)
        return ratio, (x if _any_small(d_in, eps) else None)
    return prepare


def _rescale(eps: float) -> Callable[[GradRecord, Optional[Tensor]], Tensor]:
    def rule(rec: GradRecord, grad: Optional[Tensor]) -> Tensor:
        ratio, x = rec.saved
        value = _halves(rec.grad_output) * ratio
        if x is None:
            return value.view(rec.grad_output.shape)
        xs = _halves(x)
        true_grad = _halves(grad if grad is not None else rec.module_grad(x))
        return torch.where((xs[0] - xs[1]).abs_() < eps, true_grad, value).view(x.shape)
    return rule


def _softmax(eps: float) -> Callable[[GradRecord, Optional[Tensor]], Tensor]:
    rescale = _rescale(eps)

    def rule(rec: GradRecord, grad: Optional[Tensor]) -> Tensor:
        unnormalized = rescale(rec, grad)
        return unnormalized - unnormalized.sum() / unnormalized.numel()
    return rule


def _windows_disjoint(m: nn.Module) -> bool:
    """Whether every input position lies in at most one pooling window (stride >= kernel, no
    dilation): then each window routes to its two argmaxes and nowhere else."""
    def dims(v):
        return list(v) if isinstance(v, (tuple, list)) else [v]
    kernel, stride, n = dims(m.kernel_size), dims(m.stride), max(len(dims(m.kernel_size)), len(dims(m.stride)))
    kernel, stride = kernel * n if len(kernel) == 1 else kernel, stride * n if len(stride) == 1 else stride
    return all(d == 1 for d in dims(m.dilation)) and all(s >= k for s, k in zip(stride, kernel))


def _disjoint_coefficients(x: Tensor, y: Tensor, idx: Tensor, n_spatial: int, eps: float):
    """In the forward, for disjoint windows: what each window's output gradients (of the input row,
    g0, and of the baseline row, g1) give at the window's argmaxes (``i0`` of the input, ``i1`` of
    the baseline), per row: ``a0 * g0`` at ``i0`` and ``a1 * g0 + b1 * g1`` at ``i1``, written in
    that order, so that where both argmaxes coincide the second write, which holds both shares,
    wins. That is the rule below, with the pool's own gradient where ``|delta_in| < eps``; no bool
    tensors (slow on CPU)."""
    flat_in = x.reshape(2, -1, x.shape[-n_spatial:].numel())  # (row, plane, position)
    y0, y1 = y.reshape(2, flat_in.shape[1], -1)
    i0, i1 = idx.reshape(2, *y0.shape)
    y_max = torch.max(y0, y1)
    c0, c1 = y_max - y1, y0 - y_max  # delta_out routed through the input's / the baseline's argmax
    d0 = flat_in[1].gather(1, i0).neg_().add_(y0)  # delta_in at i0 (the input there is y0)
    d1 = flat_in[0].gather(1, i1).sub_(y1)  # ... at i1
    same = torch.eq(i0, i1, out=torch.empty_like(y0))  # both argmaxes at one position: it gets both
    c0_at_i1 = c0.mul(same)
    if not (_any_small(d0.clone(), eps) or _any_small(d1.clone(), eps)):
        return c0.div_(d0).unsqueeze(0), c0_at_i1.div_(d1).unsqueeze(0), c1.div_(d1).unsqueeze(0), i0, i1
    # |delta_in| < eps: the pool's own gradient there, per row: g_h at its own argmax, and at the
    # other row's argmax only where both coincide. Divisors made 1 there, quotients zeroed.
    s0, s1 = d0.abs().lt_(eps), d1.abs().lt_(eps)
    a0 = c0.div_(d0.add_(s0)).mul_(1 - s0)
    keep1 = 1 - s1
    d1.add_(s1)
    a1, b1 = c0_at_i1.div_(d1).mul_(keep1), c1.div_(d1).mul_(keep1)
    return torch.stack([a0 + s0, a0]), torch.stack([a1 + same * s1, a1]), torch.stack([b1, b1 + s1]), i0, i1


def _maxpool_prepare(pool: Callable, n_spatial: int, eps: float) -> Callable:
    def prepare(m: nn.Module, x: Tensor, y: Tensor):
        idx = getattr(y.grad_fn, "_saved_result1", None)  # the argmax indices max_pool saved for its backward
        if idx is None or idx.shape != y.shape:
            _, idx = pool(x, m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode, True)
        y = y.detach()
        if _windows_disjoint(m):
            return (*_disjoint_coefficients(x, y, idx, n_spatial, eps), x.shape)
        return x, y, idx
    return prepare


def _maxpool(route: Callable, true_route: Optional[Callable], eps: float) -> Callable[[GradRecord, Tensor], Tensor]:
    """Dense (overlapping windows): ``route(grad, inputs, indices, module)`` sends output gradients
    to the argmax positions; ``true_route`` is max_pool's own backward (None: ask autograd).
    Disjoint windows: the coefficients prepared in the forward, then two scatters."""

    def rule(rec: GradRecord, grad: Optional[Tensor]) -> Tensor:
        with torch.no_grad():
            if len(rec.saved) == 6:  # prepared per window (disjoint windows)
                a0, a1, b1, i0, i1, shape = rec.saved
                g0, g1 = rec.grad_output.reshape(2, *i0.shape)
                at_i0, at_i1 = a0 * g0, torch.addcmul(a1 * g0, b1, g1)
                out = g0.new_zeros((2, i0.shape[0], shape.numel() // (2 * i0.shape[0])))
                out.scatter_(2, i0.expand(2, -1, -1), at_i0.expand(2, -1, -1))
                out.scatter_(2, i1.expand(2, -1, -1), at_i1.expand(2, -1, -1))
                return out.view(shape)
            x, y, idx = rec.saved
            m: nn.Module = rec.module
            ys = _halves(y)
            y_max = torch.max(ys[0], ys[1])
            d_out = torch.stack([y_max - ys[1], ys[0] - y_max]).view_as(y)
            routed = _halves(route(rec.grad_output * d_out, x, idx, m))
            xs = _halves(x)
            d_in = xs[0] - xs[1]
            value = (routed[0] + routed[1]).div_(d_in).expand_as(routed)
            if not _any_small(d_in, eps):
                return value.reshape(x.shape)
            if grad is None:
                grad = rec.module_grad(x) if true_route is None else true_route(rec.grad_output, x, idx, m)
            return torch.where(d_in < eps, _halves(grad), value).view(x.shape)
    return rule


def _unpool(unpool: Callable) -> Callable:
    return lambda g, x, idx, m: unpool(g, idx, m.kernel_size, m.stride, m.padding, list(x.shape))


def _pool_backward(op: Callable) -> Callable:
    """max_pool's own backward (sums where windows overlap, as the chain rule does)."""
    return lambda g, x, idx, m: op(g, x, m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode, idx)


_POOL2D_BACKWARD = _pool_backward(torch.ops.aten.max_pool2d_with_indices_backward)
_POOL3D_BACKWARD = _pool_backward(torch.ops.aten.max_pool3d_with_indices_backward)
_MAXPOOLS = {  # pool, spatial dims, DeepLift's routing, the pool's own backward (None: autograd's)
    nn.MaxPool1d: (F.max_pool1d, 1, _unpool(F.max_unpool1d), None),
    nn.MaxPool2d: (F.max_pool2d, 2, _POOL2D_BACKWARD, _POOL2D_BACKWARD),
    nn.MaxPool3d: (F.max_pool3d, 3, _POOL3D_BACKWARD, _POOL3D_BACKWARD),
}


@lru_cache(maxsize=8)
def rules(eps: float) -> Dict[Type[nn.Module], Tuple[Callable, Callable]]:
    """(gradient rule, its forward-side ``prepare``) per supported module type (built once per
    ``eps``; do not modify)."""
    rescale = (_rescale(eps), _rescale_prepare(eps))
    table = {
        nn.ReLU: rescale, nn.ELU: rescale, nn.LeakyReLU: rescale, nn.Sigmoid: rescale,
        nn.Tanh: rescale, nn.Softplus: rescale, nn.Softmax: (_softmax(eps), rescale[1]),
    }
    table.update({t: (_maxpool(route, true_route, eps), _maxpool_prepare(pool, n_spatial, eps))
                  for t, (pool, n_spatial, route, true_route) in _MAXPOOLS.items()})
    return table


def call_custom_attribution_func(func: Callable, multipliers, inputs, baselines):
    n_params = len(inspect.signature(func).parameters)
    if n_params == 1:
        return func(multipliers)
    if n_params == 2:
        return func(multipliers, inputs)
    if n_params == 3:
        return func(multipliers, inputs, baselines)
    raise AttributionArgumentError("custom_attribution_func must take 1, 2 or 3 arguments")


class DeepLift(GradientAttribution, HookedMethod):
    _has_convergence_delta = True

    def __init__(self, model: nn.Module, multiply_by_inputs: bool = True, eps: float = 1e-10) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError("DeepLift needs a torch.nn.Module (its nonlinear layers are hooked)")
        super().__init__(model)
        self.model = model
        self.eps = eps
        self._multiply_by_inputs = multiply_by_inputs

    def _install_hooks(self, session: HookSession) -> None:
        table = rules(self.eps)
        for module in self.model.modules():
            entry = table.get(type(module))
            if entry is not None:
                session.replace_gradient(module, entry[0], prepare=entry[1])

    def multipliers(self, inputs, baselines, target, args):
        """DeepLift multipliers d(score)/d(input) under the Rescale rules (tuples in and out)."""
        n = inputs[0].shape[0]
        for b in baselines:
            if b.shape[0] != n:
                raise AttributionArgumentError(f"baselines must have batch size 1 or {n}, got {b.shape[0]}")
        extra = expand_args(args, 2)

        def joint_forward(*xs):
            joined = tuple(torch.cat([x, b]) for x, b in zip(xs, baselines))
            return self.model(*joined, *(extra or ()))

        with self._hooks():
            return gradients(joint_forward, leaf_inputs(inputs), expand_target(target, 2))

    def attribute(
        self,
        inputs,
        baselines=None,
        target=None,
        additional_forward_args=None,
        return_convergence_delta: bool = False,
        custom_attribution_func=None,
    ):
        was_tuple, inputs = is_tuple(inputs), as_tuple(inputs)
        baselines = tensorize_baselines(format_baselines(baselines, inputs), inputs)
        args = format_args(additional_forward_args)
        grads = self.multipliers(inputs, baselines, target, args)
        if custom_attribution_func is not None:
            attributions = as_tuple(call_custom_attribution_func(custom_attribution_func, grads, inputs, baselines))
        elif self._multiply_by_inputs:
            attributions = tuple((x - b) * g for x, b, g in zip(inputs, baselines, grads))
        else:
            attributions = grads
        result = format_output(was_tuple, attributions)
        if not return_convergence_delta:
            return result
        return result, self.compute_convergence_delta(attributions, baselines, inputs, target, args)


class DeepLiftShap(DeepLift):
    """DeepLift averaged over a distribution of baselines (every input against every baseline)."""

    def attribute(
        self,
        inputs,
        baselines=None,
        target=None,
        additional_forward_args=None,
        return_convergence_delta: bool = False,
        custom_attribution_func=None,
    ):
        was_tuple, inputs = is_tuple(inputs), as_tuple(inputs)
        baselines = baseline_distribution(baselines, inputs if was_tuple else inputs[0], "DeepLiftShap")
        n, k = inputs[0].shape[0], baselines[0].shape[0]
        exp_inputs, exp_baselines, exp_target, exp_args = expand_for_baseline_distribution(
            inputs, baselines, target, format_args(additional_forward_args)
        )
        out = super().attribute(
            exp_inputs, exp_baselines, exp_target, exp_args, return_convergence_delta, custom_attribution_func
        )
        attributions, delta = out if return_convergence_delta else (out, None)
        attributions = tuple(a.reshape(n, k, *a.shape[1:]).mean(1) for a in attributions)
        result = format_output(was_tuple, attributions)
        return (result, delta) if return_convergence_delta else result
