"""Packing a model, its explain config, reference data and precomputed baselines into NAME.mar.

The archive is checked before it is written: the staged files are loaded by ``ExplainService``
exactly as a worker would, so a config that cannot serve fails here, not in the server.
"""
from __future__ import annotations

import importlib.util
import inspect
import logging
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, Iterable, Optional

import numpy as np
import torch
from torch import nn

from .. import handlers
from .baselines import PRECOMPUTED_NAME, precompute
from .config import CONFIG_NAME, ConfigError, archive_file, check_paths, load_file, normalize

logger = logging.getLogger(__name__)


def _single_module_class(path: Path) -> str:
    spec = importlib.util.spec_from_file_location("explain_serve_archive_probe", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    found = [n for n, c in inspect.getmembers(module, inspect.isclass)
             if issubclass(c, nn.Module) and c.__module__ == module.__name__]
    if len(found) != 1:
        raise ConfigError(f"{path} defines {len(found)} nn.Module classes; name one with model.class in --config")
    return found[0]


def _infer_features(model: nn.Module) -> int:
    """n_features of a tabular model: the input width of its first matrix-shaped parameter, verified."""
    for p in model.parameters():
        if p.dim() == 2:
            n = int(p.shape[1])
            with torch.no_grad():
                out = model(torch.zeros(2, n))
            if isinstance(out, torch.Tensor) and out.dim() == 2 and out.shape[0] == 2:
                return n
            break
    raise ConfigError("could not infer the number of features; give --reference-data or input.features in --config")


def _stage_hf(raw: Dict[str, Any], directory: Path, kind: str, stage: Path, extras: list):
    """Stage a Hugging Face directory and fill the config facts only the model knows; (serialized, None)."""
    from . import hf

    if kind not in ("text", "causal_lm"):
        raise ConfigError(f"a Hugging Face model directory is served as --kind text or causal_lm, not {kind}")
    hf.require_transformers()
    serialized, files = hf.stage(directory, stage)
    extras += files
    raw["model"].pop("class", None)
    raw["model"]["huggingface"] = "sequence_classification" if kind == "text" else kind
    if kind == "text":
        raw.setdefault("input", {}).setdefault("text", {})["tokenizer"] = "huggingface"
        if not raw.get("labels") and hf.labels(stage):
            raw["labels"] = hf.labels(stage)
        ex = raw.setdefault("explain", {})
        if not ex.get("layer"):  # token attributions at the input embeddings
            ex["layer"] = hf.embedding_name(hf.load_classifier(stage))
    return serialized, None


def archive(name: str, model: Path, kind: str, model_store: Path, config: Optional[Path] = None,
            reference_data: Optional[Path] = None, weights: Optional[Path] = None,
            extra_files: Iterable[Path] = (), version: str = "1.0", handler: Optional[Path] = None,
            runtime: str = "torch") -> Path:
    """Write ``model_store/NAME.mar``; returns its path. ``model`` is TorchScript, an eager .py file (+ ``weights``)
    or a Hugging Face ``save_pretrained`` directory (``kind`` text or causal_lm; needs the ``[llm]`` extra).

    ``runtime="onnx"`` also packs model.onnx and compiled explainers (``explain_serve.export.serving``).
    """
    from .service import ExplainService

    model, model_store = Path(model), Path(model_store)
    for flag, given in (("--model", model), ("--config", config), ("--reference-data", reference_data),
                        ("--weights", weights), *(("--extra-files", p) for p in extra_files)):
        if given is not None and not (Path(given).is_file() or (flag == "--model" and Path(given).is_dir())):
            raise ConfigError(f"{flag} {given}: no such file" + (" or Hugging Face model directory" if flag == "--model" else ""))
    raw: Dict[str, Any] = load_file(config) if config else {}
    check_paths(raw)  # before anything is read or run: no file from outside the archive
    if raw.get("kind", kind) != kind:
        raise ConfigError(f"--kind {kind} but the config says kind: {raw.get('kind')}")
    raw["kind"] = kind
    raw.setdefault("model", {})
    with tempfile.TemporaryDirectory(prefix=f"explain-serve-{name}-") as tmp:
        stage = Path(tmp)
        extras = [Path(p) for p in extra_files]
        if model.is_dir():  # a Hugging Face save_pretrained directory: config, weights, tokenizer
            if runtime != "torch":
                raise ConfigError("Hugging Face model directories are served with --runtime torch")
            serialized, model_file = _stage_hf(raw, model, kind, stage, extras)
        elif kind == "causal_lm":
            raise ConfigError("--kind causal_lm needs --model DIR, a Hugging Face model directory (save_pretrained)")
        elif model.suffix == ".py":
            if weights is None:
                raise ConfigError("an eager model file needs --weights (a state dict saved with torch.save)")
            if not raw["model"].get("class"):  # the probe runs the file: only when the config names no class
                raw["model"]["class"] = _single_module_class(model)
            raw["model"]["file"] = model.name
            shutil.copy(model, stage / model.name)
            shutil.copy(weights, stage / "weights.pt")
            serialized, model_file = "weights.pt", model.name
        else:
            if not raw["model"].get("class"):
                try:
                    torch.jit.load(str(model), map_location="cpu")
                except Exception as exc:  # not TorchScript: a state dict needs model.class in the config
                    raise ConfigError(f"{model} is not a TorchScript file ({exc}); for a state dict give --config "
                                      "with model.class or pass the model's .py file with --weights") from exc
            shutil.copy(model, stage / "model.pt")
            serialized, model_file = "model.pt", None
        reference = None
        if reference_data is not None:
            reference = np.load(reference_data).astype(np.float32)
            np.save(stage / "reference.npy", reference)
            extras.append(stage / "reference.npy")
        if kind == "tabular" and "shape" not in raw.get("input", {}) and "features" not in raw.get("input", {}):
            if reference is not None:
                n = int(reference.shape[1])
            else:
                from .service import load_model

                n = _infer_features(load_model(stage, raw, stage / serialized, model_file))
            raw.setdefault("input", {})["shape"] = [n]
        if kind == "text":
            vocab = (raw.get("input", {}).get("text") or {}).get("vocab")
            if vocab and config is not None and (Path(config).parent / vocab).is_file():
                extras.append(archive_file(Path(config).parent, vocab, "input.text.vocab"))
        if kind == "causal_lm":
            from .causal_lm import normalize_config

            cfg = normalize_config(raw)
        else:
            cfg = normalize(raw, has_reference=reference is not None,
                            torchscript=not (raw["model"].get("class") or raw["model"].get("huggingface")))
        pre = precompute(cfg, reference) if kind != "causal_lm" else None
        if pre:
            np.savez(stage / PRECOMPUTED_NAME, **pre)
            extras.append(stage / PRECOMPUTED_NAME)
        import yaml

        (stage / CONFIG_NAME).write_text(yaml.safe_dump(cfg, sort_keys=False))
        extras.append(stage / CONFIG_NAME)
        for e in extras:
            if e.parent != stage:
                shutil.copy(e, stage / e.name)
        if runtime == "onnx":  # ONNX Runtime predictions and compiled explainers (explain_serve.export)
            from ..export.serving import build_archive_files
            from .service import load_model, load_vocab

            vocab = (cfg["input"].get("text") or {}).get("vocab") if kind == "text" else None
            vocab_size = len(load_vocab(stage, vocab)) if vocab else None
            onnx_model = load_model(stage, cfg, stage / serialized, model_file)
            extras += build_archive_files(stage, onnx_model, cfg, reference, vocab_size)
        elif runtime != "torch":
            raise ConfigError(f"runtime must be torch or onnx, got {runtime!r}")
        service_class = ExplainService
        if kind == "causal_lm":
            from .causal_lm import CausalLMService as service_class
        service_class(stage, serialized, name, version, model_file, kind).close()  # fails here, not in the server
        handler = Path(handler) if handler else handlers.path(kind)
        model_store.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "model_archiver.model_packaging", "--model-name", name, "--version", version,
               "--serialized-file", str(stage / serialized), "--handler", str(handler),
               "--extra-files", ",".join(str(stage / e.name) for e in extras),
               "--export-path", str(model_store), "--force"]
        if model_file:
            cmd += ["--model-file", str(stage / model_file)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"torch-model-archiver failed: {proc.stderr.strip() or proc.stdout.strip()}")
    out = model_store / f"{name}.mar"
    logger.info("wrote %s", out)
    return out
