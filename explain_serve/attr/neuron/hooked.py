"""Neuron methods built on the hook-based primaries: NeuronDeepLift, NeuronDeepLiftShap (Shrikumar
et al., 2017; Lundberg & Lee, 2017), NeuronGuidedBackprop and NeuronDeconvolution. The primary
method runs on the neuron's value; its gradient overrides are installed into the neuron
method's single hook session (adopted), so nothing is stored on the model's modules."""
from __future__ import annotations

from .._base import GradientAttribution
from ..deep_lift import DeepLift, DeepLiftShap
from ..guided_backprop import Deconvolution, GuidedBackprop
from ._base import NeuronMethod


class NeuronDeepLift(NeuronMethod, GradientAttribution):
    _primary = DeepLift

    def __init__(self, model, layer, multiply_by_inputs: bool = True) -> None:
        super().__init__(model, layer)
        self.model = model
        self._multiply_by_inputs = multiply_by_inputs
        self._method = self.adopt(self._primary(self.neuron_output, multiply_by_inputs))

    def attribute(
        self,
        inputs,
        neuron_selector,
        baselines=None,
        additional_forward_args=None,
        attribute_to_neuron_input: bool = False,
        custom_attribution_func=None,
    ):
        return self._on_neuron(
            neuron_selector, attribute_to_neuron_input,
            lambda: self._method.attribute(
                inputs, baselines, None, additional_forward_args, False, custom_attribution_func
            ),
        )


class NeuronDeepLiftShap(NeuronDeepLift):
    _primary = DeepLiftShap

    def attribute(
        self,
        inputs,
        neuron_selector,
        baselines,
        additional_forward_args=None,
        attribute_to_neuron_input: bool = False,
        custom_attribution_func=None,
    ):
        return super().attribute(
            inputs, neuron_selector, baselines, additional_forward_args, attribute_to_neuron_input, custom_attribution_func
        )


class _NeuronModifiedRelu(NeuronMethod, GradientAttribution):
    _primary = GuidedBackprop

    def __init__(self, model, layer, device_ids=None) -> None:
        super().__init__(model, layer, device_ids)
        self.model = model
        self._method = self.adopt(self._primary(self.neuron_output))

    def attribute(self, inputs, neuron_selector, additional_forward_args=None, attribute_to_neuron_input: bool = False):
        return self._on_neuron(
            neuron_selector, attribute_to_neuron_input,
            lambda: self._method.attribute(inputs, None, additional_forward_args),
        )


class NeuronGuidedBackprop(_NeuronModifiedRelu):
    _primary = GuidedBackprop


class NeuronDeconvolution(_NeuronModifiedRelu):
    _primary = Deconvolution
