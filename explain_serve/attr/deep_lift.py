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
from typing import Callable, Dict, Optional, Type

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
    return d_in.numel() > 0 and bool(d_in.abs_().amin() < eps)


def _rescale(eps: float) -> Callable[[GradRecord, Optional[Tensor]], Tensor]:
    def rule(rec: GradRecord, grad: Optional[Tensor]) -> Tensor:
        x, y = _halves(rec.inputs), _halves(rec.outputs)
        d_in = x[0] - x[1]  # one half: the differences are the same for both rows of a pair
        value = _halves(rec.grad_output) * (y[0] - y[1]).div_(d_in)
        if not _any_small(d_in, eps):
            return value.view(rec.inputs.shape)
        true_grad = _halves(grad if grad is not None else rec.module_grad())
        return torch.where(d_in < eps, true_grad, value).view(rec.inputs.shape)
    return rule


def _softmax(eps: float) -> Callable[[GradRecord, Optional[Tensor]], Tensor]:
    rescale = _rescale(eps)

    def rule(rec: GradRecord, grad: Optional[Tensor]) -> Tensor:
        unnormalized = rescale(rec, grad)
        return unnormalized - unnormalized.sum() / unnormalized.numel()
    return rule


def _pool_indices(output: Tensor):
    """The argmax indices max_pool2d/3d saved for their backward (None where not available)."""
    return getattr(output.grad_fn, "_saved_result1", None)


def _windows_disjoint(m: nn.Module) -> bool:
    """Whether every input position lies in at most one pooling window (stride >= kernel, no
    dilation): then each window routes to its two argmaxes and nowhere else."""
    def dims(v):
        return list(v) if isinstance(v, (tuple, list)) else [v]
    kernel, stride = dims(m.kernel_size), dims(m.stride)
    if len(kernel) != len(stride):
        kernel, stride = kernel * len(stride) if len(kernel) == 1 else kernel, stride * len(kernel) if len(stride) == 1 else stride
    return all(d == 1 for d in dims(m.dilation)) and all(s >= k for s, k in zip(stride, kernel))


def _disjoint_maxpool(rec: GradRecord, idx: Tensor, n_spatial: int, eps: float) -> Tensor:
    """The max-pool rule below for disjoint windows, computed per window: only the argmax of the
    input (``i0``) and of the baseline (``i1``) in a window receive anything, so the rule works on
    the pool's output size (gathers and scatters) instead of dense passes over its input. Same
    numbers as the dense rule; no bool tensors (slow on CPU)."""
    x = rec.inputs
    flat_in = x.reshape(2, -1, x.shape[-n_spatial:].numel())  # (half, plane, position)
    y0, y1 = rec.outputs.reshape(2, flat_in.shape[1], -1)
    g0, g1 = rec.grad_output.reshape(2, *y0.shape)
    i0, i1 = idx.reshape(2, *y0.shape)
    y_max = torch.max(y0, y1)
    out = torch.zeros(flat_in.shape, dtype=x.dtype, device=x.device)
    routed = out[0]  # scratch first: grad_output * delta_out of both halves, summed per position
    routed.scatter_add_(1, i0, (y_max - y1).mul_(g0))
    routed.scatter_add_(1, i1, (y0 - y_max).mul_(g1))
    d0 = flat_in[1].gather(1, i0).neg_().add_(y0)  # delta_in at the input's argmax (x0 there is y0)
    d1 = flat_in[0].gather(1, i1).sub_(y1)  # ... at the baseline's argmax
    at_i0, at_i1 = routed.gather(1, i0), routed.gather(1, i1)
    if not (_any_small(d0.clone(), eps) or _any_small(d1.clone(), eps)):
        out.scatter_(2, i0.expand(2, -1, -1), at_i0.div_(d0).expand(2, -1, -1))
        out.scatter_(2, i1.expand(2, -1, -1), at_i1.div_(d1).expand(2, -1, -1))
        return out.view(x.shape)
    # where |delta_in| < eps the pool's own gradient, per half: g_h at its own argmax, and at the
    # other half's argmax only when both coincide
    small0, small1 = d0.abs().lt_(eps), d1.abs().lt_(eps)
    same = torch.eq(i0, i1, out=torch.empty_like(y0))
    at_i0, at_i1 = _ratio_or_zero(at_i0, d0, small0), _ratio_or_zero(at_i1, d1, small1)
    routed.scatter_(1, i0, torch.addcmul(at_i0, g0, small0))
    routed.scatter_(1, i1, torch.addcmul(at_i1, g0.mul(same), small1))
    out[1].scatter_(1, i0, torch.addcmul(at_i0, g1.mul(same), small0))
    out[1].scatter_(1, i1, torch.addcmul(at_i1, g1, small1))
    return out.view(x.shape)


def _ratio_or_zero(num: Tensor, d_in: Tensor, small: Tensor) -> Tensor:
    """``num / d_in``, 0 where ``small`` (a 0/1 mask; no inf/nan there); overwrites ``num``, ``d_in``."""
    return num.div_(d_in.add_(small)).mul_(1 - small)


def _maxpool(pool: Callable, route: Callable, true_route: Optional[Callable], n_spatial: int,
             eps: float) -> Callable[[GradRecord, Tensor], Tensor]:
    """``route(grad, inputs, indices, module)`` sends output gradients to the argmax positions;
    ``true_route`` is max_pool's own backward (None: ask autograd)."""

    def rule(rec: GradRecord, grad: Optional[Tensor]) -> Tensor:
        m: nn.Module = rec.module
        with torch.no_grad():
            idx = rec.saved
            if idx is None or idx.shape != rec.outputs.shape:
                _, idx = pool(rec.inputs, m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode, True)
            if _windows_disjoint(m):
                return _disjoint_maxpool(rec, idx, n_spatial, eps)
            y = _halves(rec.outputs)
            y_max = torch.max(y[0], y[1])
            d_out = torch.stack([y_max - y[1], y[0] - y_max]).view_as(rec.outputs)
            routed = _halves(route(rec.grad_output * d_out, rec.inputs, idx, m))
            x = _halves(rec.inputs)
            d_in = x[0] - x[1]
            value = (routed[0] + routed[1]).div_(d_in).expand_as(routed)
            if not _any_small(d_in, eps):
                return value.reshape(rec.inputs.shape)
            if grad is None:
                grad = rec.module_grad() if true_route is None else true_route(rec.grad_output, rec.inputs, idx, m)
            return torch.where(d_in < eps, _halves(grad), value).view(rec.inputs.shape)
    return rule


def _unpool(unpool: Callable) -> Callable:
    return lambda g, x, idx, m: unpool(g, idx, m.kernel_size, m.stride, m.padding, list(x.shape))


def _pool_backward(op: Callable) -> Callable:
    """max_pool's own backward (sums where windows overlap, as the chain rule does)."""
    return lambda g, x, idx, m: op(g, x, m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode, idx)


_POOL2D_BACKWARD = _pool_backward(torch.ops.aten.max_pool2d_with_indices_backward)
_POOL3D_BACKWARD = _pool_backward(torch.ops.aten.max_pool3d_with_indices_backward)
_MAXPOOLS = {  # pool, DeepLift's routing, the pool's own backward (None: autograd's), spatial dims
    nn.MaxPool1d: (F.max_pool1d, _unpool(F.max_unpool1d), None, 1),
    nn.MaxPool2d: (F.max_pool2d, _POOL2D_BACKWARD, _POOL2D_BACKWARD, 2),
    nn.MaxPool3d: (F.max_pool3d, _POOL3D_BACKWARD, _POOL3D_BACKWARD, 3),
}


@lru_cache(maxsize=8)
def rules(eps: float) -> Dict[Type[nn.Module], Callable]:
    """Gradient rule per supported module type (built once per ``eps``; do not modify)."""
    rescale = _rescale(eps)
    table = {
        nn.ReLU: rescale, nn.ELU: rescale, nn.LeakyReLU: rescale, nn.Sigmoid: rescale,
        nn.Tanh: rescale, nn.Softplus: rescale, nn.Softmax: _softmax(eps),
    }
    table.update({t: _maxpool(*fns, eps) for t, fns in _MAXPOOLS.items()})
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
            rule = table.get(type(module))
            if rule is not None:
                session.replace_gradient(module, rule, capture=_pool_indices if type(module) in _MAXPOOLS else None)

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
