"""Reading one request item: the body (JSON, raw image bytes, gRPC ``data``), its explain flag,
and the validated input tensor, target, method, parameters and output options.

Every check raises ``ServeError`` with the status and a message saying what to fix, so a bad item
fails alone and nothing about it reaches the model.
"""
from __future__ import annotations

import base64
import binascii
import io
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from .config import check_method, method_limits
from .errors import ServeError, bad, too_large
from .methods import METHODS, validate_params
from .tokenization import WordTokenizer

BODY_FIELDS = ("inputs", "target", "method", "params", "output")
TRUE = ("true", "1", "yes")


@dataclass
class Item:
    """One parsed request of a server-side batch."""

    index: int
    explain: bool
    x: Tensor  # one model input without the batch axis
    target: Any = "predicted"
    method: Optional[str] = None
    params: Dict[str, Any] = field(default_factory=dict)
    heatmap: bool = False
    tokens: Optional[List[str]] = None
    special: Optional[List[bool]] = None  # text: which tokens are special ([CLS], </s>, ...)


def is_true(value: Any) -> bool:
    if isinstance(value, (bytes, bytearray)):
        value = value.decode("utf-8", "replace")
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() in TRUE


def read_body(row: Dict[str, Any], content_type: Optional[str], kind: str) -> Any:
    """The request body as a dict (JSON) or raw image bytes; 4xx for anything else."""
    if not isinstance(row, dict):
        raise bad("empty request: send a JSON body {\"inputs\": ...}")
    value = row.get("body", row.get("data"))
    if value is None:
        raise bad("empty request: send a JSON body {\"inputs\": ...} (gRPC: input key 'data')")
    ctype = (content_type or "").split(";")[0].strip().lower()
    if isinstance(value, (dict, list)):
        if not isinstance(value, dict):
            raise bad("the body must be a JSON object such as {\"inputs\": ...}, not a JSON list")
        return value
    if isinstance(value, str):  # text/* content types arrive decoded
        raise ServeError(f"unsupported Content-Type {ctype or 'text'}: send application/json"
                         + (" or raw image bytes" if kind == "image" else ""), 415)
    if not isinstance(value, (bytes, bytearray)):
        raise bad("unreadable body")
    raw = bytes(value)
    if not raw.strip():
        raise bad("empty body: send a JSON body {\"inputs\": ...}")
    if ctype == "application/json" or (ctype == "" and raw.lstrip()[:1] in (b"{", b"[")):
        try:
            body = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise bad(f"the body is not valid JSON ({str(exc)[:200]}); send {{\"inputs\": ...}}") from exc
        if not isinstance(body, dict):
            raise bad("the body must be a JSON object such as {\"inputs\": ...}")
        return body
    if kind == "image" and (ctype in ("", "application/octet-stream") or ctype.startswith("image/")):
        return raw
    raise ServeError(f"unsupported Content-Type {ctype or '(none)'}: send application/json"
                     + (" or raw image bytes (image/png, image/jpeg)" if kind == "image" else ""), 415)


class Parser:
    """Validates items against one model's config (shapes, limits, vocabulary, labels)."""

    def __init__(self, cfg: Dict[str, Any], n_classes: int, vocab: Optional[Sequence[str]] = None, tokenizer=None):
        self.cfg = cfg
        self.kind = cfg["kind"]
        self.inp = cfg["input"]
        self.n_classes = n_classes
        if tokenizer is None and vocab is not None:
            txt = self.inp.get("text") or {}
            tokenizer = WordTokenizer(vocab, txt.get("unk_id", 1), txt.get("lowercase", True))
        self.tokenizer = tokenizer  # text: a ``tokenization`` tokenizer

    # -- the whole item ---------------------------------------------------------------------------
    def parse(self, index: int, body: Any, explain: bool) -> Item:
        if isinstance(body, (bytes, bytearray)):  # a raw image: the model's defaults for the rest
            item = Item(index, explain, self.image_bytes(bytes(body)))
            if explain:
                item.method, item.params = self._method(None, None)
            return item
        unknown = sorted(set(body) - set(BODY_FIELDS))
        if unknown:
            raise bad(f"unknown field(s) {', '.join(unknown)}; the body takes {', '.join(BODY_FIELDS)}")
        if "inputs" not in body:
            raise bad("missing 'inputs'", "inputs")
        tokens = special = None
        inputs = body["inputs"]
        if self.kind == "text" and isinstance(inputs, str):
            x, tokens, special = self.text(inputs)
        elif self.kind == "image" and isinstance(inputs, str):
            x = self.image_base64(inputs)
        elif self.kind == "tabular" and isinstance(inputs, dict):
            x = self.features(inputs)
        elif isinstance(inputs, list):
            x = self.nested(inputs)
            if self.kind == "text":
                tokens = self.tokenizer.tokens(x.tolist())
                special = [i in getattr(self.tokenizer, "special_ids", ()) for i in x.tolist()]
        else:
            raise bad(f"'inputs' must be {self._accepted()}, got {type(inputs).__name__}", "inputs")
        target = self.target(body.get("target", "predicted"))
        item = Item(index, explain, x, target, tokens=tokens, special=special)
        if explain:
            item.method, item.params = self._method(body.get("method"), body.get("params"))
            item.heatmap = self._output(body.get("output"))
        return item

    def _accepted(self) -> str:
        extra = {"image": " or a base64 PNG/JPEG string", "text": " or a string",
                 "tabular": " or an object of feature name -> value"}[self.kind]
        return f"a nested list shaped {self._shape_text()}{extra}"

    def _shape_text(self) -> str:
        shape = self.inp["shape"]
        if self.kind == "text":
            return "[n_tokens] of token ids"
        if self.kind == "image" and self.inp["variable_size"]:
            return f"[{shape[0]}, H, W]"
        return str(list(shape))

    def _method(self, method: Any, params: Any):
        ex = self.cfg["explain"]
        name = check_method(self.cfg, ex["default_method"] if method is None else method)
        defaults = (ex.get("default_params") or {}).get(name, {})
        return name, validate_params(METHODS[name], params, defaults, method_limits(self.cfg, name))

    def _output(self, output: Any) -> bool:
        if output is None:
            return False
        if not isinstance(output, dict) or set(output) - {"heatmap"}:
            raise bad("'output' must be an object such as {\"heatmap\": true}", "output")
        heatmap = output.get("heatmap", False)
        if not isinstance(heatmap, bool):
            raise bad("output.heatmap must be true or false", "output.heatmap")
        if heatmap and self.kind != "image":
            raise bad("heat maps are for image models", "output.heatmap")
        return heatmap

    def target(self, target: Any) -> Any:
        if target == "predicted" or target is None:
            return "predicted"
        if isinstance(target, bool) or not isinstance(target, int):
            raise bad(f"'target' must be \"predicted\" or a class index 0..{self.n_classes - 1}", "target")
        if not 0 <= target < self.n_classes:
            raise bad(f"target {target} is out of range: this model has {self.n_classes} classes (0..{self.n_classes - 1})", "target")
        return target

    # -- inputs -----------------------------------------------------------------------------------
    def _check_numel(self, numel: int) -> None:
        limit = int(self.inp["max_numel"])
        if numel > limit:
            raise too_large(f"input has {numel} values; this model accepts at most {limit} per item", "inputs")

    def nested(self, inputs: list) -> Tensor:
        try:
            arr = np.asarray(inputs, dtype=np.float64)
        except (ValueError, TypeError) as exc:
            raise bad(f"'inputs' must be a rectangular nested list of numbers shaped {self._shape_text()} ({exc})", "inputs") from exc
        self._check_numel(arr.size)
        if not np.isfinite(arr).all():
            raise bad("'inputs' contains NaN or infinity; send finite numbers", "inputs")
        self._check_shape(arr.shape)
        if self.kind == "text":
            if arr.size == 0 or not np.all(arr == np.round(arr)) or arr.min() < 0 or arr.max() >= len(self.tokenizer):
                raise bad(f"token ids must be integers in 0..{len(self.tokenizer) - 1}", "inputs")
            return torch.as_tensor(arr, dtype=torch.long)
        return torch.as_tensor(arr, dtype=torch.float32)

    def _check_shape(self, shape: Sequence[int]) -> None:
        want = self.inp["shape"]
        if self.kind == "text":
            if len(shape) != 1:
                raise bad(f"'inputs' has shape {list(shape)}; expected {self._shape_text()}", "inputs")
            if shape[0] > int(self.inp["text"]["max_tokens"]):
                raise too_large(f"{shape[0]} tokens; this model accepts at most {self.inp['text']['max_tokens']}", "inputs")
            return
        if len(shape) != len(want):
            raise bad(f"'inputs' has shape {list(shape)}; expected {self._shape_text()}", "inputs")
        if self.kind == "image" and self.inp["variable_size"]:
            low = int(self.inp["min_size"])
            if shape[0] != want[0] or min(shape[1:]) < low:
                raise bad(f"'inputs' has shape {list(shape)}; expected [{want[0]}, H, W] with H, W >= {low}", "inputs")
            return
        if list(shape) != list(want):
            raise bad(f"'inputs' has shape {list(shape)}; expected {list(want)}", "inputs")

    def features(self, inputs: Dict[str, Any]) -> Tensor:
        names = self.inp["features"]
        missing = [n for n in names if n not in inputs]
        unknown = sorted(set(inputs) - set(names))
        if unknown:
            raise bad(f"unknown feature(s): {', '.join(unknown[:10])}; expected the {len(names)} features {', '.join(names[:5])}, ...", "inputs")
        if missing:
            raise bad(f"missing feature(s): {', '.join(missing[:10])}" + (" ..." if len(missing) > 10 else ""), "inputs")
        values = []
        for n in names:
            v = inputs[n]
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise bad(f"feature {n!r} must be a number, got {type(v).__name__}", f"inputs.{n}")
            if not math.isfinite(v):
                raise bad(f"feature {n!r} is NaN or infinite; send a finite number", f"inputs.{n}")
            values.append(float(v))
        return torch.tensor(values, dtype=torch.float32)

    def text(self, text: str):
        """Token ids, token strings and special-token flags of ``text``; 4xx when empty or over the limit."""
        limit = int(self.inp["text"]["max_tokens"])
        if len(text) > 64 * limit:
            raise too_large(f"text of {len(text)} characters is over this model's limit ({64 * limit})", "inputs")
        enc = self.tokenizer.encode(text)
        if not enc.ids or all(enc.special):
            raise bad("the text has no tokens; send some words", "inputs")
        if len(enc.ids) > limit:
            raise too_large(f"{len(enc.ids)} tokens; this model accepts at most {limit}", "inputs")
        return torch.tensor(enc.ids, dtype=torch.long), enc.tokens, enc.special

    def image_base64(self, text: str) -> Tensor:
        if text.startswith("data:"):
            text = text.split(",", 1)[-1]
        try:
            raw = base64.b64decode(re.sub(r"\s+", "", text), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise bad("'inputs' is a string but not base64 image data; send a base64 PNG/JPEG or a nested list", "inputs") from exc
        return self.image_bytes(raw)

    def image_bytes(self, raw: bytes) -> Tensor:
        from PIL import Image, UnidentifiedImageError

        spec = self.inp["image"]
        try:
            img = Image.open(io.BytesIO(raw))
            w, h = img.size
            if w * h > 64 * int(self.inp["max_numel"]):
                raise too_large(f"image of {w}x{h} pixels is over this model's limit", "inputs")
            img = img.convert(spec["mode"]).resize((spec["size"][1], spec["size"][0]), Image.BILINEAR)
        except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
            raise bad(f"the image could not be decoded ({exc}); send a PNG or JPEG", "inputs") from exc
        arr = np.asarray(img, dtype=np.float32) * float(spec["scale"])
        arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
        if "mean" in spec:
            arr = (arr - np.asarray(spec["mean"], np.float32)[:, None, None]) / np.asarray(spec["std"], np.float32)[:, None, None]
        return torch.from_numpy(np.ascontiguousarray(arr))
