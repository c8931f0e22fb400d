"""Agreement between two explanations of one example, and between two global importance vectors.

Pure numpy, no model: the audit, its report and the comparison viewer all compute agreement here,
so a number on a page is the number in ``summary.json``. Each metric lies in [-1, 1] or [0, 1] and
higher means the two explanations agree more (``HIGHER_IS_BETTER``).

- ``spearman``: Pearson correlation of the two vectors' ranks (ties get their average rank).
- ``kendall``: Kendall's tau-b (concordant minus discordant pairs, corrected for ties), computed in
  O(n log^2 n) by counting inversions, so a 150k-pixel image costs milliseconds.
- ``top_k_jaccard``: |T_a & T_b| / |T_a | T_b| where T_x holds the k entries of largest |x|
  (ties broken by position, so the result is deterministic).
- ``sign_agreement``: share of A's top-k entries where B's attribution has the same sign.
- ``cosine``: a . b / (|a| |b|).
- ``ndcg_at_k`` (global, per feature): DCG@k of B's ranking with A's importances as gains, divided by
  DCG@k of A's own ranking, DCG@k = sum_{r=1..k} gain(r) / log2(r + 1) (SageMaker Clarify's
  attribution drift; 1 = same top-k order).

Undefined values (a constant vector has no ranks, a zero vector no direction) are ``nan``; callers
report how many examples were undefined instead of inventing a value.
"""
from __future__ import annotations

from typing import Dict

import numpy as np

#: Per-example metrics, in report order.
PER_EXAMPLE = ("spearman", "kendall", "top_k_jaccard", "sign_agreement", "cosine")

#: Direction of every agreement metric: all of them grow with agreement.
HIGHER_IS_BETTER = {name: True for name in PER_EXAMPLE + ("ndcg_at_k", "prediction_agreement")}

__all__ = [
    "PER_EXAMPLE",
    "HIGHER_IS_BETTER",
    "agreement",
    "rankdata",
    "spearman",
    "kendall",
    "top_k",
    "top_k_jaccard",
    "sign_agreement",
    "cosine",
    "ndcg_at_k",
]


def _flat(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float64).reshape(-1)


def _pair(a, b) -> tuple:
    a, b = _flat(a), _flat(b)
    if a.shape != b.shape:
        raise ValueError(f"cannot compare explanations of {a.size} and {b.size} entries")
    return a, b


def rankdata(x) -> np.ndarray:
    """Ranks 1..n, tied values sharing their average rank."""
    x = _flat(x)
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    starts = np.r_[True, sorted_x[1:] != sorted_x[:-1]]
    group = np.cumsum(starts) - 1
    first = np.flatnonzero(starts)
    last = np.r_[first[1:], x.size] - 1
    average = (first + last) / 2.0 + 1.0
    ranks = np.empty(x.size)
    ranks[order] = average[group]
    return ranks


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean()
    b = b - b.mean()
    denominator = np.sqrt((a * a).sum() * (b * b).sum())
    if denominator == 0:
        return float("nan")
    return float(np.clip((a * b).sum() / denominator, -1.0, 1.0))


def spearman(a, b) -> float:
    """Spearman's rho: Pearson correlation of average ranks; nan if either side is constant."""
    a, b = _pair(a, b)
    if a.size < 2:
        return float("nan")
    return _pearson(rankdata(a), rankdata(b))


def _dense_ranks(x: np.ndarray) -> np.ndarray:
    return np.unique(x, return_inverse=True)[1].reshape(-1)


def _tied_pairs(x: np.ndarray) -> int:
    counts = np.unique(x, return_counts=True)[1].astype(np.int64)
    return int((counts * (counts - 1) // 2).sum())


def _inversions(values: np.ndarray) -> int:
    """Pairs i < j with values[i] > values[j], by a vectorized bottom-up merge sort."""
    arr = values.astype(np.int64)
    n = arr.size
    span = int(arr.max()) + 1 if n else 1
    position = np.arange(n)
    total = 0
    width = 1
    while width < n:
        pair = position // (2 * width)
        left = (position // width) % 2 == 0
        keys = pair * span + arr
        left_keys = keys[left]  # each left block is sorted and pairs ascend, so this is sorted
        right_pair, right_vals = pair[~left], arr[~left]
        pair_end = np.searchsorted(left_keys, right_pair * span + span, side="left")
        not_greater = np.searchsorted(left_keys, right_pair * span + right_vals, side="right")
        total += int((pair_end - not_greater).sum())
        arr = np.sort(keys) - pair * span  # merge: each pair keeps its positions, values sorted within
        width *= 2
    return total


def kendall(a, b) -> float:
    """Kendall's tau-b; nan if either side is constant."""
    a, b = _pair(a, b)
    n = a.size
    if n < 2:
        return float("nan")
    ra, rb = _dense_ranks(a), _dense_ranks(b)
    order = np.lexsort((rb, ra))  # by a, ties in a by b: ties are never counted as discordant
    discordant = _inversions(rb[order])
    pairs = n * (n - 1) // 2
    ties_a, ties_b = _tied_pairs(ra), _tied_pairs(rb)
    ties_both = _tied_pairs(ra.astype(np.int64) * (int(rb.max()) + 1) + rb)
    if ties_a == pairs or ties_b == pairs:
        return float("nan")
    concordant_minus_discordant = pairs - ties_a - ties_b + ties_both - 2 * discordant
    tau = concordant_minus_discordant / np.sqrt(float(pairs - ties_a) * float(pairs - ties_b))
    return float(np.clip(tau, -1.0, 1.0))


def top_k(x, k: int) -> np.ndarray:
    """Indices of the k entries of largest absolute value (ties: lower index first)."""
    x = _flat(x)
    k = max(1, min(int(k), x.size))
    return np.argsort(-np.abs(x), kind="mergesort")[:k]


def top_k_jaccard(a, b, k: int) -> float:
    """Jaccard overlap of the two top-k sets by absolute value."""
    a, b = _pair(a, b)
    ta, tb = set(top_k(a, k).tolist()), set(top_k(b, k).tolist())
    return len(ta & tb) / len(ta | tb)


def sign_agreement(a, b, k: int) -> float:
    """Share of A's top-k entries (by |a|) where B's attribution has the same sign (0 matches 0)."""
    a, b = _pair(a, b)
    index = top_k(a, k)
    return float(np.mean(np.sign(a[index]) == np.sign(b[index])))


def cosine(a, b) -> float:
    """Cosine similarity; nan if either vector is zero."""
    a, b = _pair(a, b)
    denominator = np.linalg.norm(a) * np.linalg.norm(b)
    if denominator == 0:
        return float("nan")
    return float(np.clip(a @ b / denominator, -1.0, 1.0))


def agreement(a, b, k: int) -> Dict[str, float]:
    """Every per-example metric (``PER_EXAMPLE``) between explanations ``a`` and ``b``."""
    a, b = _pair(a, b)
    return {
        "spearman": spearman(a, b),
        "kendall": kendall(a, b),
        "top_k_jaccard": top_k_jaccard(a, b, k),
        "sign_agreement": sign_agreement(a, b, k),
        "cosine": cosine(a, b),
    }


def _dcg(gains: np.ndarray, ranking: np.ndarray, k: int) -> float:
    top = gains[ranking[:k]]
    return float((top / np.log2(np.arange(2, top.size + 2))).sum())


def ndcg_at_k(importance_a, importance_b, k: int) -> float:
    """DCG@k of B's ranking with A's importances as gains over DCG@k of A's ranking (1 = same order)."""
    gains, other = _pair(importance_a, importance_b)
    if np.any(gains < 0):
        raise ValueError("ndcg_at_k takes non-negative importances (mean absolute attributions)")
    k = max(1, min(int(k), gains.size))
    ideal = _dcg(gains, np.argsort(-gains, kind="mergesort"), k)
    if ideal == 0:
        return float("nan")
    return _dcg(gains, np.argsort(-other, kind="mergesort"), k) / ideal
