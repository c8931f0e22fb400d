"""Shapley values of feature groups, exact or sampled.

The game: ``v(S) = f(x with the features in S kept and the others set to the baseline)``. The
Shapley value of feature ``i`` averages its marginal contribution ``v(S + i) - v(S)`` over all
orderings of the players.

- ``ShapleyValueSampling`` (Castro, Gomez & Tejada 2009; Strumbelj & Kononenko 2010): walk
  ``n_samples`` orderings from the baseline adding one feature at a time and average the marginal
  contributions (``n - 1`` forwards per ordering: the walks share the baseline and the input). The orderings are antithetic and
  orthogonal (Mitchell et al. 2022, *Sampling Permutations for Shapley Value Estimation*): each
  ordering is followed by its reverse, and up to ``n - 1`` pairs at a time are the argsorts of
  orthonormal directions, which spreads them more evenly than independent draws and lowers the
  variance at the same budget. They are drawn
  independently of the batch, so a batch equals its examples one by one under a seed.
- ``ShapleyValues``: the exact value. Instead of Captum's ``n! * n`` forwards over all orderings,
  it evaluates each of the ``2^n`` coalitions once and applies the Shapley formula
  ``phi_i = sum_{S not i} |S|! (n-|S|-1)! / n! * (v(S + i) - v(S))`` (same numbers).

All coalitions of a chunk are built at once from a boolean presence matrix indexed by the
feature mask, and evaluated together (``perturbations_per_eval=None``: as many as fit in the
memory budget).
"""
from __future__ import annotations

import math
import warnings
from typing import Any, Callable, Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from .._core.caching import read_only, small_tensor_cache
from .._core.inputs import as_tuple, format_args, format_baselines, format_output, is_tuple, tensorize_baselines
from .._core.targets import TargetType
from ._base import PerturbationAttribution
from .._core.futures import attribute_as_future
from .._core.progress import shows_progress
from .._core.spd import orthonormal_rows
from .._core.perturbation import (
    check_per_eval,
    evaluate_chunks,
    bit_mask_dtype,
    fits_one_forward,
    format_masks,
    forward_tensor,
    forward_units,
    is_aggregate,
    select,
    spread_per_scalar,
    values_to_inputs,
)


def orderings(n: int, n_feat: int) -> np.ndarray:
    """The positions (S, F) of the ``n_feat`` players in ``n`` orderings, each ordering followed
    by its reverse. From orthogonal directions (Mitchell et al. 2022's orthogonal spherical
    codes): an ordering is the argsort of a unit vector in the sum-zero subspace and its reverse
    that of the opposite vector; up to ``F - 1`` pairs at a time come from orthonormal vectors of
    a uniformly random frame, which spreads the orderings more evenly than independent draws. The
    Gaussians are torch's (its stream: ``torch.manual_seed`` reproduces them), the frame their
    Cholesky QR (``orthonormal_rows``), the ranks NumPy's: a few small operations, where the
    per-call cost of each is most of the work."""
    n_pairs, dim = (n + 1) // 2, max(n_feat - 1, 1)
    halves = []
    for start in range(0, n_pairs, dim):
        # centred Gaussian columns: an isotropic frame of the sum-zero subspace
        g = _centred(torch.randn(n_feat, min(dim, n_pairs - start), dtype=torch.float64).numpy())
        directions = orthonormal_rows(g)  # (k, F)
        if directions is None:  # ill-conditioned (a rare draw, or F = 1): Householder QR
            q, r = torch.linalg.qr(torch.from_numpy(g))
            directions = (q.numpy() * np.sign(r.numpy().diagonal())).T
        # the ordering of a direction: its players by value; a player's position: its rank
        halves.append(directions.argsort(-1).argsort(-1))
    pos = np.empty((2 * n_pairs, n_feat), dtype=np.int64)
    if halves:
        pos[0::2] = halves[0] if len(halves) == 1 else np.concatenate(halves)
        np.subtract(n_feat - 1, pos[0::2], out=pos[1::2])  # the reverse ordering
    return pos[:n]


@small_tensor_cache(lambda n: n * n)
def _centring(n: int) -> np.ndarray:
    """``(n, n)``: ``I - 1/n``, which subtracts the column means (cached, read-only)."""
    return read_only(np.eye(n) - 1.0 / n)


def _centred(g: np.ndarray) -> np.ndarray:
    """``g`` less its column means (one product for up to 256 rows)."""
    return _centring(g.shape[0]) @ g if g.shape[0] <= 256 else g - g.mean(0)


def antithetic_permutations(n: int, n_feat: int) -> Tensor:
    """The orderings (S, F) of ``orderings``: player ``perms[s, k]`` is at position ``k``."""
    return torch.from_numpy(orderings(n, n_feat).argsort(-1))


_NUMPY_BITS = {torch.int8: np.int8, torch.uint8: np.uint8, torch.int16: np.int16, torch.int32: np.int32,
               torch.int64: np.int64, torch.bool: np.bool_}


def _walk_keep(pos: np.ndarray, dtype: torch.dtype = torch.bool) -> np.ndarray:
    """``(2 + S (F - 1), F)`` presence of every unit of the one-forward walk: v(empty), v(full),
    then walk ``s``'s inner coalitions (unit ``2 + s (F - 1) + k``: the features at positions up
    to ``k`` of ordering ``s``), from the positions ``pos`` (S, F); bool, or ``select``'s bit form
    in the NumPy type of ``dtype`` (-1 where kept)."""
    n_samples, n_feat = pos.shape
    keep = np.empty((2 + n_samples * (n_feat - 1), n_feat), dtype=_NUMPY_BITS[dtype])
    keep[0], keep[1] = 0, 1
    np.less_equal(pos[:, None, :], _steps(n_feat), out=keep[2:].reshape(n_samples, n_feat - 1, n_feat))
    return keep if dtype == torch.bool else np.negative(keep, out=keep)


@small_tensor_cache(lambda n_feat: n_feat)
def _steps(n_feat: int) -> np.ndarray:
    """``(F - 1, 1)``: the inner steps of a walk (cached, read-only)."""
    return read_only(np.arange(n_feat - 1)[:, None])


@small_tensor_cache(lambda n_samples, n_feat: n_samples * (n_feat + 1))
def _walk_steps(n_samples: int, n_feat: int) -> Tuple[np.ndarray, np.ndarray]:
    """``(2, S * (F + 1))``: the units (in ``_walk_keep``'s order) after and before each step of
    each walk, by the flat index ``s * (F + 1) + k`` of step ``k`` of walk ``s`` (the last of each
    walk unused), and ``(S, 1)`` those flat indices of each walk's step 0 (cached, read-only)."""
    rows = np.empty((n_samples, n_feat + 1), dtype=np.int64)  # walk s after k features: a unit
    rows[:, 0], rows[:, -1] = 0, 1
    rows[:, 1:-1] = np.arange(2, 2 + n_samples * (n_feat - 1)).reshape(n_samples, n_feat - 1)
    before = rows.reshape(-1)
    after_before = np.stack([np.append(before[1:], 0), before])
    return read_only(after_before), read_only((np.arange(n_samples) * (n_feat + 1))[:, None])


def _average_contributions(units: Tensor, pos: np.ndarray, per_scalar: Optional[Tuple[int, ...]] = None) -> Tensor:
    """Shapley estimates ``(F, *out)`` from the values ``(U, *out)`` of the walks' units (in the
    order of ``_walk_keep``): feature ``f``'s marginal contribution in walk ``s`` is the value
    after its step ``pos[s, f]`` less the value before, averaged over the walks (in NumPy for
    CPU floats: a few small operations). ``per_scalar``: the input's shape where feature ``f`` is
    its scalar ``f``, the estimates then spread onto it (``spread_per_scalar``)."""
    n_samples, n_feat = pos.shape
    after_before, starts = _walk_steps(n_samples, n_feat)
    idx = np.take(after_before, pos + starts, 1)  # (2, S, F)
    if units.device.type == "cpu" and units.dtype in (torch.float32, torch.float64):
        w = np.take(units.numpy().reshape(units.shape[0], -1), idx, 0)  # (2, S, F, O)
        phi = (w[0] - w[1]).sum(0) / n_samples  # (F, O)
        if per_scalar is not None:  # (O, F): output element o's values at the scalars
            return torch.from_numpy(np.ascontiguousarray(phi.T)).reshape(tuple(units.shape[1:]) + tuple(per_scalar[1:]))
        return torch.from_numpy(phi).reshape((n_feat,) + tuple(units.shape[1:]))
    w = units[torch.from_numpy(idx).to(units.device)]  # (2, S, F, *out)
    phi = (w[0] - w[1]).sum(0) / n_samples
    return phi if per_scalar is None else spread_per_scalar(phi, per_scalar)


class ShapleyValueSampling(PerturbationAttribution):
    """Sampled Shapley values (Monte Carlo over feature orderings)."""

    def __init__(self, forward_func: Callable) -> None:
        super().__init__(forward_func)

    @shows_progress
    def attribute(
        self,
        inputs,
        baselines=None,
        target: TargetType = None,
        additional_forward_args: Any = None,
        feature_mask=None,
        n_samples: int = 25,
        perturbations_per_eval: Optional[int] = None,
        show_progress: bool = False,
    ):
        """Average marginal contributions over ``n_samples`` random feature orderings.

        Features are the integers ``0..max(feature_mask)`` (default: every scalar); the output
        has shape ``output.shape + input.shape[1:]`` per input (the inputs' shapes for a scalar
        per example). ``show_progress`` draws a progress bar on stderr.
        """
        return self._shapley(inputs, baselines, target, additional_forward_args, feature_mask,
                             n_samples, perturbations_per_eval, exact=False)

    def attribute_future(self, *args: Any, **kwargs: Any):
        """``attribute`` for a forward that returns ``torch.futures.Future``; returns a Future."""
        return attribute_as_future(self, *args, **kwargs)

    # -------------------------------------------------------------------------------------
    def _shapley(self, inputs, baselines, target, additional_forward_args, feature_mask,
                 n_samples, perturbations_per_eval, exact: bool):
        was_tuple = is_tuple(inputs)
        inputs = as_tuple(inputs)
        check_per_eval(perturbations_per_eval)
        formatted = format_baselines(baselines, inputs)
        args = format_args(additional_forward_args)
        one_scalar_each = feature_mask is None and len(inputs) == 1  # feature i is scalar i: no mask needed
        masks = None if one_scalar_each else format_masks(feature_mask, inputs)
        num_examples = inputs[0].shape[0]
        n_feat = (sum(math.prod(x.shape[1:]) for x in inputs) if feature_mask is None
                  else int(max(int(m.max()) for m in masks if m.numel())) + 1)

        with torch.no_grad():
            pos = None
            if not exact:
                pos = orderings(n_samples, n_feat)  # (S, F): where each feature joins each walk
                # default baselines stay numbers (one masking pass, no baseline tensor)
                phi = self._sampled_in_one_forward(
                    inputs, formatted if baselines is None else tensorize_baselines(formatted, inputs), masks,
                    pos, target, args, perturbations_per_eval, one_scalar_each)
                if phi is not None:
                    if one_scalar_each:  # already spread onto the scalars
                        return format_output(was_tuple, (phi,))
                    out_shape = phi.shape[1:]
                    attrs = tuple(values_to_inputs(phi, m, out_shape, x.shape) for x, m in zip(inputs, masks))
                    return format_output(was_tuple, attrs)
            if masks is None:
                masks = format_masks(feature_mask, inputs)
            baselines = tensorize_baselines(formatted, inputs)
            initial = forward_tensor(self.forward_func, baselines, target, args)  # v(empty)
            if initial.dim() == 0:
                initial = initial.reshape(1)
            per_eval = perturbations_per_eval
            if is_aggregate(initial, num_examples):
                if any(m.shape[0] != 1 for m in masks):
                    raise AssertionError(
                        "Cannot provide different masks for each example when function returns a scalar."
                    )
                if per_eval is not None and per_eval > 1:
                    raise AssertionError("Cannot have perturbations_per_eval > 1 when function returns scalar.")
                per_eval = 1

            if exact:
                phi = self._exact(inputs, baselines, masks, n_feat, initial, target, args, per_eval)
            else:
                phi = self._sampled(inputs, baselines, masks, pos, initial, target, args, per_eval)

            attrs = tuple(values_to_inputs(phi, m, initial.shape, x.shape) for x, m in zip(inputs, masks))
        return format_output(was_tuple, attrs)

    def _coalition_builder(self, inputs, baselines, masks, presence: Callable[[slice], Tensor],
                           one_scalar_each: bool = False):
        """``build(sl)``: inputs where feature f of unit u is kept iff ``presence(sl)[u, f]``
        (``one_scalar_each``: one input with the default mask, feature f is its scalar f)."""

        def build(sl: slice):
            z = presence(sl)  # (n, F): bool, or select's bit mask
            n = z.shape[0]
            out = []
            for x, b, m in zip(inputs, baselines, masks or (None,) * len(inputs)):
                if one_scalar_each:
                    keep = z.reshape((n, 1) + tuple(x.shape[1:]))
                else:
                    keep = z[:, m.reshape(-1)].reshape((n,) + tuple(m.shape))  # (n, 1 or B, ...)
                pert = select(keep, x, b)  # (n, 1 or B, ...) against (B, ...): broadcast
                if pert.shape[1] != x.shape[0]:  # neither mask nor baseline per example
                    pert = pert.expand((n,) + tuple(x.shape))
                out.append(pert.reshape((n * x.shape[0],) + tuple(x.shape[1:])))
            return tuple(out)

        return build

    @staticmethod
    def _walk_presence(pos: Tensor) -> Callable[[slice], Tensor]:
        """``presence(sl)`` of the walks' inner coalitions (unit ``s * (F - 1) + k``: the features
        at positions up to ``k`` of ordering ``s``; the empty and the full coalition are not
        units), from the positions ``pos`` (S, F)."""
        n_samples, n_feat = pos.shape
        device = pos.device
        inner = n_feat - 1
        steps = torch.arange(inner, device=device)[None, :, None]

        def presence(sl: slice) -> Tensor:
            if sl.stop <= sl.start:
                return torch.zeros(0, n_feat, dtype=torch.bool, device=device)
            first, last = sl.start // inner, (sl.stop - 1) // inner + 1
            if sl.stop - sl.start >= inner:  # whole orderings: one broadcast compare, no gathers
                block = (pos[first:last, None, :] <= steps).reshape(-1, n_feat)
                return block[sl.start - first * inner:sl.stop - first * inner]
            u = torch.arange(sl.start, sl.stop, device=device)
            s, k = u // inner, u % inner
            return pos[s] <= k[:, None]  # features among the first k+1 of ordering s

        return presence

    def _sampled_in_one_forward(self, inputs, baselines, masks, pos, target, args, per_eval,
                                one_scalar_each=False):
        """The walks with v(empty) and v(full) in the same forward as the inner coalitions, or
        None where that does not apply (``fits_one_forward``) or the forward aggregates."""
        n_samples, n_feat = pos.shape
        n_units = 2 + n_samples * (n_feat - 1)
        if not fits_one_forward(per_eval, n_units, inputs):
            return None
        # one input: select's bit form, no conversion per call
        keep = torch.from_numpy(_walk_keep(pos, bit_mask_dtype(inputs[0]) if len(inputs) == 1 else torch.bool))
        if not inputs[0].is_cpu:
            keep = keep.to(inputs[0].device)
        build = self._coalition_builder(inputs, baselines, masks, lambda sl: keep, one_scalar_each)
        outs = forward_units(self.forward_func, build(slice(0, n_units)), n_units, inputs[0].shape[0], target, args)
        if outs is None:
            return None
        return _average_contributions(outs, pos, inputs[0].shape if one_scalar_each else None)

    def _sampled(self, inputs, baselines, masks, pos, initial, target, args, per_eval):
        n_samples, n_feat = pos.shape
        presence = self._walk_presence(torch.from_numpy(pos).to(inputs[0].device))
        build = self._coalition_builder(inputs, baselines, masks, presence)
        final = forward_tensor(self.forward_func, inputs, target, args).reshape(initial.shape)
        outs = [out for _, out in evaluate_chunks(
            self.forward_func, build, n_samples * (n_feat - 1), per_eval, initial.shape, target, args, inputs)]
        shape = tuple(final.shape)
        units = torch.cat([initial.to(final.dtype)[None], final[None]] + [v.to(final.dtype) for v in outs])
        return _average_contributions(units.reshape((-1,) + shape), pos)

    def _exact(self, inputs, baselines, masks, n_feat, initial, target, args, per_eval):
        device = inputs[0].device
        present = sorted({int(v) for m in masks for v in torch.unique(m).tolist()})
        p = len(present)  # missing feature ids are null players: value 0, skipped
        if p > 30:
            raise ValueError(f"exact Shapley values over {p} features need 2^{p} forwards; use ShapleyValueSampling")
        col = torch.full((n_feat,), p, dtype=torch.long, device=device)
        col[torch.tensor(present, device=device)] = torch.arange(p, device=device)
        bits = 1 << torch.arange(p, device=device)

        def presence(sl: slice) -> Tensor:
            codes = torch.arange(sl.start, sl.stop, device=device) + 1  # coalition 0 is `initial`
            z = (codes[:, None] & bits) != 0  # (n, p)
            z = torch.cat([z, z.new_zeros((z.shape[0], 1))], 1)
            return z[:, col]  # (n, n_feat)

        build = self._coalition_builder(inputs, baselines, masks, presence)
        n_coal = 1 << p
        outs = [out for _, out in evaluate_chunks(
            self.forward_func, build, n_coal - 1, per_eval, initial.shape, target, args, inputs)]
        v = torch.cat([initial.unsqueeze(0)] + outs, 0)  # (2^p, *out)
        codes = torch.arange(n_coal, device=device)
        size = ((codes[:, None] & bits) != 0).sum(1)
        weight = torch.tensor(
            [math.factorial(s) * math.factorial(p - s - 1) / math.factorial(p) for s in range(p)],
            dtype=v.dtype, device=device,
        )
        phi = torch.zeros((n_feat,) + tuple(initial.shape), dtype=v.dtype, device=device)
        wshape = (-1,) + (1,) * initial.dim()
        for j, f in enumerate(present):
            without = codes[(codes & (1 << j)) == 0]
            phi[f] = (weight[size[without]].reshape(wshape) * (v[without | (1 << j)] - v[without])).sum(0)
        return phi


class ShapleyValues(ShapleyValueSampling):
    """Exact Shapley values (all ``2^n`` coalitions of the feature groups)."""

    @shows_progress
    def attribute(  # type: ignore[override]
        self,
        inputs,
        baselines=None,
        target: TargetType = None,
        additional_forward_args: Any = None,
        feature_mask=None,
        perturbations_per_eval: Optional[int] = None,
        show_progress: bool = False,
    ):
        """Exact Shapley values of each feature group (``feature_mask``; default every scalar)."""
        n = (sum(x[0].numel() for x in as_tuple(inputs)) if feature_mask is None
             else len({int(v) for m in as_tuple(feature_mask) for v in torch.unique(torch.as_tensor(m)).tolist()}))
        if n >= 10:
            warnings.warn(
                f"Exact Shapley values over {n} features evaluate 2^{n} coalitions; "
                "consider ShapleyValueSampling.",
                stacklevel=2,
            )
        return self._shapley(inputs, baselines, target, additional_forward_args, feature_mask,
                             1, perturbations_per_eval, exact=True)
