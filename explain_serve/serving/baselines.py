"""Named baselines: computed once (reference statistics when archiving, fixed tensors when the model
loads); only ``blur`` depends on the request and is computed per item.

Types: ``zeros``, ``constant`` (``value``), ``mean`` and ``kmeans`` (``k`` centroids, a distribution
for GradientShap / DeepLiftShap) of the reference data shipped in the archive, ``blur`` (Gaussian,
``sigma``), ``uniform`` noise (``low``, ``high``, fixed ``seed``), ``pad`` (text: all padding tokens).
"""
from __future__ import annotations

import math
from typing import Any, Dict, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import bad

PRECOMPUTED_NAME = "baselines.npz"


def precompute(cfg: Dict[str, Any], reference: Optional[np.ndarray]) -> Dict[str, np.ndarray]:
    """Reference statistics for ``mean`` and ``kmeans`` baselines (run when archiving)."""
    out: Dict[str, np.ndarray] = {}
    for name, b in cfg["explain"]["baselines"].items():
        kind = b.get("type")
        if kind not in ("mean", "kmeans"):
            continue
        if reference is None:
            raise ValueError(f"baseline {name!r} needs reference data")
        data = np.asarray(reference, dtype=np.float32)
        flat = data.reshape(len(data), -1)
        if kind == "mean":
            out[name] = flat.mean(0).reshape(1, *data.shape[1:])
        else:
            from sklearn.cluster import KMeans

            k = min(int(b.get("k", 8)), len(flat))
            km = KMeans(n_clusters=k, n_init=4, random_state=int(b.get("seed", 0))).fit(flat)
            out[name] = km.cluster_centers_.astype(np.float32).reshape(k, *data.shape[1:])
    return out


def gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur over the last two axes of (N, C, H, W), edges replicated."""
    radius = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    k = k / k.sum()
    c = x.shape[1]
    y = F.pad(x, (radius, radius, radius, radius), mode="replicate")
    y = F.conv2d(y, k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(y, k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


class Baselines:
    """The model's named baselines, ready to use; ``resolve`` turns a request's choice into a core argument."""

    def __init__(self, cfg: Dict[str, Any], precomputed: Dict[str, np.ndarray], dtype: torch.dtype = torch.float32):
        self.cfg = cfg
        self.kind = cfg["kind"]
        self.specs = cfg["explain"]["baselines"]
        self.default = cfg["explain"]["baseline"]
        shape = cfg["input"]["shape"]
        self.tensors: Dict[str, Tensor] = {}
        self.keep_ids: Sequence[int] = ()  # text: token ids the pad baseline keeps (special tokens)
        for name, b in self.specs.items():
            kind = b.get("type")
            if kind in ("mean", "kmeans"):
                self.tensors[name] = torch.as_tensor(precomputed[name], dtype=dtype)
            elif kind == "uniform" and None not in shape:
                gen = torch.Generator().manual_seed(int(b.get("seed", 0)))
                low, high = float(b.get("low", 0.0)), float(b.get("high", 1.0))
                self.tensors[name] = low + (high - low) * torch.rand(1, *shape, generator=gen, dtype=dtype)
            elif kind not in ("zeros", "constant", "blur", "pad", "uniform"):
                raise ValueError(f"baseline {name!r}: unknown type {kind!r}")

    def names(self) -> Sequence[str]:
        return list(self.specs)

    def resolve(self, choice: Union[None, str, int, float], x: Tensor, distribution: bool) -> Any:
        """The ``baselines`` argument for inputs ``x`` (N, ...): a number or a tensor."""
        if choice is None:
            choice = self.default
        if not isinstance(choice, str):
            value = float(choice)
            if not x.is_floating_point():
                return torch.full((1, *x.shape[1:]), int(value), dtype=x.dtype)
            return torch.full((1, *x.shape[1:]), value, dtype=x.dtype) if distribution else value
        spec = self.specs.get(choice)
        if spec is None:
            raise bad(f"unknown baseline {choice!r}; this model has: {', '.join(self.specs)} (or send a number)",
                      "params.baselines")
        kind = spec["type"]
        if kind == "zeros" or kind == "constant":
            value = float(spec.get("value", 0.0)) if kind == "constant" else 0.0
            return torch.full((1, *x.shape[1:]), value, dtype=x.dtype) if distribution else value
        if kind == "pad":
            pad = torch.full_like(x, int(self.cfg["input"]["text"]["pad_id"]))
            if self.keep_ids:
                pad = torch.where(torch.isin(x, torch.tensor(list(self.keep_ids), dtype=x.dtype)), x, pad)
            return pad
        if kind == "blur":
            if self.kind != "image":
                raise bad("the blur baseline is for image inputs", "params.baselines")
            return gaussian_blur(x, float(spec.get("sigma", 1.0)))
        t = self.tensors.get(choice)
        if t is None or t.shape[1:] != x.shape[1:]:
            have = "" if t is None else f" {list(t.shape[1:])}"
            raise bad(f"baseline {choice!r} is precomputed for inputs of shape{have or ' ' + str(self.cfg['input']['shape'])}, "
                      f"not {list(x.shape[1:])}; use zeros, blur or a number", "params.baselines")
        if t.shape[0] > 1 and not distribution:
            raise bad(f"baseline {choice!r} is a distribution of {t.shape[0]} references; use it with "
                      "gradient_shap or deep_lift_shap", "params.baselines")
        return t
