"""ONNX Runtime in the served model: predictions from ``model.onnx``, explanations from compiled graphs.

At archive time (``build_archive_files``, used by ``explain-serve archive --runtime onnx``) the model
is exported and every allowed method that has a compiled form (saliency, input_x_gradient,
integrated_gradients, layer_grad_cam, layer_integrated_gradients) is compiled for the parameters the
config makes default; ``onnx.json`` lists what was built and why anything was not.

At load time (``install(service)``, called by the handlers) an ``ExplainService`` gets:

- predictions from ONNX Runtime when the input has the exported shape (torch otherwise);
- each compiled method wrapped so a request is answered by its graph when the request's parameters
  and input shape are the ones compiled, and by the eager core otherwise; every fallback reason is
  logged (once per distinct reason);
- the forward-only methods (occlusion, feature ablation, Shapley values, KernelShap, Lime) evaluate
  their perturbations on ONNX Runtime (torch for inputs of another shape).

The eager model stays in the archive: it serves every method and parameter the graphs do not.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch
from torch import Tensor, nn

from .compiled import CompileError, CompiledExplainer, compile_explainer
from .model import export_model
from .runtime import OnnxModel

logger = logging.getLogger(__name__)

MANIFEST = "onnx.json"
MODEL_FILE = "model.onnx"
COMPILED = {
    "saliency": "Saliency",
    "input_x_gradient": "InputXGradient",
    "integrated_gradients": "IntegratedGradients",
    "layer_grad_cam": "LayerGradCam",
    "layer_integrated_gradients": "LayerIntegratedGradients",
}


FORWARD_ONLY = ("occlusion", "feature_ablation", "feature_permutation", "shapley_value_sampling", "shapley_values",
                "kernel_shap", "lime")


def compiled_file(method: str) -> str:
    return f"compiled.{method}.onnx"


def default_params(cfg: Dict[str, Any], method: str) -> Dict[str, Any]:
    """The parameters a request gets when it sets none: the method's defaults under the config's."""
    from ..serving.methods import METHODS

    params = {p.name: p.default for p in METHODS[method].params}
    params.update((cfg["explain"].get("default_params") or {}).get(method) or {})
    return params


def _example_inputs(cfg: Dict[str, Any], reference: Optional[np.ndarray], vocab_size: Optional[int], n: int = 16):
    generator = torch.Generator().manual_seed(0)
    if cfg["kind"] == "text":
        high = max(2, int(vocab_size or 2))
        return torch.randint(1, high, (n, 12), generator=generator)
    if reference is not None:
        return torch.from_numpy(np.ascontiguousarray(reference[:n], dtype=np.float32))
    shape = list(cfg["input"]["shape"])
    if cfg["kind"] == "image":
        return torch.rand([n] + shape, generator=generator)
    return torch.randn([n] + shape, generator=generator)


def build_archive_files(stage: Path, model: nn.Module, cfg: Dict[str, Any], reference: Optional[np.ndarray] = None,
                        vocab_size: Optional[int] = None) -> List[Path]:
    """Write model.onnx, compiled.<method>.onnx and onnx.json into ``stage``; returns the files.

    Raises ``ExportError`` when the exported model disagrees with torch (``--runtime onnx`` was asked
    for explicitly). A method that cannot be compiled is recorded with its reason and served eagerly.
    """
    stage = Path(stage)
    x = _example_inputs(cfg, reference, vocab_size)
    report = export_model(model, x[:4], stage / MODEL_FILE, reference_inputs=x)
    manifest: Dict[str, Any] = {"model": MODEL_FILE, "export": report.to_dict(), "explainers": {}, "not_compiled": {}}
    manifest["export"]["path"] = MODEL_FILE
    files = [stage / MODEL_FILE]
    layer = cfg["explain"].get("layer")
    for method in cfg["explain"]["methods"]:
        if method not in COMPILED:
            manifest["not_compiled"][method] = "no compiled form (served by the eager core)"
            continue
        params = default_params(cfg, method)
        try:
            explainer = compile_explainer(
                model, COMPILED[method], x[:8], layer=layer if method.startswith("layer_") else None,
                n_steps=int(params.get("n_steps") or 50), integration=params.get("method") or "gausslegendre",
                abs=bool(params.get("abs", True)), relu_attributions=bool(params.get("relu_attributions", False)),
                path=stage / compiled_file(method),
            )
        except CompileError as error:
            logger.warning("%s is not compiled (served by the eager core): %s", method, error)
            manifest["not_compiled"][method] = str(error)
            continue
        manifest["explainers"][method] = {"file": compiled_file(method), **explainer.spec.parity}
        files.append(stage / compiled_file(method))
    (stage / MANIFEST).write_text(json.dumps(manifest, indent=1, default=str))
    files.append(stage / MANIFEST)
    return files


class OnnxBackend:
    """The ONNX artifacts of one archive: an ``OnnxModel`` for predictions and compiled explainers."""

    def __init__(self, model_dir: Path, manifest: Dict[str, Any]):
        self.model_dir = Path(model_dir)
        self.manifest = manifest
        threads = torch.get_num_threads()  # as many as the worker gives torch: no oversubscription
        self.model = OnnxModel(self.model_dir / manifest["model"], threads=threads) if manifest.get("model") else None
        self.explainers: Dict[str, CompiledExplainer] = {
            method: CompiledExplainer.load(self.model_dir / entry["file"], threads=threads)
            for method, entry in (manifest.get("explainers") or {}).items()
        }
        self.not_compiled: Dict[str, str] = dict(manifest.get("not_compiled") or {})
        self._logged: set = set()
        self.calls = {"compiled": 0, "eager": 0, "onnx_predictions": 0}

    @classmethod
    def load(cls, model_dir: Path) -> Optional["OnnxBackend"]:
        path = Path(model_dir) / MANIFEST
        if not path.is_file():
            return None
        return cls(model_dir, json.loads(path.read_text()))

    @staticmethod
    def _fits(session_input, x: Tensor) -> bool:
        shape = list(session_input.shape)
        if len(shape) != x.dim():
            return False
        return all(not isinstance(s, int) or s == int(n) for s, n in zip(shape[1:], x.shape[1:]))

    def predict(self, x: Tensor) -> Optional[Tensor]:
        """Model outputs from ONNX Runtime, or None when ``x`` does not have the exported shape."""
        if self.model is None or not self._fits(self.model.session.get_inputs()[0], x):
            return None
        self.calls["onnx_predictions"] += 1
        return self.model(x)

    def why_not(self, method: str, x: Tensor, kwargs: Dict[str, Any]) -> Optional[str]:
        """None when the compiled graph of ``method`` answers this call; else the reason it cannot."""
        explainer = self.explainers[method]
        spec = explainer.spec
        if not self._fits(explainer.model.session.get_inputs()[0], x):
            return f"input shape {tuple(x.shape[1:])} is not the compiled one"
        wanted = {
            "n_steps": spec.n_steps, "method": spec.integration, "abs": spec.abs, "relu_attributions": spec.relu_attributions,
        }
        for key, value in kwargs.items():
            if key in ("baselines", "return_convergence_delta"):
                continue
            if key not in wanted or value != wanted[key]:
                return f"{key}={value!r} differs from the compiled {key}={wanted.get(key)!r}"
        baselines = kwargs.get("baselines")
        if isinstance(baselines, Tensor) and baselines.dim() == x.dim() and baselines.shape[0] not in (1, x.shape[0]):
            return "a baseline distribution"
        return None

    def warm_up(self) -> None:
        """One run of every session at load, so the first request does not pay ORT's first-run cost."""
        from .runtime import _NP_DTYPES

        sessions = [e.model.session for e in self.explainers.values()]
        if self.model is not None:
            sessions.append(self.model.session)
        for session in sessions:
            feeds = {}
            for i in session.get_inputs():
                shape = [d if isinstance(d, int) else (1 if k == 0 else 4) for k, d in enumerate(i.shape)]
                feeds[i.name] = np.zeros(shape, dtype=_NP_DTYPES.get(i.type, np.float32))
            session.run(None, feeds)

    def note_fallback(self, method: str, reason: str) -> None:
        self.calls["eager"] += 1
        if (method, reason) not in self._logged:
            self._logged.add((method, reason))
            logger.info("%s served by the eager core: %s", method, reason)


class CompiledOrEager:
    """A served method: its compiled graph when it applies, the eager core's instance otherwise."""

    def __init__(self, method: str, eager: Any, backend: OnnxBackend):
        self.method, self.eager, self.backend = method, eager, backend
        self.compiled = backend.explainers[method]

    def attribute(self, inputs: Tensor, target: Any = None, **kwargs):
        reason = self.backend.why_not(self.method, inputs, kwargs)
        if reason is None:
            try:
                out = self.compiled.attribute(
                    inputs, baselines=kwargs.get("baselines"), target=target,
                    return_convergence_delta=bool(kwargs.get("return_convergence_delta")),
                )
                self.backend.calls["compiled"] += 1
                return out
            except Exception as error:  # an input the graph rejects: the eager core still answers
                reason = f"the compiled graph failed: {error}"
        self.backend.note_fallback(self.method, reason)
        return self.eager.attribute(inputs, target=target, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self.eager, name)


class OnnxForward:
    """A perturbation method's ``forward_func``: ONNX Runtime when the input has the exported shape."""

    def __init__(self, backend: OnnxBackend, model: nn.Module):
        self.backend, self.model = backend, model

    def __call__(self, *args):
        if len(args) == 1 and isinstance(args[0], Tensor):
            out = self.backend.predict(args[0])
            if out is not None:
                return out
        return self.model(*args)


def install(service) -> Optional[OnnxBackend]:
    """Serve ``service`` (an ``ExplainService``) from the archive's ONNX artifacts, if it has any."""
    try:
        backend = OnnxBackend.load(service.model_dir)
    except Exception:  # a broken artifact must not take the model down: torch serves everything
        logger.exception("model %s: ONNX artifacts could not be loaded; serving with torch", service.model_name)
        return None
    if backend is None:
        return None
    for method in backend.explainers:
        if method in service.methods and not isinstance(service.methods[method], CompiledOrEager):
            service.methods[method] = CompiledOrEager(method, service.methods[method], backend)
    for method, reason in backend.not_compiled.items():
        if method in COMPILED:
            logger.warning("model %s: %s is served by the eager core: %s", service.model_name, method, reason)
    if backend.model is not None:
        forward = OnnxForward(backend, service.model)
        for method in FORWARD_ONLY:
            instance = service.methods.get(method)
            if instance is not None and hasattr(instance, "forward_func"):
                instance.forward_func = forward
        torch_probabilities = service._probabilities

        def probabilities(x: Tensor) -> Tensor:
            y = backend.predict(x)
            if y is None:
                return torch_probabilities(x)
            return torch.softmax(y.float(), dim=1) if service.cfg["output"] == "logits" else y.float()

        service._probabilities = probabilities
    try:
        backend.warm_up()
    except Exception:  # pragma: no cover - a graph that cannot run on zeros still serves real inputs
        logger.exception("model %s: ONNX warm-up failed", service.model_name)
    service.onnx = backend
    logger.info("model %s: ONNX Runtime predictions %s; compiled explanations: %s", service.model_name,
                "on" if backend.model is not None else "off", ", ".join(backend.explainers) or "none")
    return backend
