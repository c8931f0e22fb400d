"""Quadrature rules on [0, 1] for path methods (Integrated Gradients and its layer/neuron forms).

``nodes_and_weights(method, n)`` returns the points ``alpha_k`` and weights ``w_k`` such that
``integral_0^1 f(a) da ~= sum_k w_k f(alpha_k)``.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Tuple

import numpy as np

from .errors import AttributionArgumentError

METHODS = ("riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid", "gausslegendre")


@lru_cache(maxsize=256)
def nodes_and_weights(method: str, n_steps: int) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    """Cached: rules depend only on (method, n_steps), and Gauss-Legendre nodes cost ~0.5 ms."""
    return tuple(map(float, _nodes(method, n_steps)[0])), tuple(map(float, _nodes(method, n_steps)[1]))


def _nodes(method: str, n_steps: int):
    if n_steps < 1:
        raise AttributionArgumentError(f"n_steps must be at least 1, got {n_steps}")
    if method == "gausslegendre":
        x, w = np.polynomial.legendre.leggauss(n_steps)
        return list(0.5 * (1.0 + x)), list(0.5 * w)
    if method == "riemann_trapezoid":
        # Captum-compatible: end points at 0 and 1 with weights 1/n (halved at both ends), so the
        # weights sum to (n-1)/n rather than 1; kept so that results equal Captum's.
        if n_steps < 2:
            raise AttributionArgumentError("riemann_trapezoid needs n_steps >= 2")
        weights = [1.0 / n_steps] * n_steps
        weights[0] = weights[-1] = 0.5 / n_steps
        return list(np.linspace(0.0, 1.0, n_steps)), weights
    weights = [1.0 / n_steps] * n_steps
    if method == "riemann_left":
        return list(np.linspace(0.0, 1.0 - 1.0 / n_steps, n_steps)), weights
    if method == "riemann_right":
        return list(np.linspace(1.0 / n_steps, 1.0, n_steps)), weights
    if method == "riemann_middle":
        half = 0.5 / n_steps
        return list(np.linspace(half, 1.0 - half, n_steps)), weights
    raise AttributionArgumentError(f"unknown integration method {method!r}; choose one of {', '.join(METHODS)}")
