"""Wire names of the attribution methods, the parameters a request may set, and how to call them.

A method's wire name is the snake_case of its class name (``IntegratedGradients`` ->
``integrated_gradients``). Only parameters that make sense over the wire are accepted; each has a
type, a default and, where it drives cost, a limit from the model's config (``max_<name>``).
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, Dict, Iterator, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from .errors import ServeError, bad


@dataclass(frozen=True)
class Param:
    """One wire parameter: ``kind`` in int, float, bool, choice, ints, baseline."""

    name: str
    kind: str
    default: Any = None
    low: Optional[float] = None  # inclusive lower bound
    limit: Optional[str] = None  # key of the upper bound in the model's limits
    choices: Tuple[str, ...] = ()


@dataclass(frozen=True)
class MethodSpec:
    name: str
    cls: str
    params: Tuple[Param, ...] = ()
    layer: bool = False  # needs the config's layer
    delta: bool = False  # returns a convergence delta
    random: bool = False  # draws random numbers: seeded per group with ``seed``
    per_item: bool = False  # computed one item at a time (surrogate-model methods)
    distribution: bool = False  # baselines may be a distribution (several rows)
    hooks: bool = False  # registers module hooks (needs an eager model)
    kinds: Tuple[str, ...] = ("image", "tabular")  # input kinds it works on by default

    def param(self, name: str) -> Optional[Param]:
        return next((p for p in self.params if p.name == name), None)


_BASELINE = Param("baselines", "baseline")
_SEED = Param("seed", "int", 0, low=0)
_N_STEPS = Param("n_steps", "int", 50, low=1, limit="max_n_steps")
_IG_METHOD = Param("method", "choice", "gausslegendre",
                   choices=("riemann_right", "riemann_left", "riemann_middle", "riemann_trapezoid", "gausslegendre"))
_N_SAMPLES = Param("n_samples", "int", 25, low=1, limit="max_n_samples")
_STDEVS = Param("stdevs", "float", 0.0, low=0.0, limit="max_stdevs")

METHODS: Dict[str, MethodSpec] = {
    m.name: m
    for m in [
        MethodSpec("saliency", "Saliency", (Param("abs", "bool", True),)),
        MethodSpec("input_x_gradient", "InputXGradient"),
        MethodSpec("integrated_gradients", "IntegratedGradients", (_N_STEPS, _IG_METHOD, _BASELINE), delta=True),
        MethodSpec("deep_lift", "DeepLift", (_BASELINE,), delta=True, hooks=True),
        MethodSpec("deep_lift_shap", "DeepLiftShap", (_BASELINE,), delta=True, hooks=True, distribution=True),
        MethodSpec("gradient_shap", "GradientShap",
                   (Param("n_samples", "int", 5, low=1, limit="max_n_samples"), _STDEVS, _BASELINE, _SEED),
                   delta=True, random=True, distribution=True),
        MethodSpec("guided_backprop", "GuidedBackprop", hooks=True),
        MethodSpec("deconvolution", "Deconvolution", hooks=True),
        MethodSpec("noise_tunnel", "NoiseTunnel",
                   (Param("base", "choice", "saliency", choices=("saliency", "input_x_gradient", "integrated_gradients")),
                    Param("nt_type", "choice", "smoothgrad", choices=("smoothgrad", "smoothgrad_sq", "vargrad")),
                    Param("nt_samples", "int", 10, low=1, limit="max_nt_samples"),
                    Param("stdevs", "float", 0.1, low=0.0, limit="max_stdevs"),
                    Param("n_steps", "int", 20, low=1, limit="max_n_steps"), _SEED),
                   random=True),
        MethodSpec("occlusion", "Occlusion",
                   (Param("sliding_window_shapes", "ints"), Param("strides", "ints"), _BASELINE),
                   kinds=("image", "tabular", "text")),
        MethodSpec("feature_ablation", "FeatureAblation", (_BASELINE,), kinds=("image", "tabular", "text")),
        MethodSpec("shapley_value_sampling", "ShapleyValueSampling", (_N_SAMPLES, _BASELINE, _SEED),
                   random=True, kinds=("tabular",)),
        MethodSpec("kernel_shap", "KernelShap", (Param("n_samples", "int", 100, low=1, limit="max_n_samples"), _BASELINE, _SEED),
                   random=True, per_item=True),
        MethodSpec("lime", "Lime", (Param("n_samples", "int", 100, low=1, limit="max_n_samples"), _BASELINE, _SEED),
                   random=True, per_item=True),
        MethodSpec("layer_grad_cam", "LayerGradCam", (Param("relu_attributions", "bool", True),),
                   layer=True, hooks=True, kinds=("image",)),
        MethodSpec("guided_grad_cam", "GuidedGradCam", layer=True, hooks=True, kinds=("image",)),
        MethodSpec("layer_integrated_gradients", "LayerIntegratedGradients", (_N_STEPS, _IG_METHOD, _BASELINE),
                   layer=True, delta=True, hooks=True, kinds=("text",)),
    ]
}

DEFAULT_LIMITS = {
    "max_n_steps": 256,
    "max_n_samples": 500,
    "max_nt_samples": 64,
    "max_stdevs": 10.0,
    "max_evaluations": 8192,  # forward passes of one perturbation explanation
}


def resolve_class(spec: MethodSpec):
    """The core class for ``spec`` or a 501 when this installation of the core lacks it."""
    import explain_serve.attr as attr

    try:
        return getattr(attr, spec.cls)
    except (AttributeError, ImportError) as exc:
        raise ServeError(f"method {spec.name!r} is not available in this installation ({exc})", 501) from exc


def build(spec: MethodSpec, model: nn.Module, layer: Optional[nn.Module]):
    """One instance of the method over ``model`` (hooks registered once when the method supports it)."""
    cls = resolve_class(spec)
    if spec.name == "noise_tunnel":
        return None  # built per base method by ``Explainer``
    instance = cls(model, layer) if spec.layer else cls(model)
    if hasattr(instance, "reusable"):
        instance.reusable()
    return instance


def validate_params(spec: MethodSpec, given: Any, defaults: Dict[str, Any], limits: Dict[str, Any]) -> Dict[str, Any]:
    """The effective parameters: the request's over the model's defaults over the method's, checked."""
    if given is None:
        given = {}
    if not isinstance(given, dict):
        raise bad(f"'params' must be an object of {spec.name} arguments, got {type(given).__name__}", "params")
    allowed = {p.name for p in spec.params}
    unknown = sorted(set(given) - allowed)
    if unknown:
        names = ", ".join(sorted(allowed)) or "none"
        raise bad(f"unknown parameter(s) {', '.join(unknown)} for {spec.name}; accepted: {names}", "params")
    out: Dict[str, Any] = {}
    for p in spec.params:
        value = given.get(p.name, defaults.get(p.name, p.default))
        out[p.name] = _check(spec, p, value, limits)
    return out


def _check(spec: MethodSpec, p: Param, value: Any, limits: Dict[str, Any]) -> Any:
    where = f"params.{p.name}"
    if value is None:
        return None
    if p.kind == "bool":
        if not isinstance(value, bool):
            raise bad(f"{where} must be true or false", where)
        return value
    if p.kind == "choice":
        if value not in p.choices:
            raise bad(f"{where} must be one of {', '.join(p.choices)}, got {value!r}", where)
        return value
    if p.kind in ("int", "float"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad(f"{where} must be a number", where)
        if p.kind == "int":
            if isinstance(value, float) and not value.is_integer():
                raise bad(f"{where} must be an integer, got {value}", where)
            value = int(value)
        elif not math.isfinite(value):
            raise bad(f"{where} must be finite", where)
        if p.low is not None and value < p.low:
            raise bad(f"{where} must be >= {p.low:g}, got {value}", where)
        if p.limit is not None and limits.get(p.limit) is not None and value > limits[p.limit]:
            raise bad(f"{where}={value} is over this model's limit {limits[p.limit]:g} for {spec.name}; send a smaller value", where)
        return value
    if p.kind == "ints":
        if isinstance(value, int) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, list) or not value or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value):
            raise bad(f"{where} must be a positive integer or a list of positive integers", where)
        return value
    if p.kind == "baseline":
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise bad(f"{where} must be a number or the name of one of the model's baselines", where)
        if isinstance(value, float) and not math.isfinite(value):
            raise bad(f"{where} must be finite", where)
        return value
    raise AssertionError(p.kind)  # pragma: no cover


def seed_everything(seed: int) -> None:
    """Random methods draw from torch and numpy (as Captum's do): seeded per group for reproducible answers."""
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """``seed_everything`` for the duration of one computation, then the worker's RNG states as they were.

    A request's seed must not leak into the process: other code in the worker (the user's model, a
    later unseeded draw) keeps its own random stream.
    """
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    state = np.random.get_state()
    with torch.random.fork_rng(devices=devices):
        seed_everything(seed)
        try:
            yield
        finally:
            np.random.set_state(state)


def occlusion_windows(shape: Sequence[int], window: Sequence[int], strides: Sequence[int]) -> int:
    """Number of occlusion positions for one example of ``shape`` (the forward passes it costs)."""
    count = 1
    for size, w, s in zip(shape, window, strides):
        count *= (size - w) // s + 1
    return count
