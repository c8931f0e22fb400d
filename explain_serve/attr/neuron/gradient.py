"""Neuron methods built on the gradient and perturbation primaries: NeuronGradient, Neuron
Integrated Gradients (Sundararajan et al., 2017), NeuronGradientShap, NeuronFeatureAblation
(each: the primary method applied to the neuron's value) and Neuron Conductance (Dhamdhere et
al., 2018: the flow of the output's IG attribution through the neuron)."""
from __future__ import annotations

import torch

from ..._core.batching import units_per_eval
from ..._core.gradients import check_scalar_per_example, gradients, leaf_inputs
from ..._core.inputs import (
    as_tuple,
    expand_args,
    format_args,
    format_baselines,
    format_output,
    is_tuple,
    run_forward,
    tensorize_baselines,
)
from ..._core.layers import select_neuron, seen, tapped
from ..._core.paths import integrate
from ..._core.progress import shows_progress
from ..._core.quadrature import nodes_and_weights
from ..._core.targets import expand_target
from .._base import GradientAttribution
from ..feature_ablation import FeatureAblation
from ..gradient_shap import GradientShap
from ..integrated_gradients import IntegratedGradients
from ._base import NeuronMethod


class NeuronGradient(NeuronMethod, GradientAttribution):
    """Gradient of the selected neuron w.r.t. the inputs."""

    def attribute(self, inputs, neuron_selector, additional_forward_args=None, attribute_to_neuron_input: bool = False):
        was_tuple, inputs = is_tuple(inputs), as_tuple(inputs)
        args = format_args(additional_forward_args)
        grads = self._on_neuron(
            neuron_selector, attribute_to_neuron_input,
            lambda: gradients(self.neuron_output, leaf_inputs(inputs), None, args),
        )
        return format_output(was_tuple, grads)


class NeuronIntegratedGradients(NeuronMethod, GradientAttribution):
    def __init__(self, forward_func, layer, device_ids=None, multiply_by_inputs: bool = True) -> None:
        super().__init__(forward_func, layer, device_ids)
        self._multiply_by_inputs = multiply_by_inputs
        self._ig = IntegratedGradients(self.neuron_output, multiply_by_inputs)

    def attribute(
        self,
        inputs,
        neuron_selector,
        baselines=None,
        additional_forward_args=None,
        n_steps: int = 50,
        method: str = "gausslegendre",
        internal_batch_size=None,
        attribute_to_neuron_input: bool = False,
    ):
        return self._on_neuron(
            neuron_selector, attribute_to_neuron_input,
            lambda: self._ig.attribute(
                inputs, baselines, None, additional_forward_args, n_steps, method, internal_batch_size
            ),
        )


class NeuronGradientShap(NeuronMethod, GradientAttribution):
    def __init__(self, forward_func, layer, device_ids=None, multiply_by_inputs: bool = True) -> None:
        super().__init__(forward_func, layer, device_ids)
        self._multiply_by_inputs = multiply_by_inputs
        self._gs = GradientShap(self.neuron_output, multiply_by_inputs)

    def attribute(
        self,
        inputs,
        neuron_selector,
        baselines,
        n_samples: int = 5,
        stdevs=0.0,
        additional_forward_args=None,
        attribute_to_neuron_input: bool = False,
    ):
        return self._on_neuron(
            neuron_selector, attribute_to_neuron_input,
            lambda: self._gs.attribute(
                inputs, baselines, n_samples, stdevs, None, additional_forward_args
            ),
        )


class NeuronFeatureAblation(NeuronMethod):
    _multiply_by_inputs = True

    @shows_progress
    def attribute(
        self,
        inputs,
        neuron_selector,
        baselines=None,
        additional_forward_args=None,
        feature_mask=None,
        attribute_to_neuron_input: bool = False,
        perturbations_per_eval: int = 1,
        *,
        show_progress: bool = False,  # an extension: Captum's layer and neuron methods draw no bar
    ):
        ablation = FeatureAblation(self.neuron_output)
        return self._on_neuron(
            neuron_selector, attribute_to_neuron_input,
            lambda: ablation.attribute(
                inputs, baselines, None, additional_forward_args, feature_mask, perturbations_per_eval
            ),
        )


class NeuronConductance(NeuronMethod, GradientAttribution):
    """``(x - b) * integral of d(output)/d(neuron) * d(neuron)/d(x)`` along the input path.

    The integral is the shared quadrature (``_core.paths.integrate``); both gradients come from
    one forward per chunk of path points.
    """

    def __init__(self, forward_func, layer, device_ids=None, multiply_by_inputs: bool = True) -> None:
        super().__init__(forward_func, layer, device_ids)
        self._multiply_by_inputs = multiply_by_inputs

    def attribute(
        self,
        inputs,
        neuron_selector,
        baselines=None,
        target=None,
        additional_forward_args=None,
        n_steps: int = 50,
        method: str = "riemann_trapezoid",
        internal_batch_size=None,
        attribute_to_neuron_input: bool = False,
        grad_kwargs=None,
    ):
        was_tuple, inputs = is_tuple(inputs), as_tuple(inputs)
        baselines = tensorize_baselines(format_baselines(baselines, inputs), inputs)
        args = format_args(additional_forward_args)
        alphas, weights = nodes_and_weights(method, n_steps)
        side = bool(attribute_to_neuron_input)

        with self._hooks() as scratch:
            def grad_at(points, k):
                with torch.enable_grad(), tapped(scratch, [self.layer], side, clone=True) as plans:
                    out = run_forward(self.forward_func, points, expand_target(target, k), expand_args(args, k))
                    check_scalar_per_example(out)
                    layer = seen(plans[0])
                    layer_grads = torch.autograd.grad(out.sum(), layer, retain_graph=True, **(grad_kwargs or {}))
                    neuron = select_neuron(layer, neuron_selector)
                    input_grads = torch.autograd.grad(neuron.sum(), points, **(grad_kwargs or {}))
                mid = select_neuron(tuple(layer_grads), neuron_selector).detach()
                return tuple(g * mid.reshape(-1, *([1] * (g.dim() - 1))) for g in input_grads)

            total = integrate(grad_at, baselines, inputs, alphas, weights, units_per_eval(inputs[0].shape[0], internal_batch_size))
        if self._multiply_by_inputs:
            total = tuple(g * (x - b) for g, x, b in zip(total, inputs, baselines))
        return format_output(was_tuple, total)
