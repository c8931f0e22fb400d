"""Saliency (Simonyan et al., 2013): the gradient of the output with respect to the input."""
from __future__ import annotations

from .._core.gradients import gradients, leaf_inputs
from .._core.inputs import as_tuple, format_args, format_output, is_tuple
from ._base import GradientAttribution


class Saliency(GradientAttribution):
    def attribute(self, inputs, target=None, abs=True, additional_forward_args=None):
        was_tuple, inputs = is_tuple(inputs), as_tuple(inputs)
        grads = gradients(self.forward_func, leaf_inputs(inputs), target, format_args(additional_forward_args))
        if abs:
            grads = tuple(g.abs() for g in grads)
        return format_output(was_tuple, grads)
