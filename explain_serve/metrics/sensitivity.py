"""Max-sensitivity of an explanation (Yeh et al. 2019, "On the (In)fidelity and Sensitivity of Explanations").

    SENS_max(Phi, f, x, r) = max_{||y - x|| <= r} ||Phi(f, y) - Phi(f, x)|| / ||Phi(f, x)||

estimated per example by Monte Carlo: the maximum over ``n_perturb_samples`` points ``y`` drawn by
``perturb_func`` (uniform in the L-infinity ball of radius ``perturb_radius`` by default). The
relative change is reported (an explanation of norm 0 is divided by 1). Lower is better: a robust
explanation barely moves when the input barely moves.
"""
from __future__ import annotations

from inspect import signature
from typing import Any, Callable, Dict, Optional, Tuple

import torch
from torch import Tensor

from .._core.batching import chunks, samples_per_chunk
from .._core.inputs import as_tuple, expand_args, format_args
from .._core.targets import expand_target

higher_is_better = False

__all__ = ["sensitivity_max", "default_perturb_func", "higher_is_better"]


def default_perturb_func(inputs: Any, perturb_radius: float = 0.02) -> Tuple[Tensor, ...]:
    """``inputs`` plus noise drawn uniformly from ``[-perturb_radius, perturb_radius]`` per element."""
    return tuple(
        x + torch.empty(x.shape, dtype=torch.float32, device=x.device).uniform_(-perturb_radius, perturb_radius)
        for x in as_tuple(inputs)
    )


def _norm(rows: Tensor, norm_ord: Any) -> Tensor:
    """Norm of each row; ``"fro"`` is the Euclidean norm of the flattened explanation."""
    if norm_ord == "fro":
        norm_ord = 2
    if isinstance(norm_ord, str):
        raise ValueError(f"norm_ord {norm_ord!r} is not a vector norm; use 'fro' or a number")
    return torch.linalg.vector_norm(rows, ord=norm_ord, dim=1)


def _flat(explanations: Tuple[Tensor, ...]) -> Tensor:
    """All explanation tensors of each example as one row."""
    return torch.cat([e.reshape(e.shape[0], -1) for e in explanations], dim=1)


def _expanded_kwargs(kwargs: Dict[str, Any], inputs: Tuple[Tensor, ...], k: int) -> Dict[str, Any]:
    """``explanation_func`` arguments for a batch whose examples are each repeated ``k`` times."""
    out = dict(kwargs)
    batch_size = inputs[0].shape[0]
    if out.get("additional_forward_args") is not None:
        out["additional_forward_args"] = expand_args(format_args(out["additional_forward_args"]), k, interleave=True)
    if "target" in out:
        out["target"] = expand_target(out["target"], k, interleave=True)
    if isinstance(out.get("baselines"), (Tensor, tuple)) and batch_size > 1:
        was_tuple = isinstance(out["baselines"], tuple)
        expanded = tuple(
            b.repeat_interleave(k, dim=0)
            if isinstance(b, Tensor) and b.dim() == x.dim() and b.shape[0] == batch_size
            else b
            for b, x in zip(as_tuple(out["baselines"]), inputs)
        )
        out["baselines"] = expanded if was_tuple else expanded[0]
    return out


def sensitivity_max(
    explanation_func: Callable,
    inputs: Any,
    perturb_func: Callable = default_perturb_func,
    perturb_radius: float = 0.02,
    n_perturb_samples: int = 10,
    norm_ord: Any = "fro",
    max_examples_per_batch: Optional[int] = None,
    **kwargs: Any,
) -> Tensor:
    """Max-sensitivity of ``explanation_func`` at ``inputs``: one value per example.

    ``explanation_func(inputs, **kwargs)`` is typically an ``attribute`` method; ``target``,
    ``additional_forward_args`` and per-example ``baselines`` in ``kwargs`` are repeated along with
    the perturbed copies. ``perturb_func(inputs[, perturb_radius])`` (the radius is passed when it
    takes two parameters) receives every example repeated consecutively. Runs under ``no_grad``:
    an explanation that needs gradients must enable them itself, as attribution methods do.
    """
    inputs_t = as_tuple(inputs)
    batch_size = inputs_t[0].shape[0]
    pass_radius = len(signature(perturb_func).parameters) > 1
    per_chunk = samples_per_chunk(batch_size, n_perturb_samples, max_examples_per_batch)

    with torch.no_grad():
        reference = _flat(as_tuple(explanation_func(inputs, **kwargs)))
        reference_norm = _norm(reference, norm_ord)
        reference_norm = torch.where(reference_norm == 0, torch.ones_like(reference_norm), reference_norm)

        result: Optional[Tensor] = None
        expanded_for, chunk_kwargs = None, kwargs
        for part in chunks(n_perturb_samples, per_chunk):
            k = part.stop - part.start
            if expanded_for != k:
                expanded_for, chunk_kwargs = k, _expanded_kwargs(kwargs, inputs_t, k)
            expanded = tuple(x.repeat_interleave(k, dim=0) for x in inputs_t)
            call_inputs = expanded[0] if len(expanded) == 1 else expanded
            perturbed = perturb_func(call_inputs, perturb_radius) if pass_radius else perturb_func(call_inputs)
            if not isinstance(inputs, tuple) and isinstance(perturbed, tuple) and len(perturbed) == 1:
                perturbed = perturbed[0]
            moved = _flat(as_tuple(explanation_func(perturbed, **chunk_kwargs)))
            change = _norm(reference.repeat_interleave(k, dim=0) - moved, norm_ord)
            relative = (change / reference_norm.repeat_interleave(k, dim=0)).reshape(batch_size, k)
            chunk_max = relative.max(dim=1).values
            result = chunk_max if result is None else torch.maximum(result, chunk_max)
    assert result is not None
    return result


sensitivity_max.higher_is_better = False  # type: ignore[attr-defined]
