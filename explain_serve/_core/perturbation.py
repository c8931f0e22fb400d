"""The engine shared by the perturbation methods (ablation, occlusion, permutation, Shapley, LIME).

Feature masks in one format, the perturbed copies of a chunk built with tensor ops, chunked
evaluation with the aggregate-output fallback (a forward that returns one value per batch), and the
mapping of per-feature values back to input positions.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Iterator, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from .batching import budget_units, chunks
from .caching import small_tensor_cache
from .inputs import as_tuple, expand_args, run_forward
from .progress import expect_forwards, forward_done
from .targets import TargetType, expand_target
from .errors import AttributionArgumentError


def forward_tensor(forward_func: Callable, inputs, target, args) -> Tensor:
    """``run_forward`` without gradients, python scalars turned into tensors."""
    if torch.is_grad_enabled():
        with torch.no_grad():
            out = run_forward(forward_func, inputs, target, args)
    else:  # the callers' usual case: their own no_grad block (one context less per forward)
        out = run_forward(forward_func, inputs, target, args)
    forward_done()
    return out.detach() if out.requires_grad else out


_SAME_WIDTH_INT = {torch.float16: torch.int16, torch.bfloat16: torch.int16, torch.float32: torch.int32,
                   torch.float64: torch.int64}
_BIT_TYPES = (torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64)


def bit_mask_dtype(x: Tensor) -> torch.dtype:
    """The dtype of presence masks that ``select`` applies to ``x``'s bits as they are: the
    integer of ``x``'s width on the CPU (-1, all bits set, where ``a`` is taken; 0 elsewhere),
    bool where ``select`` goes through ``torch.where``. A caller that builds its masks in this
    dtype spares ``select`` a conversion pass per call."""
    if x.device.type == "cpu" and not x.is_complex() and x.dtype != torch.bool:
        as_int = _SAME_WIDTH_INT.get(x.dtype, x.dtype)
        if as_int in _BIT_TYPES:
            return as_int
    return torch.bool


def _as_bool(mask: Tensor) -> Tensor:
    return mask if mask.dtype == torch.bool else mask != 0


def _bits_of(mask: Tensor, as_int: torch.dtype) -> Tensor:
    """``mask`` as all-ones/zero integers of type ``as_int`` (not to be modified)."""
    return mask if mask.dtype == as_int else _as_bool(mask).to(as_int).neg_()


def select(mask: Tensor, a: Union[Tensor, float], b: Union[Tensor, float]) -> Tensor:
    """``torch.where(mask, a, b)``, on the CPU computed on the bit patterns as
    ``b ^ ((a ^ b) & -mask)``: the same bits (NaNs and signed zeros included), several times
    faster for the stacked perturbations, where CPU ``where`` does not vectorize; against the
    number +0 (the default baseline) one masking pass. Other devices, mixed dtypes and types
    other than float and integer go through ``torch.where``. ``mask`` is bool, or a bit mask of
    ``bit_mask_dtype(a or b)`` (-1 where ``a`` is taken, 0 elsewhere); never modified."""
    ref = a if isinstance(a, Tensor) else b
    zero = b if ref is a else a
    if (isinstance(ref, Tensor) and ref.device.type == "cpu" and not isinstance(zero, Tensor) and zero == 0
            and (ref.is_floating_point() and math.copysign(1.0, zero) > 0 or isinstance(zero, int))
            and _SAME_WIDTH_INT.get(ref.dtype, ref.dtype) in _BIT_TYPES):
        # +0 has no bits set: one pass, the tensor's bits masked (a number takes its dtype)
        bits = ref.view(_SAME_WIDTH_INT.get(ref.dtype, ref.dtype))
        if mask.dtype == bits.dtype:  # a bit mask: used as it is
            out = bits & mask if ref is a else bits & ~mask
        else:
            keep = _as_bool(mask).to(bits.dtype, copy=True)
            keep = keep.neg_() if ref is a else keep.sub_(1)
            out = bits & keep
        return out.view(ref.dtype) if out.dtype != ref.dtype else out
    if isinstance(ref, Tensor) and ref.is_floating_point():  # a number takes the tensor's dtype, as in where
        a, b = (t if isinstance(t, Tensor) else torch.tensor(t, dtype=ref.dtype, device=ref.device) for t in (a, b))
    if (not isinstance(a, Tensor) or not isinstance(b, Tensor) or a.device.type != "cpu"
            or b.dtype != a.dtype or a.dtype == torch.bool or a.is_complex()):
        return torch.where(_as_bool(mask), a, b)
    as_int = _SAME_WIDTH_INT.get(a.dtype, a.dtype)
    if as_int.is_floating_point:  # a float type without a same-width integer view
        return torch.where(_as_bool(mask), a, b)
    a_bits, b_bits = a.view(as_int), b.view(as_int)
    out = (a_bits ^ b_bits) & _bits_of(mask, as_int)
    out ^= b_bits
    return out.view(a.dtype) if out.dtype != a.dtype else out


def check_per_eval(perturbations_per_eval: Optional[int]) -> None:
    if perturbations_per_eval is not None and (
        not isinstance(perturbations_per_eval, int) or perturbations_per_eval < 1
    ):
        raise AttributionArgumentError("perturbations_per_eval must be None or an integer >= 1")


def is_aggregate(output: Tensor, num_examples: int) -> bool:
    """Captum's rule: the forward returns one value for the whole batch (not one per example)."""
    return output.dim() == 0 or (num_examples > 1 and output.numel() == 1)


def format_masks(feature_mask: Any, inputs: Tuple[Tensor, ...]) -> Tuple[Tensor, ...]:
    """Feature masks as integer tensors of shape ``(1 or batch, *input.shape[1:])``.

    None gives every scalar its own feature, numbered consecutively across the inputs (Captum's
    default). Masks broadcastable to the inputs are expanded (views, no copies).
    """
    if feature_mask is None:
        masks, offset = [], 0
        for x in inputs:
            n = x[0:1].numel()
            ids = torch.arange(offset, offset + n, device=x.device)
            masks.append(ids.reshape((1,) + tuple(x.shape[1:])))
            offset += n
        return tuple(masks)
    masks = as_tuple(feature_mask)
    if len(masks) != len(inputs):
        raise AttributionArgumentError(f"got {len(masks)} feature masks for {len(inputs)} inputs")
    out = []
    for m, x in zip(masks, inputs):
        m = torch.as_tensor(m, device=x.device)
        if m.dim() > x.dim():
            raise AttributionArgumentError(f"feature mask of shape {tuple(m.shape)} has more dims than input {tuple(x.shape)}")
        m = m.reshape((1,) * (x.dim() - m.dim()) + tuple(m.shape))
        if m.shape[0] not in (1, x.shape[0]):
            raise AttributionArgumentError(f"feature mask batch size {m.shape[0]} must be 1 or {x.shape[0]}")
        try:
            m = m.expand((m.shape[0],) + tuple(x.shape[1:]))
        except RuntimeError as e:
            raise AttributionArgumentError(f"feature mask of shape {tuple(m.shape)} does not broadcast to {tuple(x.shape)}") from e
        out.append(m.long() if m.dtype != torch.long else m)
    return tuple(out)


def evaluate_chunks(
    forward_func: Callable,
    build: Callable[[slice], Tuple[Tensor, ...]],
    n_units: int,
    per_eval: Optional[int],
    unit_shape: torch.Size,
    target: TargetType,
    args: Optional[Tuple[Any, ...]],
    inputs: Sequence[Tensor],
) -> Iterator[Tuple[slice, Tensor]]:
    """Evaluate ``n_units`` perturbations, yielding ``(slice, outputs of shape (n, *unit_shape))``.

    ``build(sl)`` returns the perturbed inputs of units ``sl`` stacked unit after unit (each unit
    a full copy of the batch, as ``expand_target``/``expand_args`` expect). ``per_eval=None``
    fits as many units per forward as the memory budget allows. If the forward turns out to
    aggregate over the batch (its output does not grow with the batch), the automatic mode falls
    back to one unit per forward; an explicit ``perturbations_per_eval > 1`` is an error then,
    as in Captum.
    """
    auto = per_eval is None
    if auto:
        # inputs of different batch sizes (a shared context tensor) may be combined in any way by
        # the forward: stacking copies could change what it computes, so evaluate one at a time
        same_batch = len({x.shape[0] for x in inputs if isinstance(x, Tensor) and x.dim()}) <= 1
        per_eval = budget_units(inputs) if same_batch else 1
    unit_numel = 1
    for d in unit_shape:
        unit_numel *= d
    rows = unit_shape[0] if len(unit_shape) else None
    sl_iter = list(chunks(n_units, per_eval))
    expect_forwards(len(sl_iter))
    i = 0
    while i < len(sl_iter):
        sl = sl_iter[i]
        n = sl.stop - sl.start
        out = forward_tensor(forward_func, build(sl), expand_target(target, n), expand_args(args, n))
        ok = out.numel() == n * unit_numel and (n == 1 or (out.dim() > 0 and rows is not None and out.shape[0] == n * rows))
        if not ok:
            if n > 1 and auto:
                # aggregate forward: redo the rest one unit at a time
                rest = [slice(j, j + 1) for j in range(sl.start, n_units)]
                expect_forwards(len(rest) - (len(sl_iter) - i) + 1)
                sl_iter = sl_iter[:i] + rest
                continue
            raise AttributionArgumentError(
                "forward_func's output should grow with the input batch size when "
                f"perturbations_per_eval > 1: one evaluation gives shape {tuple(unit_shape)}, "
                f"{n} stacked perturbations gave {tuple(out.shape)}"
            )
        yield sl, out.reshape((n,) + tuple(unit_shape))
        i += 1


def fits_one_forward(per_eval: Optional[int], n_units: int, inputs: Sequence[Tensor]) -> bool:
    """Whether the automatic chunking takes ``n_units`` copies of ``inputs`` in one forward.

    Then the unperturbed references (the input, the baseline) can join that forward as extra
    units instead of costing forwards of their own. Never with an explicit
    ``perturbations_per_eval`` (the user's bound on rows per forward) or inputs of different
    batch sizes (see ``evaluate_chunks``).
    """
    if per_eval is not None or n_units < 1:
        return False
    if len({x.shape[0] for x in inputs if isinstance(x, Tensor) and x.dim()}) > 1:
        return False
    return n_units <= budget_units(inputs)


def forward_units(
    forward_func: Callable, batch: Tuple[Tensor, ...], n_units: int, rows: int, target: TargetType,
    args: Optional[Tuple[Any, ...]],
) -> Optional[Tensor]:
    """One forward of ``n_units`` stacked copies of a ``rows``-example batch.

    Returns the outputs as ``(n_units, rows, ...)``, or None when the output has no block of
    ``rows`` per copy: the forward aggregates over the batch, and the caller falls back to
    evaluating its reference alone first (as in Captum; this forward is then spent). An output
    with exactly ``n_units * rows`` leading entries is read as one block per copy.
    """
    expect_forwards(1)
    out = forward_tensor(forward_func, batch, expand_target(target, n_units), expand_args(args, n_units))
    if out.dim() == 0 or out.shape[0] != n_units * rows:
        return None
    return out.reshape((n_units, rows) + tuple(out.shape[1:]))


@small_tensor_cache(lambda n, device: n, limit=1024)
def one_scalar_each(n: int, device: torch.device) -> Tensor:
    """``(n + 1, 1, n)`` bool: copy 0 selects nothing, copy ``1 + i`` scalar ``i`` (the default
    feature mask of one input, with the unperturbed copy first). Cached up to 1024 scalars."""
    sel = torch.zeros(n + 1, 1, n, dtype=torch.bool, device=device)
    sel[1:, 0].fill_diagonal_(True)
    return sel


def per_scalar_batch(x: Tensor, replacement: Union[Tensor, float]) -> Tensor:
    """``n + 1`` stacked copies of ``x`` (n scalars per example): copy 0 as it is, copy ``1 + i``
    with scalar ``i`` taken from ``replacement`` (a number, a tensor shaped like ``x``, or one
    such tensor per copy, ``(n + 1, *x.shape)``).

    The copies are one repeat of ``x`` whose diagonal (scalar ``i`` of copy ``1 + i``) is then
    overwritten: two passes, bits kept, where a masked select of every element took several.
    A replacement tensor of another dtype goes through ``select`` (its type promotion)."""
    b, inner = x.shape[0], tuple(x.shape[1:])
    n = x[0].numel()
    if isinstance(replacement, Tensor) and replacement.dtype != x.dtype:
        out = select(one_scalar_each(n, x.device), replacement.reshape(-1, b, n), x.reshape(1, b, n))
        return out.reshape(((n + 1) * b,) + inner)
    out = x.reshape(1, b, n).repeat(n + 1, 1, 1)
    diagonal = out[1:].diagonal(0, 0, 2)  # (b, n): scalar i of copy 1 + i
    if not isinstance(replacement, Tensor):
        diagonal.fill_(replacement)
    else:
        per_copy = replacement.reshape(-1, b, n)
        diagonal.copy_(per_copy[0] if per_copy.shape[0] == 1 else per_copy[1:].diagonal(0, 0, 2))
    return out.reshape(((n + 1) * b,) + inner)


def per_scalar_attributions(outs: Tensor, input_shape: Sequence[int]) -> Tensor:
    """``f(x) - f(copy 1 + i)`` spread onto scalar ``i``, from the ``(n + 1, *out_shape)``
    outputs of a ``per_scalar_batch``: shape ``(outputs, *input_shape[1:])``."""
    diffs = outs[0:1] - outs[1:]
    return spread_per_scalar(diffs, input_shape).reshape((-1,) + tuple(input_shape[1:]))


def spread_per_scalar(values: Tensor, input_shape: Sequence[int]) -> Tensor:
    """``values_to_inputs`` for the default feature mask of one input (feature ``i`` is scalar
    ``i``): ``(F, *out_shape)`` -> ``(*out_shape, *input_shape[1:])`` with no index."""
    flat = values.reshape(values.shape[0], -1)  # (F, O)
    return flat.transpose(0, 1).reshape(tuple(values.shape[1:]) + tuple(input_shape[1:]))


def values_to_inputs(values: Tensor, mask_index: Tensor, out_shape: Sequence[int], input_shape: Sequence[int]) -> Tensor:
    """Spread per-feature values onto input positions.

    ``values`` has shape ``(F, *out_shape)`` (one value per feature and output element) and
    ``mask_index`` shape ``(1 or batch, *input_shape[1:])`` with entries in ``[0, F)``. Returns
    ``(*out_shape, *input_shape[1:])`` where position ``p`` of output element ``o`` gets
    ``values[mask_index[b, p], o]`` (``b`` the example of ``o`` when masks differ per example).
    """
    n_feat = values.shape[0]
    inner = tuple(input_shape[1:])
    idx = mask_index.reshape(mask_index.shape[0], -1)
    if idx.shape[0] == 1:
        flat = values.reshape(n_feat, -1)  # (F, O)
        res = flat[idx[0]].transpose(0, 1)  # (O, P)
        return res.reshape(tuple(out_shape) + inner)
    b = idx.shape[0]
    if len(out_shape) == 0 or out_shape[0] != b:
        raise AttributionArgumentError("per-example feature masks need an output with one row per example")
    per = values.reshape(n_feat, b, -1).permute(1, 0, 2)  # (B, F, K)
    k = per.shape[2]
    res = torch.gather(per, 1, idx.unsqueeze(-1).expand(b, idx.shape[1], k))  # (B, P, K)
    return res.permute(0, 2, 1).reshape(tuple(out_shape) + inner)


def ablate_with_masks(
    x: Tensor, replacement: Tensor, masks: Tensor
) -> Tensor:
    """Stack ``n`` perturbed copies: ``masks`` (n, 1 or B, ...) bool picks ``replacement`` over ``x``."""
    out = select(masks, replacement.unsqueeze(0), x.unsqueeze(0))
    n = masks.shape[0]
    return out.expand((n,) + tuple(x.shape)).reshape((n * x.shape[0],) + tuple(x.shape[1:]))


_NUMPY_WHERE_DTYPES = (torch.float16, torch.float32, torch.float64, torch.int8, torch.uint8, torch.int16, torch.int32,
                       torch.int64)


def select_copies(keep, x: Tensor, base: Union[Tensor, int]) -> Tensor:
    """Stacked copies ``(n, B, ...)`` of ``x`` (B, ...) with one scalar per feature: copy ``i``
    takes scalar ``j`` of every example from ``x`` where ``keep[i, j]`` (a NumPy bool array
    (n, F)), else from ``base`` (the number 0 or a tensor shaped like ``x``). A CPU tensor
    without grad of a NumPy dtype, against 0 or a baseline of its own dtype, goes through one
    NumPy ``where`` (a few microseconds against several torch operations at these sizes; the
    same bits), anything else through ``select``."""
    shape = (keep.shape[0], 1) + tuple(x.shape[1:])
    if (x.device.type == "cpu" and not x.requires_grad and x.dtype in _NUMPY_WHERE_DTYPES
            and (isinstance(base, int) and base == 0 or isinstance(base, Tensor) and base.dtype == x.dtype
                 and base.device.type == "cpu" and not base.requires_grad)):
        other = base.numpy()[None] if isinstance(base, Tensor) else x.numpy().dtype.type(0)
        return torch.from_numpy(np.where(keep.reshape(shape), x.numpy()[None], other))
    mask = torch.from_numpy(keep).to(x.device).reshape(shape)
    out = select(mask, x.unsqueeze(0), base.unsqueeze(0) if isinstance(base, Tensor) else base)
    return out.expand((keep.shape[0],) + tuple(x.shape))
