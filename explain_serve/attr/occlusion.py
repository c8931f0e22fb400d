"""Occlusion (Zeiler & Fergus 2014): slide a baseline-filled window over each input.

Each window position is one perturbation; its output change ``f(x) - f(x occluded)`` is credited
to every position the window covers, and each position's attribution is the mean over the
windows covering it. Window masks are built for a whole chunk at once as outer products of 1-D
interval indicators, so no per-window Python work touches the tensors.
"""
from __future__ import annotations

import math
from typing import Any, Optional, Tuple

import torch
from torch import Tensor

from .._core.inputs import as_tuple, format_args, format_baselines, format_output, is_tuple, tensorize_baselines
from .._core.targets import TargetType
from .._core.perturbation import ablate_with_masks, check_per_eval, evaluate_chunks, forward_tensor, is_aggregate
from .._core.progress import shows_progress
from .feature_ablation import FeatureAblation
from .._core.errors import AttributionArgumentError


def _format_strides(strides, inputs: Tuple[Tensor, ...]):
    if strides is None:
        strides = tuple(1 for _ in inputs)
    if len(inputs) == 1 and not (isinstance(strides, tuple) and len(strides) == 1):
        strides = (strides,)
    if not (isinstance(strides, tuple) and len(strides) == len(inputs)):
        raise AttributionArgumentError("Strides must be provided for each input tensor.")
    out = []
    for s, x in zip(strides, inputs):
        if isinstance(s, int):
            s = (s,) * (x.dim() - 1)
        if not (isinstance(s, tuple) and len(s) == x.dim() - 1):
            raise AttributionArgumentError(f"stride {s} is invalid for input of shape {tuple(x.shape)}")
        out.append(tuple(int(v) for v in s))
    return tuple(out)


def _format_windows(shapes, inputs: Tuple[Tensor, ...]):
    if isinstance(shapes[0], int):
        shapes = (shapes,)
    if len(shapes) != len(inputs):
        raise AttributionArgumentError("Must provide sliding window dimensions for each input tensor.")
    for s, x in zip(shapes, inputs):
        if not (isinstance(s, tuple) and len(s) == x.dim() - 1):
            raise AttributionArgumentError(f"window {s} should be a tuple with {x.dim() - 1} dimensions")
    return tuple(tuple(int(v) for v in s) for s in shapes)


class Occlusion(FeatureAblation):
    """Sliding-window occlusion with Captum's window placement (``ceil((n - w) / s) + 1`` per dim,
    the last window clipped at the border) and averaging of overlapping windows."""

    def __init__(self, forward_func) -> None:
        super().__init__(forward_func)
        self.use_weights = True

    @staticmethod
    def _window_masks(idx: Tensor, shape, window, stride, counts) -> Tensor:
        """Bool masks ``(n, *shape)`` of windows number ``idx`` (first dim varies fastest)."""
        masks = None
        rem = idx
        nd = len(shape)
        for d in range(nd):
            pos = (rem % counts[d]) * stride[d]
            rem = rem // counts[d]
            ar = torch.arange(shape[d], device=idx.device)
            ind = (ar >= pos[:, None]) & (ar < pos[:, None] + window[d])  # (n, L_d)
            ind = ind.reshape((ind.shape[0],) + (1,) * d + (shape[d],) + (1,) * (nd - d - 1))
            masks = ind if masks is None else masks & ind
        if masks is None:  # 1-D inputs (no non-batch dims)
            masks = torch.ones((idx.shape[0],), dtype=torch.bool, device=idx.device)
        return masks

    def attribute_future(self, *args, **kwargs):
        raise NotImplementedError("attribute_future is not implemented for Occlusion")

    @shows_progress
    def attribute(  # type: ignore[override]
        self,
        inputs,
        sliding_window_shapes,
        strides=None,
        baselines=None,
        target: TargetType = None,
        additional_forward_args: Any = None,
        perturbations_per_eval: Optional[int] = None,
        show_progress: bool = False,
    ):
        """Occlude each window position (``sliding_window_shapes``, ``strides`` per input)."""
        was_tuple = is_tuple(inputs)
        inputs = as_tuple(inputs)
        check_per_eval(perturbations_per_eval)
        strides = _format_strides(strides, inputs)
        windows = _format_windows(sliding_window_shapes, inputs)
        counts = []
        for x, w, s in zip(inputs, windows, strides):
            shape = tuple(x.shape[1:])
            c = []
            for n, wd, sd in zip(shape, w, s):
                if wd > n:
                    raise AttributionArgumentError(f"Sliding window dimensions {w} cannot exceed input dimensions {shape}.")
                if n - wd > 0 and sd > wd:
                    raise AttributionArgumentError(f"Stride dimension {s} cannot be larger than sliding window shape dimension {w}.")
                c.append(math.ceil((n - wd) / sd) + 1)
            counts.append(tuple(c))
        n_windows = [math.prod(c) for c in counts]
        offsets = [sum(n_windows[:i]) for i in range(len(inputs))]
        total = sum(n_windows)

        baselines = tensorize_baselines(format_baselines(baselines, inputs), inputs)
        args = format_args(additional_forward_args)
        num_examples = inputs[0].shape[0]
        initial = forward_tensor(self.forward_func, inputs, target, args)
        per_eval = perturbations_per_eval
        if is_aggregate(initial, num_examples):
            if per_eval is not None and per_eval > 1:
                raise AttributionArgumentError("Cannot have perturbations_per_eval > 1 when function returns scalar.")
            per_eval = 1
        device = inputs[0].device

        def masks_for(i: int, sl: slice) -> Tensor:
            """Window masks of input ``i`` for global units ``sl`` (all False outside input i)."""
            x = inputs[i]
            shape = tuple(x.shape[1:])
            glob = torch.arange(sl.start, sl.stop, device=device)
            local = glob - offsets[i]
            inside = (local >= 0) & (local < n_windows[i])
            m = self._window_masks(local.clamp(0, max(n_windows[i] - 1, 0)), shape, windows[i], strides[i], counts[i])
            return m & inside.view((-1,) + (1,) * len(shape))

        def build(sl: slice):
            return tuple(
                ablate_with_masks(x, b, masks_for(i, sl).unsqueeze(1))
                for i, (x, b) in enumerate(zip(inputs, baselines))
            )

        n_out = initial.numel()
        totals = [initial.new_zeros((n_out, x[0].numel())) for x in inputs]
        weights = [initial.new_zeros((x[0].numel(),)) for x in inputs]
        for sl, out in evaluate_chunks(self.forward_func, build, total, per_eval, initial.shape, target, args, inputs):
            diff = (initial.unsqueeze(0) - out).reshape(sl.stop - sl.start, n_out)
            for i in range(len(inputs)):
                lo, hi = max(sl.start, offsets[i]), min(sl.stop, offsets[i] + n_windows[i])
                if lo >= hi:
                    continue
                m = masks_for(i, slice(lo, hi)).reshape(hi - lo, -1).to(diff.dtype)
                totals[i] += diff[lo - sl.start : hi - sl.start].transpose(0, 1) @ m
                weights[i] += m.sum(0)
        attrs = tuple(
            (t / w).reshape((n_out,) + tuple(x.shape[1:])) for t, w, x in zip(totals, weights, inputs)
        )
        return format_output(was_tuple, attrs)
