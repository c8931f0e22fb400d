"""Export a model to ONNX with a dynamic batch axis and check it against ONNX Runtime.

``export_model`` writes the file and returns an ``ExportReport``: the largest absolute and relative
difference between torch and ONNX Runtime outputs over reference inputs (at the full reference batch
and at batch size 1, which exercises the dynamic axis), and how often their argmax agrees.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from ._trace import DEFAULT_OPSET
from .runtime import OnnxModel

METADATA_KEY = "explain_serve.export"


class ExportError(RuntimeError):
    """The exported model disagrees with torch beyond the tolerance."""


@dataclass
class ExportReport:
    path: str
    opset: int
    input_names: List[str]
    output_names: List[str]
    dynamic_axes: Dict[str, Dict[int, str]]
    n_reference: int
    batch_sizes: List[int]
    max_abs_error: float
    max_rel_error: float
    argmax_agreement: Optional[float]
    export_seconds: float
    ok: bool
    tolerance: Dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        lines = [
            f"exported {self.path} (opset {self.opset}, {self.export_seconds:.2f} s)",
            f"  inputs {self.input_names}, outputs {self.output_names}, dynamic axes {self.dynamic_axes}",
            f"  checked on {self.n_reference} reference inputs at batch sizes {self.batch_sizes}",
            f"  max abs error {self.max_abs_error:.3g}, max relative error {self.max_rel_error:.3g}",
        ]
        if self.argmax_agreement is not None:
            lines.append(f"  argmax agreement {100 * self.argmax_agreement:.2f}%")
        lines.append("  OK" if self.ok else f"  FAILED (tolerance {self.tolerance})")
        return "\n".join(lines)


def _as_tuple(x: Any) -> Tuple[Tensor, ...]:
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


def default_dynamic_axes(inputs: Sequence[Tensor], input_names: Sequence[str], output_names: Sequence[str]):
    """Axis 0 everywhere; also axis 1 of integer inputs (token ids of variable length)."""
    axes: Dict[str, Dict[int, str]] = {}
    for name, x in zip(input_names, inputs):
        axes[name] = {0: "batch"}
        if not x.is_floating_point() and x.dim() >= 2:
            axes[name][1] = "length"
    for name in output_names:
        axes[name] = {0: "batch"}
    return axes


def compare_outputs(expected: Tensor, actual: Tensor) -> Tuple[float, float, Optional[float]]:
    """(max abs error, max abs error / max |expected|, argmax agreement or None for 1-D outputs)."""
    e, a = expected.detach().double(), actual.detach().double()
    abs_err = float((e - a).abs().max()) if e.numel() else 0.0
    rel_err = abs_err / max(float(e.abs().max()) if e.numel() else 0.0, 1e-12)
    agree = None
    if e.dim() == 2 and e.shape[1] > 1:
        agree = float((e.argmax(1) == a.argmax(1)).double().mean())
    return abs_err, rel_err, agree


def export_model(
    model: nn.Module,
    example_inputs: Any,
    path: Union[str, os.PathLike],
    *,
    reference_inputs: Any = None,
    input_names: Optional[Sequence[str]] = None,
    output_names: Sequence[str] = ("output",),
    dynamic_axes: Optional[Dict[str, Dict[int, str]]] = None,
    opset: int = DEFAULT_OPSET,
    atol: float = 1e-4,
    rtol: float = 1e-4,
    strict: bool = True,
) -> ExportReport:
    """Write ``model`` as ONNX at ``path`` and check it on ``reference_inputs`` (default: the examples).

    The model is exported in eval mode (its mode is restored). ``strict`` raises ``ExportError``
    when the error exceeds ``atol + rtol * max|torch output|`` or any argmax differs.
    """
    examples = _as_tuple(example_inputs)
    names = list(input_names or (["input"] if len(examples) == 1 else [f"input_{i}" for i in range(len(examples))]))
    outputs = list(output_names)
    axes = dynamic_axes or default_dynamic_axes(examples, names, outputs)
    was_training = model.training
    model.eval()
    try:
        start = time.perf_counter()
        data = _export_bytes(model, examples, names, outputs, axes, opset)
        seconds = time.perf_counter() - start
        proto_path = _save(data, path, {"input_names": names, "output_names": outputs, "opset": opset})
        onnx_model = OnnxModel(proto_path)
        reference = _as_tuple(reference_inputs) if reference_inputs is not None else examples
        batch = reference[0].shape[0]
        sizes = sorted({batch, 1})
        worst_abs = worst_rel = 0.0
        agreements: List[float] = []
        with torch.no_grad():
            for size in sizes:
                for start_row in range(0, batch, size) if size == batch else range(0, min(batch, 4)):
                    rows = tuple(r[start_row:start_row + size] for r in reference)
                    expected = model(*rows)
                    actual = onnx_model(*rows)
                    abs_err, rel_err, agree = compare_outputs(_first(expected), _first(actual))
                    worst_abs, worst_rel = max(worst_abs, abs_err), max(worst_rel, rel_err)
                    if agree is not None and size == batch:
                        agreements.append(agree)
            scale = float(_first(model(*reference)).abs().max())
    finally:
        model.train(was_training)
    agreement = min(agreements) if agreements else None
    ok = worst_abs <= atol + rtol * scale and (agreement is None or agreement == 1.0)
    report = ExportReport(
        path=os.fspath(path), opset=opset, input_names=names, output_names=outputs,
        dynamic_axes={k: dict(v) for k, v in axes.items()}, n_reference=batch, batch_sizes=sizes,
        max_abs_error=worst_abs, max_rel_error=worst_rel, argmax_agreement=agreement,
        export_seconds=seconds, ok=ok, tolerance={"atol": atol, "rtol": rtol},
    )
    if strict and not ok:
        raise ExportError(report.summary())
    return report


def _first(out: Any) -> Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out


def _export_bytes(model, examples, names, outputs, axes, opset) -> bytes:
    import io
    import warnings

    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, examples, buffer, dynamo=False, input_names=names, output_names=outputs,
            dynamic_axes=axes, opset_version=opset, do_constant_folding=True,
        )
    return buffer.getvalue()


def _save(data: bytes, path: Union[str, os.PathLike], meta: Dict[str, Any]) -> str:
    import onnx

    proto = onnx.load_from_string(data)
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(meta)
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    onnx.save(proto, path)
    return path
