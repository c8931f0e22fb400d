"""Random draws that do not depend on the batch: under a seed, an example gets the same answer in
a batch as alone (NoiseTunnel, GradientShap and their layer/neuron forms).

NoiseTunnel lays out ``n`` samples per example, example after example, and draws what varies per
sample (a baseline from the distribution, a point on the path) ``n`` times, shared by every
example of the batch, from numpy's global RNG as Captum does: for a batch of one, the draws are
Captum's. ``samples_per_example(n)`` tells a wrapped method (which sees only the expanded rows) the
layout for the duration of its call.
"""
from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from typing import Iterator, Optional

import numpy as np
import torch
from torch import Tensor

_PER_EXAMPLE: ContextVar[Optional[int]] = ContextVar("explain_serve_samples_per_example", default=None)


@contextmanager
def samples_per_example(n: int) -> Iterator[None]:
    token = _PER_EXAMPLE.set(n)
    try:
        yield
    finally:
        _PER_EXAMPLE.reset(token)


def shared_uniform(rows: int) -> Tensor:
    """``rows`` draws from U(0, 1) (float64): one per sample, repeated for every example when the
    layout is known."""
    n = _PER_EXAMPLE.get()
    # random_sample(k) is uniform(0.0, 1.0, k) (0 + 1 * the same doubles), without its checks
    if not n or rows % n:
        return torch.from_numpy(np.random.random_sample(rows))
    return torch.from_numpy(np.random.random_sample(n)).expand(rows // n, n).reshape(-1)


def shared_choice(k: int, n: int, n_examples: int) -> Tensor:
    """Indices into ``k`` baselines for ``n`` samples of each of ``n_examples`` examples (laid out
    example after example), the same ``n`` indices for every example. ``randint(0, k, n)`` is the
    draw ``np.random.choice(k, n)`` makes (legacy RandomState, uniform with replacement), cheaper."""
    return torch.from_numpy(np.random.randint(0, k, n)).expand(n_examples, n).reshape(-1)
