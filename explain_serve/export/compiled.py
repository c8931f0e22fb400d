"""Compiled explainers: the whole attribution computation as one ONNX graph.

A gradient method is written here as a plain torch function of ``(input, baseline, target)`` that
calls ``torch.autograd.grad``; tracing it (``_trace``) turns forward and backward into explicit
operators, which export to one ONNX graph. Serving an explanation is then one ONNX Runtime call,
with no PyTorch at request time and no per-request autograd bookkeeping.

Graph signature (names are fixed so a server can load any compiled explainer):

- inputs ``input`` (batch first), ``baseline`` (same shape and dtype; path methods only),
  ``target`` (int64, one class per example; absent when the model returns one score per example);
- outputs ``attributions`` and, for path methods, ``delta`` (completeness gap per example).

Methods: Saliency, InputXGradient, IntegratedGradients (fixed ``n_steps`` and rule), LayerGradCam,
LayerIntegratedGradients (typically on an embedding layer). Results match the eager core in
``explain_serve.attr`` (same quadrature nodes, same conventions as Captum).
"""
from __future__ import annotations

import json
import os
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import numpy as np
import torch
from torch import Tensor, nn

from .._core.quadrature import nodes_and_weights
from ._trace import DEFAULT_OPSET, example_batch_size, to_onnx, trace
from .runtime import OnnxModel

METHODS = ("Saliency", "InputXGradient", "IntegratedGradients", "LayerGradCam", "LayerIntegratedGradients")
PATH_METHODS = ("IntegratedGradients", "LayerIntegratedGradients")
LAYER_METHODS = ("LayerGradCam", "LayerIntegratedGradients")
METADATA_KEY = "explain_serve.compiled"


class CompileError(RuntimeError):
    """The model or method cannot be compiled, or the compiled graph disagrees with eager torch."""


@dataclass
class ExplainerSpec:
    """What a compiled graph computes (stored in the ONNX file's metadata)."""

    method: str
    n_steps: int = 50
    integration: str = "gausslegendre"
    abs: bool = True  # Saliency
    relu_attributions: bool = False  # LayerGradCam
    layer: Optional[str] = None  # dotted module name, layer methods
    has_target: bool = True
    input_names: List[str] = field(default_factory=list)
    output_names: List[str] = field(default_factory=list)
    input_dtype: str = "float32"
    parity: Dict[str, float] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "ExplainerSpec":
        return cls(**json.loads(text))


# -- the attribution functions that get traced ---------------------------------------------------------
def _frozen_forward(model: nn.Module) -> Callable[[Tensor], Tensor]:
    """The model with detached parameters: autograd then never asks for weight gradients."""
    state = {k: v.detach() for k, v in model.named_parameters()}
    state.update({k: v for k, v in model.named_buffers()})

    def forward(x: Tensor) -> Tensor:
        return torch.func.functional_call(model, state, (x,))

    return forward


def _check_output(out: Tensor, target: Optional[Tensor]) -> None:
    if target is None:
        if out.dim() > 1 and out[0].numel() != 1:
            raise CompileError(f"the model returns {tuple(out.shape[1:])} values per example; a target is needed")
    elif out.dim() != 2:
        raise CompileError(f"compiled explainers select a class from a (batch, classes) output, got {out.dim()}-D")


def _onehot(out: Tensor, target: Tensor) -> Tensor:
    classes = torch.arange(out.shape[1], device=out.device).unsqueeze(0)
    return (classes == target.reshape(-1, 1)).to(out.dtype)


def _select(out: Tensor, target: Optional[Tensor], copies: int = 1) -> Tensor:
    """The explained score of each example, shape (copies, batch) for ``copies`` stacked batches."""
    _check_output(out, target)
    if target is None:
        return out.reshape(copies, -1)
    return (out.reshape(copies, -1, out.shape[1]) * _onehot(out, target)).sum(-1)


def _output_seed(out: Tensor, target: Optional[Tensor], weights: Optional[Tensor] = None) -> Tensor:
    """The gradient seeded at the model's output: the target's one-hot, times one weight per stacked copy.

    ``out`` holds ``len(weights)`` stacked copies of the batch ``target`` describes. Backward is linear
    in the seed, so seeding ``w_k`` yields copy k's gradient already weighted: no per-copy multiply, no
    reduction over classes and no broadcast in the graph.
    """
    _check_output(out, target)
    copies = 1 if weights is None else weights.numel()
    if target is None:
        seed = torch.zeros_like(out.detach()).reshape(copies, -1)
        return (seed + (1.0 if weights is None else weights.reshape(copies, 1))).reshape(out.shape)
    onehot = _onehot(out, target)
    if weights is None:
        return onehot
    return (weights.reshape(copies, 1, 1) * onehot).reshape(out.shape)


class _LayerTap:
    """A forward hook that records a layer's output or replaces it (for layer methods)."""

    def __init__(self, layer: nn.Module):
        self.layer = layer
        self.replace: Optional[Tensor] = None
        self.seen: Optional[Tensor] = None
        self.detach = False

    def __call__(self, module, inputs, output):
        if not isinstance(output, Tensor):
            raise CompileError("layer methods need a layer that returns one tensor")
        if self.replace is not None:
            return self.replace
        if self.detach:
            output = output.detach().requires_grad_(True)
            self.seen = output
            return output
        self.seen = output
        return None

    @contextmanager
    def installed(self):
        handle = self.layer.register_forward_hook(self)
        try:
            yield self
        finally:
            handle.remove()


def _weights_shape(n: int, like: Tensor) -> List[int]:
    return [n] + [1] * like.dim()


def attribution_function(model: nn.Module, spec: ExplainerSpec, layer: Optional[nn.Module] = None) -> Callable:
    """The plain torch function a spec describes: ``fn(input[, baseline][, target]) -> outputs``."""
    forward = _frozen_forward(model)
    method = spec.method
    if method not in METHODS:
        raise CompileError(f"{method} cannot be compiled; compilable methods: {', '.join(METHODS)}")
    if method in LAYER_METHODS and layer is None:
        raise CompileError(f"{method} needs a layer")
    alphas, weights = (nodes_and_weights(spec.integration, spec.n_steps) if method in PATH_METHODS else ([], []))
    n = len(alphas)

    def unpack(args):
        args = list(args)
        x = args.pop(0)
        b = args.pop(0) if method in PATH_METHODS else None
        t = args.pop(0) if spec.has_target else None
        return x, b, t

    def gradient_of(x_like: Tensor, out: Tensor, target: Optional[Tensor], weights: Optional[Tensor] = None) -> Tensor:
        """d(sum of weight * target score)/d(x_like), seeded at the model's output (see ``_output_seed``)."""
        return torch.autograd.grad(out, x_like, grad_outputs=_output_seed(out, target, weights))[0]

    def saliency(*args):
        x, _, t = unpack(args)
        with torch.enable_grad():
            xr = x.detach().requires_grad_(True)
            g = gradient_of(xr, forward(xr), t)
        if method == "Saliency":
            return g.abs() if spec.abs else g
        return g * x

    def integrated_gradients(*args):
        # One forward over [path points; input; baseline]: the last two rows give the delta's end points.
        # The quadrature weights are the seed of each copy (0 for the end points), so the weighted
        # sum over path points is one reduction.
        x, b, t = unpack(args)
        diff = x - b
        a = torch.tensor(alphas, dtype=x.dtype).reshape(_weights_shape(n, x))
        w = torch.tensor(list(weights) + [0.0, 0.0], dtype=x.dtype)
        points = b.unsqueeze(0) + a * diff.unsqueeze(0)
        rows = torch.cat([points, x.unsqueeze(0), b.unsqueeze(0)]).reshape([-1] + list(x.shape[1:]))
        with torch.enable_grad():
            rows = rows.detach().requires_grad_(True)
            out = forward(rows)
            g = gradient_of(rows, out, t, w)
        attributions = g.reshape([n + 2] + list(x.shape)).sum(0) * diff
        per_example = list(out.shape[1:])
        input_and_baseline = out.detach().reshape([n + 2, -1] + per_example)[n:].reshape([-1] + per_example)
        ends = _select(input_and_baseline, t, copies=2)
        delta = attributions.reshape(x.shape[0], -1).sum(1) - (ends[0] - ends[1])
        return attributions, delta

    def layer_grad_cam(*args):
        x, _, t = unpack(args)
        tap = _LayerTap(layer)
        with tap.installed(), torch.enable_grad():
            tap.detach = True
            out = forward(x)
            acts = tap.seen
            if acts is None:
                raise CompileError("the layer was not called in the forward pass")
            g = gradient_of(acts, out, t)
        if g.dim() > 2:
            g = g.mean(dim=tuple(range(2, g.dim())), keepdim=True)
        cam = (g * acts.detach()).sum(1, keepdim=True)
        return torch.relu(cam) if spec.relu_attributions else cam

    def layer_integrated_gradients(*args):
        x, b, t = unpack(args)
        tap = _LayerTap(layer)
        with tap.installed():
            with torch.no_grad():
                ends = _select(forward(torch.cat([x, b])), t, copies=2)
                both = tap.seen
            if both is None:
                raise CompileError("the layer was not called in the forward pass")
            batch = x.shape[0]
            pair = both.reshape([2, -1] + list(both.shape[1:]))
            lx, lb = pair[0], pair[1]
            diff = lx - lb
            a = torch.tensor(alphas, dtype=diff.dtype).reshape(_weights_shape(n, diff))
            w = torch.tensor(weights, dtype=diff.dtype)
            points = (lb.unsqueeze(0) + a * diff.unsqueeze(0)).reshape([-1] + list(diff.shape[1:]))
            xs = x.repeat([n] + [1] * (x.dim() - 1))
            with torch.enable_grad():
                points = points.detach().requires_grad_(True)
                tap.replace = points
                g = gradient_of(points, forward(xs), t, w)
                tap.replace = None
        attributions = g.reshape([n] + list(diff.shape)).sum(0) * diff
        delta = attributions.reshape(batch, -1).sum(1) - (ends[0] - ends[1])
        return attributions, delta

    return {
        "Saliency": saliency,
        "InputXGradient": saliency,
        "IntegratedGradients": integrated_gradients,
        "LayerGradCam": layer_grad_cam,
        "LayerIntegratedGradients": layer_integrated_gradients,
    }[method]


# -- compiling ------------------------------------------------------------------------------------------
def _module_name(model: nn.Module, layer: Optional[Union[nn.Module, str]]) -> Tuple[Optional[nn.Module], Optional[str]]:
    if layer is None:
        return None, None
    if isinstance(layer, str):
        return model.get_submodule(layer), layer
    for name, module in model.named_modules():
        if module is layer:
            return layer, name
    raise CompileError("the layer is not a submodule of the model")


@contextmanager
def _eval_mode(model: nn.Module):
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    """max |actual - expected| / max |expected| (a scale-free, norm-wise comparison)."""
    scale = float(np.abs(expected).max()) if expected.size else 0.0
    return float(np.abs(actual - expected).max()) / max(scale, 1e-12) if expected.size else 0.0


def _graph_inputs(spec: ExplainerSpec, x: Tensor, b: Tensor, t: Optional[Tensor]) -> List[Tensor]:
    args = [x]
    if spec.method in PATH_METHODS:
        args.append(b)
    if spec.has_target:
        args.append(t)
    return args


def compile_explainer(
    model: nn.Module,
    method: str,
    example_input: Tensor,
    *,
    layer: Optional[Union[nn.Module, str]] = None,
    n_steps: int = 50,
    integration: str = "gausslegendre",
    abs: bool = True,
    relu_attributions: bool = False,
    baseline: Any = None,
    opset: int = DEFAULT_OPSET,
    check: bool = True,
    rtol: float = 1e-4,
    path: Optional[Union[str, os.PathLike]] = None,
    threads: Optional[int] = None,
    extra_decompositions: Optional[Dict] = None,
) -> "CompiledExplainer":
    """Trace ``method`` on ``model``, export it to ONNX, and check it against eager torch.

    ``example_input`` is a batch of real inputs (used for tracing and for the parity check, which
    runs at two batch sizes). ``method`` names the Captum class; ``layer`` (a submodule or its dotted
    name) is needed for layer methods. Raises ``CompileError`` when the model or method cannot be
    compiled or the graph's results differ from eager torch by more than ``rtol`` (relative).
    ``extra_decompositions`` adds or overrides operator translations (see ``backward_ops``).
    """
    if method == "IntegratedGradients" or method == "LayerIntegratedGradients":
        nodes_and_weights(integration, n_steps)  # validates the rule early
    layer_module, layer_name = _module_name(model, layer)
    with _eval_mode(model), torch.no_grad():
        out = model(example_input[:1])
    has_target = out.dim() >= 2
    names = ["input"] + (["baseline"] if method in PATH_METHODS else []) + (["target"] if has_target else [])
    outputs = ["attributions"] + (["delta"] if method in PATH_METHODS else [])
    spec = ExplainerSpec(
        method=method, n_steps=n_steps, integration=integration, abs=abs, relu_attributions=relu_attributions,
        layer=layer_name, has_target=has_target, input_names=names, output_names=outputs,
        input_dtype=str(example_input.dtype).replace("torch.", ""),
    )
    with _eval_mode(model):
        fn = attribution_function(model, spec, layer_module)
        batch = example_batch_size(example_input, avoid=[n_steps, out.shape[-1] if out.dim() > 1 else 1])
        rows = torch.arange(batch) % example_input.shape[0]
        x = example_input[rows].clone()
        b = _baseline_like(baseline, x)
        with torch.no_grad():
            t = model(x).reshape(batch, -1).argmax(1) if has_target else None
        args = _graph_inputs(spec, x, b, t)
        try:
            axes = _dynamic_axes(spec, x)
            gm = trace(fn, args, dynamic=[list(axes[name]) for name in names], extra_decompositions=extra_decompositions)
            onnx_bytes = to_onnx(gm, args, names, outputs, opset=opset, dynamic_axes=axes)
        except CompileError:
            raise
        except Exception as error:  # an operator without translation, data-dependent control flow...
            raise CompileError(f"{method} could not be compiled: {type(error).__name__}: {error}") from error
        explainer = CompiledExplainer(onnx_bytes, spec, threads=threads)
        if check:
            spec.parity = _check(explainer, fn, spec, example_input, baseline, has_target, model, rtol)
    explainer.spec = spec
    if path is not None:
        explainer.save(path)
    return explainer


def _dynamic_axes(spec: ExplainerSpec, x: Tensor) -> Dict[str, Dict[int, str]]:
    """Batch axis everywhere; integer (token id) inputs also get a dynamic length axis."""
    sequence = not x.is_floating_point() and x.dim() >= 2
    axes: Dict[str, Dict[int, str]] = {}
    for name in spec.input_names + spec.output_names:
        axes[name] = {0: "batch"}
        if sequence and name in ("input", "baseline"):
            axes[name][1] = "length"
        if sequence and name == "attributions" and spec.method == "LayerIntegratedGradients":
            axes[name][1] = "length"
    return axes


def _baseline_like(baseline: Any, x: Tensor) -> Tensor:
    if baseline is None:
        return torch.zeros_like(x)
    if isinstance(baseline, Tensor):
        return baseline.to(x.dtype).expand_as(x).clone() if baseline.numel() > 1 else torch.full_like(x, baseline.item())
    return torch.full_like(x, baseline)


def _check(explainer, fn, spec, example_input, baseline, has_target, model, rtol) -> Dict[str, float]:
    """Compare the graph with the eager function at the example's batch size and at one example."""
    worst = worst_delta = 0.0
    cases = [example_input, example_input[:1]]
    if not example_input.is_floating_point() and example_input.dim() >= 2 and example_input.shape[1] > 1:
        cases.append(example_input[:2, :-1])  # token ids: another sequence length
    for x in cases:
        b = _baseline_like(baseline, x)
        with torch.no_grad():
            t = model(x).reshape(x.shape[0], -1).argmax(1) if has_target else None
        expected = fn(*_graph_inputs(spec, x, b, t))
        expected = expected if isinstance(expected, tuple) else (expected,)
        try:
            got = explainer.run(*_graph_inputs(spec, x, b, t))
        except Exception as error:
            raise CompileError(f"compiled {spec.method} fails on inputs of shape {tuple(x.shape)}: {error}") from error
        for e, g in zip(expected, got):
            if tuple(e.shape) != tuple(g.shape):
                raise CompileError(f"compiled {spec.method} returned shape {tuple(g.shape)}, expected {tuple(e.shape)}")
        err = relative_error(got[0].numpy(), expected[0].detach().numpy())
        if len(expected) > 1:  # the delta, on the scale of the attributions' per-example sums
            scale = max(float(expected[0].detach().abs().reshape(x.shape[0], -1).sum(1).max()), 1e-12)
            delta_err = float((got[1] - expected[1].detach()).abs().max()) / scale
            worst_delta = max(worst_delta, delta_err)
            err = max(err, delta_err)
        worst = max(worst, err)
    if not worst <= rtol:
        raise CompileError(f"compiled {spec.method} differs from eager torch: relative error {worst:.2e} > {rtol:.0e}")
    return {"relative_error": worst} if len(spec.output_names) == 1 else {"relative_error": worst, "delta_error": worst_delta}


# -- running --------------------------------------------------------------------------------------------
class CompiledExplainer:
    """A compiled attribution graph on ONNX Runtime with a Captum-like ``attribute``.

    ``CompiledExplainer.load(path)`` reads a saved graph; ``attribute(inputs, baselines, target,
    return_convergence_delta)`` follows the eager method's conventions for one input tensor.
    """

    def __init__(self, onnx_model: Union[bytes, str, os.PathLike], spec: Optional[ExplainerSpec] = None, threads=None):
        if not isinstance(onnx_model, bytes):
            with open(onnx_model, "rb") as handle:
                onnx_model = handle.read()
        self.onnx_bytes = onnx_model
        self.model = OnnxModel(onnx_model, threads=threads)
        if spec is None:
            text = self.model.metadata.get(METADATA_KEY)
            if text is None:
                raise CompileError("this ONNX file is not a compiled explainer (no metadata)")
            spec = ExplainerSpec.from_json(text)
        self.spec = spec

    @classmethod
    def load(cls, path: Union[str, os.PathLike], threads: Optional[int] = None) -> "CompiledExplainer":
        return cls(path, threads=threads)

    @property
    def method(self) -> str:
        return self.spec.method

    def has_convergence_delta(self) -> bool:
        return self.spec.method in PATH_METHODS

    def save(self, path: Union[str, os.PathLike]) -> str:
        """Write the graph with its spec in the ONNX metadata (``explain_serve.compiled``)."""
        import onnx

        proto = onnx.load_from_string(self.onnx_bytes)
        del proto.metadata_props[:]
        entry = proto.metadata_props.add()
        entry.key, entry.value = METADATA_KEY, self.spec.to_json()
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        onnx.save(proto, os.fspath(path))
        return os.fspath(path)

    def run(self, *args: Any) -> Tuple[Tensor, ...]:
        """Raw graph call: tensors in the graph's input order, a tuple of output tensors."""
        out = self.model(*args)
        return out if isinstance(out, tuple) else (out,)

    def attribute(
        self,
        inputs: Tensor,
        baselines: Any = None,
        target: Any = None,
        return_convergence_delta: bool = False,
    ):
        """Attributions for one input tensor (or a 1-tuple), as the eager method returns them."""
        was_tuple = isinstance(inputs, tuple)
        if was_tuple:
            if len(inputs) != 1:
                raise ValueError("compiled explainers take one input tensor")
            inputs = inputs[0]
        if isinstance(baselines, tuple):
            baselines = baselines[0]
        x = _array(inputs, self._input_dtype)
        feeds = {"input": x}
        if self._path:
            feeds["baseline"] = _baseline_array(baselines, x)
        if self.spec.has_target:
            feeds["target"] = _target_vector(target, x.shape[0])
        outputs = self.model.session.run(self.spec.output_names, feeds)
        attributions = torch.from_numpy(outputs[0])
        if inputs.device.type != "cpu":
            attributions = attributions.to(inputs.device)
        result = (attributions,) if was_tuple else attributions
        if return_convergence_delta:
            if not self._path:
                raise ValueError(f"{self.spec.method} has no convergence delta")
            return result, torch.from_numpy(outputs[1])
        return result

    @property
    def _path(self) -> bool:
        return self.spec.method in PATH_METHODS

    @property
    def _input_dtype(self):
        return self.model.input_dtypes[0]


def _array(value: Any, dtype) -> np.ndarray:
    if isinstance(value, Tensor):
        value = value.detach()
        if value.device.type != "cpu":
            value = value.cpu()
        value = value.numpy()
    if not isinstance(value, np.ndarray) or value.dtype != dtype or not value.flags.c_contiguous:
        value = np.ascontiguousarray(value, dtype=dtype)
    return value


def _baseline_array(baseline: Any, x: np.ndarray) -> np.ndarray:
    if baseline is None:
        return np.zeros_like(x)
    if isinstance(baseline, (int, float)):
        return np.full_like(x, baseline)
    b = _array(baseline, x.dtype)
    return b if b.shape == x.shape else np.ascontiguousarray(np.broadcast_to(b, x.shape))


def _target_vector(target: Any, batch: int) -> np.ndarray:
    if isinstance(target, Tensor) and not target.is_floating_point():
        if target.numel() == batch:
            return _array(target.reshape(-1), np.int64)
        if target.numel() == 1:
            return np.full(batch, int(target.item()), dtype=np.int64)
    if target is None:
        raise ValueError("this compiled explainer needs a target (the model returns several classes)")
    if isinstance(target, (int, np.integer)) and not isinstance(target, bool):
        return np.full(batch, int(target), dtype=np.int64)
    if isinstance(target, (list, tuple)) and len(target) == batch and all(
        isinstance(t, (int, np.integer)) and not isinstance(t, bool) for t in target
    ):
        return np.asarray(target, dtype=np.int64)
    raise ValueError(f"compiled explainers take one class index per example (got {target!r} for {batch} examples)")


def try_compile(model: nn.Module, method: str, example_input: Tensor, **kwargs) -> Tuple[Optional[CompiledExplainer], Optional[str]]:
    """``(explainer, None)`` or ``(None, reason)``: for servers that fall back to the eager core."""
    try:
        return compile_explainer(model, method, example_input, **kwargs), None
    except (CompileError, NotImplementedError, ValueError) as error:
        return None, str(error)
