"""Gradients of the selected outputs with respect to the inputs (or to a layer)."""
from __future__ import annotations

from typing import Any, Callable, Optional, Tuple

import torch
from torch import Tensor

from .inputs import run_forward
from .targets import TargetType
from .errors import AttributionArgumentError


def leaf_inputs(inputs: Tuple[Tensor, ...]) -> Tuple[Tensor, ...]:
    """Detached copies that require grad, so user tensors are never modified."""
    return tuple(x.detach().requires_grad_(True) for x in inputs)


def check_scalar_per_example(outputs: Tensor) -> None:
    if outputs.dim() > 1 and outputs[0].numel() != 1:
        raise AttributionArgumentError(
            "the selected output has more than one value per example "
            f"(shape {tuple(outputs.shape)}); pass a target that picks one output"
        )


def gradients(
    forward_func: Callable,
    inputs: Tuple[Tensor, ...],
    target: TargetType = None,
    additional_forward_args: Optional[Tuple[Any, ...]] = None,
    grad_kwargs: Optional[dict] = None,
) -> Tuple[Tensor, ...]:
    """d(sum of selected outputs)/d(inputs); ``inputs`` must require grad."""
    with torch.enable_grad():
        outputs = run_forward(forward_func, inputs, target, additional_forward_args)
        check_scalar_per_example(outputs)
        return torch.autograd.grad(outputs.sum(), inputs, **(grad_kwargs or {}))


def gradients_and_outputs(
    forward_func: Callable,
    inputs: Tuple[Tensor, ...],
    target: TargetType = None,
    additional_forward_args: Optional[Tuple[Any, ...]] = None,
) -> Tuple[Tuple[Tensor, ...], Tensor]:
    with torch.enable_grad():
        outputs = run_forward(forward_func, inputs, target, additional_forward_args)
        check_scalar_per_example(outputs)
        grads = torch.autograd.grad(outputs.sum(), inputs)
    return grads, outputs.detach()
