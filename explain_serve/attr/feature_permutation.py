"""Permutation feature importance (Breiman 2001; Fisher, Rudin & Dominici 2019).

A feature ablation whose "baseline" is the same feature taken from another example of the batch:
the feature (group) is shuffled across the batch and the output change is its attribution. The
random permutations are drawn per feature, then per input tensor holding it, in feature order
(the order Captum uses with one perturbation per forward), so a seeded run matches Captum.
"""
from __future__ import annotations

import warnings
from typing import Any, Callable, Optional

import torch
from torch import Tensor

from .._core.inputs import as_tuple, format_args, format_output, is_tuple
from .._core.progress import shows_progress
from .._core.targets import TargetType
from .._core.perturbation import check_per_eval, format_masks, select
from .feature_ablation import FeatureAblation
from .._core.errors import AttributionArgumentError


def _permute_feature(x: Tensor, feature_mask: Tensor) -> Tensor:
    """Default ``perm_func``: shuffle the masked positions across the batch (never the identity)."""
    return torch.where(feature_mask, x[_random_permutation(x.shape[0], x.device)], x)


def _random_permutation(n: int, device=None, identity: Optional[Tensor] = None) -> Tensor:
    """A uniform permutation of ``range(n)`` other than the identity (``identity``: a cached
    ``arange(n)``, spared per call)."""
    if n < 2:
        raise AttributionArgumentError("cannot permute features with batch_size = 1")
    if identity is None:
        identity = torch.arange(n)
    perm = torch.randperm(n)
    while torch.equal(perm, identity):
        perm = torch.randperm(n)
    return perm.to(device) if device is not None else perm


def _random_permutations(n: int, count: int) -> Tensor:
    """``count`` draws of ``_random_permutation(n)`` stacked ``(count, n)``, from the same random
    stream: drawn at once and checked with one comparison; only if one drew the identity are
    they drawn again one by one (Captum redraws that one at once)."""
    identity = torch.arange(n)
    state = torch.get_rng_state()
    perms = torch.stack([torch.randperm(n) for _ in range(count)]) if count else identity.new_zeros((0, n))
    if bool((perms == identity).all(1).any()):
        torch.set_rng_state(state)
        perms = torch.stack([_random_permutation(n, identity=identity) for _ in range(count)])
    return perms


class FeaturePermutation(FeatureAblation):
    """Permutation importance: ``f(x) - f(x with feature g shuffled across the batch)``.

    ``perm_func(x, mask)`` may replace the default shuffle; it gets one input tensor (the batch)
    and a bool mask of the feature's positions and returns the perturbed batch.
    """

    def __init__(self, forward_func: Callable, perm_func: Callable[[Tensor, Tensor], Tensor] = _permute_feature) -> None:
        super().__init__(forward_func)
        self.perm_func = perm_func
        # a feature held by an input tensor with fewer examples than this is not permuted
        # (attribution 0, with a warning), as in Captum
        self._min_examples_per_batch_grouped: Optional[int] = 2

    def _feature_ids(self, masks):
        # discovery order: the features of input 0 (sorted), then new ones of input 1, ...
        seen, order = set(), []
        for m in masks:
            for v in torch.unique(m).tolist():
                if v not in seen:
                    seen.add(v)
                    order.append(v)
        return torch.tensor(order, dtype=torch.long, device=masks[0].device)

    def _permutable(self, feats: Tensor, inputs, masks) -> Tensor:
        """The features whose every holding input has at least ``_min_examples_per_batch_grouped``
        examples (the others keep attribution 0, with a warning)."""
        least = self._min_examples_per_batch_grouped
        if least is None:
            return feats
        small = [torch.unique(m) for x, m in zip(inputs, masks) if x.shape[0] < least and x.numel()]
        if not small:
            return feats
        skip = torch.isin(feats, torch.cat(small))
        if bool(skip.any()):
            warnings.warn(
                f"Skipping feature groups {feats[skip].tolist()}: they are held by an input tensor with "
                f"fewer than {least} examples, so they cannot be permuted across the batch (attribution 0)",
                stacklevel=4,
            )
        return feats[~skip]

    def _build(self, sl, feats, inputs, baselines, masks):
        ids = feats[sl].tolist()
        n = len(ids)
        holders = [set(torch.unique(m).tolist()) for m in masks]
        default = self.perm_func is _permute_feature
        identities = [torch.arange(x.shape[0]) for x in inputs]
        perms = [[ident] * n for ident in identities] if default else None  # rows stacked below
        custom = [[x for _ in range(n)] for x in inputs] if not default else None
        for j, f in enumerate(ids):
            for i, m in enumerate(masks):
                if f not in holders[i]:
                    continue
                if default:
                    perms[i][j] = _random_permutation(inputs[i].shape[0], identity=identities[i])
                else:
                    custom[i][j] = self.perm_func(inputs[i], m == f)
        out = []
        for i, (x, m) in enumerate(zip(inputs, masks)):
            if not default:
                out.append(torch.cat(custom[i], 0))
                continue
            sel = m.unsqueeze(0) == torch.tensor(ids, device=m.device).view((-1,) + (1,) * m.dim())
            rows = torch.cat(perms[i]) if n else identities[i][:0]
            shuffled = x[rows.to(x.device)].reshape((n,) + tuple(x.shape))
            out.append(select(sel, shuffled, x.unsqueeze(0)).reshape((n * x.shape[0],) + tuple(x.shape[1:])))
        return tuple(out)

    @shows_progress
    def attribute(  # type: ignore[override]
        self,
        inputs,
        target: TargetType = None,
        additional_forward_args: Any = None,
        feature_mask=None,
        perturbations_per_eval: Optional[int] = None,
        show_progress: bool = False,
        **kwargs: Any,
    ):
        """Shuffle each feature group (``feature_mask``; default every scalar) across the batch."""
        was_tuple = is_tuple(inputs)
        inputs = as_tuple(inputs)
        check_per_eval(perturbations_per_eval)
        args = format_args(additional_forward_args)
        if (feature_mask is None and self.perm_func is _permute_feature
                and self._lean_applies(inputs, perturbations_per_eval)
                and inputs[0].shape[0] >= max(2, self._min_examples_per_batch_grouped or 0)):
            # one input, default masks: every scalar shuffled by its own permutation, one forward
            # (scalar i of example j taken from example perm_i[j]: one gather, shaped like x)
            x = inputs[0]
            b = x.shape[0]
            perms = _random_permutations(b, x[0].numel()).T
            flat = x.reshape(b, -1)
            shuffled = flat.gather(0, perms if perms.device == x.device else perms.to(x.device))
            return format_output(was_tuple, (self._lean(x, shuffled.reshape(x.shape), target, args),))
        masks = format_masks(feature_mask, inputs)
        baselines = tuple(None for _ in inputs)
        feats = self._default_feature_ids(inputs) if feature_mask is None else self._feature_ids(masks)
        kept = self._permutable(feats, inputs, masks)
        attrs = self._ablation_attributions(
            inputs, baselines, masks, target, args, perturbations_per_eval, self._build, kept,
            partial=kept.numel() != feats.numel(),
        )
        return format_output(was_tuple, attrs)
