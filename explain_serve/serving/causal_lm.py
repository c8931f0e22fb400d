"""Serving a Hugging Face causal language model: /predictions generates, /explanations says which
prompt tokens (or words) drove a continuation, per output token.

predict ``{"inputs": "<prompt>", "params": {"max_new_tokens": 16}}`` ->
``{"model", "version", "generated_text", "output_tokens"}`` (greedy unless ``do_sample``).

explain ``{"inputs": "<prompt>", "target": "<continuation>" (absent: the greedy continuation),
"method": ..., "params": {"features": "tokens" | "words", ...}}`` -> the envelope plus
``input_tokens``, ``output_tokens``, ``seq_attr`` (one score per input unit), ``token_attr`` (one row
per output token), ``generated_text`` when the target was generated. The attributions come from the
core's ``LLMAttribution`` / ``LLMGradientAttribution``.

Every limit (prompt tokens, target tokens, ``max_new_tokens``, forward passes, response size) is
checked from the request alone, before any forward pass, with the same error table as the other
kinds.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from . import describe, encode
from .config import CONFIG_NAME, DEFAULT_MAX_RESPONSE, ConfigError, load_file, max_response_bytes
from .errors import ServeError, bad, too_large
from .methods import MethodSpec, Param, seeded, validate_params
from .requests import read_body
from .service import MAX_RESPONSE_ENV, TorchServeEntry

logger = logging.getLogger(__name__)
KIND = "causal_lm"
BODY_FIELDS = ("inputs", "target", "method", "params")

_FEATURES = Param("features", "choice", "tokens", choices=("tokens", "words"))
_NEW = Param("max_new_tokens", "int", 16, low=1, limit="max_new_tokens")
_SEED = Param("seed", "int", 0, low=0)
_STEPS = Param("n_steps", "int", 32, low=1, limit="max_n_steps")


def _samples(default: int) -> Param:
    return Param("n_samples", "int", default, low=1, limit="max_n_samples")


# wire name -> how the core is called: ``cls`` wrapped by LLMAttribution (perturbation) or
# LLMGradientAttribution (``layer``: on the input embeddings; token features only)
METHODS: Dict[str, MethodSpec] = {
    m.name: m for m in [
        MethodSpec("feature_ablation", "FeatureAblation", (_FEATURES, _NEW), kinds=(KIND,)),
        MethodSpec("shapley_value_sampling", "ShapleyValueSampling", (_FEATURES, _NEW, _samples(10), _SEED),
                   random=True, kinds=(KIND,)),
        MethodSpec("kernel_shap", "KernelShap", (_FEATURES, _NEW, _samples(50), _SEED), random=True, kinds=(KIND,)),
        MethodSpec("lime", "Lime", (_FEATURES, _NEW, _samples(50), _SEED), random=True, kinds=(KIND,)),
        MethodSpec("layer_integrated_gradients", "LayerIntegratedGradients", (_FEATURES, _NEW, _STEPS),
                   layer=True, kinds=(KIND,)),
        MethodSpec("layer_gradient_x_activation", "LayerGradientXActivation", (_FEATURES, _NEW),
                   layer=True, kinds=(KIND,)),
    ]
}
PREDICT = MethodSpec("generate", "", (
    _NEW, Param("do_sample", "bool", False), Param("temperature", "float", 1.0, low=1e-3, limit="max_temperature"),
    Param("top_k", "int", 50, low=0), Param("top_p", "float", 1.0, low=0.0, limit="max_top_p"), _SEED), kinds=(KIND,))

DEFAULT_LIMITS = {
    "max_new_tokens": 64,  # tokens generated per request (predict, and explain without a target)
    "max_prompt_tokens": 256,
    "max_target_tokens": 64,  # tokens of a given target continuation
    "max_evaluations": 2048,  # forward passes of one perturbation explanation
    "max_n_samples": 500,
    "max_n_steps": 256,
    "max_temperature": 10.0,
    "max_top_p": 1.0,
}


def normalize_config(raw: Dict[str, Any]) -> Dict[str, Any]:
    """Fill the causal_lm config's defaults and check it; raises ConfigError saying what is wrong.

    ``kind: causal_lm``, ``model: {huggingface: causal_lm}``, ``explain: {default_method, methods,
    default_params, limits: {max_new_tokens, max_prompt_tokens, max_target_tokens, max_evaluations,
    max_n_samples, max_n_steps, max_temperature}, max_response_bytes}``.
    """
    cfg = copy.deepcopy(raw)
    if cfg.get("kind") != KIND:
        raise ConfigError(f"not a {KIND} config: kind {cfg.get('kind')!r}")
    cfg.setdefault("model", {})["huggingface"] = KIND
    cfg.setdefault("torch_threads", None)
    ex = cfg.setdefault("explain", {})
    methods = ex.get("methods") or list(METHODS)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ConfigError(f"explain.methods: {', '.join(unknown)} do not apply to {KIND} models; known: {', '.join(METHODS)}")
    ex["methods"] = list(methods)
    ex.setdefault("default_method", "feature_ablation")
    if ex["default_method"] not in ex["methods"]:
        raise ConfigError(f"explain.default_method {ex['default_method']!r} is not among the allowed methods")
    ex.setdefault("default_params", {})
    limits = dict(DEFAULT_LIMITS)
    limits.update(ex.get("limits") or {})
    ex["limits"] = limits
    ex.setdefault("max_response_bytes", DEFAULT_MAX_RESPONSE)
    return cfg


@dataclass
class Request:
    """One parsed causal_lm request."""

    index: int
    explain: bool
    prompt: str
    prompt_ids: List[int]
    target: Optional[str] = None
    target_ids: Optional[List[int]] = None
    method: Optional[str] = None
    params: Dict[str, Any] = field(default_factory=dict)
    units: List[str] = field(default_factory=list)  # the interpretable input units (tokens or words)


def words_template(prompt: str) -> Tuple[str, List[str]]:
    """``prompt`` as a format template with one ``{}`` per whitespace-separated word, and the words."""
    words, parts, last = [], [], 0
    for m in re.finditer(r"\S+", prompt):
        parts.append(prompt[last:m.start()].replace("{", "{{").replace("}", "}}") + "{}")
        words.append(m.group())
        last = m.end()
    parts.append(prompt[last:].replace("{", "{{").replace("}", "}}"))
    return "".join(parts), words


def evaluations(method: str, params: Dict[str, Any], n_units: int) -> int:
    """Forward passes (sequences evaluated) one explanation costs, from its parameters alone."""
    if method == "feature_ablation":
        return n_units + 1
    if method == "shapley_value_sampling":
        return params["n_samples"] * (n_units + 1)
    if method in ("kernel_shap", "lime"):
        return params["n_samples"] + 1
    if method == "layer_integrated_gradients":
        return params["n_steps"]
    return 1


class CausalLMService(TorchServeEntry):
    """Generation and generated-answer explanations for one causal LM archive; see the module docstring."""

    kind = KIND

    def __init__(self, model_dir: os.PathLike, serialized_file: Optional[str] = None, model_name: str = "model",
                 version: str = "1.0", model_file: Optional[str] = None, kind: Optional[str] = None,
                 device: Any = "cpu") -> None:
        # ``device`` (TorchServe's gpu_id) is accepted for the shared entry; causal LMs run on the CPU for now
        from .hf import embedding_name, load_causal_lm
        from .tokenization import HFTokenizer

        self.model_dir = Path(model_dir)
        self.model_name, self.version = model_name, str(version)
        self.cfg = normalize_config(load_file(self.model_dir / CONFIG_NAME))
        self.limits = self.cfg["explain"]["limits"]
        self.model = load_causal_lm(self.model_dir)
        self.tokenizer = HFTokenizer(self.model_dir, add_special_tokens=True)
        self.embedding = self.model.get_submodule(embedding_name(self.model))
        server_limit = int(os.environ[MAX_RESPONSE_ENV]) if os.environ.get(MAX_RESPONSE_ENV) else None
        self.response_limit = max_response_bytes(self.cfg, server_limit)
        self.methods: Dict[str, Any] = {}
        self.unavailable: Dict[str, ServeError] = {}
        for name in self.cfg["explain"]["methods"]:
            try:
                self.methods[name] = self._build(METHODS[name])
            except ServeError as exc:
                logger.warning("model %s: %s", model_name, exc.message)
                self.unavailable[name] = exc
        (status, text), = self.handle([{"body": {"inputs": "a", "params": {"max_new_tokens": 1}}}], [False])
        if status != 200:  # one generation at load, so the first request does not pay one-off costs
            logger.warning("model %s: warm-up generation answered %d: %s", model_name, status, text)
        logger.info("model %s (%s) loaded: methods %s, response limit %d bytes", model_name, KIND,
                    ", ".join(self.methods), self.response_limit)

    def _build(self, spec: MethodSpec):
        """The core's LLM wrapper around one attribution method (created once, at load)."""
        import explain_serve.attr as attr

        try:
            cls = getattr(attr, spec.cls)
            wrapper = getattr(attr, "LLMGradientAttribution" if spec.layer else "LLMAttribution")
        except (AttributeError, ImportError) as exc:
            raise ServeError(f"method {spec.name!r} is not available in this installation ({exc})", 501) from exc
        inner = cls(self.model, self.embedding) if spec.layer else cls(self.model)
        return wrapper(inner, self.tokenizer.tok)

    def close(self) -> None:
        """Nothing stays registered between requests (the core's wrappers hook per call)."""

    # -- reading a request --------------------------------------------------------------------------
    def parse(self, index: int, body: Any, explain: bool) -> Request:
        if not isinstance(body, dict):
            raise bad("send a JSON body {\"inputs\": \"<prompt>\"}")
        unknown = sorted(set(body) - set(BODY_FIELDS))
        if unknown:
            raise bad(f"unknown field(s) {', '.join(unknown)}; the body takes {', '.join(BODY_FIELDS)}")
        prompt = body.get("inputs")
        if not isinstance(prompt, str):
            raise bad("'inputs' must be the prompt as a string", "inputs")
        if not prompt.strip():
            raise bad("the prompt is empty; send some text in 'inputs'", "inputs")
        limit = int(self.limits["max_prompt_tokens"])
        if len(prompt) > 64 * limit:
            raise too_large(f"prompt of {len(prompt)} characters is over this model's limit ({64 * limit})", "inputs")
        ids = self.tokenizer.encode(prompt).ids
        if len(ids) > limit:
            raise too_large(f"the prompt has {len(ids)} tokens; this model accepts at most {limit}", "inputs")
        req = Request(index, explain, prompt, ids)
        if not explain:
            if "target" in body or "method" in body:
                raise bad("'target' and 'method' are for /explanations; /predictions takes inputs and params")
            req.params = validate_params(PREDICT, body.get("params"), {}, self.limits)
            return req
        req.method = self._method(body.get("method"))
        ex = self.cfg["explain"]
        req.params = validate_params(METHODS[req.method], body.get("params"), ex["default_params"].get(req.method, {}),
                                     self.limits)
        target = body.get("target")
        if target is not None:
            if not isinstance(target, str) or not target:
                raise bad("'target' must be the continuation to explain as a non-empty string (absent: the model's "
                          "greedy continuation)", "target")
            req.target, req.target_ids = target, self.tokenizer.encode(target, add_special_tokens=False).ids
            if not req.target_ids:
                raise bad("the target has no tokens; send some text", "target")
            tlimit = int(self.limits["max_target_tokens"])
            if len(req.target_ids) > tlimit:
                raise too_large(f"the target has {len(req.target_ids)} tokens; this model explains at most {tlimit}",
                                "target")
        if req.params["features"] == "words":
            if METHODS[req.method].layer:
                raise bad(f"features 'words' needs a perturbation method; {req.method} attributes tokens", "params.features")
            req.units = words_template(prompt)[1]
        else:
            req.units = self.tokenizer.tokens(ids)
        evals = evaluations(req.method, req.params, len(req.units))
        if evals > int(self.limits["max_evaluations"]):
            raise bad(f"{req.method} needs {evals} forward passes for this prompt, over this model's limit "
                      f"{self.limits['max_evaluations']}; use a shorter prompt, features 'words' or fewer samples", "params")
        self._check_size(req)
        if req.method in self.unavailable:
            raise self.unavailable[req.method]
        return req

    def _method(self, name: Any) -> str:
        allowed = self.cfg["explain"]["methods"]
        if name is None:
            name = self.cfg["explain"]["default_method"]
        if not isinstance(name, str):
            raise bad("'method' must be a string such as \"feature_ablation\"", "method")
        if name not in METHODS:
            raise bad(f"unknown method {name!r} for a {KIND} model; this model allows: {', '.join(allowed)}", "method")
        if name not in allowed:
            raise ServeError(f"method {name!r} is not allowed for this model; allowed: {', '.join(allowed)}", 403, "method")
        return name

    def response_estimate(self, req: Request) -> int:
        """An upper bound of the explanation's size in bytes: the token matrix dominates."""
        n_out = len(req.target_ids) if req.target_ids is not None else int(req.params["max_new_tokens"])
        n_in = len(req.units)
        # strings JSON-escaped at worst (6 bytes a character): units, output tokens, the echoed or generated text
        chars = sum(len(u) * 6 + 3 for u in req.units) + 2 * n_out * 6 * 16 + 6 * len(req.target or "")
        return encode.OVERHEAD + encode.BYTES_PER_VALUE * (n_in * (n_out + 1)) + chars

    def _check_size(self, req: Request) -> None:
        est = self.response_estimate(req)
        if est > self.response_limit:
            raise too_large(f"the token matrix of this explanation would be up to {est} bytes, over the response limit "
                            f"of {self.response_limit} bytes; send a shorter prompt or target, fewer max_new_tokens "
                            "or features 'words'", "inputs")

    # -- the batch ---------------------------------------------------------------------------------
    def handle(self, rows: Sequence[Any], explain: Sequence[bool],
               content_types: Optional[Sequence[Optional[str]]] = None) -> List[Tuple[int, str]]:
        """One answer ``(status, json)`` per row; items run one at a time (generation differs per item)."""
        content_types = content_types or [None] * len(rows)
        out = []
        for i, row in enumerate(rows):
            try:
                body = read_body(row, content_types[i], "text")
                if describe.asked(body):  # the self-description over the inference API
                    out.append((200, describe.to_json(self)))
                    continue
                req = self.parse(i, body, bool(explain[i]))
                out.append((200, encode.dumps(self.explain(req) if req.explain else self.predict(req))))
            except ServeError as exc:
                out.append((exc.code, exc.to_json()))
            except Exception as exc:  # an input no check foresaw: it fails alone, the batch goes on
                logger.exception("request %d failed", i)
                err = bad(f"could not answer this request ({type(exc).__name__}: {str(exc)[:200]})")
                out.append((err.code, err.to_json()))
        return out

    def _head(self) -> Dict[str, Any]:
        return {"model": self.model_name, "version": self.version}

    method_specs = METHODS  # the self-description (``serving.describe``) reads this table

    def describe_input(self) -> Dict[str, Any]:
        """What the self-description says of the input: a prompt, its limits and predict's parameters."""
        lim = self.limits
        return {"text": {"max_tokens": lim["max_prompt_tokens"]}, "max_target_tokens": lim["max_target_tokens"],
                "predict_params": [describe._param(PREDICT, p, self.cfg, lim, []) for p in PREDICT.params]}

    def generate(self, prompt_ids: List[int], params: Dict[str, Any]) -> List[int]:
        """New token ids after the prompt: greedy by default, sampling seeded per request."""
        x = torch.tensor([prompt_ids])
        kw: Dict[str, Any] = {"max_new_tokens": params["max_new_tokens"], "do_sample": bool(params.get("do_sample"))}
        if kw["do_sample"]:
            kw.update(temperature=params["temperature"], top_k=params["top_k"], top_p=params["top_p"])
        eos = self.tokenizer.eos_id
        pad = self.tokenizer.pad_id if self.tokenizer.pad_id is not None else eos
        with seeded(int(params.get("seed") or 0)) if kw["do_sample"] else contextlib.nullcontext(), torch.no_grad():
            out = self.model.generate(x, attention_mask=torch.ones_like(x), pad_token_id=pad, eos_token_id=eos, **kw)
        return [int(i) for i in out[0, len(prompt_ids):]]

    def predict(self, req: Request) -> Dict[str, Any]:
        new = self.generate(req.prompt_ids, req.params)
        return dict(self._head(), generated_text=self.tokenizer.decode(new), output_tokens=self.tokenizer.tokens(new))

    def explain(self, req: Request) -> Dict[str, Any]:
        import explain_serve.attr as attr

        start = time.perf_counter()
        spec = METHODS[req.method]
        generated = None
        target_ids = req.target_ids
        if target_ids is None:
            target_ids = self.generate(req.prompt_ids, {"max_new_tokens": req.params["max_new_tokens"]})
            if not target_ids:
                raise bad("the model generated nothing to explain; send a 'target'", "target")
            generated = self.tokenizer.decode(target_ids)
        tok = self.tokenizer.tok
        if req.params["features"] == "words":
            template, words = words_template(req.prompt)
            inp = attr.TextTemplateInput(template, values=words)
        else:
            inp = attr.TextTokenInput(req.prompt, tok)
        kw: Dict[str, Any] = {}
        if "n_samples" in req.params:
            kw["n_samples"] = req.params["n_samples"]
        if "n_steps" in req.params:
            kw["n_steps"] = req.params["n_steps"]
        with seeded(int(req.params.get("seed") or 0)) if spec.random else contextlib.nullcontext():
            res = self.methods[req.method].attribute(inp, target=torch.tensor(target_ids), **kw)
        body = dict(self._head(), method=req.method, params=req.params, input_tokens=list(res.input_tokens),
                    output_tokens=list(res.output_tokens), seq_attr=encode.floats(res.seq_attr),
                    token_attr=encode.floats(res.token_attr) if res.token_attr is not None else None)
        if generated is not None:
            body["generated_text"] = generated
        else:
            body["target"] = req.target
        body["elapsed_ms"] = round((time.perf_counter() - start) * 1000, 3)
        return body
