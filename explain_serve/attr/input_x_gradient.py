"""Input x Gradient (Shrikumar et al., 2016): the gradient scaled elementwise by the input."""
from __future__ import annotations

from .._core.gradients import gradients, leaf_inputs
from .._core.inputs import as_tuple, format_args, format_output, is_tuple
from ._base import GradientAttribution


class InputXGradient(GradientAttribution):
    _multiply_by_inputs = True

    def attribute(self, inputs, target=None, additional_forward_args=None):
        was_tuple, inputs = is_tuple(inputs), as_tuple(inputs)
        grads = gradients(self.forward_func, leaf_inputs(inputs), target, format_args(additional_forward_args))
        return format_output(was_tuple, tuple(g * x for g, x in zip(grads, inputs)))
