"""DataLoaderAttribution: feature ablation of a metric computed over a whole DataLoader.

The attribution of feature group ``f`` is ``metric(data) - metric(data with f set to its baseline
in every batch)``, where the metric is the forward outputs reduced over the batches
(``reduce(accum, output, inputs)``, default: concatenation) and optionally converted by
``to_metric``: e.g. how much accuracy or recall over a validation set depends on each feature.
``perturbations_per_pass`` perturbations share one traversal of the DataLoader, so a slow loader
is read ``ceil((n_features + 1) / perturbations_per_pass)`` times.
"""
from __future__ import annotations

from typing import Any, Callable, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .._core.errors import AttributionArgumentError
from .._core.perturbation import format_masks, forward_tensor
from .._core.progress import shows_progress
from ._base import Attribution
from .feature_ablation import FeatureAblation


class InputRole:
    """What each element of a DataLoader batch is (Captum's values)."""

    need_attr = 0  # passed to the forward and attributed
    need_forward = 1  # passed to the forward, not attributed
    no_forward = 2  # not passed to the forward (e.g. the label, for ``reduce``)


def _concat_tensors(accum: Optional[Tensor], output: Tensor, _inputs) -> Tensor:
    return output if accum is None else torch.cat([accum, output])


class DataLoaderAttribution(Attribution):
    """Wraps a ``FeatureAblation`` so that ``attribute`` takes a DataLoader instead of a batch."""

    def __init__(self, attr_method: Attribution) -> None:
        if type(attr_method) is not FeatureAblation:
            raise AttributionArgumentError(
                f"DataLoaderAttribution does not support {type(attr_method).__name__}: pass a FeatureAblation"
            )
        super().__init__(attr_method.forward_func)
        self.attr_method = attr_method

    @shows_progress
    def attribute(
        self,
        dataloader: torch.utils.data.DataLoader,
        input_roles: Optional[Tuple[int, ...]] = None,
        baselines=None,
        feature_mask=None,
        reduce: Optional[Callable] = None,
        to_metric: Optional[Callable] = None,
        perturbations_per_pass: int = 1,
        show_progress: bool = False,
        return_input_shape: bool = True,
    ):
        """Attributions of the metric to each feature group of the role-0 elements.

        ``baselines`` and ``feature_mask`` apply to every batch (first dimension 1). Returns, per
        attributed element, a tensor of shape ``(metric.numel(), *element.shape[1:])``, or with
        ``return_input_shape=False`` one tensor ``(metric.numel(), n_features)``.
        """
        first = next(iter(dataloader))
        was_tuple = isinstance(first, (tuple, list))
        first = tuple(first) if was_tuple else (first,)
        roles = self._roles(input_roles, len(first))
        attr_inputs = tuple(x for x, r in zip(first, roles) if r == InputRole.need_attr)
        baselines = self._baselines(baselines, attr_inputs)
        masks = format_masks(feature_mask, attr_inputs)
        for i, m in enumerate(masks):
            if m.shape[0] != 1:
                raise AttributionArgumentError(
                    f"feature_mask[{i}] has first dimension {m.shape[0]}: it must be 1 so it applies to every batch"
                )
        if not isinstance(perturbations_per_pass, int) or perturbations_per_pass < 1:
            raise AttributionArgumentError("perturbations_per_pass must be an integer >= 1")
        n_features = int(max(int(m.max()) for m in masks if m.numel()) + 1) if any(m.numel() for m in masks) else 0
        present = sorted({int(v) for m in masks for v in torch.unique(m).tolist()})
        units: List[Optional[int]] = [None] + present  # None: nothing ablated
        metrics: List[Tensor] = []
        for start in range(0, len(units), perturbations_per_pass):
            metrics += self._pass(dataloader, roles, baselines, masks, units[start:start + perturbations_per_pass],
                                  reduce or _concat_tensors, to_metric)
        initial = metrics[0].reshape(-1)
        unique = initial.new_zeros((initial.numel(), n_features))
        for f, metric in zip(present, metrics[1:]):
            unique[:, f] = initial - metric.reshape(-1).to(initial.dtype)
        if not return_input_shape:
            return unique
        attrs = tuple(
            unique[:, m.reshape(-1)].reshape((initial.numel(),) + tuple(x.shape[1:]))
            for x, m in zip(attr_inputs, masks)
        )
        return attrs if was_tuple else attrs[0]

    @staticmethod
    def _roles(input_roles, n: int) -> Tuple[int, ...]:
        if not input_roles:
            return tuple(InputRole.need_attr for _ in range(n))
        if len(input_roles) != n:
            raise AttributionArgumentError(
                f"input_roles has {len(input_roles)} entries but each DataLoader batch has {n} elements"
            )
        if InputRole.need_attr not in input_roles:
            raise AttributionArgumentError(
                f"input_roles {tuple(input_roles)} has no element to attribute (role {InputRole.need_attr})"
            )
        return tuple(input_roles)

    @staticmethod
    def _baselines(baselines, attr_inputs) -> Tuple[Any, ...]:
        if baselines is None:
            return tuple(0 for _ in attr_inputs)
        baselines = baselines if isinstance(baselines, tuple) else (baselines,)
        if len(baselines) != len(attr_inputs):
            raise AttributionArgumentError(
                f"got {len(baselines)} baselines for {len(attr_inputs)} attributed DataLoader elements"
            )
        for i, b in enumerate(baselines):
            if isinstance(b, Tensor) and b.dim() > 0 and b.shape[0] != 1:
                raise AttributionArgumentError(
                    f"baselines[{i}] has shape {tuple(b.shape)}: its first dimension must be 1 so it applies to every batch"
                )
        return baselines

    def _pass(self, dataloader, roles, baselines, masks, units: Sequence[Optional[int]], reduce, to_metric) -> List[Tensor]:
        """One traversal of the DataLoader, accumulating the metric of each perturbation in ``units``."""
        states: List[Any] = [None] * len(units)
        for batch in dataloader:
            batch = tuple(batch) if isinstance(batch, (tuple, list)) else (batch,)
            for k, feature in enumerate(units):
                perturbed, j = [], 0
                for x, role in zip(batch, roles):
                    if role == InputRole.need_attr:
                        if feature is not None:
                            x = torch.where(masks[j] == feature, torch.as_tensor(baselines[j], device=x.device), x)
                        j += 1
                    perturbed.append(x)
                forward_inputs = tuple(x for x, r in zip(perturbed, roles) if r != InputRole.no_forward)
                output = forward_tensor(self.forward_func, forward_inputs, None, None)
                states[k] = reduce(states[k], output, tuple(perturbed))
        metrics = [to_metric(s) if to_metric is not None else s for s in states]
        for m in metrics:
            if not isinstance(m, Tensor):
                raise AttributionArgumentError(
                    f"the accumulated metric must be a Tensor, got {type(m).__name__}: check reduce / to_metric"
                )
        return metrics
