"""Path integrals of gradients, shared by every path method (IG and its layer/neuron forms).

``integrate(grad_at, start, end, alphas, weights, steps_per_chunk)`` returns, for each tensor,
``sum_k w_k * grad_at(start + alpha_k * (end - start))``: the Riemann/Gauss-Legendre estimate of
``integral_0^1 grad(start + a (end - start)) da``. ``grad_at(points, n_copies)`` receives the
path points of ``n_copies`` steps stacked step-major (``[all examples at alpha_0; ...]``) and
returns tensors laid out the same way: usually the gradients at those points, or values derived
from them (a layer's gradients, for internal influence), one total per returned tensor.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Callable, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .batching import chunks

GradAt = Callable[[Tuple[Tensor, ...], int], Tuple[Tensor, ...]]


@lru_cache(maxsize=64)
def _as_tensor(values: Tuple[float, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
    """A rule's alphas or weights as a tensor, cached per (values, dtype, device): every call of a
    path method uses the same few (do not modify the result)."""
    return torch.tensor(values, dtype=dtype, device=device)


def path_points(start: Sequence[Tensor], end: Sequence[Tensor], alphas: Sequence[float]) -> Tuple[Tensor, ...]:
    """Points ``start + alpha (end - start)`` for each alpha, stacked step-major on the batch axis."""
    points = []
    alphas = tuple(alphas)
    for s, e in zip(start, end):
        a = _as_tensor(alphas, e.dtype, e.device).view(-1, *([1] * e.dim()))
        points.append((s.unsqueeze(0) + a * (e - s).unsqueeze(0)).reshape(-1, *e.shape[1:]))
    return tuple(points)


def integrate(
    grad_at: GradAt,
    start: Sequence[Tensor],
    end: Sequence[Tensor],
    alphas: Sequence[float],
    weights: Sequence[float],
    steps_per_chunk: Optional[int] = None,
) -> Tuple[Tensor, ...]:
    n = end[0].shape[0]
    totals: List[Optional[Tensor]] = []
    for sl in chunks(len(alphas), steps_per_chunk):
        k = sl.stop - sl.start
        points = tuple(p.requires_grad_(True) for p in path_points(start, end, alphas[sl]))
        grads = grad_at(points, k)
        if not totals:  # grad_at may return any number of tensors (e.g. a layer's), step-major
            totals = [None] * len(grads)
        for i, g in enumerate(grads):
            w = _as_tensor(tuple(weights[sl]), g.dtype, g.device)
            part = (w @ g.reshape(k, -1)).view(n, *g.shape[1:])  # sum_k w_k g_k
            totals[i] = part if totals[i] is None else totals[i] + part
    return tuple(totals)  # type: ignore[return-value]
