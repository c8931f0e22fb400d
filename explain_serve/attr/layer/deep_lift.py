"""Layer DeepLift and Layer DeepLiftShap (Shrikumar et al., 2017; Lundberg & Lee, 2017).

DeepLift's Rescale rules (the gradient overrides of ``attr.deep_lift``, installed into this
method's hook session) with the multipliers taken at the layer: the baselines' forward (the
reference), then the inputs' forward and backward, the layer's tensors of both tapped; the
attribution is ``multiplier * (layer(x) - layer(b))``. DeepLiftShap averages over a baseline
distribution (every input against every baseline).
"""
from __future__ import annotations

import torch

from ..._core.hooks import check_references_paired, reference_pass
from ..._core.inputs import (
    as_tuple,
    callable_baselines,
    expand_for_baseline_distribution,
    format_args,
    format_baselines,
    tensorize_baselines,
)
from ..._core.layers import layer_eval, layer_gradients
from .._base import GradientAttribution, convergence_delta
from ..deep_lift import DeepLift, call_custom_attribution_func, reference_rows, tile
from ._base import LayerMethod
from ..._core.errors import AttributionArgumentError


class LayerDeepLift(LayerMethod, GradientAttribution):
    _has_convergence_delta = True

    def __init__(self, model, layer, multiply_by_inputs: bool = True) -> None:
        super().__init__(model, layer)
        self.model = model
        self._multiply_by_inputs = multiply_by_inputs
        self._deep_lift = self.adopt(DeepLift(model, multiply_by_inputs))

    def attribute(
        self,
        inputs,
        baselines=None,
        target=None,
        additional_forward_args=None,
        return_convergence_delta: bool = False,
        attribute_to_layer_input: bool = False,
        custom_attribution_func=None,
        grad_kwargs=None,
    ):
        inputs = as_tuple(inputs)
        baselines = callable_baselines(baselines, inputs if len(inputs) > 1 else inputs[0])
        baselines = tensorize_baselines(format_baselines(baselines, inputs), inputs)
        return self._attribute(inputs, baselines, target, format_args(additional_forward_args), return_convergence_delta,
                               attribute_to_layer_input, custom_attribution_func, grad_kwargs)

    def _attribute(self, inputs, baselines, target, args, return_convergence_delta, to_input,
                   custom_attribution_func, grad_kwargs=None, references=None):
        n = inputs[0].shape[0]
        if references is None:
            references = reference_rows(baselines, n, args)
        with self._hooks() as scratch:
            with reference_pass(scratch), torch.set_grad_enabled(self._deep_lift._pools_hooked):
                _, at_references = layer_eval(scratch, self.layers, to_input, self.model, references, None, args)
            grads, acts = layer_gradients(scratch, self.layers, to_input, self.model, inputs, target, args, grad_kwargs)
            check_references_paired(scratch)
        grads, at_inputs = grads[0], acts[0]
        at_baselines = tuple(tile(b.detach(), n) for b in at_references[0])
        if custom_attribution_func is not None:
            attributions = as_tuple(call_custom_attribution_func(custom_attribution_func, grads, at_inputs, at_baselines))
        elif self._multiply_by_inputs:
            attributions = tuple((a - b) * g for a, b, g in zip(at_inputs, at_baselines, grads))
        else:
            attributions = grads
        result = self._format([attributions])
        if not return_convergence_delta:
            return result
        return result, convergence_delta(self.model, attributions, baselines, inputs, target, args)


class LayerDeepLiftShap(LayerDeepLift):
    """Layer DeepLift averaged over a distribution of baselines."""

    def attribute(
        self,
        inputs,
        baselines,
        target=None,
        additional_forward_args=None,
        return_convergence_delta: bool = False,
        attribute_to_layer_input: bool = False,
        custom_attribution_func=None,
    ):
        inputs = as_tuple(inputs)
        baselines = as_tuple(callable_baselines(baselines, inputs if len(inputs) > 1 else inputs[0]))
        if baselines is None or not isinstance(baselines[0], torch.Tensor) or baselines[0].shape[0] < 2:
            raise AttributionArgumentError(
                "LayerDeepLiftShap needs a tensor distribution of more than one baseline; "
                "use LayerDeepLift for a single baseline"
            )
        n, k = inputs[0].shape[0], baselines[0].shape[0]
        exp_inputs, exp_baselines, exp_target, exp_args = expand_for_baseline_distribution(
            inputs, baselines, target, format_args(additional_forward_args)
        )
        out = self._attribute(exp_inputs, exp_baselines, exp_target, exp_args, return_convergence_delta,
                              attribute_to_layer_input, custom_attribution_func,
                              references=reference_rows(baselines, n * k, exp_args))
        attributions, delta = out if return_convergence_delta else (out, None)
        mean = lambda a: a.reshape(n, k, *a.shape[1:]).mean(1)  # noqa: E731
        attributions = tuple(mean(a) for a in attributions) if isinstance(attributions, tuple) else mean(attributions)
        return (attributions, delta) if return_convergence_delta else attributions
