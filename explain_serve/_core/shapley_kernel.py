"""The Kernel SHAP estimator: which coalitions to evaluate, their weights, and the constrained fit.

Lundberg & Lee (2017): with the Shapley kernel the weighted least-squares fit of the coalition
values ``v(z)`` on binary coalitions ``z``, subject to ``phi_0 = v(empty)`` and
``sum(phi) = v(full) - v(empty)`` (efficiency), is the vector of Shapley values. The kernel gives
coalition size ``k`` (``0 < k < M``) the total weight ``W(k) = (M - 1) / (k (M - k))``, split evenly
over its ``C(M, k)`` coalitions; ``W`` is largest for the smallest and largest sizes.

Design for a budget of ``n`` coalitions (the full and the empty one included):

- sizes are visited in pairs ``(k, M - k)`` from the heaviest (``k = 1``) inwards; a pair is
  *enumerated* (all its coalitions, exact kernel weights) while sampling it would be expected to
  draw at least as many coalitions as it has (``budget * share of the remaining weight >= count``);
- the rest of the budget is *sampled* in complementary pairs (Covert & Lee 2021), stratified
  uniformly over the sizes left (the leverage scores ``1 / C(M, |z|)`` of Musco & Witter 2025:
  each size gets the floor or the ceiling of an even share) and without replacement within a
  size; each size's kernel mass is spread evenly over the design's coalitions of that size
  (``kernel_weights``), which keeps the fit consistent.

The design depends only on ``(M, n)`` and the random draws, never on the examples, so a batch is
explained with one design (batch == per example under a seed) and one pseudo-inverse.
"""
from __future__ import annotations

import math
from functools import lru_cache
from typing import List, NamedTuple, Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from .inputs import float64_array, solve_in_numpy


@lru_cache(maxsize=64)
def size_mass(m: int) -> Tensor:
    """Total Shapley-kernel weight of each coalition size ``0..m`` (0 at sizes 0 and m; cached,
    read-only)."""
    k = torch.arange(m + 1, dtype=torch.float64)
    w = (m - 1) / (k * (m - k))
    w[0] = 0.0
    w[m] = 0.0
    return w


@lru_cache(maxsize=64)
def _plan(m: int, n_samples: int) -> Tuple[Tensor, int, Tensor, List[int]]:
    """Enumerated coalitions, the number to sample, and the sampled strata: the smaller size ``s``
    of each size pair ``(s, m - s)`` left and how many distinct complementary pairs it holds
    (cached: it only depends on ``m, n``)."""
    mass = size_mass(m)
    budget = max(n_samples - 2, 0)
    remaining = float(mass.sum())
    left = 2 ** m - 2  # proper coalitions not enumerated yet
    rows = []
    k = 1
    while 2 * k <= m and budget > 0:
        sizes = (k,) if 2 * k == m else (k, m - k)
        count = sum(math.comb(m, s) for s in sizes)
        share = float(sum(mass[s] for s in sizes))
        if count > budget or (budget * share / remaining < count - 1e-9 and budget < left):
            break
        subsets = torch.combinations(torch.arange(m), k) if k > 1 else torch.arange(m).reshape(m, 1)
        z = torch.zeros(subsets.shape[0], m, dtype=torch.bool)
        z.scatter_(1, subsets, True)
        rows.append(z)
        if len(sizes) == 2:
            rows.append(~z)
        budget -= count
        remaining -= share
        left -= count
        k += 1
    enumerated = torch.cat(rows) if rows else torch.zeros(0, m, dtype=torch.bool)
    strata = torch.arange(k, m // 2 + 1)
    capacity = [math.comb(m, s) // (2 if 2 * s == m else 1) for s in strata.tolist()]
    n_sampled = min(budget, 2 * sum(capacity))
    return enumerated, n_sampled, strata, capacity


class _Strata(NamedTuple):
    """The sampled part of a design, as plain lists (a few entries: cheaper than tensors per
    call): strata (the smaller size ``s`` of each size pair ``(s, m - s)``), pairs of the strata
    drawn whole, the others' expected pairs as cumulative sums, and every stratum's number of
    distinct pairs."""
    sizes: List[int]
    whole: List[int]
    ends: List[float]
    capacity: List[int]


@lru_cache(maxsize=64)
def _fixed_rows(m: int, n_samples: int) -> Tuple[Tensor, int, _Strata]:
    """The seed-independent parts of every design (cached; ``kernel_design`` copies them): the
    full and the empty coalition above the enumerated ones, the number to sample, the strata."""
    enumerated, n_sampled, strata, capacity = _plan(m, n_samples)
    ends = torch.stack([torch.ones(m, dtype=torch.bool), torch.zeros(m, dtype=torch.bool)])
    whole, share = _even_allocation((n_sampled + 1) // 2, strata, m, capacity)
    sampled = _Strata(strata.tolist(), whole.tolist(), [0.0] + share.cumsum(0).tolist(), capacity)
    return torch.cat([ends, enumerated]), n_sampled, sampled


def _even_allocation(n_pairs: int, strata: Tensor, m: int, pairs: List[int]) -> Tuple[Tensor, Tensor]:
    """Expected pairs per stratum, uniform over coalition sizes: a stratum ``(s, m - s)`` holds two
    sizes and gets twice the share of the middle one (``s = m / 2``). A stratum with fewer
    distinct pairs than its share is drawn whole and its excess goes to the others.
    Returns the whole strata's counts (0 for the others) and the others' shares (0 for the whole)."""
    n_sizes = torch.where(2 * strata == m, 1.0, 2.0).to(torch.float64)
    # capped: far beyond any budget, and within a float (C(1100, 550) is not)
    capacity = torch.tensor([min(c, 2 ** 62) for c in pairs], dtype=torch.float64)
    whole = torch.zeros(capacity.shape[0], dtype=torch.long)
    free = torch.ones(capacity.shape[0], dtype=torch.bool)
    while n_pairs > 0 and bool(free.any()):
        share = torch.where(free, n_pairs * n_sizes / float(n_sizes[free].sum()), 0.0)
        full = free & (capacity <= share)
        if not bool(full.any()):
            return whole, share
        whole[full] = capacity[full].long()
        n_pairs -= int(whole[full].sum())
        free &= ~full
    return whole, torch.zeros_like(n_sizes)


@lru_cache(maxsize=16)
def _positions(m: int) -> Tensor:
    """``arange(m)`` as a row (cached: compared with the drawn sizes of every design)."""
    return torch.arange(m)[None, :]


@lru_cache(maxsize=16)
def _bit_values(m: int) -> Tensor:
    """``2^i`` per feature (cached): a coalition of up to 62 features as one integer key."""
    return 2 ** torch.arange(m, dtype=torch.long)


def kernel_weights(z: Tensor) -> Tensor:
    """Weights (S,) of the coalitions of a design ``z`` (S, M): each size's kernel mass spread
    evenly over the design's coalitions of that size (0 for the full and the empty one)."""
    m = z.shape[-1]
    k = z.sum(-1)
    counts = torch.bincount(k, minlength=m + 1).clamp_(min=1)
    return (size_mass(m).to(z.device) / counts)[k]


def _stratum_counts(strata: _Strata, generator: Optional[torch.Generator]) -> List[int]:
    """Pairs per stratum: the whole ones', and the others' expected shares rounded systematically
    with one uniform offset (each gets the floor or the ceiling of its share, the total exact)."""
    u = float(torch.rand((), generator=generator, dtype=torch.float64))
    ends = [math.floor(e + u) for e in strata.ends]
    return [min(w + hi - lo, c) for w, lo, hi, c in zip(strata.whole, ends, ends[1:], strata.capacity)]


@lru_cache(maxsize=32)
def _stratum_pairs(m: int, s: int) -> Tensor:
    """One coalition of each complementary pair of sizes ``(s, m - s)``: every subset of size
    ``s``, or for ``s = m / 2`` those without feature 0 (cached; only for small strata)."""
    middle = 2 * s == m
    subsets = torch.combinations(torch.arange(int(middle), m), s) if s > 1 else torch.arange(
        int(middle), m).reshape(-1, 1)
    return torch.zeros(subsets.shape[0], m, dtype=torch.bool).scatter_(1, subsets, True)


def _distinct_pairs(strata: _Strata, counts: List[int], m: int, generator: Optional[torch.Generator]) -> Tensor:
    """``counts[i]`` distinct uniform coalitions of size ``strata.sizes[i]``, no pair ``{z, ~z}``
    twice: sampling without replacement within each size. A stratum asked for more than an eighth
    of its pairs is a random choice among all of them; the others are drawn at once and the rare
    repeats redrawn."""
    parts, sparse = [], []
    for s, c, c_all in zip(strata.sizes, counts, strata.capacity):
        if c * 8 > c_all:
            parts.append(_stratum_pairs(m, s)[torch.randperm(c_all, generator=generator)[:c]])
        elif c:
            sparse.append((s, c))
    if sparse:
        sizes = [s for s, c in sparse for _ in range(c)]
        size = torch.tensor(sizes)[:, None]
        order = torch.rand(len(sizes), m, generator=generator).argsort(-1)
        z = torch.zeros(len(sizes), m, dtype=torch.bool).scatter_(1, order, _positions(m) < size)
        parts.append(_redraw_repeats(z, sizes, size, generator) if len(sizes) > len(sparse) else z)
    return torch.cat(parts) if len(parts) > 1 else parts[0]


def _redraw_repeats(z: Tensor, sizes: List[int], size: Tensor, generator: Optional[torch.Generator]) -> Tensor:
    """Redraw (in place) the coalitions of ``z`` whose pair ``{z, ~z}`` came earlier too."""
    n, m = z.shape
    middle = [2 * s == m for s in sizes]  # z and ~z have the same size: one pair, one key
    while True:
        if m <= 62:  # the pair's key: the member without feature 0, as an integer
            keys = (z.long() @ _bit_values(m)).tolist()
            seen: set = set()
            redraw = [i for i, k in enumerate(keys)
                      if (2 ** m - 1 - k if middle[i] and k & 1 else k) in seen
                      or seen.add(2 ** m - 1 - k if middle[i] and k & 1 else k)]
        else:
            canon = z ^ (torch.tensor(middle)[:, None] & z[:, :1])
            _, inverse = torch.unique(canon, dim=0, return_inverse=True)
            first = torch.full((n,), n, dtype=torch.long).scatter_reduce_(0, inverse, torch.arange(n), "amin")
            redraw = (first[inverse] != torch.arange(n)).nonzero().reshape(-1).tolist()
        if not redraw:
            return z
        order = torch.rand(len(redraw), m, generator=generator).argsort(-1)
        z[redraw] = torch.zeros(len(redraw), m, dtype=torch.bool).scatter_(
            1, order, _positions(m) < size[redraw])


def kernel_coalitions(m: int, n_samples: int, device=None, generator: Optional[torch.Generator] = None) -> Tensor:
    """The coalitions ``z`` (S, m) bool of a Kernel SHAP design (``kernel_design`` without weights).

    Row 0 is the full coalition and row 1 the empty one (weight 0: the fit enforces them
    exactly); then the enumerated sizes; then the sampled coalitions in complementary pairs (with
    an odd budget the last one is unpaired), stratified by size. ``S = max(n_samples, 2)`` up to
    the ``2^m`` coalitions there are.
    """
    fixed, n_sampled, strata = _fixed_rows(m, int(n_samples))
    z = fixed
    if n_sampled:
        drawn = _distinct_pairs(strata, _stratum_counts(strata, generator), m, generator)
        z = torch.cat([fixed, torch.stack([drawn, ~drawn], 1).reshape(-1, m)[:n_sampled]])
    return z.to(device)


def kernel_design(m: int, n_samples: int, device=None, generator: Optional[torch.Generator] = None
                  ) -> Tuple[Tensor, Tensor]:
    """Coalitions ``z`` (S, m) bool (``kernel_coalitions``) and their kernel weights (S,) float64."""
    z = kernel_coalitions(m, n_samples, device, generator)
    return z, kernel_weights(z)


@lru_cache(maxsize=16)
def _sum_zero_basis(m: int) -> Tensor:
    """Orthonormal basis (m, m - 1) of the vectors whose entries sum to zero (Helmert's)."""
    j = torch.arange(1, m, dtype=torch.float64)
    q = (torch.arange(m, dtype=torch.float64)[:, None] < j).to(torch.float64)  # ones above the diagonal
    q[j.long(), (j - 1).long()] = -j
    return q / torch.sqrt(j * (j + 1))


@lru_cache(maxsize=64)
def design_rank_bound(m: int, n_samples: int) -> int:
    """An upper bound on the rank of ``kernel_design(m, n_samples)``'s centred design.

    The full and the empty coalition centre to zero, and a coalition and its complement to
    opposite rows; enumerated sizes come with their complements and sampled coalitions in
    complementary pairs, so only half the enumerated rows and one per drawn pair add a direction.
    """
    enumerated, n_sampled, _, _ = _plan(m, int(n_samples))
    return enumerated.shape[0] // 2 + (n_sampled + 1) // 2


def constrained_fit(z: Tensor, w: Tensor, y: Tensor, rank_bound: Optional[int] = None) -> Tensor:
    """Shapley-kernel weighted least squares with ``phi_0 = v(empty)`` and efficiency imposed.

    ``z`` (S, M) coalitions with the full one at row 0 and the empty one at row 1, ``w`` (S,)
    weights, ``y`` (G, S) values per example. Returns ``phi`` (G, M) with
    ``phi.sum(-1) == y[:, 0] - y[:, 1]`` exactly. Writing ``phi = delta / M + u`` with
    ``sum(u) = 0`` turns the constraint into a free fit of ``u`` on the row-centred design
    ``z - |z| / M``. Up to 256 features ``u = Q v`` in an orthonormal basis ``Q`` of that subspace
    (then the design is just ``z Q``): small designs in NumPy (``_fit_in_basis``,
    ``solve_in_numpy``), larger ones by Cholesky in torch; a rank-deficient or ill-conditioned
    design (a budget below ``M``), or more features, goes through the pseudo-inverse of the
    centred design (minimum-norm). Either way one factorisation serves all examples.
    ``rank_bound`` (``design_rank_bound``) skips a Cholesky bound to fail.
    """
    m = z.shape[-1]
    full_rank_possible = z.shape[0] - 2 >= m - 1 and (rank_bound is None or rank_bound >= m - 1)
    if 2 <= m <= 256 and solve_in_numpy(z.shape[0], m, y.device):
        phi = _fit_in_basis(*(float64_array(t) for t in (z, w, y)), full_rank_possible)
        return torch.from_numpy(phi).to(y.device)
    z = z.to(torch.float64)
    y = y.to(torch.float64)
    w = w.to(torch.float64)
    k = z.sum(-1)
    v0, delta = y[:, 1:2], y[:, 0:1] - y[:, 1:2]
    if m < 2:
        return delta.expand(y.shape[0], m).clone()
    resid = y - v0 - delta * (k / m)  # (G, S)
    if m <= 256 and full_rank_possible:  # as _fit_in_basis, in torch
        q = _sum_zero_basis(m).to(z.device)
        a = z @ q  # (S, M-1): the centred design in the basis (q's columns sum to zero)
        aw = a * w[:, None]
        chol, info = torch.linalg.cholesky_ex(a.transpose(0, 1) @ aw)
        diag = chol.diagonal()
        if int(info) == 0 and bool(diag.min() > 1e-6 * diag.max()):
            v = torch.cholesky_solve((resid @ aw).transpose(0, 1), chol)  # (M-1, G)
            return delta / m + (q @ v).transpose(0, 1)
    sw = w.sqrt()
    a = sw[:, None] * (z - k[:, None] / m)  # (S, M)
    b = (resid * sw).transpose(0, 1)  # (S, G)
    # the SVD's pseudo-inverse (LAPACK gelsy is faster but not repeatable on rank-deficient designs);
    # paired coalitions make exactly collinear rows: a relative cut-off well above rounding
    u = torch.linalg.pinv(a, rtol=1e-10) @ b
    return delta / m + u.transpose(0, 1)


@lru_cache(maxsize=16)
def _sum_zero_basis_array(m: int) -> np.ndarray:
    """``_sum_zero_basis`` as a NumPy array (cached: read-only, never handed out)."""
    q = _sum_zero_basis(m).numpy().copy()
    q.flags.writeable = False
    return q


def _fit_in_basis(z: np.ndarray, w: np.ndarray, y: np.ndarray, try_cholesky: bool) -> np.ndarray:
    """``constrained_fit`` for 2 to 256 features, in float64 NumPy: the normal equations of the
    design in the sum-zero basis, ``(M - 1)``-square, solved directly where their Cholesky
    factor shows them well-conditioned; a rank-deficient or
    ill-conditioned one (a budget below ``M``) gets the minimum-norm solution from their
    eigendecomposition, leaving out directions below 1e-12 of the largest eigenvalue (1e-6 of
    the design's largest singular value). NumPy because at these sizes the per-operation cost of
    torch, not the arithmetic, is the time (a few microseconds against one).
    """
    m = z.shape[1]
    v0, delta = y[:, 1:2], y[:, 0:1] - y[:, 1:2]
    resid = y - v0 - delta * (z.sum(1) / m)  # (G, S)
    q = _sum_zero_basis_array(m)
    a = z @ q  # (S, M-1): the centred design in the basis (q's columns sum to zero)
    aw = a * w[:, None]
    gram, rhs = a.T @ aw, aw.T @ resid.T  # (M-1, M-1), (M-1, G)
    if try_cholesky:
        try:
            chol = np.linalg.cholesky(gram)
        except np.linalg.LinAlgError:
            chol = None
        if chol is not None and np.diagonal(chol).min() > 1e-6 * np.diagonal(chol).max():
            return delta / m + (q @ np.linalg.solve(gram, rhs)).T
    lam, vec = np.linalg.eigh(gram)
    inv = np.zeros_like(lam)
    keep = lam > 1e-12 * lam[-1]
    inv[keep] = 1.0 / lam[keep]
    return delta / m + (q @ (vec @ (inv[:, None] * (vec.T @ rhs)))).T
