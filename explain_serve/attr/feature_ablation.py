"""Feature ablation: replace a feature (group) by its baseline and measure the output change.

The attribution of a feature group is ``f(x) - f(x with the group set to its baseline)``, spread
over every input position of the group (the occlusion analysis of Zeiler & Fergus 2014 with
arbitrary groups). All perturbed copies of a chunk are built at once with broadcasting and
evaluated in one forward; the chunk size defaults to what fits in the memory budget
(``_core.batching.budget_units``) instead of Captum's one perturbation per forward.

The engine shared with the other perturbation methods lives in ``_core.perturbation``.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Tuple

import torch
from torch import Tensor

from .._core.futures import attribute_as_future
from .._core.inputs import (
    as_tuple,
    format_args,
    format_baselines,
    format_output,
    is_tuple,
    tensorize_baselines,
)
from .._core.progress import shows_progress
from .._core.targets import TargetType
from .._core.perturbation import (
    ablate_with_masks,
    check_per_eval,
    evaluate_chunks,
    fits_one_forward,
    format_masks,
    forward_tensor,
    forward_units,
    per_scalar_attributions,
    per_scalar_batch,
    is_aggregate,
    values_to_inputs,
)
from ._base import PerturbationAttribution
from .._core.errors import AttributionArgumentError

# --------------------------------------------------------------------------------------------
# FeatureAblation
# --------------------------------------------------------------------------------------------
class FeatureAblation(PerturbationAttribution):
    """Ablation attributions: ``f(x) - f(x with feature group g set to its baseline)``.

    The forward may return one scalar per example (attributions have the inputs' shapes) or a
    fixed-size output for the whole batch (attributions then have first dimension = that
    output's number of elements, as in Captum; feature masks must then be shared by all
    examples).
    """

    def __init__(self, forward_func: Callable) -> None:
        super().__init__(forward_func)
        self.use_weights = False

    # hooks for subclasses ----------------------------------------------------------------
    def _feature_ids(self, masks: Tuple[Tensor, ...]) -> Tensor:
        return torch.unique(torch.cat([m.reshape(-1) for m in masks]))

    @staticmethod
    def _default_feature_ids(inputs: Tuple[Tensor, ...]) -> Tensor:
        """The ids of the default masks, which number every scalar consecutively (no unique())."""
        return torch.arange(sum(x[0:1].numel() for x in inputs), device=inputs[0].device)

    def _build(self, sl: slice, feats: Tensor, inputs, baselines, masks) -> Tuple[Tensor, ...]:
        ids = feats[sl]
        out = []
        for x, b, m in zip(inputs, baselines, masks):
            sel = m.unsqueeze(0) == ids.view((-1,) + (1,) * m.dim())
            out.append(ablate_with_masks(x, b, sel))
        return tuple(out)

    # -------------------------------------------------------------------------------------
    @shows_progress
    def attribute(
        self,
        inputs,
        baselines=None,
        target: TargetType = None,
        additional_forward_args: Any = None,
        feature_mask=None,
        perturbations_per_eval: Optional[int] = None,
        show_progress: bool = False,
        **kwargs: Any,
    ):
        """Ablate each feature group (``feature_mask``; default: every scalar) to ``baselines``.

        ``perturbations_per_eval=None`` (default) evaluates as many ablated copies of the batch
        per forward as fit in the memory budget; an int bounds it. ``show_progress`` draws a
        progress bar on stderr.
        """
        was_tuple = is_tuple(inputs)
        inputs = as_tuple(inputs)
        check_per_eval(perturbations_per_eval)
        args = format_args(additional_forward_args)
        if feature_mask is None and self._lean_applies(inputs, perturbations_per_eval):
            if baselines is None or isinstance(baselines, (int, float)):
                replacement = 0 if baselines is None else baselines
            else:
                replacement = tensorize_baselines(format_baselines(baselines, inputs), inputs)[0]
            if not isinstance(replacement, Tensor) or replacement.dtype == inputs[0].dtype:
                return format_output(was_tuple, (self._lean(inputs[0], replacement, target, args),))
        baselines = tensorize_baselines(format_baselines(baselines, inputs), inputs)
        masks = format_masks(feature_mask, inputs)
        feats = self._default_feature_ids(inputs) if feature_mask is None else None
        attrs = self._ablation_attributions(
            inputs, baselines, masks, target, args, perturbations_per_eval, self._build, feats
        )
        return format_output(was_tuple, attrs)

    # the common case: one input, default feature mask, one forward ------------------------
    @staticmethod
    def _lean_applies(inputs, per_eval) -> bool:
        """One floating-point input whose copies (one per scalar, and the input) fit one forward."""
        return (len(inputs) == 1 and inputs[0].dim() > 0 and inputs[0].is_floating_point()
                and fits_one_forward(per_eval, inputs[0][0].numel() + 1, inputs))

    def _lean(self, x: Tensor, replacement, target, args) -> Tensor:
        """Default-mask attributions of one input from one forward (the input and one copy per
        scalar with that scalar replaced: ``per_scalar_batch``), with no mask or feature-id
        bookkeeping. An aggregating forward goes on to the general path with the same copies."""
        batch = per_scalar_batch(x, replacement)
        rows = x.shape[0]
        outs = forward_units(self.forward_func, (batch,), batch.shape[0] // rows, rows, target, args)
        if outs is not None:
            return per_scalar_attributions(outs, x.shape)
        build = lambda sl, *_: (batch[(sl.start + 1) * rows:(sl.stop + 1) * rows],)  # noqa: E731
        return self._ablation_attributions(
            (x,), (None,), format_masks(None, (x,)), target, args, None, build,
            self._default_feature_ids((x,)), one_forward=False,
        )[0]

    def attribute_future(self, *args: Any, **kwargs: Any):
        """``attribute`` for a forward that returns ``torch.futures.Future``; returns a Future."""
        return attribute_as_future(self, *args, **kwargs)

    def _ablation_attributions(self, inputs, baselines, masks, target, args, per_eval, build, feats=None, partial=False,
                               one_forward=True):
        """``partial``: ``feats`` leaves out some feature ids of the masks (their attribution is 0);
        ``one_forward=False``: the forward is known to aggregate, evaluate ``f(x)`` alone first."""
        if feats is None:
            feats = self._feature_ids(masks)
        n_feat = int(feats.numel())
        diffs, ablated = None, None
        if one_forward:
            diffs, ablated = self._diffs_in_one_forward(inputs, baselines, masks, target, args, per_eval, build, feats)
        if diffs is None:
            if ablated is not None:  # built already (random permutations drawn): evaluate those
                rows = inputs[0].shape[0]
                build = lambda sl, *_: tuple(a[sl.start * rows:sl.stop * rows] for a in ablated)  # noqa: E731
            diffs = self._diffs(inputs, baselines, masks, target, args, per_eval, build, feats)
        out_shape = diffs.shape[1:]
        n_out = out_shape.numel()
        attrs = []
        sorted_feats, order = torch.sort(feats)
        if partial:  # positions of features not evaluated read an extra row of zeros
            diffs = torch.cat([diffs, diffs.new_zeros((1,) + tuple(out_shape))], 0)
        for x, m in zip(inputs, masks):
            if partial:
                pos = torch.searchsorted(sorted_feats, m.contiguous()).clamp_(max=max(n_feat - 1, 0))
                rank = torch.where(sorted_feats[pos] == m, order[pos], n_feat) if n_feat else torch.zeros_like(m)
            else:
                rank = order[torch.searchsorted(sorted_feats, m.contiguous())]
            a = values_to_inputs(diffs, rank, out_shape, x.shape)
            attrs.append(a.reshape((n_out,) + tuple(x.shape[1:])))
        return tuple(attrs)

    def _diffs_in_one_forward(self, inputs, baselines, masks, target, args, per_eval, build, feats):
        """``f(x) - f(x with g ablated)`` (F, *out_shape) from one forward holding the unperturbed
        batch and every ablation, with the ablated inputs; None where that does not apply
        (``fits_one_forward``, a baseline of another dtype; the ablated inputs are also None
        then) or the forward aggregates the batch."""
        n_feat = int(feats.numel())
        if not fits_one_forward(per_eval, n_feat + 1, inputs) or any(
                b is not None and b.dtype != x.dtype for x, b in zip(inputs, baselines)):
            return None, None
        ablated = build(slice(0, n_feat), feats, inputs, baselines, masks)
        batch = tuple(torch.cat([x, a]) for x, a in zip(inputs, ablated))
        outs = forward_units(self.forward_func, batch, n_feat + 1, inputs[0].shape[0], target, args)
        return (None if outs is None else outs[0:1] - outs[1:]), ablated

    def _diffs(self, inputs, baselines, masks, target, args, per_eval, build, feats):
        """``f(x) - f(x with g ablated)`` (F, *out_shape): ``f(x)`` alone first (it tells an
        aggregating forward apart), then the ablations in chunks."""
        num_examples = inputs[0].shape[0]
        initial = forward_tensor(self.forward_func, inputs, target, args)
        if is_aggregate(initial, num_examples):
            if any(m.shape[0] != 1 for m in masks):
                raise AttributionArgumentError(
                    "Cannot provide different masks for each example when function returns a scalar."
                )
            if per_eval is not None and per_eval > 1:
                raise AttributionArgumentError("Cannot have perturbations_per_eval > 1 when function returns scalar.")
            per_eval = 1
        out_shape = initial.shape
        diffs = [initial.unsqueeze(0) - out for _, out in evaluate_chunks(
            self.forward_func,
            lambda sl: build(sl, feats, inputs, baselines, masks),
            int(feats.numel()),
            per_eval,
            out_shape,
            target,
            args,
            inputs,
        )]
        return torch.cat(diffs, 0) if diffs else initial.new_zeros((0,) + tuple(out_shape))
