"""The one chunking mechanism.

Captum exposes several names for "how many rows go through the model at once":
``internal_batch_size`` (path methods, in rows), ``perturbations_per_eval`` (perturbation methods,
in perturbed copies of the batch), ``nt_samples_batch_size`` (noise tunnel, in samples) and
``max_examples_per_batch`` (metrics). All of them are translated here into a number of *units*
(steps, perturbations, samples) evaluated per forward, and ``chunks`` splits the work.

Perturbation methods default to as many units per forward as fit in ``MEMORY_BUDGET_BYTES``
instead of Captum's one at a time.
"""
from __future__ import annotations

from typing import Iterator, Optional, Sequence

import torch

from .errors import AttributionArgumentError

MEMORY_BUDGET_BYTES = 64 * 2**20
MAX_UNITS_PER_EVAL = 4096


def chunks(n_units: int, per_chunk: Optional[int]) -> Iterator[slice]:
    """Consecutive slices covering ``range(n_units)``, ``per_chunk`` at a time (all when None)."""
    if per_chunk is None or per_chunk >= n_units:
        yield slice(0, n_units)
        return
    if per_chunk < 1:
        raise AttributionArgumentError(f"chunk size must be at least 1, got {per_chunk}")
    for start in range(0, n_units, per_chunk):
        yield slice(start, min(start + per_chunk, n_units))


def units_per_eval(rows_per_unit: int, internal_batch_size: Optional[int]) -> Optional[int]:
    """Units per forward for a batch-size argument given in rows (``internal_batch_size``)."""
    if internal_batch_size is None:
        return None
    return max(1, internal_batch_size // max(1, rows_per_unit))


def budget_units(inputs: Sequence[torch.Tensor], budget_bytes: int = MEMORY_BUDGET_BYTES) -> int:
    """How many perturbed copies of ``inputs`` fit in the memory budget (at least 1)."""
    unit_bytes = sum(t.numel() * t.element_size() for t in inputs if isinstance(t, torch.Tensor))
    if unit_bytes == 0:
        return MAX_UNITS_PER_EVAL
    return int(max(1, min(MAX_UNITS_PER_EVAL, budget_bytes // unit_bytes)))


def samples_per_chunk(batch_size: int, n_samples: int, max_examples_per_batch: Optional[int]) -> int:
    """Samples per example evaluated together under ``max_examples_per_batch`` (the metrics' name).

    Each chunk holds every example ``k`` times, so ``k = max_examples_per_batch // batch_size``,
    kept within ``[1, n_samples]`` (with a warning when the argument falls outside that range, as in
    Captum, since a chunk cannot hold less than one copy of the batch).
    """
    if max_examples_per_batch is None:
        return n_samples
    per_chunk = max_examples_per_batch // max(1, batch_size)
    if per_chunk < 1 or per_chunk > n_samples:
        import warnings

        warnings.warn(
            f"max_examples_per_batch={max_examples_per_batch} should be between the batch size "
            f"({batch_size}) and batch size * n_perturb_samples ({batch_size * n_samples}); "
            "using the nearest valid value",
            stacklevel=3,
        )
    return min(max(per_chunk, 1), n_samples)
