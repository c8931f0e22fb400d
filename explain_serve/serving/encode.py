"""Compact JSON for responses, PNG heat maps, and response-size estimates made before computing.

Floats are written with 7 significant digits (float32 precision), so an attribution costs at most
``BYTES_PER_VALUE`` bytes and the size of an answer is known from its shape alone.
"""
from __future__ import annotations

import base64
import io
import json
import math
from typing import Any, Optional, Sequence

import numpy as np
from torch import Tensor

BYTES_PER_VALUE = 15  # "-1.234567e-05," at most
OVERHEAD = 1024
HEATMAP_MIN_SIDE = 64
HEATMAP_MAX_SIDE = 512


def dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), allow_nan=False)


def floats(values: Any) -> Any:
    """A tensor or array as nested lists of 7-significant-digit floats (non-finite -> null)."""
    arr = values.detach().cpu().double().numpy() if isinstance(values, Tensor) else np.asarray(values, np.float64)
    flat = [float(f"{v:.7g}") for v in arr.ravel().tolist()]
    if arr.ndim == 0:
        return flat[0] if math.isfinite(flat[0]) else None
    if not all(math.isfinite(v) for v in flat):
        obj = np.array([v if math.isfinite(v) else None for v in flat], dtype=object)
        return obj.reshape(arr.shape).tolist()
    return np.asarray(flat, dtype=np.float64).reshape(arr.shape).tolist()


def heatmap_side(h: int, w: int) -> tuple:
    scale = max(1, min(HEATMAP_MAX_SIDE // max(h, w), -(-HEATMAP_MIN_SIDE // max(h, w))))
    return h * scale, w * scale


def heatmap_png(attr: Tensor) -> str:
    """Base64 PNG of a (C, H, W) attribution: red positive, blue negative, scaled by max |value|."""
    from PIL import Image

    a = attr.detach().double().sum(0).cpu().numpy() if attr.dim() == 3 else attr.detach().double().cpu().numpy()
    m = float(np.abs(a).max()) if a.size else 0.0
    a = a / m if m > 0 else a * 0
    rgb = np.full(a.shape + (3,), 255.0)
    pos, neg = np.clip(a, 0, 1), np.clip(-a, 0, 1)
    rgb[..., 1] -= 255 * (pos + neg)
    rgb[..., 2] -= 255 * pos
    rgb[..., 0] -= 255 * neg
    img = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), "RGB")
    h, w = heatmap_side(*a.shape)
    img = img.resize((w, h), Image.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def estimate_bytes(input_numel: int, n_classes: int, heatmap_hw: Optional[Sequence[int]] = None,
                   n_tokens: int = 0, feature_chars: int = 0) -> int:
    """An upper bound of one explanation response's size (refuse before computing when over)."""
    total = OVERHEAD + BYTES_PER_VALUE * (input_numel + n_classes) + 24 * n_classes
    if heatmap_hw is not None:
        h, w = heatmap_side(*heatmap_hw)
        total += (h * w * 3 + h + 1024) * 4 // 3 + 4
    total += n_tokens * (BYTES_PER_VALUE + 24) + feature_chars  # tokens: {"token":..,"score":..} each
    return total
