"""DeepLift with the Rescale rule (Shrikumar et al., 2017) and DeepLiftShap (Lundberg & Lee, 2017).

The baselines go through the model first (the reference forward: no backward runs through it, and
one row is enough for a baseline shared by the batch), then the inputs, with their gradient. At
every supported nonlinearity each call is paired with the same call of the reference forward and
its gradient is replaced by the multiplier ``delta_out / delta_in`` (the true gradient where
``|delta_in| < eps``), so backpropagation yields the DeepLift multipliers and
``(x - b) * multipliers`` sums to ``f(x) - f(b)``. Max pooling uses the rule that routes the output
difference through the argmax of the input and of the baseline; softmax is re-centred. The rules
are gradient overrides registered through the one hook owner.

Reference rows *tile* the input rows: input row ``r`` pairs with reference row ``r % k`` (``k`` is
1 for a shared baseline, the batch size for one baseline per row, the number of baselines for
DeepLiftShap's every-input-against-every-baseline batch).
"""
from __future__ import annotations

import inspect
from functools import lru_cache
from typing import Any, Callable, Dict, Optional, Tuple, Type

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._core.gradients import gradients, leaf_inputs
from .._core.hooks import (
    GradRecord,
    HookedMethod,
    HookSession,
    check_references_paired,
    kept_references,
    reference_pass,
    restore_references,
)
from .._core.inputs import (
    as_tuple,
    baseline_distribution,
    expand_for_baseline_distribution,
    format_args,
    format_baselines,
    format_output,
    is_tuple,
    tensorize_baselines,
)
from ._base import GradientAttribution
from .._core.errors import AttributionArgumentError


def _minus(a: Tensor, ref: Tensor) -> Tensor:
    """``a - ref`` where ``ref``'s rows tile ``a``'s (see the module docstring)."""
    k = ref.shape[0]
    if k == 1 or k == a.shape[0]:
        return a - ref
    return (a.unflatten(0, (-1, k)) - ref).flatten(0, 1)


def tile(ref: Tensor, n: int) -> Tensor:
    """``ref``'s rows tiled to ``n`` rows (a view for one row)."""
    k = ref.shape[0]
    if k == n:
        return ref
    if k == 1:
        return ref.expand(n, *ref.shape[1:])
    return ref.repeat(n // k, *([1] * (ref.dim() - 1)))


def _any_small(d_in: Tensor, eps: float) -> bool:
    """Whether some ``|d_in| < eps`` (then the module's own gradient is used there); ``d_in``
    becomes ``|d_in|``. One in-place pass and a reduction, no mask: the common case needs none."""
    return d_in.numel() > 0 and d_in.abs_().amin().item() < eps


def _keep(module: nn.Module, x: Tensor, y: Tensor) -> Tuple[Tensor, Tensor]:
    """What an elementwise rule keeps of a reference call."""
    return x, y.detach()


def _rescale_multiplier(eps: float) -> Callable:
    """In the forward: the Rescale multipliers ``delta_out / delta_in``, the module's own
    derivative where ``|delta_in| < eps``."""
    def multiplier(module: nn.Module, x: Tensor, y: Tensor, x_ref: Tensor, y_ref: Tensor) -> Tensor:
        d_in = _minus(x, x_ref)
        ratio = _minus(y.detach(), y_ref).div_(d_in)
        if not _any_small(d_in, eps):
            return ratio
        return torch.where(d_in < eps, _derivative(module, x), ratio)
    return multiplier


def _derivative(module: nn.Module, x: Tensor) -> Tensor:
    """An elementwise module's own derivative at ``x`` (its forward again, without hooks, on a
    copy: an in-place module would change ``x``)."""
    x = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        y = module.forward(x)
    return torch.autograd.grad(y, x, torch.ones_like(y))[0]


def _softmax(eps: float) -> Tuple[Callable, Callable]:
    """Softmax is not elementwise: the Rescale multipliers, then the gradient re-centred (its
    mean over the whole tensor subtracted); a rule and its ``prepare``."""
    multiplier = _rescale_multiplier(eps)

    def prepare(module: nn.Module, x: Tensor, y: Tensor, x_ref: Tensor, y_ref: Tensor):
        return (multiplier(module, x, y, x_ref, y_ref),)

    def rule(rec: GradRecord, grad: Optional[Tensor]) -> Tensor:
        unnormalized = rec.grad_output * rec.saved[0]
        return unnormalized - unnormalized.sum() / unnormalized.numel()
    return rule, prepare


def _maxpool_keep(pool: Callable) -> Callable:
    """A reference call's input, output and argmax indices."""
    def keep(m: nn.Module, x: Tensor, y: Tensor):
        return x, y.detach(), _argmax(pool, m, x, y)
    return keep


def _argmax(pool: Callable, m: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    idx = getattr(y.grad_fn, "_saved_result1", None)  # the argmax indices max_pool saved for its backward
    if idx is None or idx.shape != y.shape:
        _, idx = pool(x, m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode, True)
    return idx


def _maxpool_prepare(pool: Callable, route: Callable, eps: float) -> Callable:
    """In the forward: how each window's output difference ``dy = y - y_ref`` splits between
    the input's argmax (where positive: ``max(y, y_ref) - y_ref``) and the baseline's (where
    negative: ``y - max(y, y_ref)``), and ``1 / delta_in`` per input position, 0 where
    ``|delta_in| < eps`` (there the pool's own gradient, as a 0/1 float mask: bool tensors are
    slow on CPU)."""
    def prepare(m: nn.Module, x: Tensor, y: Tensor, x_ref: Tensor, y_ref: Tensor, idx_ref: Tensor):
        idx = _argmax(pool, m, x, y)
        dy, d_in = _minus(y.detach(), y_ref), _minus(x, x_ref)
        d_abs = d_in.abs()
        if d_abs.numel() == 0 or d_abs.amin().item() >= eps:
            inverse, small = d_in.reciprocal_(), None
        else:
            small = d_abs.lt_(eps)
            inverse = (1 - small).div_(d_in.add_(small))
        return dy.clamp_min(0), dy.clamp_max_(0), idx, tile(idx_ref, x.shape[0]).contiguous(), inverse, small
    return prepare


def _maxpool(route: Callable) -> Callable[[GradRecord, Optional[Tensor]], Tensor]:
    """``route(grad, like, indices, module)`` is max_pool's own backward (output gradients summed
    at the argmax positions, into a tensor shaped ``like`` the input): the output gradient times
    each window's shares, routed through both argmaxes, times ``1 / delta_in``."""

    def rule(rec: GradRecord, grad: Optional[Tensor]) -> Tensor:
        with torch.no_grad():
            through_input, through_ref, idx, idx_ref, inverse, small = rec.saved
            g, m = rec.grad_output, rec.module
            out = route(g * through_input, inverse, idx, m).add_(route(g * through_ref, inverse, idx_ref, m)).mul_(inverse)
            return out if small is None else out.addcmul_(route(g, inverse, idx, m), small)
    return rule


def _pool_backward(op: Callable) -> Callable:
    return lambda g, x, idx, m: op(g, x, m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode, idx)


_POOL2D_BACKWARD = _pool_backward(torch.ops.aten.max_pool2d_with_indices_backward)


def _pool1d_backward(g: Tensor, x: Tensor, idx: Tensor, m: nn.Module) -> Tensor:
    """max_pool1d's backward as the 2-d one on a height-1 plane (its indices are the same)."""
    pair = lambda v, first: (first, v[0] if isinstance(v, (tuple, list)) else v)  # noqa: E731
    return torch.ops.aten.max_pool2d_with_indices_backward(
        g.unsqueeze(-2), x.unsqueeze(-2), pair(m.kernel_size, 1), pair(m.stride, 1), pair(m.padding, 0),
        pair(m.dilation, 1), m.ceil_mode, idx.unsqueeze(-2)).squeeze(-2)


_MAXPOOLS = {  # pool, its backward
    nn.MaxPool1d: (F.max_pool1d, _pool1d_backward),
    nn.MaxPool2d: (F.max_pool2d, _POOL2D_BACKWARD),
    nn.MaxPool3d: (F.max_pool3d, _pool_backward(torch.ops.aten.max_pool3d_with_indices_backward)),
}


@lru_cache(maxsize=8)
def rules(eps: float) -> Dict[Type[nn.Module], Tuple[str, Callable, Optional[Callable], Callable]]:
    """Per supported module type: ("multiply", its multiplier, None, what it keeps of a reference
    call) for elementwise modules, ("replace", gradient rule, its forward-side ``prepare``, keep)
    for the others (built once per ``eps``; do not modify)."""
    rescale = ("multiply", _rescale_multiplier(eps), None, _keep)
    table = {
        nn.ReLU: rescale, nn.ELU: rescale, nn.LeakyReLU: rescale, nn.Sigmoid: rescale,
        nn.Tanh: rescale, nn.Softplus: rescale, nn.Softmax: ("replace", *_softmax(eps), _keep),
    }
    table.update({t: ("replace", _maxpool(route), _maxpool_prepare(pool, route, eps), _maxpool_keep(pool))
                  for t, (pool, route) in _MAXPOOLS.items()})
    return table


def reference_rows(baselines: Tuple[Tensor, ...], n: int, args: Optional[Tuple[Any, ...]]) -> Tuple[Tensor, ...]:
    """The baseline rows the reference forward needs: one row where every baseline is one row
    shared by the batch (a broadcast view) and no forward argument has a batch axis to match;
    else the rows as given, which must tile the ``n`` inputs."""
    batched_args = any(isinstance(a, Tensor) and a.dim() > 0 for a in (args or ()))
    if not batched_args and all(b.shape[0] == 1 or b.stride(0) == 0 for b in baselines):
        return tuple(b[:1] for b in baselines)
    if batched_args or len({b.shape[0] for b in baselines}) > 1:
        return tuple(tile(b, n) for b in baselines)
    return baselines


def deep_lift_multipliers(method: "DeepLift", inputs, references, target, args) -> Tuple[Tensor, ...]:
    """d(score)/d(inputs) under the Rescale rules: the reference forward (or what a reusable
    method kept of the last one), then the inputs' forward and backward, inside ``method``'s hook
    session."""
    with method._hooks() as scratch:
        cache = method._reference_cache if method._hook_session is not None and not args else None
        kept = cache.lookup(method.model, references) if cache is not None else None
        if kept is not None:
            restore_references(scratch, kept)
        else:
            # with grad: max pooling's indices come from what its forward saved for the backward
            with reference_pass(scratch), torch.set_grad_enabled(method._pools_hooked):
                method.model(*references, *(args or ()))
            if cache is not None:
                cache.store(method.model, references, kept_references(scratch))
        grads = gradients(method.model, leaf_inputs(inputs), target, args)
        check_references_paired(scratch)
    return grads


class ReferenceCache:
    """What a reusable method's last reference forward kept, reused while the reference rows,
    the model's parameters and buffers (identity and version) and its train/eval modes are
    unchanged: a server explaining against a fixed baseline runs the baseline once. A change
    these do not show (an attribute the forward reads, weights written through ``.data``) needs
    the method's ``close()`` and ``reusable()`` again, which start a new cache. Only what fits
    ``max_bytes`` is kept."""

    max_bytes = 64 << 20

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self._state: Optional[tuple] = None
        self._rows: Tuple[Tensor, ...] = ()
        self._kept: Optional[dict] = None

    @staticmethod
    def _model_state(model: nn.Module) -> tuple:
        tensors = (*model.parameters(), *model.buffers())
        return tuple((id(t), t._version) for t in tensors) + tuple(m.training for m in model.modules())

    def lookup(self, model: nn.Module, rows: Tuple[Tensor, ...]) -> Optional[dict]:
        if self._kept is None or len(rows) != len(self._rows):
            return None
        for a, b in zip(rows, self._rows):
            if a.shape != b.shape or a.dtype != b.dtype or a.device != b.device or not torch.equal(a, b):
                return None
        return self._kept if self._model_state(model) == self._state else None

    def store(self, model: nn.Module, rows: Tuple[Tensor, ...], kept: dict) -> None:
        size = sum(t.numel() * t.element_size() for calls in kept.values() for call in calls for t in call
                   if isinstance(t, Tensor))
        if size > self.max_bytes:  # many baselines through a large model: not worth the standing memory
            self.clear()
            return
        self._state, self._rows, self._kept = self._model_state(model), tuple(r.clone() for r in rows), kept


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
        self._reference_cache = ReferenceCache()
        self._pools_hooked = True

    def _install_hooks(self, session: HookSession) -> None:
        table = rules(self.eps)
        self._reference_cache.clear()
        self._pools_hooked = any(type(m) in _MAXPOOLS for m in self.model.modules())
        for module in self.model.modules():
            entry = table.get(type(module))
            if entry is None:
                continue
            kind, rule, prepare, keep = entry
            if kind == "multiply":
                session.multiply_gradient(module, rule, reference=keep)
            else:
                session.replace_gradient(module, rule, prepare=prepare, reference=keep)

    def multipliers(self, inputs, baselines, target, args, references=None):
        """DeepLift multipliers d(score)/d(input) under the Rescale rules (tuples in and out);
        ``references``: the baseline rows to run (default ``reference_rows``)."""
        n = inputs[0].shape[0]
        for b in baselines:
            if b.shape[0] != n:
                raise AttributionArgumentError(f"baselines must have batch size 1 or {n}, got {b.shape[0]}")
        if references is None:
            references = reference_rows(baselines, n, args)
        return deep_lift_multipliers(self, inputs, references, target, args)

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
        return self._attribute(was_tuple, inputs, baselines, target, format_args(additional_forward_args),
                               return_convergence_delta, custom_attribution_func)

    def _attribute(self, was_tuple, inputs, baselines, target, args, return_convergence_delta,
                   custom_attribution_func, references=None):
        grads = self.multipliers(inputs, baselines, target, args, references)
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
        out = self._attribute(True, exp_inputs, exp_baselines, exp_target, exp_args, return_convergence_delta,
                              custom_attribution_func, references=reference_rows(baselines, n * k, exp_args))
        attributions, delta = out if return_convergence_delta else (out, None)
        attributions = tuple(a.reshape(n, k, *a.shape[1:]).mean(1) for a in attributions)
        result = format_output(was_tuple, attributions)
        return (result, delta) if return_convergence_delta else result
