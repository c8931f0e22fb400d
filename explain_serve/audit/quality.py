"""How good one version's explanation of one example is, each metric with its direction.

- ``abs_delta`` (lower is better): |convergence delta| as the method returns it (path methods:
  completeness error ``sum(attributions) - (f(x) - f(baseline))``); absent for other methods.
- ``infidelity`` (lower is better): ``explain_serve.metrics.infidelity`` with Gaussian perturbations
  of standard deviation ``0.1 * mean|x|``, scale-normalized, ``INFIDELITY_SAMPLES`` draws; needs
  the model in-process (image and tabular).
- ``sensitivity`` (lower is better): ``explain_serve.metrics.sensitivity_max`` of the served
  explanation under uniform perturbations of radius ``0.02 * mean|x|``, ``SENSITIVITY_SAMPLES`` draws
  (image and tabular).
- ``deletion_auc`` (lower is better): remove features (set to 0, text tokens to padding) in order of
  decreasing attribution, in ``DELETION_STEPS`` equal steps, and average the target's probability over
  the steps (trapezoid rule on [0, 1]); a faithful explanation makes the score fall fast.

Random draws are seeded per example (``seed + index``), so a number does not depend on batching.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Dict, Optional

import numpy as np
import torch
from torch import Tensor

from ..metrics import infidelity, sensitivity_max
from ..serving.methods import seeded

INFIDELITY_SAMPLES = 16
SENSITIVITY_SAMPLES = 4
DELETION_STEPS = 10

#: Direction of every quality metric: all measure an error or a remaining score.
HIGHER_IS_BETTER = {"abs_delta": False, "infidelity": False, "sensitivity": False, "deletion_auc": False}
QUALITY = tuple(HIGHER_IS_BETTER)


def _scale(x: Tensor) -> float:
    return float(x.abs().double().mean()) or 1.0


def deletion_auc(probabilities: Callable[[Tensor], Tensor], x: Tensor, attr: Tensor, target: int, fill: float) -> float:
    """Mean target probability while removing features in order of decreasing attribution."""
    flat_x = x.reshape(-1)
    order = torch.argsort(attr.reshape(-1).double(), descending=True, stable=True)
    n = flat_x.numel()
    rows = []
    for step in range(DELETION_STEPS + 1):
        row = flat_x.clone()
        row[order[: round(step * n / DELETION_STEPS)]] = fill
        rows.append(row.reshape(x.shape))
    scores = probabilities(torch.stack(rows))[:, target].double().numpy()
    return float(((scores[1:] + scores[:-1]) / 2).mean())


def _infidelity(forward: Callable, x: Tensor, attr: Tensor, target: int, seed: int) -> float:
    sigma = 0.1 * _scale(x)

    def perturb(inputs: Tensor):
        noise = torch.randn_like(inputs) * sigma
        return noise, inputs - noise

    with seeded(seed):
        value = infidelity(forward, perturb, x[None].float(), attr[None].to(x.dtype).float(), target=target,
                           n_perturb_samples=INFIDELITY_SAMPLES, normalize=True)
    return float(value[0])


def _sensitivity(explain: Callable[[Tensor], Tensor], x: Tensor, attr: Tensor, seed: int) -> float:
    radius = 0.02 * _scale(x)

    def perturb(inputs: Tensor) -> Tensor:
        return inputs + (torch.rand_like(inputs) * 2 - 1) * radius

    def explanation(inputs: Tensor) -> Tensor:
        if inputs.shape[0] == 1 and torch.equal(inputs[0], x):
            return attr[None].double()  # the explanation already computed
        return explain(inputs)

    with seeded(seed):
        value = sensitivity_max(explanation, x[None], perturb_func=perturb, n_perturb_samples=SENSITIVITY_SAMPLES)
    return float(value[0])


def quality(source, kind: str, x: Optional[Tensor], attr: Tensor, target: int, delta: Any,
            explain: Callable[[Tensor], Tensor], seed: int) -> Dict[str, Optional[float]]:
    """Every quality metric of one explanation; ``None`` where it does not apply or cannot be computed."""
    out: Dict[str, Optional[float]] = {name: None for name in QUALITY}
    if delta is not None:
        d = np.abs(np.asarray(delta, dtype=np.float64)).mean()
        out["abs_delta"] = float(d) if math.isfinite(d) else None
    if x is None:
        return out
    if kind == "text":
        if source.pad_id is not None:
            out["deletion_auc"] = deletion_auc(source.probabilities, x, attr, target, source.pad_id)
        return out
    x = x.float()
    out["deletion_auc"] = deletion_auc(source.probabilities, x, attr, target, 0.0)
    if source.forward is not None:
        out["infidelity"] = _infidelity(source.forward, x, attr, target, seed)
    out["sensitivity"] = _sensitivity(explain, x, attr, seed + 1)
    return out
