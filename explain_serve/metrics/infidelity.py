"""Explanation infidelity (Yeh et al. 2019, "On the (In)fidelity and Sensitivity of Explanations").

For a perturbation ``I`` drawn from ``mu_I``, a faithful explanation ``Phi`` predicts the change of the
model output: ``I . Phi(f, x) ~= f(x) - f(x - I)``. Infidelity is the expected squared error of that
prediction, estimated per example over ``n_perturb_samples`` perturbations:

    INFD(Phi, f, x) = E_I [ (I . Phi(f, x) - (f(x) - f(x - I)))^2 ]

With ``normalize=True`` the explanation is first rescaled by the least-squares factor
``beta = E[(I.Phi) (f(x) - f(x-I))] / E[(I.Phi)^2]`` so the score ignores the attributions' scale.
Lower is better.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Tuple

import torch
from torch import Tensor

from .._core.batching import chunks, samples_per_chunk
from .._core.inputs import as_tuple, format_args, format_baselines, expand_args, run_forward
from .._core.targets import TargetType, expand_target

higher_is_better = False

__all__ = ["infidelity", "infidelity_perturb_func_decorator", "higher_is_better"]


def _divide_or_keep(numerator: Tensor, denominator: Any) -> Tensor:
    """``numerator / denominator`` where the denominator is non-zero, ``numerator`` elsewhere."""
    if not isinstance(denominator, Tensor):
        return numerator / (denominator if denominator != 0 else 1.0)
    safe = torch.where(denominator != 0, denominator, torch.ones_like(denominator))
    return numerator / safe


def infidelity_perturb_func_decorator(multiply_by_inputs: bool = True) -> Callable:
    """Turn a ``perturb_func`` that returns only perturbed inputs into one that also returns ``I``.

    The perturbation is ``x - x_perturbed`` for local explanations (``multiply_by_inputs=False``) and
    ``(x - x_perturbed) / (x - baseline)`` for global ones, whose attributions already include the
    factor ``x - baseline`` (zero denominators leave ``x - x_perturbed`` unchanged). The decorated
    function is called as ``perturb_func(inputs)`` or ``perturb_func(inputs, baselines)``.
    """

    def decorate(perturb_func: Callable) -> Callable:
        def perturb_and_difference(inputs: Any, baselines: Any = None) -> Tuple[Tuple[Tensor, ...], Tuple[Tensor, ...]]:
            perturbed = perturb_func(inputs) if baselines is None else perturb_func(inputs, baselines)
            perturbed_t = as_tuple(perturbed)
            inputs_t = as_tuple(inputs)
            baselines_t = tuple(0 for _ in inputs_t) if baselines is None else as_tuple(baselines)
            if len(baselines_t) != len(inputs_t):
                raise ValueError(f"got {len(baselines_t)} baselines for {len(inputs_t)} inputs")
            perturbations = tuple(
                _divide_or_keep(x - xp, x - b) if multiply_by_inputs else x - xp
                for x, xp, b in zip(inputs_t, perturbed_t, baselines_t)
            )
            return perturbations, perturbed_t

        perturb_and_difference.__name__ = getattr(perturb_func, "__name__", "perturb_func")
        perturb_and_difference.__doc__ = perturb_func.__doc__
        return perturb_and_difference

    return decorate


def _expand_baselines(baselines: Optional[Tuple[Any, ...]], batch_size: int, k: int) -> Optional[Tuple[Any, ...]]:
    """Per-example baselines follow their example when each example is repeated ``k`` times."""
    if baselines is None:
        return None
    return tuple(
        b.repeat_interleave(k, dim=0)
        if isinstance(b, Tensor) and b.dim() > 0 and b.shape[0] == batch_size and batch_size > 1
        else b
        for b in baselines
    )


def infidelity(
    forward_func: Callable[..., Tensor],
    perturb_func: Callable,
    inputs: Any,
    attributions: Any,
    baselines: Any = None,
    additional_forward_args: Any = None,
    target: TargetType = None,
    n_perturb_samples: int = 10,
    max_examples_per_batch: Optional[int] = None,
    normalize: bool = False,
) -> Tensor:
    """Infidelity of ``attributions`` for ``forward_func`` at ``inputs``: one value per example.

    ``perturb_func(inputs[, baselines])`` receives every example repeated ``n_perturb_samples``
    times (consecutively) and returns ``(perturbations, perturbed_inputs)``, or only the perturbed
    inputs when wrapped by ``infidelity_perturb_func_decorator``. A single tensor is passed (and may
    be returned) when ``inputs`` is a single tensor. ``max_examples_per_batch`` bounds the rows per
    forward; results do not depend on it for a deterministic ``perturb_func``.
    """
    inputs_t = as_tuple(inputs)
    attributions_t = as_tuple(attributions)
    if len(inputs_t) != len(attributions_t):
        raise ValueError(f"got {len(attributions_t)} attribution tensors for {len(inputs_t)} inputs")
    for x, a in zip(inputs_t, attributions_t):
        if x.shape != a.shape:
            raise ValueError(f"attribution shape {tuple(a.shape)} differs from input shape {tuple(x.shape)}")
    baselines_t = None if baselines is None else format_baselines(baselines, inputs_t)
    args = format_args(additional_forward_args)
    batch_size = inputs_t[0].shape[0]
    single = len(inputs_t) == 1
    per_chunk = samples_per_chunk(batch_size, n_perturb_samples, max_examples_per_batch)

    with torch.no_grad():
        out_at_inputs = run_forward(forward_func, inputs_t, target, args)
        totals: Optional[Tuple[Tensor, ...]] = None
        for part in chunks(n_perturb_samples, per_chunk):
            k = part.stop - part.start
            expanded = tuple(x.repeat_interleave(k, dim=0) for x in inputs_t)
            b_expanded = _expand_baselines(baselines_t, batch_size, k)
            call_inputs = expanded[0] if single else expanded
            if b_expanded is None:
                result = perturb_func(call_inputs)
            else:
                result = perturb_func(call_inputs, b_expanded[0] if single else b_expanded)
            perturbations, perturbed = (as_tuple(r) for r in result)
            if len(perturbations) != len(inputs_t) or len(perturbed) != len(inputs_t):
                raise ValueError("perturb_func must return one perturbation and one perturbed input per input")
            for p, xp in zip(perturbations, perturbed):
                if p[0].shape != xp[0].shape:
                    raise ValueError(
                        f"perturbation shape {tuple(p.shape)} differs from perturbed input shape {tuple(xp.shape)}"
                    )

            out_perturbed = run_forward(
                forward_func, perturbed, expand_target(target, k, interleave=True), expand_args(args, k, interleave=True)
            )
            output_change = (out_at_inputs.repeat_interleave(k, dim=0) - out_perturbed).reshape(batch_size, -1)
            predicted_change = sum(
                (a.repeat_interleave(k, dim=0) * p).reshape(batch_size * k, -1).sum(1)
                for a, p in zip(attributions_t, perturbations)
            ).reshape(batch_size, -1)

            if normalize:
                parts = (
                    predicted_change.pow(2).sum(-1),
                    (predicted_change * output_change).sum(-1),
                    output_change.pow(2).sum(-1),
                )
            else:
                parts = ((predicted_change - output_change).pow(2).sum(-1),)
            totals = parts if totals is None else tuple(t + q for t, q in zip(totals, parts))

    assert totals is not None
    if normalize:
        pred_sq, cross, change_sq = totals
        beta = _divide_or_keep(cross, pred_sq)
        # E[(beta * I.Phi - delta f)^2], expanded so the sums above suffice.
        values = beta * beta * pred_sq - 2 * beta * cross + change_sq
    else:
        values = totals[0]
    return values / n_perturb_samples


infidelity.higher_is_better = False  # type: ignore[attr-defined]
