"""The logic behind the TorchServe handlers: one ``ExplainService`` per loaded model.

Loading (once): the model, its explain config, the named baselines, and one instance of every
allowed method (hooks of hooked methods registered here and reused by every request; inert between
requests, so predictions are unaffected).

Per server-side batch (``handle``): every item is read on its own (its explain flag, target, method
and parameters); a bad item gets its own 4xx and the rest go on; all valid items are predicted in
one forward per input shape; explanations with the same method, parameters and input shape are
computed as one batch with per-item targets (random methods one item at a time, so a seeded answer
does not depend on its batch); answers are compact JSON strings.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import describe, encode
from .baselines import PRECOMPUTED_NAME, Baselines
from .config import CONFIG_NAME, ConfigError, archive_file, labels, load_file, max_response_bytes, normalize
from .errors import ServeError, bad, model_failed, too_large
from .methods import METHODS, MethodSpec, build, occlusion_windows, resolve_class, seeded
from .requests import Item, Parser, is_true, read_body

logger = logging.getLogger(__name__)
MAX_RESPONSE_ENV = "EXPLAIN_SERVE_MAX_RESPONSE_SIZE"
THREADS_ENV = "EXPLAIN_SERVE_TORCH_THREADS"
WARMUP_ENV = "EXPLAIN_SERVE_WARMUP_SECONDS"
Result = Tuple[int, str]


def device_from_context(properties: Dict[str, Any]) -> torch.device:
    """The worker's device: TorchServe's ``gpu_id`` when CUDA is available, else the CPU."""
    gpu_id = (properties or {}).get("gpu_id")
    if gpu_id is not None and str(gpu_id).strip() not in ("", "-1") and torch.cuda.is_available():
        return torch.device("cuda", int(gpu_id))
    return torch.device("cpu")


def load_model(model_dir: Path, cfg: Dict[str, Any], serialized: Optional[Path], model_file: Optional[str]) -> nn.Module:
    """An eager model (class + state dict) or a TorchScript file, in eval mode on CPU."""
    spec = cfg.get("model") or {}
    if spec.get("huggingface"):
        from .hf import load_classifier

        return load_classifier(model_dir)
    cls_path = spec.get("class")
    if not cls_path:
        if serialized is None:
            raise ConfigError("no serialized model file in the archive")
        return torch.jit.load(str(serialized), map_location="cpu").eval()
    if ":" in cls_path:
        module_name, cls_name = cls_path.split(":", 1)
        cls = getattr(importlib.import_module(module_name), cls_name)
        if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
            raise ConfigError(f"model.class {cls_path!r} is not an nn.Module class")
    else:
        file = archive_file(model_dir, spec.get("file") or model_file or "", "model.file")
        if not file.is_file():
            raise ConfigError(f"model class {cls_path!r} needs the model file (got {file})")
        mod_name = "explain_serve_user_model_" + hashlib.sha1(str(file).encode()).hexdigest()[:12]
        mspec = importlib.util.spec_from_file_location(mod_name, file)
        module = importlib.util.module_from_spec(mspec)
        mspec.loader.exec_module(module)
        cls = getattr(module, cls_path)
    model = cls(**(spec.get("kwargs") or {}))
    if serialized is not None:
        try:  # weights only: a state dict can never run code when it loads
            state = torch.load(str(serialized), map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ConfigError(f"{Path(serialized).name} is not a readable state dict (loaded with "
                              f"weights_only=True): {type(exc).__name__}: {str(exc)[:300]}") from exc
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
        model.load_state_dict(state)
    return model.eval()


def load_vocab(model_dir: Path, name: str) -> List[str]:
    """The archive's vocabulary file: a JSON list of token strings (ConfigError naming the file otherwise)."""
    path = archive_file(model_dir, name, "input.text.vocab")
    try:
        vocab = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(f"input.text.vocab {name!r}: cannot read {path.name} as a JSON list of tokens "
                          f"({type(exc).__name__}: {str(exc)[:200]})") from exc
    if not isinstance(vocab, list) or not vocab or not all(isinstance(t, str) for t in vocab):
        raise ConfigError(f"input.text.vocab {name!r}: {path.name} must be a non-empty JSON list of token strings")
    return vocab


class TorchServeEntry:
    """What TorchServe calls on a service: built from the worker context, one answer per request.

    A service subclass implements ``__init__(model_dir, serialized_file, model_name, version,
    model_file, kind, device)`` and ``handle(rows, explain_flags, content_types) -> [(status, json)]``.
    """

    @classmethod
    def from_context(cls, context, kind: Optional[str] = None) -> "TorchServeEntry":
        """Build from a TorchServe worker context (model_dir, manifest and gpu_id: the model and its
        explanations run on that GPU when CUDA is available, on the CPU otherwise).

        A worker serves one model on a machine shared with the frontend and other workers: its
        intra-op threads default to 1 (``EXPLAIN_SERVE_TORCH_THREADS`` or the config's
        ``torch_threads`` raise it), which avoids oversubscribing small machines.
        """
        manifest = context.manifest or {}
        cfg = load_file(Path(context.system_properties.get("model_dir")) / CONFIG_NAME)
        torch.set_num_threads(int(os.environ.get(THREADS_ENV) or cfg.get("torch_threads") or 1))
        model = manifest.get("model", {})
        return cls(context.system_properties.get("model_dir"), model.get("serializedFile"),
                   model.get("modelName", getattr(context, "model_name", "model")), model.get("modelVersion", "1.0"),
                   model.get("modelFile"), kind, device_from_context(context.system_properties))

    def handle_context(self, data: List[Dict[str, Any]], context) -> List[str]:
        """Read per-index explain flags and content types from ``context``; set per-index statuses."""
        flags, ctypes = [], []
        for i, row in enumerate(data):
            header = context.get_request_header(i, "explain")  # HTTP: "True" on explain routes
            if isinstance(header, str):
                flags.append(is_true(header))
            else:  # gRPC: an input key ``explain`` (its header entry is only its content type)
                flag = row.get("explain") if isinstance(row, dict) else None
                flags.append(flag is not None and is_true(flag))
            part = context.get_request_header(i, "body") or context.get_request_header(i, "data")
            ctypes.append(part.get("content-type") if isinstance(part, dict) else None)
        results = self.handle(data, flags, ctypes)
        out = []
        for i, (code, text) in enumerate(results):
            context.set_response_content_type(i, "application/json")
            if code != 200:
                context.set_response_status(code, ServeError.TYPES.get(code, "Error"), i)
            out.append(text)
        return out


class ExplainService(TorchServeEntry):
    """Predictions and explanations for one model; see the module docstring."""

    def __init__(self, model_dir: os.PathLike, serialized_file: Optional[str] = None, model_name: str = "model",
                 version: str = "1.0", model_file: Optional[str] = None, kind: Optional[str] = None,
                 device: Any = "cpu") -> None:
        self.model_dir = Path(model_dir)
        self.device = torch.device(device)
        self.model_name, self.version = model_name, str(version)
        serialized = self.model_dir / serialized_file if serialized_file else None
        raw = load_file(self.model_dir / CONFIG_NAME)
        if kind is not None and raw.get("kind", kind) != kind:
            raise ConfigError(f"this handler serves {kind} models; the config says {raw.get('kind')}")
        raw.setdefault("kind", kind)
        npz = self.model_dir / PRECOMPUTED_NAME
        precomputed = dict(np.load(npz)) if npz.is_file() else {}
        torchscript = not any((raw.get("model") or {}).get(k) for k in ("class", "huggingface"))
        self.cfg = normalize(raw, has_reference=bool(precomputed), torchscript=torchscript)
        self.kind = self.cfg["kind"]
        self.model = load_model(self.model_dir, self.cfg, serialized, model_file).to(self.device)
        self.tokenizer = self._tokenizer() if self.kind == "text" else None
        self.baselines = Baselines(self.cfg, precomputed)
        if self.tokenizer is not None:  # the pad baseline keeps [CLS], [SEP], ... where they are
            self.baselines.keep_ids = sorted(getattr(self.tokenizer, "special_ids", ()))
        self.n_classes = self._probe()
        self.labels = labels(self.cfg, self.n_classes)
        self.parser = Parser(self.cfg, self.n_classes, tokenizer=self.tokenizer)
        self.layer = self.model.get_submodule(self.cfg["explain"]["layer"]) if self.cfg["explain"]["layer"] else None
        self.server_limit = int(os.environ[MAX_RESPONSE_ENV]) if os.environ.get(MAX_RESPONSE_ENV) else None
        self.response_limit = max_response_bytes(self.cfg, self.server_limit)
        self.methods: Dict[str, Any] = {}
        self.unavailable: Dict[str, ServeError] = {}
        for name in self.cfg["explain"]["methods"]:
            try:
                if name == "noise_tunnel":
                    nt_cls = resolve_class(METHODS[name])
                    self.methods[name] = {base: nt_cls(build(METHODS[base], self.model, None))
                                          for base in METHODS[name].param("base").choices}
                else:
                    self.methods[name] = build(METHODS[name], self.model, self.layer)
            except ServeError as exc:
                logger.warning("model %s: %s", model_name, exc.message)
                self.unavailable[name] = exc
        self._warm_up()
        logger.info("model %s (%s) loaded: %d classes, methods %s, response limit %d bytes", model_name, self.kind,
                    self.n_classes, ", ".join(self.methods), self.response_limit)

    def _tokenizer(self):
        """The archive's Hugging Face tokenizer, or the word vocabulary of the bundled text models."""
        from .tokenization import HFTokenizer, WordTokenizer

        txt = self.cfg["input"]["text"]
        if txt.get("tokenizer") == "huggingface":
            return HFTokenizer(self.model_dir, add_special_tokens=True)
        return WordTokenizer(load_vocab(self.model_dir, txt["vocab"]), txt["unk_id"], txt.get("lowercase", True))

    def _warm_up(self) -> None:
        """One explanation per allowed method at load (the default method first), with default parameters.

        A method's first call can pay one-off costs (autograd and allocator set-up, hook paths; issue
        #14 saw 400 ms for a first DeepLift against 7-11 ms after), which would otherwise land on the
        first request that asks for it. The loop stops (after the default method) once
        ``warmup_seconds`` are spent (config ``explain.warmup_seconds``, env
        ``EXPLAIN_SERVE_WARMUP_SECONDS``; default 30); ``self.warmup_ms`` records each method's cost
        and the log names any method left cold.
        """
        if self.kind == "text":
            inputs: Any = [int(self.cfg["input"]["text"]["unk_id"])]
        else:
            inputs = torch.zeros(*self.cfg["input"]["shape"]).tolist()
        budget = float(os.environ.get(WARMUP_ENV) or self.cfg["explain"].get("warmup_seconds", 30))
        default = self.cfg["explain"]["default_method"]
        names = [default] + [n for n in self.methods if n != default]
        bodies = [(n, {"inputs": inputs, "method": n}) for n in names if n in self.methods]
        bodies += [(f"noise_tunnel/{b}", {"inputs": inputs, "method": "noise_tunnel", "params": {"base": b}})
                   for b in self.methods.get("noise_tunnel", {}) if b != METHODS["noise_tunnel"].param("base").default]
        self.warmup_ms: Dict[str, float] = {}
        start = time.perf_counter()
        for i, (name, body) in enumerate(bodies):
            if i and time.perf_counter() - start > budget:
                logger.warning("model %s: warm-up budget of %.0f s spent; not warmed: %s", self.model_name, budget,
                               ", ".join(n for n, _ in bodies if n not in self.warmup_ms))
                break
            t0 = time.perf_counter()
            (status, text), = self.handle([{"body": body}], [True])
            self.warmup_ms[name] = round((time.perf_counter() - t0) * 1000, 1)
            if status != 200:
                logger.warning("model %s: warm-up of %s answered %d: %s", self.model_name, name, status, text[:300])
        logger.info("model %s: warmed %d methods in %.0f ms", self.model_name, len(self.warmup_ms),
                    (time.perf_counter() - start) * 1000)

    def close(self) -> None:
        """Remove the hooks registered at load."""
        for inst in self.methods.values():
            for m in (inst.values() if isinstance(inst, dict) else [inst]):
                if hasattr(m, "close"):
                    m.close()

    def _probe(self) -> int:
        shape = self.cfg["input"]["shape"]
        if self.kind == "text":
            x = torch.full((1, 1), int(self.cfg["input"]["text"]["unk_id"]), dtype=torch.long)
        else:
            x = torch.zeros(1, *shape)
        with torch.no_grad():
            out = self.model(x.to(self.device))
        if not isinstance(out, Tensor) or out.dim() != 2:
            raise ConfigError(f"the model must return (batch, classes); got {getattr(out, 'shape', type(out))}")
        return int(out.shape[1])


    # -- the batch -------------------------------------------------------------------------------
    def handle(self, rows: Sequence[Any], explain: Sequence[bool], content_types: Optional[Sequence[Optional[str]]] = None) -> List[Result]:
        """One answer ``(status, json)`` per row, in order."""
        n = len(rows)
        content_types = content_types or [None] * n
        results: List[Optional[Result]] = [None] * n
        items: List[Item] = []
        for i, row in enumerate(rows):
            try:
                body = read_body(row, content_types[i], self.kind)
                if describe.asked(body):  # the self-description over the inference API
                    results[i] = (200, describe.to_json(self))
                    continue
                items.append(self.parser.parse(i, body, bool(explain[i])))
            except ServeError as exc:
                results[i] = (exc.code, exc.to_json())
            except Exception as exc:  # an input no check foresaw: it fails alone, the batch goes on
                logger.exception("could not read request %d", i)
                results[i] = (400, bad(f"could not read this request ({type(exc).__name__}: {str(exc)[:200]})").to_json())
        predictions = self._predict(items, results)
        groups: Dict[Any, List[Item]] = {}
        for it in items:
            if results[it.index] is not None:
                continue
            if it.index not in predictions:  # its forward failed: answered by _predict
                continue
            if not it.explain:
                results[it.index] = (200, encode.dumps(self._head(predictions[it.index])))
                continue
            try:
                self._check_size(it)
                if it.method in self.unavailable:
                    raise self.unavailable[it.method]
                it.target = predictions[it.index]["index"] if it.target == "predicted" else it.target
                groups.setdefault(self._group_key(it), []).append(it)
            except ServeError as exc:
                results[it.index] = (exc.code, exc.to_json())
        for members in groups.values():
            self._explain_group(members, predictions, results)
        return [r if r is not None else (500, ServeError("no answer", 500).to_json()) for r in results]

    def _head(self, pred: Dict[str, Any]) -> Dict[str, Any]:
        return {"model": self.model_name, "version": self.version, "prediction": pred}

    # -- predictions -----------------------------------------------------------------------------
    def _batch(self, members: Sequence[Item]) -> Tensor:
        if self.kind == "text":
            width = max(m.x.shape[0] for m in members)
            pad = int(self.cfg["input"]["text"]["pad_id"])
            return torch.stack([F.pad(m.x, (0, width - m.x.shape[0]), value=pad) for m in members]).to(self.device)
        return torch.stack([m.x for m in members]).to(self.device)

    def _predict(self, items: List[Item], results: List[Optional[Result]]) -> Dict[int, Dict[str, Any]]:
        by_shape: Dict[Any, List[Item]] = {}
        for it in items:
            by_shape.setdefault(None if self.kind == "text" else tuple(it.x.shape), []).append(it)
        out: Dict[int, Dict[str, Any]] = {}
        for members in by_shape.values():
            try:
                probs = self._probabilities(self._batch(members))
            except Exception as exc:  # find the item(s) the model cannot run on
                if len(members) == 1:  # the input passed validation: the model itself failed (500, with the cause)
                    logger.exception("forward failed")
                    results[members[0].index] = (500, model_failed("the model", exc).to_json())
                    continue
                for m in members:
                    out.update(self._predict([m], results))
                continue
            for m, p in zip(members, probs):
                k = int(p.argmax())
                out[m.index] = {"index": k, "label": self.labels[k], "probabilities": encode.floats(p)}
        return out

    def _probabilities(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            y = self.model(x)
        return torch.softmax(y.float(), dim=1) if self.cfg["output"] == "logits" else y.float()

    # -- explanations ----------------------------------------------------------------------------
    def response_estimate(self, it: Item) -> int:
        """An upper bound of the explanation answer's size in bytes, from shapes alone."""
        hw = tuple(it.x.shape[-2:]) if it.heatmap else None
        feature_chars = sum(len(n) + 4 for n in self.cfg["input"]["features"]) if self.kind == "tabular" else 0
        n_tokens = it.x.numel() if self.kind == "text" else 0
        token_chars = sum(len(t) for t in it.tokens) if it.tokens else 0
        token_chars += 16 * sum(it.special or [])  # ,"special":true
        return encode.estimate_bytes(it.x.numel(), self.n_classes, hw, n_tokens=n_tokens,
                                     feature_chars=feature_chars + token_chars)

    def _check_size(self, it: Item) -> None:
        """Refuse (413) an explanation whose answer would exceed the response limit, before computing it."""
        est = self.response_estimate(it)
        if est > self.response_limit:
            raise too_large(f"the explanation of this input would be up to {est} bytes, over the response limit of "
                            f"{self.response_limit} bytes (server max_response_size); send a smaller input"
                            + (" or leave out the heat map" if it.heatmap else ""), "inputs")

    def _group_key(self, it: Item) -> Any:
        spec = METHODS[it.method]
        shape = None if self.kind == "text" else tuple(it.x.shape)
        # random methods run alone: a seeded answer must not depend on the other requests in the batch
        alone = spec.per_item or spec.random or (spec.distribution and it.params.get("baselines") == "blur")
        return (it.method, json.dumps(it.params, sort_keys=True), shape, it.index if alone else None)

    def _explain_group(self, members: List[Item], predictions, results: List[Optional[Result]]) -> None:
        try:
            answers = self._compute(members)
        except ServeError as exc:
            for m in members:
                results[m.index] = (exc.code, exc.to_json())
            return
        except Exception as exc:
            if len(members) > 1:  # isolate the item the method cannot handle
                for m in members:
                    self._explain_group([m], predictions, results)
                return
            logger.exception("explanation failed")
            err = model_failed(members[0].method, exc)
            results[members[0].index] = (err.code, err.to_json())
            return
        for m, ans in zip(members, answers):
            body = self._head(predictions[m.index])
            body.update(ans)
            results[m.index] = (200, encode.dumps(body))

    def _compute(self, members: List[Item]) -> List[Dict[str, Any]]:
        spec = METHODS[members[0].method]
        params = dict(members[0].params)
        x = self._batch(members)
        targets = [int(m.target) for m in members]
        start = time.perf_counter()
        kwargs, echo, baseline_used = self._kwargs(spec, params, x)
        if spec.name == "noise_tunnel":
            method = self.methods[spec.name][params["base"]]
        else:
            method = self.methods[spec.name]
        if spec.per_item and x.shape[0] > 1:
            raise AssertionError("per-item methods are grouped alone")
        with seeded(int(params.get("seed") or 0)) if spec.random else contextlib.nullcontext():
            out = method.attribute(x, target=targets, **kwargs)
        attr, delta = (out if kwargs.get("return_convergence_delta") else (out, None))
        attr = self._to_input_shape(spec, attr, x)
        elapsed = (time.perf_counter() - start) * 1000
        deltas = delta.detach().reshape(len(members), -1).double().mean(1) if delta is not None else None
        answers = []
        for i, m in enumerate(members):
            a = attr[i]
            if self.kind == "text":
                a = a[: m.x.shape[0]]
            ans = {"method": spec.name, "params": echo, "target": targets[i], "attributions": encode.floats(a),
                   "shape": list(a.shape), "convergence_delta": encode.floats(deltas[i]) if deltas is not None else None,
                   "baseline": baseline_used, "elapsed_ms": round(elapsed, 3)}
            if self.kind == "text":
                scores = ans["attributions"]
                ans["tokens"] = [dict({"token": t, "score": s}, **({"special": True} if sp else {}))
                                 for t, s, sp in zip(m.tokens, scores, m.special or [False] * len(scores))]
            elif self.kind == "tabular":
                ans["features"] = dict(zip(self.cfg["input"]["features"], ans["attributions"]))
            if m.heatmap:
                ans["heatmap"] = encode.heatmap_png(a)
            answers.append(ans)
        return answers

    def _kwargs(self, spec: MethodSpec, params: Dict[str, Any], x: Tensor):
        """The core's ``attribute`` arguments for ``params``, the echoed params and the baseline used."""
        echo = dict(params)
        kw: Dict[str, Any] = {}
        baseline_used = None
        if "baselines" in params:
            choice = params["baselines"] if params["baselines"] is not None else self.baselines.default
            baseline_used = choice
            echo["baselines"] = choice
            b = self.baselines.resolve(choice, x.cpu(), spec.distribution)  # baselines live on the CPU
            kw["baselines"] = b.to(x.device) if isinstance(b, Tensor) else b
        name = spec.name
        per_example = x[0].numel()
        limits = self.cfg["explain"]["limits"]
        if name in ("integrated_gradients", "layer_integrated_gradients"):
            kw.update(n_steps=params["n_steps"], method=params["method"], return_convergence_delta=True)
        elif name in ("deep_lift", "deep_lift_shap"):
            kw.update(return_convergence_delta=True)
        elif name == "gradient_shap":
            kw.update(n_samples=params["n_samples"], stdevs=params["stdevs"], return_convergence_delta=True)
        elif name == "saliency":
            kw.update(abs=params["abs"])
        elif name == "layer_grad_cam":
            kw.update(relu_attributions=params["relu_attributions"])
        elif name == "noise_tunnel":
            kw.update(nt_type=params["nt_type"], nt_samples=params["nt_samples"], stdevs=params["stdevs"])
            if params["base"] == "integrated_gradients":
                kw.update(n_steps=params["n_steps"])
        elif name == "occlusion":
            dims = list(x.shape[1:])
            window = params.get("sliding_window_shapes")
            if window is None:
                window = [dims[0]] + [max(1, -(-d // 8)) for d in dims[1:]] if self.kind == "image" else [1] * len(dims)
            if self.kind == "image" and len(window) == len(dims) - 1:
                window = [dims[0]] + list(window)
            strides = params.get("strides") or list(window)
            if self.kind == "image" and len(strides) == len(dims) - 1:
                strides = [1] + list(strides)
            if len(window) != len(dims) or len(strides) != len(dims):
                raise bad(f"sliding_window_shapes and strides need {len(dims)} numbers for inputs of shape {dims}", "params")
            if any(w > d for w, d in zip(window, dims)):
                raise bad(f"sliding_window_shapes {window} is larger than the input {dims}", "params.sliding_window_shapes")
            evals = occlusion_windows(dims, window, strides)
            if evals > limits["max_evaluations"]:
                raise bad(f"occlusion with window {window} and strides {strides} needs {evals} forward passes per item, "
                          f"over this model's limit {limits['max_evaluations']}; use larger strides or windows", "params.strides")
            kw.update(sliding_window_shapes=tuple(window), strides=tuple(strides))
            echo.update(sliding_window_shapes=window, strides=strides)
        elif name in ("feature_ablation", "shapley_value_sampling"):
            evals = per_example * (params.get("n_samples") or 1)
            if evals > limits["max_evaluations"]:
                raise bad(f"{name} needs {evals} forward passes per item here, over this model's limit "
                          f"{limits['max_evaluations']}; use occlusion with larger windows", "params")
            if name == "shapley_value_sampling":
                kw.update(n_samples=params["n_samples"])
        elif name in ("kernel_shap", "lime"):
            kw.update(n_samples=params["n_samples"])
        return kw, echo, baseline_used

    def _to_input_shape(self, spec: MethodSpec, attr: Tensor, x: Tensor) -> Tensor:
        attr = attr.detach()
        if spec.name == "layer_grad_cam":
            attr = F.interpolate(attr, size=tuple(x.shape[-2:]), mode="bilinear", align_corners=False)
            return attr.expand(-1, x.shape[1], -1, -1) if attr.shape[1] == 1 else attr
        if spec.layer and attr.shape != x.shape:  # layer attributions of tokens: one score per token
            return attr.reshape(*x.shape, -1).sum(-1)
        return attr
