"""Summaries of attributions over a dataset (Captum's ``Summarizer``), streamed in constant memory.

``Summarizer(stats).update(attr)`` feeds one tensor (or a tuple: one summary per tensor) to every
requested stat plus the stats they depend on, each computed once. ``summary`` maps each requested
stat's name to its current value. ``ClassSummarizer`` also keeps one summary per label.
"""
from __future__ import annotations

import copy
from collections import defaultdict
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from .._core.errors import AttributionArgumentError
from .stat import MSE, Count, Mean, Stat, StatValue, StdDev, Var

# update order: a stat is updated after the stats it reads (unknown stats come last)
_UPDATE_RANK = {Count: 0, Mean: 1, MSE: 2, Var: 3, StdDev: 4}


def _dependencies(stat: Stat) -> List[Stat]:
    """The built-in stats ``stat`` reads while updating or answering."""
    if isinstance(stat, StdDev):
        return [Var(order=stat.order)]
    if isinstance(stat, Var):
        return [MSE(), Count()]
    if isinstance(stat, MSE):
        return [Mean()]
    if isinstance(stat, Mean):
        return [Count()]
    return []


def _reorder_stats(stats: Sequence[Stat]) -> Tuple[List[Stat], List[int]]:
    """All stats needed (requested ones and their dependencies, once each) in update order,
    and the positions of the requested ones."""
    requested: List[Stat] = list(dict.fromkeys(stats))
    needed: Dict[Stat, None] = dict.fromkeys(requested)
    todo = list(requested)
    while todo:
        for dep in _dependencies(todo.pop()):
            if dep not in needed:
                needed[dep] = None
                todo.append(dep)
    ordered = sorted(needed, key=lambda s: _UPDATE_RANK.get(type(s), len(_UPDATE_RANK)))
    position = {s: i for i, s in enumerate(ordered)}
    return ordered, [position[s] for s in requested]


class SummarizerSingleTensor:
    """Summary of one stream of tensors: ``stats`` in update order, ``summary_stats_indices`` shown."""

    def __init__(self, stats: List[Stat], summary_stats_indices: List[int]) -> None:
        self._stats = stats
        self._stat_to_stat = {s: s for s in stats}
        self._summary_stats = [stats[i] for i in summary_stats_indices]
        for s in stats:
            s._other_stats = self
            s.init()

    def update(self, x: Tensor) -> None:
        for s in self._stats:
            s.update(x)

    def get(self, stat: Stat) -> Optional[Stat]:
        """This summarizer's stat equal to ``stat`` (same class and parameters), or None."""
        return self._stat_to_stat.get(stat)

    @property
    def summary(self) -> Dict[str, Optional[StatValue]]:
        return {s.name: s.get() for s in self._summary_stats}


class Summarizer:
    """Streaming summary of a tensor or of each tensor of a tuple (one ``SummarizerSingleTensor`` each)."""

    def __init__(self, stats: List[Stat]) -> None:
        self._summarizers: List[SummarizerSingleTensor] = []
        self._is_inputs_tuple: Optional[bool] = None
        self._stats, self._summary_stats_indicies = _reorder_stats(stats)

    def update(self, x: Union[float, Tensor, Tuple[Union[float, Tensor], ...]]) -> None:
        """Add one observation (a tensor, a number, or a tuple of them, as in the first update)."""
        is_tuple = isinstance(x, tuple)
        if self._is_inputs_tuple is None:
            self._is_inputs_tuple = is_tuple
        elif self._is_inputs_tuple != is_tuple:
            raise AttributionArgumentError(
                "Summarizer.update got a "
                + ("tuple" if is_tuple else "single tensor")
                + " after "
                + ("tuples" if self._is_inputs_tuple else "single tensors")
                + ": pass the same form every time"
            )
        for i, inp in enumerate(x if is_tuple else (x,)):
            if i >= len(self._summarizers):
                self._summarizers.append(
                    SummarizerSingleTensor(copy.deepcopy(self._stats), self._summary_stats_indicies)
                )
            if not isinstance(inp, Tensor):
                inp = torch.tensor(inp, dtype=torch.float)
            self._summarizers[i].update(inp)

    @property
    def summary(self) -> Optional[Union[Dict[str, Optional[StatValue]], List[Dict[str, Optional[StatValue]]]]]:
        """``{stat name: value}`` (a list of them for tuple updates); None before any update."""
        if not self._summarizers:
            return None
        summaries = [s.summary for s in self._summarizers]
        return summaries if self._is_inputs_tuple else summaries[0]


def _label_key(label: Any) -> Any:
    """A dict key for a label: tensor labels by value (Captum keys them by object identity)."""
    if isinstance(label, Tensor):
        return label.item() if label.numel() == 1 else tuple(label.reshape(-1).tolist())
    return label


class ClassSummarizer(Summarizer):
    """A ``Summarizer`` of all examples plus one per label (``class_summaries``)."""

    def __init__(self, stats: List[Stat]) -> None:
        super().__init__(stats)
        self.summaries: Dict[Any, Summarizer] = defaultdict(lambda: Summarizer(stats=stats))

    def update(self, x, labels: Any = None) -> None:  # type: ignore[override]
        """Add a batch ``x`` (first dimension = examples); ``labels``: one for all or one per example.

        Without labels, ``x`` is one observation of the overall summary. With labels, each example
        is one observation, summarized as a tuple (Captum's convention: summaries are then lists).
        """
        if labels is None:
            super().update(x)
            return
        xs = x if isinstance(x, tuple) else (x,)
        if isinstance(labels, (list, Tensor)):
            per_example = list(labels) if isinstance(labels, list) or labels.dim() else [labels]
        else:
            per_example = [labels]
        if len(per_example) > 1:
            for t in xs:
                if t.shape[0] != len(per_example):
                    raise AttributionArgumentError(
                        f"batch size {t.shape[0]} does not equal the number of labels {len(per_example)}: "
                        "give one label for the whole batch or one per example"
                    )
        for i in range(xs[0].shape[0]):
            label = per_example[0] if len(per_example) == 1 else per_example[i]
            self.summaries[_label_key(label)].update(tuple(t[i] for t in xs))
            super().update(tuple(t[i].clone() for t in xs))

    @property
    def class_summaries(self) -> Dict[Any, Any]:
        """``{label: summary}`` for every label seen."""
        return {key: s.summary for key, s in self.summaries.items()}
