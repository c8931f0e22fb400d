"""``explain-serve export``: a model to ONNX (checked against ONNX Runtime), optionally with compiled explainers.

    explain-serve export model.onnx --model pkg.module:Class [--kwargs '{"n_features": 30}'] \\
        --weights weights.pt --reference-data reference.npy [--compile integrated_gradients --n-steps 32]
    explain-serve export model.onnx --example cancer          # a bundled example, trained in seconds

``--model`` is ``pkg.module:Class``, a ``.py`` file defining one ``nn.Module`` class, or a
TorchScript file. Example inputs come from ``--reference-data`` (an .npy of shape (n, *input)) or
``--input-shape`` (one item, without the batch axis). Prints the export report as JSON; exits 1 when
the ONNX model disagrees with torch beyond the tolerance.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import inspect
import json
import re
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch
from torch import nn


def _wire_to_class(name: str) -> str:
    """``integrated_gradients`` -> ``IntegratedGradients`` (Captum class names pass through)."""
    if re.fullmatch(r"[A-Z][A-Za-z]*", name):
        return name
    special = {"input_x_gradient": "InputXGradient", "layer_grad_cam": "LayerGradCam"}
    return special.get(name, "".join(part.capitalize() for part in name.split("_")))


def load_model(spec: str, weights: Optional[str] = None, kwargs: Optional[Dict[str, Any]] = None,
               class_name: Optional[str] = None) -> nn.Module:
    """An eval-mode model from ``pkg.module:Class``, a ``.py`` file, or a TorchScript file."""
    kwargs = kwargs or {}
    path = Path(spec)
    if path.suffix == ".py":
        module_spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
        classes = [c for n, c in inspect.getmembers(module, inspect.isclass)
                   if issubclass(c, nn.Module) and c.__module__ == module.__name__ and (class_name in (None, n))]
        if len(classes) != 1:
            raise ValueError(f"{path} defines {len(classes)} matching nn.Module classes; name one with --class")
        model = classes[0](**kwargs)
    elif ":" in spec and not path.exists():
        module_name, _, attr = spec.partition(":")
        model = getattr(importlib.import_module(module_name), attr)(**kwargs)
    else:
        return torch.jit.load(str(path), map_location="cpu").eval()
    if weights:
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return model.eval()


def example_inputs(model: nn.Module, reference: Optional[str], shape: Optional[str], dtype: str, n: int = 16):
    if reference:
        data = np.load(reference)
        return torch.from_numpy(np.ascontiguousarray(data[:n]))
    if not shape:
        raise ValueError("give --reference-data or --input-shape")
    dims = [int(s) for s in shape.replace("x", ",").split(",") if s.strip()]
    generator = torch.Generator().manual_seed(0)
    if dtype.startswith("int"):
        return torch.randint(0, 2, [n] + dims, generator=generator, dtype=getattr(torch, dtype))
    return torch.rand([n] + dims, generator=generator, dtype=getattr(torch, dtype))


def _example(name: str):
    from .. import examples

    trained = examples.train(name)
    model = trained["model"].eval()
    if name == "sentiment":
        texts, _ = examples.sentiment_corpus(n=64, seed=1)
        x = examples.encode_texts(texts, trained["vocab"])
    else:
        x = torch.from_numpy(np.asarray(trained["reference"])[:64])
    layer = examples.explain_config(name, trained)["explain"].get("layer")
    return model, x, layer


def run(args: argparse.Namespace) -> int:
    from .compiled import CompileError, compile_explainer
    from .model import export_model

    layer = args.layer
    if args.example:
        model, x, example_layer = _example(args.example)
        layer = layer or example_layer
    else:
        if not args.model:
            raise ValueError("give --model or --example")
        model = load_model(args.model, args.weights, json.loads(args.kwargs) if args.kwargs else None, args.class_name)
        x = example_inputs(model, args.reference_data, args.input_shape, args.dtype)
    out = Path(args.output)
    report = export_model(model, x[: min(4, len(x))], out, reference_inputs=x, opset=args.opset, strict=False)
    result: Dict[str, Any] = {"report": report.to_dict(), "compiled": {}}
    for name in args.compile or []:
        method = _wire_to_class(name)
        target = out.with_name(f"{out.stem}.{name}.onnx")
        try:
            explainer = compile_explainer(
                model, method, x[: min(8, len(x))], layer=layer if method.startswith("Layer") else None,
                n_steps=args.n_steps, integration=args.integration, path=target,
            )
            result["compiled"][name] = {"path": str(target), **explainer.spec.parity}
        except CompileError as error:
            result["compiled"][name] = {"error": str(error)}
    print(report.summary(), file=sys.stderr)
    print(json.dumps(result, default=str))
    return 0 if report.ok and not any("error" in v for v in result["compiled"].values()) else 1


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("output", help="where to write the ONNX model (.onnx)")
    p.add_argument("--model", help="pkg.module:Class, a .py file with one nn.Module class, or a TorchScript file")
    p.add_argument("--class", dest="class_name", help="class name in a .py model file")
    p.add_argument("--kwargs", help="JSON constructor arguments")
    p.add_argument("--weights", help="state dict (torch.save) for an eager model")
    p.add_argument("--example", choices=("digits", "cancer", "sentiment"), help="export a bundled example instead")
    p.add_argument("--reference-data", help=".npy of reference inputs (n, *input) used for the parity check")
    p.add_argument("--input-shape", help="one input without the batch axis, e.g. 1,28,28 (random inputs)")
    p.add_argument("--dtype", default="float32", help="input dtype with --input-shape (float32, int64)")
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--compile", action="append", metavar="METHOD",
                   help="also compile an explainer (saliency, input_x_gradient, integrated_gradients, "
                        "layer_grad_cam, layer_integrated_gradients); repeatable")
    p.add_argument("--n-steps", type=int, default=50)
    p.add_argument("--integration", default="gausslegendre")
    p.add_argument("--layer", help="module name for layer methods")
    return p


def add_subcommand(subparsers) -> argparse.ArgumentParser:
    """Register ``export`` on an ``argparse`` sub-parser set (the ``explain-serve`` CLI)."""
    p = subparsers.add_parser("export", help="export a model to ONNX, check it against ONNX Runtime, compile explainers")
    add_arguments(p)
    p.set_defaults(func=run)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="explain-serve export", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
