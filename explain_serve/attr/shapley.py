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
from typing import Any, Callable, Optional

import torch
from torch import Tensor

from .._core.inputs import as_tuple, format_args, format_baselines, format_output, is_tuple, tensorize_baselines
from .._core.targets import TargetType
from ._base import PerturbationAttribution
from .._core.futures import attribute_as_future
from .._core.progress import shows_progress
from .._core.perturbation import check_per_eval, evaluate_chunks, format_masks, forward_tensor, is_aggregate, values_to_inputs


def antithetic_permutations(n: int, n_feat: int) -> Tensor:
    """``n`` orderings of ``n_feat`` players (S, F), each followed by its reverse, from orthogonal
    directions (Mitchell et al. 2022's orthogonal spherical codes): an ordering is the argsort of
    a unit vector in the sum-zero subspace and its reverse that of the opposite vector; up to
    ``F - 1`` pairs at a time come from orthonormal vectors of a uniformly random frame, which
    spreads the orderings more evenly than independent draws."""
    n_pairs, dim = (n + 1) // 2, max(n_feat - 1, 1)
    halves = []
    for start in range(0, n_pairs, dim):
        g = torch.randn(n_feat, min(dim, n_pairs - start), dtype=torch.float64)
        q, r = torch.linalg.qr(g - g.mean(0))  # centred Gaussian columns: an isotropic frame
        halves.append((q * torch.sign(torch.diagonal(r))).T.argsort(-1))
    half = torch.cat(halves) if halves else torch.zeros(0, n_feat, dtype=torch.long)
    return torch.stack([half, half.flip(-1)], 1).reshape(-1, n_feat)[:n]


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
        baselines = tensorize_baselines(format_baselines(baselines, inputs), inputs)
        args = format_args(additional_forward_args)
        masks = format_masks(feature_mask, inputs)
        num_examples = inputs[0].shape[0]
        n_feat = int(max(int(m.max()) for m in masks if m.numel())) + 1

        with torch.no_grad():
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
                phi = self._sampled(inputs, baselines, masks, n_feat, n_samples, initial, target, args, per_eval)

            attrs = tuple(values_to_inputs(phi, m, initial.shape, x.shape) for x, m in zip(inputs, masks))
        return format_output(was_tuple, attrs)

    def _coalition_builder(self, inputs, baselines, masks, presence: Callable[[slice], Tensor]):
        """``build(sl)``: inputs where feature f of unit u is kept iff ``presence(sl)[u, f]``."""

        def build(sl: slice):
            z = presence(sl)  # (n, F) bool
            n = z.shape[0]
            out = []
            for x, b, m in zip(inputs, baselines, masks):
                keep = z[:, m.reshape(-1)].reshape((n,) + tuple(m.shape))  # (n, 1 or B, ...)
                pert = torch.where(keep, x.unsqueeze(0), b.unsqueeze(0))
                out.append(pert.expand((n,) + tuple(x.shape)).reshape((n * x.shape[0],) + tuple(x.shape[1:])))
            return tuple(out)

        return build

    def _sampled(self, inputs, baselines, masks, n_feat, n_samples, initial, target, args, per_eval):
        device = inputs[0].device
        perms = antithetic_permutations(n_samples, n_feat).to(device)  # (S, F)
        # position of each feature in each ordering
        pos = torch.empty_like(perms)
        pos.scatter_(1, perms, torch.arange(n_feat, device=device).expand(n_samples, n_feat))

        inner = n_feat - 1  # the last coalition of every walk is the input itself: evaluated once

        steps = torch.arange(inner, device=device)[None, :, None]

        def presence(sl: slice) -> Tensor:
            first, last = sl.start // inner, (sl.stop - 1) // inner + 1
            if sl.stop - sl.start >= inner:  # whole orderings: one broadcast compare, no gathers
                block = (pos[first:last, None, :] <= steps).reshape(-1, n_feat)
                return block[sl.start - first * inner:sl.stop - first * inner]
            u = torch.arange(sl.start, sl.stop, device=device)
            s, k = u // inner, u % inner
            return pos[s] <= k[:, None]  # features among the first k+1 of ordering s

        build = self._coalition_builder(inputs, baselines, masks, presence)
        final = forward_tensor(self.forward_func, inputs, target, args).reshape(initial.shape)
        outs = [out for _, out in evaluate_chunks(
            self.forward_func, build, n_samples * inner, per_eval, initial.shape, target, args, inputs)]
        shape = tuple(initial.shape)
        v = torch.cat(outs, 0).to(final.dtype) if outs else final.new_zeros((0,) + shape)
        v = torch.cat([initial.expand((n_samples, 1) + shape).to(final.dtype), v.reshape((n_samples, inner) + shape),
                       final.expand((n_samples, 1) + shape)], 1)
        marg = v[:, 1:] - v[:, :-1]  # (S, F, *out): contribution of feature perms[s, k]
        phi = torch.zeros((n_feat,) + tuple(initial.shape), dtype=marg.dtype, device=device)
        phi.index_add_(0, perms.reshape(-1), marg.reshape((-1,) + tuple(initial.shape)))
        return phi / n_samples

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
