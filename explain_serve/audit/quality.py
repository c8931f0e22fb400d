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

Random draws are seeded per example (``seed + index``), so a number does not depend on batching
or on how a Ray run splits the data.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from ..metrics import infidelity, sensitivity_max

INFIDELITY_SAMPLES = 16
SENSITIVITY_SAMPLES = 4
DELETION_STEPS = 10

#: Direction of every quality metric: all measure an error or a remaining score.
HIGHER_IS_BETTER = {"abs_delta": False, "infidelity": False, "sensitivity": False, "deletion_auc": False}
QUALITY = tuple(HIGHER_IS_BETTER)


def _scale(x: Tensor) -> Tensor:
    """Per-example perturbation scale: mean |x| over the example's entries (1 where that is 0)."""
    m = x.abs().double().reshape(x.shape[0], -1).mean(1)
    return torch.where(m > 0, m, torch.ones_like(m)).reshape(-1, *([1] * (x.dim() - 1)))


def _per_example_noise(seeds: Sequence[int], like: Tensor, draw: str) -> Tensor:
    """Noise for inputs whose examples are repeated consecutively, each example from its own seed."""
    k = like.shape[0] // len(seeds)
    parts = []
    for seed in seeds:
        gen = torch.Generator().manual_seed(int(seed))
        shape = (k, *like.shape[1:])
        parts.append(torch.randn(shape, generator=gen, dtype=torch.float64) if draw == "normal"
                     else torch.rand(shape, generator=gen, dtype=torch.float64) * 2 - 1)
    return torch.cat(parts).to(like.dtype)


def deletion_auc(probabilities: Callable[[Tensor], Tensor], x: Tensor, attr: Tensor, targets: Sequence[int],
                 fill: float) -> List[float]:
    """Per example: mean target probability while removing features in order of decreasing attribution.

    ``x`` and ``attr`` are batches of one shape; all steps of all examples go in one forward.
    """
    n_ex = x.shape[0]
    flat_x = x.reshape(n_ex, -1)
    n = flat_x.shape[1]
    order = torch.argsort(attr.reshape(n_ex, -1).double(), dim=1, descending=True, stable=True)
    rows = flat_x.repeat_interleave(DELETION_STEPS + 1, dim=0)
    for e in range(n_ex):
        for step in range(1, DELETION_STEPS + 1):
            rows[e * (DELETION_STEPS + 1) + step, order[e, : round(step * n / DELETION_STEPS)]] = fill
    probs = probabilities(rows.reshape(-1, *x.shape[1:])).double()
    scores = probs[torch.arange(rows.shape[0]), torch.tensor(targets).repeat_interleave(DELETION_STEPS + 1)]
    scores = scores.reshape(n_ex, DELETION_STEPS + 1).numpy()
    return ((scores[:, 1:] + scores[:, :-1]) / 2).mean(1).tolist()


def _infidelity(forward: Callable, x: Tensor, attr: Tensor, targets: Sequence[int], seeds: Sequence[int]) -> List[float]:
    sigma = 0.1 * _scale(x).repeat_interleave(INFIDELITY_SAMPLES, dim=0).to(x.dtype)

    def perturb(inputs: Tensor):
        noise = _per_example_noise(seeds, inputs, "normal") * sigma
        return noise, inputs - noise

    value = infidelity(forward, perturb, x, attr.to(x.dtype), target=list(targets),
                       n_perturb_samples=INFIDELITY_SAMPLES, normalize=True)
    return value.double().tolist()


def _sensitivity(explain: Callable[..., Tensor], x: Tensor, attr: Tensor, targets: Sequence[int],
                 seeds: Sequence[int]) -> List[float]:
    radius = 0.02 * _scale(x).repeat_interleave(SENSITIVITY_SAMPLES, dim=0).to(x.dtype)

    def perturb(inputs: Tensor) -> Tensor:
        return inputs + _per_example_noise(seeds, inputs, "uniform") * radius

    def explanation(inputs: Tensor, target) -> Tensor:
        if inputs.shape == x.shape and torch.equal(inputs, x):
            return attr.double()  # the explanations already computed
        return explain(inputs, target)

    value = sensitivity_max(explanation, x, perturb_func=perturb, n_perturb_samples=SENSITIVITY_SAMPLES,
                            target=list(targets))
    return value.double().tolist()


def quality(source, kind: str, xs: Sequence[Optional[Tensor]], attrs: Sequence[Tensor], targets: Sequence[int],
            deltas: Sequence[Any], explain: Callable[..., Tensor], seeds: Sequence[int]) -> List[Dict[str, Optional[float]]]:
    """Every quality metric of a batch of one version's explanations (``None`` where one does not apply).

    Examples whose inputs share a shape are measured together (one forward or one served batch per
    metric); each example's random draws come from its own seed, so results do not depend on batching.
    """
    out: List[Dict[str, Optional[float]]] = []
    for delta in deltas:
        q: Dict[str, Optional[float]] = {name: None for name in QUALITY}
        if delta is not None:
            d = float(np.abs(np.asarray(delta, dtype=np.float64)).mean())
            q["abs_delta"] = d if math.isfinite(d) else None
        out.append(q)
    groups: Dict[Any, List[int]] = {}
    for i, x in enumerate(xs):
        if x is not None:
            groups.setdefault(tuple(x.shape), []).append(i)
    for members in groups.values():
        if kind == "text" and source.pad_id is None:
            continue
        x = torch.stack([xs[i] for i in members])
        attr = torch.stack([attrs[i].reshape(xs[i].shape) for i in members]).double()
        t = [int(targets[i]) for i in members]
        s = [int(seeds[i]) for i in members]
        x = x if kind == "text" else x.float()
        results = {"deletion_auc": deletion_auc(source.probabilities, x, attr, t, source.pad_id if kind == "text" else 0.0)}
        if kind != "text":
            if source.forward is not None:
                results["infidelity"] = _infidelity(source.forward, x, attr.float(), t, s)
            results["sensitivity"] = _sensitivity(explain, x, attr, t, [v + 1 for v in s])
        for name, values in results.items():
            for i, v in zip(members, values):
                out[i][name] = float(v) if math.isfinite(v) else None
    return out
