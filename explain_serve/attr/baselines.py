"""``ProductBaselines``: a baseline drawn from the Cartesian product of per-feature choices.

Perturbation methods that accept a callable baseline (``TextTemplateInput``, the perturbation
methods' ``baselines``) call it once per evaluation, so attributions average over the choices
instead of depending on one arbitrary reference value. Draws use Python's ``random`` module (as
Captum does), so ``random.seed`` makes them reproducible.
"""
from __future__ import annotations

import random
from typing import Any, Dict, List, Sequence, Tuple, Union

BaselineValues = Union[Sequence[Sequence[Any]], Dict[Union[str, Tuple[str, ...]], Sequence[Any]]]


class ProductBaselines:
    """Callable returning one sample of baselines, one value per feature (or feature group).

    ``baseline_values`` is a list of candidate lists (one per feature) or a dict from a feature
    name to its candidates. A dict key may be a tuple of names whose values are drawn jointly:
    its candidates are then tuples with one value per name.
    """

    def __init__(self, baseline_values: BaselineValues) -> None:
        if isinstance(baseline_values, dict):
            self.dict_keys: List[Any] = list(baseline_values)
            values = [baseline_values[k] for k in self.dict_keys]
        else:
            self.dict_keys = []
            values = list(baseline_values)
        for i, choices in enumerate(values):
            if len(choices) == 0:
                name = self.dict_keys[i] if self.dict_keys else i
                raise ValueError(f"ProductBaselines: feature {name!r} has no baseline values to choose from")
        for key, choices in zip(self.dict_keys, values):
            if isinstance(key, tuple) and any(not isinstance(c, tuple) or len(c) != len(key) for c in choices):
                raise ValueError(
                    f"ProductBaselines: the values of the grouped key {key!r} must be tuples of {len(key)} values"
                )
        self.baseline_values = values

    def sample(self) -> Union[List[Any], Dict[str, Any]]:
        """One draw: a list (or a dict by feature name, grouped keys expanded)."""
        picks = [random.choice(choices) for choices in self.baseline_values]
        if not self.dict_keys:
            return picks
        out: Dict[str, Any] = {}
        for key, val in zip(self.dict_keys, picks):
            if isinstance(key, tuple):
                out.update(zip(key, val))
            else:
                out[key] = val
        return out

    __call__ = sample
