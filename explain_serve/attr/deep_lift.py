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


def _where_small(rec: GradRecord, grad, small: Tensor, value: Tensor) -> Tensor:
    """``value`` (2, n, ...) with the module's own gradient where ``|delta_in| < eps``; ``grad`` is
    that gradient, or None when the backward was replaced (then computed only if needed)."""
    if grad is None:
        if not bool(small.any()):
            return value.reshape(rec.inputs.shape)
        grad = rec.module_grad()
    return torch.where(small, _halves(grad), value).view(rec.inputs.shape)


def _rescale(eps: float) -> Callable[[GradRecord, Optional[Tensor]], Tensor]:
    def rule(rec: GradRecord, grad: Optional[Tensor]) -> Tensor:
        x, y = _halves(rec.inputs), _halves(rec.outputs)
        d_in = x[0] - x[1]  # one half: the differences are the same for both rows of a pair
        ratio = (y[0] - y[1]).div_(d_in)
        return _where_small(rec, grad, d_in.abs() < eps, _halves(rec.grad_output) * ratio)
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


def _maxpool(pool: Callable, route: Callable, eps: float) -> Callable[[GradRecord, Tensor], Tensor]:
    """``route(grad, inputs, indices, module)`` sends output gradients to the argmax positions."""

    def rule(rec: GradRecord, grad: Optional[Tensor]) -> Tensor:
        m: nn.Module = rec.module
        with torch.no_grad():
            y = _halves(rec.outputs)
            y_max = torch.max(y[0], y[1])
            d_out = torch.stack([y_max - y[1], y[0] - y_max]).view_as(rec.outputs)
            idx = rec.saved
            if idx is None or idx.shape != rec.outputs.shape:
                _, idx = pool(rec.inputs, m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode, True)
            routed = _halves(route(rec.grad_output * d_out, rec.inputs, idx, m))
            x = _halves(rec.inputs)
            d_in = x[0] - x[1]
            return _where_small(rec, grad, d_in.abs() < eps, (routed[0] + routed[1]).div_(d_in).expand_as(routed))
    return rule


def _unpool(unpool: Callable) -> Callable:
    return lambda g, x, idx, m: unpool(g, idx, m.kernel_size, m.stride, m.padding, list(x.shape))


def _pool_backward(op: Callable) -> Callable:
    """max_pool's own backward (sums where windows overlap, as the chain rule does)."""
    return lambda g, x, idx, m: op(g, x, m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode, idx)


_MAXPOOLS = {
    nn.MaxPool1d: (F.max_pool1d, _unpool(F.max_unpool1d)),
    nn.MaxPool2d: (F.max_pool2d, _pool_backward(torch.ops.aten.max_pool2d_with_indices_backward)),
    nn.MaxPool3d: (F.max_pool3d, _pool_backward(torch.ops.aten.max_pool3d_with_indices_backward)),
}


@lru_cache(maxsize=8)
def rules(eps: float) -> Dict[Type[nn.Module], Callable]:
    """Gradient rule per supported module type (built once per ``eps``; do not modify)."""
    rescale = _rescale(eps)
    table = {
        nn.ReLU: rescale, nn.ELU: rescale, nn.LeakyReLU: rescale, nn.Sigmoid: rescale,
        nn.Tanh: rescale, nn.Softplus: rescale, nn.Softmax: _softmax(eps),
    }
    table.update({t: _maxpool(pool, route, eps) for t, (pool, route) in _MAXPOOLS.items()})
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
