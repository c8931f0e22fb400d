"""Grad-CAM and Guided Grad-CAM (Selvaraju et al., 2017).

Grad-CAM weights each channel of a layer's activation by the spatial mean of the gradient of the
score with respect to it and sums over channels; Guided Grad-CAM multiplies guided backprop by
the Grad-CAM map upsampled to the input.
"""
from __future__ import annotations

import warnings

import torch

from .._core.hooks import HookedMethod, HookSession
from .._core.inputs import as_tuple, format_args, format_output, is_tuple
from .._core.layers import layer_gradients, tap_around
from ._base import GradientAttribution, LayerAttribution
from .guided_backprop import GuidedBackprop
from .._core.errors import AttributionArgumentError


class LayerGradCam(LayerAttribution, GradientAttribution, HookedMethod):
    def __init__(self, forward_func, layer, device_ids=None) -> None:
        LayerAttribution.__init__(self, forward_func, layer, device_ids)

    def _install_hooks(self, session: HookSession) -> None:
        tap_around(session, [self.layer])

    def attribute(
        self,
        inputs,
        target=None,
        additional_forward_args=None,
        attribute_to_layer_input: bool = False,
        relu_attributions: bool = False,
        attr_dim_summation: bool = True,
        grad_kwargs=None,
    ):
        with self._hooks() as scratch:
            (grads,), (acts,) = layer_gradients(
                scratch, [self.layer], attribute_to_layer_input, self.forward_func,
                as_tuple(inputs), target, format_args(additional_forward_args), grad_kwargs,
            )
        weights = tuple(g.mean(dim=tuple(range(2, g.dim())), keepdim=True) if g.dim() > 2 else g for g in grads)
        if attr_dim_summation:
            cams = tuple((w * a).sum(dim=1, keepdim=True) for w, a in zip(weights, acts))
        else:
            cams = tuple(w * a for w, a in zip(weights, acts))
        if relu_attributions:
            cams = tuple(torch.relu(c) for c in cams)
        return format_output(len(cams) > 1, cams)


class GuidedGradCam(GradientAttribution):
    def __init__(self, model, layer, device_ids=None) -> None:
        super().__init__(model)
        self.grad_cam = LayerGradCam(model, layer, device_ids)
        self.guided_backprop = GuidedBackprop(model)

    def attribute(
        self,
        inputs,
        target=None,
        additional_forward_args=None,
        interpolate_mode: str = "nearest",
        attribute_to_layer_input: bool = False,
    ):
        was_tuple, inputs = is_tuple(inputs), as_tuple(inputs)
        cam = self.grad_cam.attribute(
            inputs, target, additional_forward_args,
            attribute_to_layer_input=attribute_to_layer_input, relu_attributions=True,
        )
        if isinstance(cam, tuple):
            if len(cam) != 1:
                raise AttributionArgumentError("GuidedGradCam needs a layer with a single output")
            cam = cam[0]
        guided = as_tuple(self.guided_backprop.attribute(inputs, target, additional_forward_args))
        out = []
        for g, x in zip(guided, inputs):
            try:
                out.append(g * LayerAttribution.interpolate(cam, x.shape[2:], interpolate_mode))
            except Exception:
                warnings.warn("could not upsample the Grad-CAM map to an input's shape; returning an empty tensor for it")
                out.append(torch.empty(0))
        return format_output(was_tuple, tuple(out))
