"""Small symmetric positive definite solves in float64 NumPy, checked by their Cholesky factor.

The surrogate fits of Lime and Kernel SHAP solve normal equations of a few dozen unknowns per
call; at that size NumPy's per-call cost, not the arithmetic, is the time, so the factor that
checks the conditioning also serves the solve (two triangular solves) instead of a second
factorisation. A system whose factor shows it rank-deficient or ill-conditioned (its smallest
diagonal entry at most 1e-6 of its largest: an eigenvalue ratio near 1e-12) is left to the
caller's minimum-norm fallback.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

_MIN_DIAGONAL_RATIO = 1e-6


def solve_spd(gram: np.ndarray, rhs: np.ndarray) -> Optional[np.ndarray]:
    """``gram^-1 rhs`` for a well-conditioned symmetric positive definite ``gram`` (..., n, n)
    and ``rhs`` (..., n, k); None where the Cholesky factor of any of them fails the check."""
    if gram.shape[-1] == 0:
        return np.zeros(rhs.shape)
    try:
        chol = np.linalg.cholesky(gram)
    except np.linalg.LinAlgError:
        return None
    diag = np.diagonal(chol, axis1=-2, axis2=-1)
    if not (diag.min(-1) > _MIN_DIAGONAL_RATIO * diag.max(-1)).all():
        return None
    return np.linalg.solve(gram, rhs)
