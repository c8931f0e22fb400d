"""GradientShap (Lundberg & Lee, 2017): expected gradients over random baselines and path points.

Each sample draws a baseline from the given distribution, a point uniformly on the straight path
from it to the (optionally noised) input, and takes ``gradient * (input - baseline)``; the average
over samples approximates SHAP values. Implemented as ``NoiseTunnel(InputBaselineXGradient)``.
"""
from __future__ import annotations

import torch

from .._core.gradients import gradients, leaf_inputs
from .._core.samples import shared_uniform
from .._core.inputs import (
    as_tuple,
    baseline_distribution,
    format_args,
    format_baselines,
    format_output,
    is_tuple,
    tensorize_baselines,
)
from ._base import GradientAttribution
from .noise_tunnel import NoiseTunnel


class InputBaselineXGradient(GradientAttribution):
    """Gradient at one uniformly random point per example between baseline and input."""

    _has_convergence_delta = True

    def __init__(self, forward_func, multiply_by_inputs: bool = True) -> None:
        super().__init__(forward_func)
        self._multiply_by_inputs = multiply_by_inputs

    def attribute(self, inputs, baselines=None, target=None, additional_forward_args=None, return_convergence_delta=False):
        was_tuple, inputs = is_tuple(inputs), as_tuple(inputs)
        baselines = tensorize_baselines(format_baselines(baselines, inputs), inputs)
        args = format_args(additional_forward_args)
        alpha = torch.as_tensor(shared_uniform(inputs[0].shape[0]), dtype=inputs[0].dtype, device=inputs[0].device)
        deltas = tuple(x - b for x, b in zip(inputs, baselines))  # the path, and the multiplier
        points = tuple(b + alpha.view(-1, *([1] * (d.dim() - 1))) * d for b, d in zip(baselines, deltas))
        grads = gradients(self.forward_func, leaf_inputs(points), target, args)
        if self._multiply_by_inputs:
            grads = tuple(g * d for g, d in zip(grads, deltas))
        attributions = format_output(was_tuple, grads)
        if not return_convergence_delta:
            return attributions
        return attributions, self.compute_convergence_delta(grads, baselines, inputs, target, args)


class GradientShap(GradientAttribution):
    _has_convergence_delta = True

    def __init__(self, forward_func, multiply_by_inputs: bool = True) -> None:
        super().__init__(forward_func)
        self._multiply_by_inputs = multiply_by_inputs

    def attribute(
        self,
        inputs,
        baselines,
        n_samples: int = 5,
        stdevs=0.0,
        target=None,
        additional_forward_args=None,
        return_convergence_delta: bool = False,
    ):
        baselines = baseline_distribution(baselines, inputs, "GradientShap")
        inner = InputBaselineXGradient(self.forward_func, self._multiply_by_inputs)
        return NoiseTunnel(inner).attribute(
            inputs,
            nt_type="smoothgrad",
            nt_samples=n_samples,
            stdevs=stdevs,
            draw_baseline_from_distrib=True,
            baselines=baselines,
            target=target,
            additional_forward_args=additional_forward_args,
            return_convergence_delta=return_convergence_delta,
        )
