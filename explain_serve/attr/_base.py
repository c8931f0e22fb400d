"""Base classes with Captum's public contract (names, properties, convergence delta)."""
from __future__ import annotations

import re
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .._core.inputs import as_tuple, format_args, format_baselines, run_forward, tensorize_baselines
from .._core.targets import TargetType


class Attribution:
    """An attribution method over ``forward_func`` (any callable returning a tensor)."""

    _multiply_by_inputs = False  # set by constructors that take ``multiply_by_inputs``
    _has_convergence_delta = False  # True where attributions should sum to f(x) - f(baseline)

    def __init__(self, forward_func: Callable) -> None:
        self.forward_func = forward_func

    def attribute(self, inputs, *args, **kwargs):  # pragma: no cover - abstract
        raise NotImplementedError

    def attribute_future(self, *args: Any, **kwargs: Any):
        """Attribution with a forward that returns ``torch.futures.Future``; only the
        forward-only methods that Captum gives it have it (FeatureAblation, FeaturePermutation,
        ShapleyValueSampling, ShapleyValues)."""
        raise NotImplementedError(f"attribute_future is not implemented for {type(self).__name__}")

    @property
    def multiplies_by_inputs(self) -> bool:
        """Whether attributions are scaled by (input - baseline) (Captum's global vs local attribution)."""
        return self._multiply_by_inputs

    def has_convergence_delta(self) -> bool:
        return self._has_convergence_delta

    @classmethod
    def get_name(cls) -> str:
        return " ".join(re.findall(r"[A-Z][a-z]+|[A-Z]+(?![a-z])|\d+", cls.__name__))


def sum_rows(t: Tensor) -> Tensor:
    return t.reshape(t.shape[0], -1).sum(1)


def convergence_delta(
    forward_func: Callable,
    attributions: Any,
    start_point: Any,
    end_point: Any,
    target: TargetType = None,
    additional_forward_args: Any = None,
) -> Tensor:
    """Per example: sum of attributions - (f(end_point) - f(start_point)) (the completeness gap)."""
    end = as_tuple(end_point)
    start = tensorize_baselines(format_baselines(as_tuple(start_point), end), end)
    attributions = as_tuple(attributions)
    args = format_args(additional_forward_args)
    with torch.no_grad():
        start_out = sum_rows(run_forward(forward_func, start, target, args).reshape(end[0].shape[0], -1))
        end_out = sum_rows(run_forward(forward_func, end, target, args).reshape(end[0].shape[0], -1))
        attr_sum = torch.stack([sum_rows(a) for a in attributions]).sum(0)
    return attr_sum - (end_out.to(attr_sum.dtype) - start_out.to(attr_sum.dtype))


class GradientAttribution(Attribution):
    """Methods that use gradients; their delta is the completeness gap."""

    def compute_convergence_delta(
        self,
        attributions: Any,
        start_point: Any,
        end_point: Any,
        target: TargetType = None,
        additional_forward_args: Any = None,
    ) -> Tensor:
        return convergence_delta(
            self.forward_func, attributions, start_point, end_point, target, additional_forward_args
        )


class PerturbationAttribution(Attribution):
    """Methods that only call the forward function (no gradients): any callable works."""

    _multiply_by_inputs = True


class LayerAttribution(Attribution):
    """Attributions to a layer's input or output (``layer`` is a module of ``forward_func``)."""

    def __init__(self, forward_func: Callable, layer: torch.nn.Module, device_ids: Optional[list] = None) -> None:
        super().__init__(forward_func)
        self.layer = layer
        self.device_ids = device_ids

    @staticmethod
    def interpolate(layer_attribution: Tensor, interpolate_dims, interpolate_mode: str = "nearest") -> Tensor:
        """Upsample a layer attribution map to ``interpolate_dims`` (e.g. the input's H, W)."""
        return F.interpolate(layer_attribution, interpolate_dims, mode=interpolate_mode)


class NeuronAttribution(Attribution):
    """Attributions of one neuron (selected in ``layer``) to the inputs."""

    def __init__(self, forward_func: Callable, layer: torch.nn.Module, device_ids: Optional[list] = None) -> None:
        super().__init__(forward_func)
        self.layer = layer
        self.device_ids = device_ids
