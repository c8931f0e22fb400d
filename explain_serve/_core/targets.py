"""Target selection: which scalar per example an attribution explains.

Accepted forms (as in Captum): ``None`` (the output is already one scalar per example), an ``int``
or index ``tuple`` applied to every example, a scalar tensor, a 1-D tensor or list of ints with one
class per example, or a list of index tuples with one per example.
"""
from __future__ import annotations

from typing import Any, List, Tuple, Union

import torch
from torch import Tensor

from .errors import AttributionArgumentError, IndexOutOfRangeError, check_index

TargetType = Union[None, int, Tuple[int, ...], Tensor, List[Any]]


def _select_column(output: Tensor, index: Tuple[int, ...]) -> Tensor:
    if len(index) > output.dim() - 1:
        raise AttributionArgumentError(
            f"target {index} has more indices than the output's non-batch dimensions {tuple(output.shape[1:])}"
        )
    check_index(index, output.shape[1:], "target")
    return output[(slice(None), *index)]


def _check_classes(low: int, high: int, output: Tensor) -> None:
    """Per-example class targets must lie in ``0..classes-1`` (gathered: no negative indices)."""
    n = output.shape[1]
    if low < 0 or high >= n:
        raise IndexOutOfRangeError(
            f"per-example targets must be in 0..{n - 1} for an output with {n} classes, got {low if low < 0 else high}"
        )


def select_targets(output: Tensor, target: TargetType) -> Tensor:
    """Pick the explained output of each example (same shapes as Captum's selection).

    Per-example targets (1-D tensor, list of ints) select shape ``(batch,)``, like an int target.
    """
    if target is None:
        return output
    if isinstance(target, int):
        if output.dim() >= 2 and -output.shape[1] <= target < output.shape[1]:
            return output.select(1, target)  # the usual case, a view at a fraction of indexing's cost
        return _select_column(output, (target,))
    if isinstance(target, tuple):
        return _select_column(output, target)
    if isinstance(target, Tensor):
        if target.numel() == 1 and not target.is_floating_point():
            return _select_column(output, (int(target.item()),))
        if target.dim() == 1 and target.numel() == output.shape[0]:
            if output.dim() != 2:
                raise AttributionArgumentError("a tensor of per-example targets needs a 2-D output (batch, classes)")
            _check_classes(int(target.min()), int(target.max()), output)
            return torch.gather(output, 1, target.reshape(-1, 1).to(output.device)).squeeze(1)
        raise AttributionArgumentError(
            f"target tensor of shape {tuple(target.shape)} does not match {output.shape[0]} examples"
        )
    if isinstance(target, list):
        if len(target) != output.shape[0]:
            raise AttributionArgumentError(f"target list has {len(target)} entries for {output.shape[0]} examples")
        if all(isinstance(t, int) for t in target):
            if output.dim() != 2:
                raise AttributionArgumentError("a list of per-example int targets needs a 2-D output (batch, classes)")
            _check_classes(min(target), max(target), output)
            index = torch.tensor(target, device=output.device).reshape(-1, 1)
            return torch.gather(output, 1, index).squeeze(1)
        if all(isinstance(t, tuple) for t in target):
            for t in target:
                check_index(t, output.shape[1:], "target")
            return torch.stack([output[(i, *t)] for i, t in enumerate(target)])
        raise AttributionArgumentError("a target list must hold only ints or only index tuples")
    raise AttributionArgumentError(f"target of type {type(target).__name__} is not supported")


def expand_target(target: TargetType, n: int, interleave: bool = False) -> TargetType:
    """Target for a batch made of ``n`` copies of the original examples.

    ``interleave=False``: copies are stacked block after block (``[x; x; ...]``, path methods);
    ``interleave=True``: each example is repeated in place (``[x0, x0, x1, x1]``, noise tunnel).
    """
    if n == 1:
        return target
    if isinstance(target, list):
        return [t for t in target for _ in range(n)] if interleave else target * n
    if isinstance(target, Tensor) and target.numel() > 1:
        return target.repeat_interleave(n, dim=0) if interleave else target.repeat(n)
    return target


def take_target(target: TargetType, index: Union[slice, Tensor, List[int]]) -> TargetType:
    """The target of a subset of examples (for per-example loops and chunks)."""
    if isinstance(target, list):
        if isinstance(index, slice):
            return target[index]
        return [target[int(i)] for i in index]
    if isinstance(target, Tensor) and target.numel() > 1:
        return target[index]
    return target
