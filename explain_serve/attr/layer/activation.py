"""Layer activations and Layer Gradient x Activation (Shrikumar et al., 2016, at a hidden layer)."""
from __future__ import annotations

import torch

from ..._core.inputs import as_tuple, format_args
from ..._core.layers import layer_eval, layer_gradients
from .._base import GradientAttribution
from ._base import LayerMethod


class LayerActivation(LayerMethod):
    """The layer's output (or input) for the given inputs: one forward, nothing else."""

    _multiply_by_inputs = True
    _multiple_layers_allowed = True

    def attribute(self, inputs, additional_forward_args=None, attribute_to_layer_input: bool = False):
        with self._hooks() as scratch, torch.no_grad():
            _, acts = layer_eval(
                scratch, self.layers, attribute_to_layer_input, self.forward_func,
                as_tuple(inputs), None, format_args(additional_forward_args),
            )
        return self._format(acts)


class LayerGradientXActivation(LayerMethod, GradientAttribution):
    """Gradient of the output w.r.t. the layer, times the layer's activation (or the gradient alone)."""

    _multiple_layers_allowed = True

    def __init__(self, forward_func, layer, device_ids=None, multiply_by_inputs: bool = True, memory_efficient: bool = False) -> None:
        super().__init__(forward_func, layer, device_ids)
        self._multiply_by_inputs = multiply_by_inputs
        self._memory_efficient = memory_efficient  # accepted for compatibility; nothing is offloaded

    def attribute(self, inputs, target=None, additional_forward_args=None, attribute_to_layer_input: bool = False, grad_kwargs=None):
        with self._hooks() as scratch:
            grads, acts = layer_gradients(
                scratch, self.layers, attribute_to_layer_input, self.forward_func,
                as_tuple(inputs), target, format_args(additional_forward_args), grad_kwargs,
            )
        if self._multiply_by_inputs:
            grads = [tuple(g * a for g, a in zip(gs, as_)) for gs, as_ in zip(grads, acts)]
        return self._format(grads)
