"""Layer GradientShap (Lundberg & Lee, 2017, at a hidden layer).

Each sample draws a baseline from the distribution and a point uniformly on the straight input
path from it to the (optionally noised) input; the attribution is the output's gradient w.r.t. the
layer at that point times ``layer(input) - layer(baseline)``, averaged over samples by
``NoiseTunnel`` exactly as for ``GradientShap``.
"""
from __future__ import annotations

import torch

from ..._core.inputs import as_tuple, baseline_distribution, format_args, format_baselines, tensorize_baselines
from ..._core.layers import layer_eval, layer_gradients
from ..._core.samples import shared_uniform
from .._base import GradientAttribution, convergence_delta
from ..noise_tunnel import NoiseTunnel
from ._base import LayerMethod


class LayerInputBaselineXGradient(LayerMethod, GradientAttribution):
    """Layer gradient at one uniformly random point per example between baseline and input."""

    _has_convergence_delta = True

    def __init__(self, forward_func, layer, device_ids=None, multiply_by_inputs: bool = True) -> None:
        super().__init__(forward_func, layer, device_ids)
        self._multiply_by_inputs = multiply_by_inputs

    def attribute(
        self,
        inputs,
        baselines,
        target=None,
        additional_forward_args=None,
        return_convergence_delta: bool = False,
        attribute_to_layer_input: bool = False,
        grad_kwargs=None,
    ):
        inputs = as_tuple(inputs)
        baselines = tensorize_baselines(format_baselines(baselines, inputs), inputs)
        args = format_args(additional_forward_args)
        x0 = inputs[0]
        alpha = torch.as_tensor(shared_uniform(x0.shape[0]), dtype=x0.dtype, device=x0.device)
        points = tuple(b + alpha.view(-1, *([1] * (x.dim() - 1))) * (x - b) for x, b in zip(inputs, baselines))
        side = attribute_to_layer_input
        with self._hooks() as scratch:
            grads, _ = layer_gradients(scratch, self.layers, side, self.forward_func, points, target, args, grad_kwargs)
            grads = grads[0]
            if self._multiply_by_inputs:
                with torch.no_grad():
                    _, at_b = layer_eval(scratch, self.layers, side, self.forward_func, baselines, None, args)
                    _, at_x = layer_eval(scratch, self.layers, side, self.forward_func, inputs, None, args)
                grads = tuple(g * (a - b) for g, a, b in zip(grads, at_x[0], at_b[0]))
        result = self._format([grads])
        if not return_convergence_delta:
            return result
        return result, convergence_delta(self.forward_func, grads, baselines, inputs, target, args)


class LayerGradientShap(LayerMethod, GradientAttribution):
    _has_convergence_delta = True

    _own_taps = False  # the adopted LayerInputBaselineXGradient taps the layer

    def __init__(self, forward_func, layer, device_ids=None, multiply_by_inputs: bool = True) -> None:
        super().__init__(forward_func, layer, device_ids)
        self._multiply_by_inputs = multiply_by_inputs
        self._inner_method = self.adopt(LayerInputBaselineXGradient(forward_func, layer, device_ids, multiply_by_inputs))

    def attribute(
        self,
        inputs,
        baselines,
        n_samples: int = 5,
        stdevs=0.0,
        target=None,
        additional_forward_args=None,
        return_convergence_delta: bool = False,
        attribute_to_layer_input: bool = False,
    ):
        baselines = baseline_distribution(baselines, inputs, "LayerGradientShap")
        with self._hooks():
            return NoiseTunnel(self._inner_method).attribute(
                inputs,
                nt_type="smoothgrad",
                nt_samples=n_samples,
                stdevs=stdevs,
                draw_baseline_from_distrib=True,
                baselines=baselines,
                target=target,
                additional_forward_args=additional_forward_args,
                return_convergence_delta=return_convergence_delta,
                attribute_to_layer_input=attribute_to_layer_input,
            )
