"""Permutation feature importance (Breiman 2001; Fisher, Rudin & Dominici 2019).

A feature ablation whose "baseline" is the same feature taken from another example of the batch:
the feature (group) is shuffled across the batch and the output change is its attribution. The
random permutations are drawn per feature, then per input tensor holding it, in feature order
(the order Captum uses with one perturbation per forward), so a seeded run matches Captum.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import torch
from torch import Tensor

from .._core.inputs import as_tuple, format_args, format_output, is_tuple
from .._core.targets import TargetType
from .._core.perturbation import check_per_eval, format_masks
from .feature_ablation import FeatureAblation


def _permute_feature(x: Tensor, feature_mask: Tensor) -> Tensor:
    """Default ``perm_func``: shuffle the masked positions across the batch (never the identity)."""
    return torch.where(feature_mask, x[_random_permutation(x.shape[0], x.device)], x)


def _random_permutation(n: int, device=None) -> Tensor:
    if n < 2:
        raise AssertionError("cannot permute features with batch_size = 1")
    identity = torch.arange(n)
    perm = torch.randperm(n)
    while torch.equal(perm, identity):
        perm = torch.randperm(n)
    return perm.to(device) if device is not None else perm


class FeaturePermutation(FeatureAblation):
    """Permutation importance: ``f(x) - f(x with feature g shuffled across the batch)``.

    ``perm_func(x, mask)`` may replace the default shuffle; it gets one input tensor (the batch)
    and a bool mask of the feature's positions and returns the perturbed batch.
    """

    def __init__(self, forward_func: Callable, perm_func: Callable[[Tensor, Tensor], Tensor] = _permute_feature) -> None:
        super().__init__(forward_func)
        self.perm_func = perm_func

    def _feature_ids(self, masks):
        # discovery order: the features of input 0 (sorted), then new ones of input 1, ...
        seen, order = set(), []
        for m in masks:
            for v in torch.unique(m).tolist():
                if v not in seen:
                    seen.add(v)
                    order.append(v)
        return torch.tensor(order, dtype=torch.long, device=masks[0].device)

    def _build(self, sl, feats, inputs, baselines, masks):
        ids = feats[sl].tolist()
        n = len(ids)
        holders = [set(torch.unique(m).tolist()) for m in masks]
        default = self.perm_func is _permute_feature
        b = inputs[0].shape[0]
        identity = torch.arange(b)
        perms = [[identity] * n for _ in inputs] if default else None
        custom = [[x for _ in range(n)] for x in inputs] if not default else None
        for j, f in enumerate(ids):
            for i, m in enumerate(masks):
                if f not in holders[i]:
                    continue
                if default:
                    perms[i][j] = _random_permutation(b)
                else:
                    custom[i][j] = self.perm_func(inputs[i], m == f)
        out = []
        for i, (x, m) in enumerate(zip(inputs, masks)):
            if not default:
                out.append(torch.cat(custom[i], 0))
                continue
            sel = m.unsqueeze(0) == torch.tensor(ids, device=m.device).view((-1,) + (1,) * m.dim())
            shuffled = x[torch.cat(perms[i]).to(x.device)].reshape((n,) + tuple(x.shape))
            out.append(torch.where(sel, shuffled, x.unsqueeze(0)).reshape((n * b,) + tuple(x.shape[1:])))
        return tuple(out)

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
        masks = format_masks(feature_mask, inputs)
        baselines = tuple(None for _ in inputs)
        attrs = self._ablation_attributions(inputs, baselines, masks, target, args, perturbations_per_eval, self._build)
        return format_output(was_tuple, attrs)
