"""Layer Integrated Gradients (Sundararajan et al., 2017, applied to a hidden layer).

Integrated Gradients with the layer treated as the input: the layer's activations at the inputs
and at the baselines are the end points of the path, and every path point is substituted for the
layer's output (or input) while the rest of the model runs on the original inputs. For a text
model, pass the embedding layer: attributions are per token and embedding dimension and sum to
``f(x) - f(baseline)`` (completeness).
"""
from __future__ import annotations

import torch

from ..._core.batching import units_per_eval
from ..._core.gradients import gradients
from ..._core.inputs import as_tuple, expand_args, format_args, format_baselines, tensorize_baselines
from ..._core.layers import LayerAsInput, flatten_layers, layer_eval, unflatten_layers
from ..._core.paths import integrate
from ..._core.quadrature import nodes_and_weights
from ..._core.targets import expand_target
from .._base import GradientAttribution, convergence_delta
from ._base import LayerMethod


class LayerIntegratedGradients(LayerMethod, GradientAttribution):
    _has_convergence_delta = True

    _multiple_layers_allowed = True

    def __init__(self, forward_func, layer, device_ids=None, multiply_by_inputs: bool = True) -> None:
        super().__init__(forward_func, layer, device_ids)
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
        attribute_to_layer_input: bool = False,
        grad_kwargs=None,
    ):
        inputs = as_tuple(inputs)
        baselines = tensorize_baselines(format_baselines(baselines, inputs), inputs)
        args = format_args(additional_forward_args)
        alphas, weights = nodes_and_weights(method, n_steps)
        side = attribute_to_layer_input
        with self._hooks() as scratch:
            with torch.no_grad():
                _, at_inputs = layer_eval(scratch, self.layers, side, self.forward_func, inputs, None, args)
                _, at_baselines = layer_eval(scratch, self.layers, side, self.forward_func, baselines, None, args)
            end, sizes = flatten_layers(at_inputs)
            start, _ = flatten_layers(at_baselines)
            layer_forward = LayerAsInput(scratch, self.forward_func, self.layers, side, sizes)
            rest = inputs + (args or ())

            def grad_at(points, k):
                return gradients(layer_forward, points, expand_target(target, k), expand_args(rest, k), grad_kwargs)

            steps = units_per_eval(inputs[0].shape[0], internal_batch_size)
            total = integrate(grad_at, start, end, alphas, weights, steps)
        if self._multiply_by_inputs:
            total = tuple(g * (e - s) for g, e, s in zip(total, end, start))
        result = self._format(unflatten_layers(total, sizes))
        if not return_convergence_delta:
            return result
        return result, convergence_delta(self.forward_func, total, baselines, inputs, target, args)
