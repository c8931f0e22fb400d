"""Layer Feature Ablation and Layer Feature Permutation: the perturbation methods with the layer
treated as the input (its tensors substituted, ``_core.layers.LayerAsInput``), so neurons or
groups of neurons (``layer_mask``) are ablated to ``layer_baselines`` or shuffled across the batch."""
from __future__ import annotations

import torch

from ..._core.inputs import as_tuple, format_args
from ..._core.layers import LayerAsInput, layer_eval
from ..._core.progress import shows_progress
from ..feature_ablation import FeatureAblation
from ..feature_permutation import FeaturePermutation
from ._base import LayerMethod


class _LayerPerturbation(LayerMethod):
    _multiply_by_inputs = True

    def _layer_attribute(self, attributor, inputs, additional_forward_args, side, **kwargs):
        inputs = as_tuple(inputs)
        args = format_args(additional_forward_args)
        with self._hooks() as scratch, torch.no_grad():
            _, acts = layer_eval(scratch, self.layers, side, self.forward_func, inputs, None, args)
            layer_forward = LayerAsInput(scratch, self.forward_func, self.layers, side, [len(acts[0])])
            attrs = attributor(layer_forward).attribute(acts[0], additional_forward_args=inputs + (args or ()), **kwargs)
        return self._format([as_tuple(attrs)])


class LayerFeatureAblation(_LayerPerturbation):
    @shows_progress
    def attribute(
        self,
        inputs,
        layer_baselines=None,
        target=None,
        additional_forward_args=None,
        layer_mask=None,
        attribute_to_layer_input: bool = False,
        perturbations_per_eval: int = 1,
        *,
        show_progress: bool = False,  # an extension: Captum's layer and neuron methods draw no bar
    ):
        return self._layer_attribute(
            FeatureAblation, inputs, additional_forward_args, attribute_to_layer_input,
            baselines=layer_baselines, target=target, feature_mask=layer_mask,
            perturbations_per_eval=perturbations_per_eval,
        )


class LayerFeaturePermutation(_LayerPerturbation):
    @shows_progress
    def attribute(
        self, inputs, target=None, additional_forward_args=None, layer_mask=None, perturbations_per_eval: int = 1,
        *, show_progress: bool = False,
    ):
        return self._layer_attribute(
            FeaturePermutation, inputs, additional_forward_args, False,
            target=target, feature_mask=layer_mask, perturbations_per_eval=perturbations_per_eval,
        )
