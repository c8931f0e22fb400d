"""The per-model explain config (``explain.yaml`` in the archive) and its defaults.

Fields (all optional except ``kind``)::

    kind: image | tabular | text
    model: {class: "pkg.module:Class" or a class of the archived model file, kwargs: {...}}
           # file: the archived model file (a plain file name in the archive, as is input.text.vocab)
           # absent: the serialized file is TorchScript
    labels: [..]                      # class names; default "0", "1", ...
    output: logits | probabilities    # what the model returns (default logits)
    torch_threads: 1                  # intra-op threads of the worker (env EXPLAIN_SERVE_TORCH_THREADS wins)
    input:
      shape: [C, H, W] | [n_features]  # one item without the batch axis
      variable_size: false            # image: H, W may differ from shape (fully convolutional models)
      min_size: 1                     # image: smallest H, W when variable_size
      max_numel: 1048576              # input size limit (values per item)
      image: {mode: L | RGB, size: [H, W], scale: 1/255, mean: [..], std: [..]}   # decoding PNG/JPEG
      features: [names]               # tabular
      text: {vocab: vocab.json, max_tokens: 128, pad_id: 0, unk_id: 1, lowercase: true}
                                      # or {tokenizer: huggingface, max_tokens: 128} (Hugging Face archives)
    explain:
      default_method: integrated_gradients
      default_params: {method_name: {param: value}}
      methods: [names] or {name: {max_n_steps: ..}}   # allowed methods (default: all that fit the kind)
      limits: {max_n_steps: 256, max_n_samples: 500, max_nt_samples: 64, max_stdevs: 10, max_evaluations: 8192}
      max_response_bytes: 6553500     # also capped by the server's max_response_size
      warmup_seconds: 30              # load-time budget for warming every allowed method once
      layer: conv2                    # module name for layer methods
      baseline: zeros                 # default named baseline
      baselines: {name: {type: zeros | constant | mean | kmeans | blur | uniform | pad, ...}}
"""
from __future__ import annotations

import copy
from pathlib import Path, PurePosixPath
from typing import Any, Dict, List, Optional

from .errors import ServeError
from .methods import DEFAULT_LIMITS, METHODS

KINDS = ("image", "tabular", "text")
DEFAULT_MAX_RESPONSE = 6553500  # TorchServe's default max_response_size
CONFIG_NAME = "explain.yaml"


class ConfigError(ValueError):
    """A config that cannot serve; raised when archiving and when the model loads."""


def load_file(path: Path) -> Dict[str, Any]:
    import yaml

    data = yaml.safe_load(Path(path).read_text())
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the explain config must be a mapping")
    return data


def check_file_name(name: Any, field: str) -> str:
    """``name`` as a file of the archive: a plain file name, nothing that could point outside it.

    An archive's files sit side by side in one folder; ``..``, absolute paths and sub-folders are
    refused so that a config can never make ``archive`` or a worker read or execute another file.
    """
    if not isinstance(name, str) or not name.strip() or "\x00" in name:
        raise ConfigError(f"{field} must be a file name inside the archive, got {name!r}")
    if PurePosixPath(name.replace("\\", "/")).name != name or name in (".", ".."):
        raise ConfigError(f"{field} must be a plain file name inside the archive (no folders, '..' or absolute "
                          f"paths), got {name!r}; pack the file with --extra-files and name it as FILE.ext")
    return name


def archive_file(model_dir: Path, name: Any, field: str) -> Path:
    """The path of the archive's file ``name`` in ``model_dir``; refuses names or links that leave it."""
    path = Path(model_dir) / check_file_name(name, field)
    if not path.resolve().is_relative_to(Path(model_dir).resolve()):
        raise ConfigError(f"{field}: {name!r} links outside the archive; pack the file itself")
    return path


def check_paths(raw: Dict[str, Any]) -> None:
    """Refuse file names in a raw config that could leave the archive (model.file, input.text.vocab)."""
    model = raw.get("model") or {}
    if isinstance(model, dict) and model.get("file") is not None:
        check_file_name(model["file"], "model.file")
    text = (raw.get("input") or {}).get("text") if isinstance(raw.get("input"), dict) else None
    if isinstance(text, dict) and text.get("vocab") is not None:
        check_file_name(text["vocab"], "input.text.vocab")


def default_baselines(kind: str, has_reference: bool) -> Dict[str, Dict[str, Any]]:
    if kind == "text":
        return {"pad": {"type": "pad"}}
    out: Dict[str, Dict[str, Any]] = {"zeros": {"type": "zeros"}}
    if has_reference:
        out["mean"] = {"type": "mean"}
        out["kmeans"] = {"type": "kmeans", "k": 8}
    if kind == "image":
        out["blur"] = {"type": "blur", "sigma": 1.0}
        out["noise"] = {"type": "uniform", "low": 0.0, "high": 1.0}
    return out


def normalize(raw: Dict[str, Any], has_reference: bool = False, torchscript: bool = False) -> Dict[str, Any]:
    """Fill defaults and check the config; raises ConfigError saying what is wrong."""
    cfg = copy.deepcopy(raw)
    check_paths(cfg)
    kind = cfg.get("kind")
    if kind not in KINDS:
        raise ConfigError(f"config 'kind' must be one of {', '.join(KINDS)}, got {kind!r}")
    cfg.setdefault("model", {})
    cfg["model"].setdefault("kwargs", {})
    cfg.setdefault("output", "logits")
    if cfg["output"] not in ("logits", "probabilities"):
        raise ConfigError("config 'output' must be logits or probabilities")
    inp = cfg.setdefault("input", {})
    inp.setdefault("variable_size", False)
    inp.setdefault("min_size", 1)
    inp.setdefault("max_numel", 1 << 20)
    if kind == "image":
        img = inp.setdefault("image", {})
        img.setdefault("mode", "L" if (inp.get("shape") or [1])[0] == 1 else "RGB")
        if "shape" not in inp:
            if "size" not in img:
                raise ConfigError("an image config needs input.shape [C, H, W] or input.image.size [H, W]")
            inp["shape"] = [1 if img["mode"] == "L" else 3, *img["size"]]
        img.setdefault("size", list(inp["shape"][1:]))
        img.setdefault("scale", 1 / 255)
        if len(inp["shape"]) != 3:
            raise ConfigError("image input.shape must be [C, H, W]")
    elif kind == "tabular":
        if "features" in inp and "shape" not in inp:
            inp["shape"] = [len(inp["features"])]
        if "shape" not in inp:
            raise ConfigError("a tabular config needs input.features or input.shape [n_features]")
        inp.setdefault("features", [f"x{i}" for i in range(inp["shape"][0])])
        if len(inp["features"]) != inp["shape"][0]:
            raise ConfigError("input.features must name every column of input.shape")
    else:
        txt = inp.setdefault("text", {})
        hf = txt.get("tokenizer") == "huggingface"  # the archive's Hugging Face tokenizer files
        if "vocab" not in txt and not hf:
            raise ConfigError("a text config needs input.text.vocab (a JSON list of tokens in the archive) "
                              "or input.text.tokenizer: huggingface")
        txt.setdefault("max_tokens", 128)
        txt.setdefault("pad_id", -1 if hf else 0)  # Hugging Face: negative ids are masked padding
        txt.setdefault("unk_id", 0 if hf else 1)
        txt.setdefault("lowercase", True)
        inp["shape"] = [None]
    ex = cfg.setdefault("explain", {})
    ex.setdefault("baselines", default_baselines(kind, has_reference))
    preferred = "mean" if kind == "tabular" and "mean" in ex["baselines"] else next(iter(ex["baselines"]))
    ex.setdefault("baseline", preferred)
    if ex["baseline"] not in ex["baselines"]:
        raise ConfigError(f"explain.baseline {ex['baseline']!r} is not one of explain.baselines")
    for name, b in ex["baselines"].items():
        if b.get("type") in ("mean", "kmeans") and not has_reference:
            raise ConfigError(f"baseline {name!r} ({b['type']}) needs reference data (--reference-data FILE.npy)")
    limits = dict(DEFAULT_LIMITS)
    limits.update(ex.get("limits") or {})
    ex["limits"] = limits
    ex.setdefault("max_response_bytes", DEFAULT_MAX_RESPONSE)
    ex.setdefault("layer", None)
    methods = ex.get("methods")
    if methods is None:
        methods = [m.name for m in METHODS.values()
                   if kind in m.kinds and (not m.layer or ex["layer"]) and not (torchscript and m.hooks)]
    if isinstance(methods, list):
        methods = {m: {} for m in methods}
    for name, over in methods.items():
        if name not in METHODS:
            raise ConfigError(f"explain.methods: unknown method {name!r}; known: {', '.join(METHODS)}")
        if METHODS[name].layer and not ex["layer"]:
            raise ConfigError(f"method {name!r} needs explain.layer (the module name of the layer)")
    ex["methods"] = {name: dict(over or {}) for name, over in methods.items()}
    default = ex.setdefault("default_method", "integrated_gradients" if kind != "text" else "layer_integrated_gradients")
    if default not in ex["methods"]:
        raise ConfigError(f"explain.default_method {default!r} is not among the allowed methods")
    ex.setdefault("default_params", {})
    return cfg


def method_limits(cfg: Dict[str, Any], method: str) -> Dict[str, Any]:
    limits = dict(cfg["explain"]["limits"])
    limits.update(cfg["explain"]["methods"].get(method) or {})
    return limits


def labels(cfg: Dict[str, Any], n_classes: int) -> List[str]:
    given = cfg.get("labels")
    if given and len(given) == n_classes:
        return [str(x) for x in given]
    return [str(i) for i in range(n_classes)]


def check_method(cfg: Dict[str, Any], name: Any) -> str:
    if not isinstance(name, str):
        raise ServeError("'method' must be a string such as \"integrated_gradients\"", 400, "method")
    if name not in METHODS:
        raise ServeError(f"unknown method {name!r}; this model allows: {', '.join(cfg['explain']['methods'])}", 400, "method")
    if name not in cfg["explain"]["methods"]:
        raise ServeError(f"method {name!r} is not allowed for this model; allowed: {', '.join(cfg['explain']['methods'])}", 403, "method")
    return name


def max_response_bytes(cfg: Dict[str, Any], server_limit: Optional[int]) -> int:
    limit = int(cfg["explain"]["max_response_bytes"])
    return min(limit, server_limit) if server_limit else limit
