"""Streaming statistics of an audit: bounded memory for any number of examples.

``Stream`` keeps a running count and sum (the exact mean), a fixed-bin histogram, and a seeded
reservoir sample (Vitter's algorithm R) of at most ``RESERVOIR`` values, from which the median, the
5th percentile and the bootstrap confidence interval of the mean are computed (exact up to
``RESERVOIR`` examples, a uniform sample beyond). ``TopK`` keeps the k records of smallest key in
a heap. ``nan`` values (undefined metrics) are counted, not averaged.
"""
from __future__ import annotations

import heapq
import math
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

RESERVOIR = 20_000
BOOTSTRAP = 1_000


def bootstrap_ci(values: np.ndarray, seed: int, n_resamples: int = BOOTSTRAP, level: float = 0.95) -> List[float]:
    """Percentile bootstrap interval of the mean (seeded, resampled in chunks to bound memory)."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return [math.nan, math.nan]
    rng = np.random.default_rng(seed)
    per_chunk = max(1, 2_000_000 // values.size)
    means = []
    for start in range(0, n_resamples, per_chunk):
        k = min(per_chunk, n_resamples - start)
        means.append(values[rng.integers(0, values.size, size=(k, values.size))].mean(1))
    means = np.concatenate(means)
    tail = (1 - level) / 2 * 100
    return [float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))]


class Stream:
    """Mean, histogram and a reservoir sample of one per-example value."""

    def __init__(self, seed: int, bins: Tuple[float, float, int] = (-1.0, 1.0, 20)) -> None:
        self.seed = seed
        self.n = self.undefined = 0
        self.total = 0.0
        self.sample: List[float] = []
        self._rng = np.random.default_rng(seed)
        low, high, count = bins
        self.edges = np.linspace(low, high, count + 1)
        self.counts = np.zeros(count, dtype=np.int64)

    def add(self, value: Optional[float]) -> None:
        if value is None or not math.isfinite(value):
            self.undefined += 1
            return
        self.n += 1
        self.total += value
        if len(self.sample) < RESERVOIR:
            self.sample.append(value)
        else:
            j = int(self._rng.integers(0, self.n))
            if j < RESERVOIR:
                self.sample[j] = value
        pos = int(np.clip(np.searchsorted(self.edges, value, side="right") - 1, 0, self.counts.size - 1))
        self.counts[pos] += 1

    def summary(self) -> Dict[str, Any]:
        if self.n == 0:
            return {"mean": None, "ci95": [None, None], "median": None, "p05": None, "n": 0, "n_undefined": self.undefined}
        sample = np.asarray(self.sample)
        return {"mean": self.total / self.n, "ci95": bootstrap_ci(sample, self.seed),
                "median": float(np.median(sample)), "p05": float(np.percentile(sample, 5)),
                "n": self.n, "n_undefined": self.undefined}

    def histogram(self) -> Dict[str, list]:
        return {"edges": self.edges.tolist(), "counts": self.counts.tolist()}


class TopK:
    """The k records with the smallest keys (ties: the earlier example first)."""

    def __init__(self, k: int) -> None:
        self.k = k
        self._heap: List[Tuple[float, int, Any]] = []  # (-key, -index, record): the root is the largest kept

    def add(self, key: float, index: int, record: Any) -> None:
        if self.k <= 0 or not math.isfinite(key):
            return
        item = (-key, -index, record)
        if len(self._heap) < self.k:
            heapq.heappush(self._heap, item)
        elif item[:2] > self._heap[0][:2]:
            heapq.heapreplace(self._heap, item)

    def items(self) -> List[Any]:
        return [record for _, _, record in sorted(self._heap, key=lambda t: (-t[0], -t[1]))]
