"""A served model's self-description: what it takes, which methods it allows and within which limits.

Answered two ways from the same dict:

- TorchServe's customized describe, ``GET /models/{name}[/{version}]?customized=true`` on the
  management API: the handler's ``describe_handle`` output lands in the answer's
  ``customizedMetadata`` (a JSON string);
- the inference API, for clients without management access: ``POST /predictions/{name}[/{version}]``
  with the body ``{"describe": true}`` answers the same JSON.

Generic over the config: a kind this module does not know still gets its labels, input fields,
methods and limits, so a client can fall back to a JSON input.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np

from .config import method_limits
from .methods import METHODS, MethodSpec

DESCRIBE_FIELD = "describe"
REFERENCE_FILE = "reference.npy"  # packed by ``archive --reference-data``
_INPUT_FIELDS = ("shape", "variable_size", "min_size", "max_numel")


def asked(body: Any) -> bool:
    """The inference-API describe request: a JSON object whose only field is ``"describe": true``."""
    return isinstance(body, dict) and set(body) == {DESCRIBE_FIELD} and body[DESCRIBE_FIELD] is True


def _param(spec: MethodSpec, p, cfg: Dict[str, Any], limits: Dict[str, Any], baselines: list) -> Dict[str, Any]:
    defaults = (cfg["explain"].get("default_params") or {}).get(spec.name) or {}
    out: Dict[str, Any] = {"name": p.name, "type": p.kind, "default": defaults.get(p.name, p.default)}
    if p.low is not None:
        out["min"] = p.low
    if p.limit is not None and limits.get(p.limit) is not None:
        out["max"] = limits[p.limit]
    if p.choices:
        out["choices"] = list(p.choices)
    if p.kind == "baseline":
        out["choices"] = baselines  # or a number
        if out["default"] is None:
            out["default"] = cfg["explain"].get("baseline")
    return out


def _compiled(service, name: str) -> Any:
    """The parameters a compiled ONNX graph answers for ``name`` (False: the eager core serves it)."""
    backend = getattr(service, "onnx", None)
    explainer = backend.explainers.get(name) if backend is not None else None
    if explainer is None:
        return False
    spec = explainer.spec
    served = {"integrated_gradients": {"n_steps": spec.n_steps, "method": spec.integration},
              "layer_integrated_gradients": {"n_steps": spec.n_steps, "method": spec.integration},
              "saliency": {"abs": spec.abs}, "layer_grad_cam": {"relu_attributions": spec.relu_attributions}}
    return {"runtime": "onnxruntime", "params": served.get(name, {})}


def _example(service) -> Optional[list]:
    """The first row of the archive's reference data: a realistic starting point for an input form
    (the mean would equal the default baseline and explain nothing)."""
    path = Path(service.model_dir) / REFERENCE_FILE
    if not path.is_file():
        return None
    row = np.load(path, mmap_mode="r")[0]
    return [float(f"{float(v):.6g}") for v in np.asarray(row).reshape(-1)]


def describe(service) -> Dict[str, Any]:
    """The description of one loaded service (JSON-ready). A service with its own method table
    (``method_specs``, e.g. causal_lm's) and its own request limits (``describe_input``) says so."""
    cfg = service.cfg
    inp = cfg.get("input") or {}
    baselines = list(cfg["explain"].get("baselines") or {})
    methods = {}
    unavailable = getattr(service, "unavailable", {})
    specs = getattr(service, "method_specs", METHODS)
    per_method = isinstance(cfg["explain"]["methods"], dict)  # list: one set of limits for every method
    for name in cfg["explain"]["methods"]:
        spec = specs.get(name) or MethodSpec(name, name)  # a method another module registered: no known params
        limits = method_limits(cfg, name) if per_method else dict(cfg["explain"]["limits"])
        entry: Dict[str, Any] = {
            "params": [_param(spec, p, cfg, limits, baselines) for p in spec.params],
            "convergence_delta": spec.delta, "random": spec.random, "layer": spec.layer,
            "compiled": _compiled(service, name),
        }
        if name in unavailable:
            entry["unavailable"] = unavailable[name].message
        methods[name] = entry
    kind_input = {k: v for k, v in inp.items() if k in _INPUT_FIELDS}
    if "image" in inp:
        kind_input["image"] = {k: inp["image"][k] for k in ("mode", "size") if k in inp["image"]}
    if "features" in inp:
        kind_input["features"] = list(inp["features"])
    if cfg["kind"] == "tabular":
        example = _example(service)
        if example is not None:
            kind_input["example"] = example
    if "text" in inp:
        kind_input["text"] = {k: inp["text"][k] for k in ("max_tokens", "lowercase") if k in inp["text"]}
    if hasattr(service, "describe_input"):
        kind_input.update(service.describe_input())
    return {
        "model": service.model_name, "version": service.version, "kind": cfg["kind"],
        "labels": list(getattr(service, "labels", None) or []), "n_classes": getattr(service, "n_classes", None),
        "output": cfg.get("output"),
        "input": kind_input,
        "methods": methods, "default_method": cfg["explain"]["default_method"],
        "baselines": {"names": baselines, "default": cfg["explain"].get("baseline")},
        "limits": dict(cfg["explain"]["limits"]),
        "max_response_bytes": getattr(service, "response_limit", None),
        "heatmap": cfg["kind"] == "image",
    }


def _without_nulls(value: Any) -> Any:
    """Absent instead of null: TorchServe's management API drops null fields when it re-encodes the
    description, so both routes answer the same JSON only without them."""
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def to_json(service) -> str:
    return json.dumps(_without_nulls(describe(service)), separators=(",", ":"))
