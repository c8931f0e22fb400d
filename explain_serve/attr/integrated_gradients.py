"""Integrated Gradients (Sundararajan et al., 2017).

``(x - b) * integral_0^1 grad f(b + a (x - b)) da``, the integral taken by the shared quadrature
helper; all path points of a chunk go through the model as one batch.
"""
from __future__ import annotations

from .._core.batching import units_per_eval
from .._core.gradients import gradients
from .._core.inputs import (
    as_tuple,
    expand_args,
    format_args,
    format_baselines,
    format_output,
    is_tuple,
    tensorize_baselines,
)
from .._core.paths import integrate
from .._core.quadrature import nodes_and_weights
from .._core.targets import expand_target
from ._base import GradientAttribution


class IntegratedGradients(GradientAttribution):
    _has_convergence_delta = True

    def __init__(self, forward_func, multiply_by_inputs: bool = True) -> None:
        super().__init__(forward_func)
        self._multiply_by_inputs = multiply_by_inputs

    def attribute(
        self,
        inputs,
        baselines=None,
        target=None,
        additional_forward_args=None,
        n_steps: int = 50,
        method: str = "gausslegendre",
        internal_batch_size=None,
        return_convergence_delta: bool = False,
    ):
        was_tuple, inputs = is_tuple(inputs), as_tuple(inputs)
        baselines = tensorize_baselines(format_baselines(baselines, inputs), inputs)
        args = format_args(additional_forward_args)
        alphas, weights = nodes_and_weights(method, n_steps)

        def grad_at(points, k):
            return gradients(self.forward_func, points, expand_target(target, k), expand_args(args, k))

        steps = units_per_eval(inputs[0].shape[0], internal_batch_size)
        total = integrate(grad_at, baselines, inputs, alphas, weights, steps)
        if self._multiply_by_inputs:
            total = tuple(g * (x - b) for g, x, b in zip(total, inputs, baselines))
        attributions = format_output(was_tuple, total)
        if not return_convergence_delta:
            return attributions
        delta = self.compute_convergence_delta(total, baselines, inputs, target, args)
        return attributions, delta
