"""NoiseTunnel: SmoothGrad (Smilkov et al., 2017), SmoothGrad-squared and VarGrad (Adebayo et al., 2018).

Wraps any attribution method: each example is repeated ``nt_samples`` times with Gaussian noise,
the wrapped method runs on the noisy copies (``nt_samples_batch_size`` samples per call, default
all of them in one call) and the attributions are averaged (or their squares / their variance).
The noise samples are drawn once per call and shared by the examples, so under a seed an example
gets the same answer in a batch as alone, whatever ``nt_samples_batch_size``.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

import torch

from .._core.batching import chunks
from .._core.samples import samples_per_example, shared_choice
from .._core.inputs import as_tuple, expand_args, format_args, format_baselines, format_output, is_tuple
from .._core.targets import expand_target
from ._base import Attribution, GradientAttribution
from .._core.errors import AttributionArgumentError

NT_TYPES = ("smoothgrad", "smoothgrad_sq", "vargrad")


def _expand_kwargs(kwargs: Dict[str, Any], inputs, n: int, draw_baseline_from_distrib: bool) -> Dict[str, Any]:
    """Per-example arguments of the wrapped method, repeated for ``n`` noisy copies of each example."""
    out = dict(kwargs)
    if out.get("additional_forward_args") is not None:
        out["additional_forward_args"] = expand_args(format_args(out["additional_forward_args"]), n, interleave=True)
    if "target" in out:
        out["target"] = expand_target(out["target"], n, interleave=True)
    if out.get("baselines") is not None:
        baselines = format_baselines(out["baselines"], inputs) if not draw_baseline_from_distrib else as_tuple(out["baselines"])
        bsz = inputs[0].shape[0]
        if draw_baseline_from_distrib:
            baselines = tuple(
                _rows(b, _on(shared_choice(b.shape[0], n, bsz), b.device)) if isinstance(b, torch.Tensor) else b
                for b in baselines
            )
        else:
            baselines = tuple(
                b.repeat_interleave(n, dim=0)
                if isinstance(b, torch.Tensor) and b.dim() > 0 and b.shape[0] == x.shape[0] and b.shape[0] > 1
                else b
                for b, x in zip(baselines, inputs)
            )
        out["baselines"] = baselines
    if out.get("feature_mask") is not None:
        masks = as_tuple(out["feature_mask"])
        masks = tuple(m.repeat_interleave(n, dim=0) if m.shape[0] > 1 else m for m in masks)
        out["feature_mask"] = masks if isinstance(out["feature_mask"], tuple) else masks[0]
    return out


def _on(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    return t if t.device == device else t.to(device)


def _rows(b: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``b[index]``; ``index_select`` where ``b`` is contiguous (cheaper there, slower on strides)."""
    return b.index_select(0, index) if b.is_contiguous() else b[index]


def _noise_samples(inputs, stdevs, nt_samples: int) -> list:
    """Per input, ``nt_samples`` noise samples of one example's shape (None where the stdev is 0),
    shared by every example of the batch: an example gets the noise it would get alone, and the
    chunking (``nt_samples_batch_size``) does not change it. Drawn from a generator seeded by one
    draw of torch's global RNG, so ``torch.manual_seed`` decides the noise."""
    if not any(stdevs):
        return [None] * len(inputs)
    seed = int(torch.randint(0, 2**62, (1,)).item())
    return [
        _on(torch.randn((nt_samples, *x.shape[1:]), generator=torch.Generator().manual_seed(seed + k), dtype=x.dtype),
            x.device) * s if s else None
        for k, (x, s) in enumerate(zip(inputs, stdevs))
    ]


class NoiseTunnel(Attribution):
    def __init__(self, attribution_method: Attribution) -> None:
        super().__init__(attribution_method.forward_func)
        self.attribution_method = attribution_method
        self.is_delta_supported = attribution_method.has_convergence_delta()
        self.is_gradient_method = isinstance(attribution_method, GradientAttribution)

    @property
    def multiplies_by_inputs(self) -> bool:
        return self.attribution_method.multiplies_by_inputs

    def has_convergence_delta(self) -> bool:
        return self.is_delta_supported

    def attribute(
        self,
        inputs,
        nt_type: str = "smoothgrad",
        nt_samples: int = 5,
        nt_samples_batch_size: Optional[int] = None,
        stdevs=1.0,
        draw_baseline_from_distrib: bool = False,
        **kwargs,
    ):
        if nt_type not in NT_TYPES:
            raise AttributionArgumentError(f"nt_type must be one of {', '.join(NT_TYPES)}, got {nt_type!r}")
        return_delta = bool(kwargs.pop("return_convergence_delta", False))
        if return_delta and not self.is_delta_supported:
            raise AttributionArgumentError(f"{type(self.attribution_method).__name__} has no convergence delta")
        was_tuple, inputs = is_tuple(inputs), as_tuple(inputs)
        stdevs = stdevs if isinstance(stdevs, tuple) else (stdevs,) * len(inputs)
        if len(stdevs) != len(inputs):
            raise AttributionArgumentError(f"got {len(stdevs)} stdevs for {len(inputs)} inputs")
        bsz = inputs[0].shape[0]
        noise = _noise_samples(inputs, stdevs, nt_samples)

        total = total_sq = None
        deltas = []
        attr_was_tuple = was_tuple
        for sl in chunks(nt_samples, nt_samples_batch_size):
            n = sl.stop - sl.start
            noisy = tuple(  # example after example, n samples each: (bsz, n, ...) flattened
                (x.unsqueeze(1) + e[sl].unsqueeze(0) if e is not None else x.unsqueeze(1).expand(-1, n, *x.shape[1:]))
                .reshape(-1, *x.shape[1:])
                for x, e in zip(inputs, noise)
            )
            part_kwargs = _expand_kwargs(kwargs, inputs, n, draw_baseline_from_distrib)
            if return_delta:
                part_kwargs["return_convergence_delta"] = True
            with samples_per_example(n):
                out = self.attribution_method.attribute(noisy if was_tuple else noisy[0], **part_kwargs)
            if return_delta:
                out, delta = out
                deltas.append(delta)
            attr_was_tuple = isinstance(out, tuple)
            out = as_tuple(out)
            if nt_type != "smoothgrad_sq":
                sums = tuple(a.reshape(bsz, n, *a.shape[1:]).sum(1) for a in out)
                total = sums if total is None else tuple(t + s for t, s in zip(total, sums))
            if nt_type != "smoothgrad":
                sqs = tuple((a * a).reshape(bsz, n, *a.shape[1:]).sum(1) for a in out)
                total_sq = sqs if total_sq is None else tuple(t + s for t, s in zip(total_sq, sqs))

        mean = tuple(t / nt_samples for t in total) if total is not None else None
        mean_sq = tuple(t / nt_samples for t in total_sq) if total_sq is not None else None
        if nt_type == "smoothgrad":
            result = mean
        elif nt_type == "smoothgrad_sq":
            result = mean_sq
        else:
            result = tuple(s - m * m for m, s in zip(mean, mean_sq))
        result = format_output(attr_was_tuple, result)
        return (result, torch.cat(deltas)) if return_delta else result
