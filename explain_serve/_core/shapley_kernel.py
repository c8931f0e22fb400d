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

from .caching import read_only
from .inputs import float64_array, solution_tensor, solve_in_numpy
from .spd import solve_spd


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
def _fixed_rows(m: int, n_samples: int) -> Tuple[np.ndarray, int, _Strata]:
    """The seed-independent parts of every design (cached, read-only): the full and the empty
    coalition above the enumerated ones, the number to sample, the strata."""
    enumerated, n_sampled, strata, capacity = _plan(m, n_samples)
    ends = np.stack([np.ones(m, dtype=bool), np.zeros(m, dtype=bool)])
    whole, share = _even_allocation((n_sampled + 1) // 2, strata, m, capacity)
    sampled = _Strata(strata.tolist(), whole.tolist(), [0.0] + share.cumsum(0).tolist(), capacity)
    return read_only(np.concatenate([ends, enumerated.numpy()])), n_sampled, sampled


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
def _bit_values(m: int) -> np.ndarray:
    """``2^i`` per feature (cached, read-only): a coalition of up to 62 features as one integer."""
    return read_only(2 ** np.arange(m, dtype=np.int64))


@lru_cache(maxsize=64)
def _size_mass_array(m: int) -> np.ndarray:
    """``size_mass`` as a NumPy array (cached, read-only)."""
    return read_only(size_mass(m).numpy().copy())


def kernel_weights(z: Tensor) -> Tensor:
    """Weights (S,) of the coalitions of a design ``z`` (S, M): each size's kernel mass spread
    evenly over the design's coalitions of that size (0 for the full and the empty one)."""
    m = z.shape[-1]
    k = z.sum(-1)
    counts = torch.bincount(k, minlength=m + 1).clamp_(min=1)
    return (size_mass(m).to(z.device) / counts)[k]


def _kernel_weights_array(z: np.ndarray) -> np.ndarray:
    """``kernel_weights`` of a NumPy design (the same numbers)."""
    m = z.shape[-1]
    k = z.sum(-1)
    return (_size_mass_array(m) / np.maximum(np.bincount(k, minlength=m + 1), 1))[k]


def _stratum_counts(strata: _Strata, u: float) -> Tuple[int, ...]:
    """Pairs per stratum: the whole ones', and the others' expected shares rounded systematically
    with the uniform offset ``u`` (each gets the floor or the ceiling of its share, the total exact)."""
    ends = [math.floor(e + u) for e in strata.ends]
    return tuple(min(w + hi - lo, c) for w, lo, hi, c in zip(strata.whole, ends, ends[1:], strata.capacity))


@lru_cache(maxsize=256)
def _sampling_plan(m: int, n_samples: int, counts: Tuple[int, ...]) -> Tuple[List[Tuple[int, int, int]], np.ndarray]:
    """How ``_distinct_pairs`` draws given pairs per stratum (cached: a design has a few count
    patterns): the strata asked for more than an eighth of their pairs, drawn as a random choice
    among all of them (size, count, pairs), and the sizes of the other draws, one per coalition."""
    strata = _fixed_rows(m, n_samples)[2]
    dense = [(s, c, c_all) for s, c, c_all in zip(strata.sizes, counts, strata.capacity) if c * 8 > c_all]
    sparse = [(s, c) for s, c, c_all in zip(strata.sizes, counts, strata.capacity) if 0 < c * 8 <= c_all]
    sizes = np.array([s for s, c in sparse for _ in range(c)], dtype=np.int64)
    return dense, read_only(sizes)


@lru_cache(maxsize=32)
def _stratum_pairs(m: int, s: int) -> np.ndarray:
    """One coalition of each complementary pair of sizes ``(s, m - s)``: every subset of size
    ``s``, or for ``s = m / 2`` those without feature 0 (cached, read-only; only small strata)."""
    middle = 2 * s == m
    subsets = torch.combinations(torch.arange(int(middle), m), s) if s > 1 else torch.arange(
        int(middle), m).reshape(-1, 1)
    return read_only(torch.zeros(subsets.shape[0], m, dtype=torch.bool).scatter_(1, subsets, True).numpy())


def _uniform_subsets(sizes: np.ndarray, m: int, generator: Optional[torch.Generator],
                     uniforms: Optional[np.ndarray] = None) -> np.ndarray:
    """One uniform subset of ``sizes[i]`` features per row: the features of the ``sizes[i]``
    smallest of ``m`` uniforms per row (given, or drawn from torch's stream, so that
    ``torch.manual_seed`` reproduces them)."""
    if uniforms is None:
        uniforms = torch.rand(sizes.shape[0], m, generator=generator).numpy()
    rank = uniforms.argsort(1, kind="stable").argsort(1, kind="stable")
    return rank < sizes[:, None]


def _distinct_pairs(m: int, n_samples: int, counts: Tuple[int, ...], uniforms: np.ndarray,
                    generator: Optional[torch.Generator]) -> np.ndarray:
    """``counts[i]`` distinct uniform coalitions of the size of stratum ``i``, no pair ``{z, ~z}``
    twice: sampling without replacement within each size. A stratum asked for more than an eighth
    of its pairs is a random choice among all of them; the others are drawn at once from
    ``uniforms`` (``m`` per coalition) and the rare repeats redrawn."""
    dense, sizes = _sampling_plan(m, n_samples, counts)
    parts = [_stratum_pairs(m, s)[torch.randperm(c_all, generator=generator)[:c].numpy()] for s, c, c_all in dense]
    if sizes.shape[0]:
        z = _uniform_subsets(sizes, m, generator, uniforms[:sizes.shape[0] * m].reshape(-1, m))
        parts.append(_redraw_repeats(z, sizes, generator) if sizes.shape[0] > 1 else z)
    return np.concatenate(parts) if len(parts) > 1 else parts[0]


def _pair_keys(z: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """The complementary pair ``{z, ~z}`` of each row as one key (equal keys, equal pairs), and
    whether the row is the pair's member with feature 0 (the other is the key's)."""
    flip = z[:, 0].copy() if z.shape[1] else np.zeros(z.shape[0], dtype=bool)
    canon = z ^ flip[:, None]
    if z.shape[1] <= 62:
        return canon @ _bit_values(z.shape[1]), flip
    return np.unique(canon, axis=0, return_inverse=True)[1].reshape(-1), flip


def _redraw_repeats(z: np.ndarray, sizes: np.ndarray, generator: Optional[torch.Generator]) -> np.ndarray:
    """Redraw (in place) the coalitions of ``z`` whose pair ``{z, ~z}`` came earlier too."""
    while True:
        keys = _pair_keys(z)[0]
        if z.shape[1] <= 62 and len(set(keys.tolist())) == z.shape[0]:  # the usual case, at once
            return z
        first = np.unique(keys, return_index=True)[1]
        if first.shape[0] == z.shape[0]:
            return z
        redraw = np.ones(z.shape[0], dtype=bool)
        redraw[first] = False
        redraw = np.flatnonzero(redraw)
        z[redraw] = _uniform_subsets(sizes[redraw], z.shape[1], generator)


def kernel_coalitions_array(m: int, n_samples: int, generator: Optional[torch.Generator] = None) -> np.ndarray:
    """``kernel_coalitions`` as a NumPy array (the same draw)."""
    return _kernel_draw(m, int(n_samples), generator)[0]


def kernel_design_folded(m: int, n_samples: int, generator: Optional[torch.Generator] = None
                         ) -> Tuple[np.ndarray, "_Folded"]:
    """``kernel_coalitions_array`` and its kernel weights folded to pairs (``_Folded``, cached per
    count pattern: ``kernel_fit`` needs nothing else of the design)."""
    z, counts = _kernel_draw(m, int(n_samples), generator)
    return z, _layout_folded(m, int(n_samples), counts)


def _kernel_draw(m: int, n_samples: int, generator: Optional[torch.Generator]) -> Tuple[np.ndarray, Tuple[int, ...]]:
    """A design and its pairs per stratum."""
    fixed, n_sampled, strata = _fixed_rows(m, n_samples)
    if not n_sampled:
        return fixed.copy(), ()
    # one draw: the offset of the strata's counts, then m uniforms per pair (those drawn at random)
    uniforms = torch.rand(1 + (n_sampled + 1) // 2 * m, generator=generator).numpy()
    counts = _stratum_counts(strata, float(uniforms[0]))
    drawn = _distinct_pairs(m, n_samples, counts, uniforms[1:], generator)
    z = np.empty((fixed.shape[0] + 2 * drawn.shape[0], m), dtype=bool)
    z[:fixed.shape[0]] = fixed
    z[fixed.shape[0]::2] = drawn
    np.logical_not(drawn, out=z[fixed.shape[0] + 1::2])
    return z[:fixed.shape[0] + n_sampled], counts


def kernel_coalitions(m: int, n_samples: int, device=None, generator: Optional[torch.Generator] = None) -> Tensor:
    """The coalitions ``z`` (S, m) bool of a Kernel SHAP design (``kernel_design`` without weights).

    Row 0 is the full coalition and row 1 the empty one (weight 0: the fit enforces them
    exactly); then the enumerated sizes; then the sampled coalitions in complementary pairs (with
    an odd budget the last one is unpaired), stratified by size. ``S = max(n_samples, 2)`` up to
    the ``2^m`` coalitions there are. Drawn in NumPy (tiny arrays: torch's per-operation cost
    would be the time) from torch's random stream.
    """
    return torch.from_numpy(kernel_coalitions_array(m, n_samples, generator)).to(device)


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


def constrained_fit(z: Tensor, w: Optional[Tensor], y: Tensor, rank_bound: Optional[int] = None) -> Tensor:
    """Shapley-kernel weighted least squares with ``phi_0 = v(empty)`` and efficiency imposed.

    ``z`` (S, M) coalitions with the full one at row 0 and the empty one at row 1, ``w`` (S,)
    weights (None: ``kernel_weights(z)``), ``y`` (G, S) values per example. Returns ``phi``
    (G, M) with ``phi.sum(-1) == y[:, 0] - y[:, 1]`` exactly. Writing ``phi = delta / M + u``
    with ``sum(u) = 0`` turns the constraint into a free fit of ``u`` on the row-centred design
    ``z - |z| / M``. Up to 256 features small designs are fitted in NumPy (``_fit_arrays``,
    ``solve_in_numpy``); larger ones by Cholesky in an orthonormal basis ``Q`` of the sum-zero
    subspace in torch, and a rank-deficient or ill-conditioned design (a budget below ``M``), or
    more features, through the pseudo-inverse of the centred design (minimum-norm). Either way
    one factorisation serves all examples. ``rank_bound`` (``design_rank_bound``) skips a
    Cholesky bound to fail in torch (the NumPy fit counts the design's directions itself).
    """
    m = z.shape[-1]
    if 2 <= m <= 256 and solve_in_numpy(z.shape[0], m, y.device):
        zb = z.detach().cpu().numpy()
        phi = _fit_arrays(zb if zb.dtype == np.bool_ else zb > 0.5,
                          None if w is None else float64_array(w), float64_array(y))
        return torch.from_numpy(phi).to(y.device)
    w = kernel_weights(z.bool()) if w is None else w
    full_rank_possible = z.shape[0] - 2 >= m - 1 and (rank_bound is None or rank_bound >= m - 1)
    z = z.to(torch.float64)
    y = y.to(torch.float64)
    w = w.to(torch.float64)
    k = z.sum(-1)
    v0, delta = y[:, 1:2], y[:, 0:1] - y[:, 1:2]
    if m < 2:
        return delta.expand(y.shape[0], m).clone()
    resid = y - v0 - delta * (k / m)  # (G, S)
    if m <= 256 and full_rank_possible:  # as _fit_arrays, in torch
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


def kernel_fit(z: Tensor, y: Tensor) -> Tensor:
    """``constrained_fit`` of a ``kernel_coalitions`` design ``z`` with its kernel weights: small
    ones in NumPy with the pairs of the design's fixed layout (``_layout_fold``, cached)."""
    s, m = z.shape
    if 2 <= m <= 256 and solve_in_numpy(s, m, y.device):
        fold = _layout_fold(m, s)  # the layout of n_samples = s coalitions is this design's
        phi = _fit_arrays(z.numpy() if z.device.type == "cpu" else z.cpu().numpy(), None, float64_array(y), fold)
        return torch.from_numpy(phi).to(y.device)
    return constrained_fit(z, None, y, rank_bound=design_rank_bound(m, s))


def kernel_fit_folded(z: np.ndarray, y: Tensor, folded: _Folded) -> Tensor:
    """``kernel_fit`` of a design from ``kernel_design_folded`` (``z`` and ``folded``), ``y`` on the
    CPU: nothing of the weights or pairs left to compute."""
    s, m = z.shape
    if 2 <= m <= 256 and solve_in_numpy(s, m, y.device):
        return solution_tensor(_fit_folded(z, float64_array(y), folded), y)  # y's dtype: no cast after
    return kernel_fit(torch.from_numpy(z), y)


@lru_cache(maxsize=16)
def _sum_zero_basis_array(m: int) -> np.ndarray:
    """``_sum_zero_basis`` as a NumPy array (cached: read-only, never handed out)."""
    return read_only(_sum_zero_basis(m).numpy().copy())


class _Fold(NamedTuple):
    """Rows of a design as complementary pairs: the representative row of each pair (D,); the
    rows in a pair (R,: all but the full and the empty coalition), their pair (R,), and their
    ``sign`` (R,), +1 for the representative (or a repeat of it), -1 for its complement.
    Centred, a coalition and its complement are opposite rows."""
    rep: np.ndarray
    rows: np.ndarray
    group: np.ndarray
    sign: np.ndarray


def _as_fold(*arrays: np.ndarray) -> _Fold:
    return _Fold(*(read_only(a) for a in arrays))


def _fold_of(z: np.ndarray) -> _Fold:
    """The pairs of any design ``z`` (S, M) bool, found by their keys; the full/empty pair (a
    zero row once centred) is left out."""
    keys, flip = _pair_keys(z)
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    inverse = inverse.reshape(-1)
    proper = z[first].any(1) & ~z[first].all(1)
    renumber = np.cumsum(proper) - 1
    rows = np.flatnonzero(proper[inverse])
    sign = np.where(flip[rows] == flip[first][inverse[rows]], 1.0, -1.0)
    return _as_fold(first[proper], rows, renumber[inverse[rows]], sign)


@lru_cache(maxsize=64)
def _layout_fold(m: int, n_samples: int) -> _Fold:
    """The pairs of every ``kernel_coalitions(m, n_samples)`` design (cached): the layout is fixed
    (the enumerated rows, then each drawn coalition followed by its complement), so they are
    found once, on the fixed rows."""
    fixed, n_sampled, _ = _fixed_rows(m, n_samples)
    head = _fold_of(fixed)
    j = np.arange(n_sampled)
    pairs = head.rep.shape[0] + j // 2
    return _as_fold(np.concatenate([head.rep, fixed.shape[0] + 2 * np.arange((n_sampled + 1) // 2)]),
                    np.concatenate([head.rows, fixed.shape[0] + j]), np.concatenate([head.group, pairs]),
                    np.concatenate([head.sign, np.where(j % 2 == 0, 1.0, -1.0)]))


class _Folded(NamedTuple):
    """A design's weighted fit folded to one row per complementary pair: ``|z| / M`` per row (S,),
    the pairs' representative rows (D,) and weights (D,), and how the rows' residuals make the
    pairs' targets (see ``_fit_folded``): row ``rows[i]`` adds ``coef[i]`` times its residual to
    pair ``group[i]``."""
    frac: np.ndarray
    rep: np.ndarray
    weight: np.ndarray
    rows: np.ndarray
    group: np.ndarray
    coef: np.ndarray
    to_target: Optional[np.ndarray] = None  # (S, D): the pairs' targets as y @ to_target (cached layouts)


# a cached layout keeps its (S, D) target map up to this many entries
_TARGET_MAP_MAX = 1 << 16


def _target_map(folded: _Folded) -> np.ndarray:
    """``(S, D)``: the pairs' targets of ``_fit_folded`` are linear in ``y``. Row ``rows[i]``'s
    residual ``y[rows[i]] - y[1] - (y[0] - y[1]) frac[rows[i]]`` (``y[0]`` the full coalition,
    ``y[1]`` the empty one) adds ``coef[i]`` times itself to pair ``group[i]``."""
    d = folded.rep.shape[0]
    k = np.zeros((folded.frac.shape[0], d))
    f = folded.frac[folded.rows]
    np.add.at(k, (folded.rows, folded.group), folded.coef)
    np.add.at(k, (np.zeros_like(folded.rows), folded.group), -folded.coef * f)
    np.add.at(k, (np.ones_like(folded.rows), folded.group), -folded.coef * (1.0 - f))
    return k


def _fold_weights(sizes: np.ndarray, w: Optional[np.ndarray], fold: _Fold, m: int) -> _Folded:
    """``_Folded`` of a design with coalition sizes ``sizes`` (S,), weights ``w`` (None: the
    kernel's, positive but for the full and the empty coalition) and pairs ``fold``; weightless
    pairs are left out."""
    if w is None:
        w = _size_mass_array(m)[sizes] / np.maximum(np.bincount(sizes, minlength=m + 1), 1)[sizes]
    rep, rows, group, sign = fold
    w = w[rows]
    weight = np.bincount(group, weights=w, minlength=rep.shape[0])
    if not (weight > 0).all():
        keep = weight > 0
        inside = keep[group]
        rep, weight, rows, w, sign = rep[keep], weight[keep], rows[inside], w[inside], sign[inside]
        group = (np.cumsum(keep) - 1)[group[inside]]
    return _Folded(sizes / m, rep, weight, rows, group, w * sign / weight[group])


@lru_cache(maxsize=256)
def _layout_folded(m: int, n_samples: int, counts: Tuple[int, ...]) -> _Folded:
    """``_Folded`` of every ``kernel_coalitions(m, n_samples)`` design with pairs ``counts`` per
    stratum (cached, read-only): the layout fixes every row's size, hence the kernel weights."""
    fixed, n_sampled, _ = _fixed_rows(m, n_samples)
    sizes = fixed.sum(1)
    if n_sampled:
        dense, sparse = _sampling_plan(m, n_samples, counts)
        drawn = np.concatenate([np.repeat([s for s, _, _ in dense], [c for _, c, _ in dense]), sparse]).astype(np.int64)
        sizes = np.concatenate([sizes, np.stack([drawn, m - drawn], 1).reshape(-1)[:n_sampled]])
    folded = _Folded(*(read_only(a) for a in _fold_weights(sizes, None, _layout_fold(m, n_samples), m)[:6]))
    if folded.frac.shape[0] * folded.rep.shape[0] <= _TARGET_MAP_MAX:
        folded = folded._replace(to_target=read_only(_target_map(folded)))
    return folded


def _fit_arrays(z: np.ndarray, w: Optional[np.ndarray], y: np.ndarray, fold: Optional[_Fold] = None) -> np.ndarray:
    """``constrained_fit`` for 2 to 256 features in float64 NumPy, ``z`` bool, ``w`` None for the
    kernel weights, ``fold`` the design's pairs where known (else found): ``_fit_folded``."""
    return _fit_folded(z, y, _fold_weights(z.sum(1), w, _fold_of(z) if fold is None else fold, z.shape[1]))


def _fit_folded(z: np.ndarray, y: np.ndarray, folded: _Folded) -> np.ndarray:
    """The constrained fit of ``y`` (G, S) on the design ``z`` (S, M) bool folded to one row per
    complementary pair ``{z, ~z}``: centred, ``z`` and ``~z`` are opposite rows ``a`` and ``-a``,
    so their weighted squares ``w1 (r1 - a u)^2 + w2 (r2 + a u)^2`` are ``(w1 + w2) (R - a u)^2``
    plus a constant, with ``R = (w1 r1 - w2 r2) / (w1 + w2)`` (repeats fold alike).
    With ``D >= M - 1`` folded rows the normal equations in the sum-zero basis, ``(M - 1)``-square;
    with fewer (a budget below ``M``) the folded rows can be fitted exactly, and the minimum-norm
    exact fit lies in their span: ``u = A^T (A A^T)^-1 R``, ``D``-square and independent of the
    weights. Either is solved where its Cholesky factor shows it well-conditioned
    (``solve_spd``); otherwise the minimum-norm solution from the eigendecomposition of the
    normal equations, leaving out directions below 1e-12 of the largest eigenvalue (1e-6 of the
    design's largest singular value). NumPy because at these sizes the per-operation cost of
    torch, not the arithmetic, is the time.
    """
    m = z.shape[1]
    delta = y[:, 0:1] - y[:, 1:2]
    if folded.to_target is not None:  # a cached layout: one product
        target = y @ folded.to_target  # (G, D): the pairs' targets
    else:
        resid = y[:, folded.rows] - (y[:, 1:2] + delta * folded.frac[folded.rows])  # (G, R)
        target = np.zeros((folded.rep.shape[0], y.shape[0]))
        np.add.at(target, folded.group, (resid * folded.coef).T)  # (D, G)
        target = target.T
    rows = z[folded.rep] - folded.frac[folded.rep, None]  # (D, M): the centred representatives
    if rows.shape[0] < m - 1:
        coef = solve_spd(rows @ rows.T, target.T)
        if coef is not None:
            return delta / m + (rows.T @ coef).T
    weight = folded.weight
    q = _sum_zero_basis_array(m)
    a = rows @ q  # (D, M-1): the centred rows in the basis (q's columns sum to zero)
    aw = a * weight[:, None]
    gram, rhs = a.T @ aw, aw.T @ target.T  # (M-1, M-1), (M-1, G)
    if rows.shape[0] >= m - 1:
        v = solve_spd(gram, rhs)
        if v is not None:
            return delta / m + (q @ v).T
    lam, vec = np.linalg.eigh(gram)
    inv = np.zeros_like(lam)
    keep = lam > 1e-12 * lam[-1]
    inv[keep] = 1.0 / lam[keep]
    return delta / m + (q @ (vec @ (inv[:, None] * (vec.T @ rhs)))).T
