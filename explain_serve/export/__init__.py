"""Export to ONNX: models (served by ONNX Runtime) and attribution computations (compiled explainers).

- ``export_model`` / ``ExportReport``: a model to ONNX with a dynamic batch axis, checked against ORT;
- ``OnnxModel``: an ORT session as a torch callable (a ``forward_func`` for perturbation methods);
- ``compile_explainer`` / ``CompiledExplainer``: gradient methods as one ONNX graph;
- ``main(argv)`` / ``add_subcommand(subparsers)``: the ``explain-serve export`` command.
"""
from .compiled import CompileError, CompiledExplainer, ExplainerSpec, compile_explainer, try_compile
from .model import ExportError, ExportReport, export_model
from .runtime import OnnxModel


def main(argv=None) -> int:
    from .cli import main as _main

    return _main(argv)


def add_subcommand(subparsers):
    from .cli import add_subcommand as _add

    return _add(subparsers)


__all__ = [
    "CompileError", "CompiledExplainer", "ExplainerSpec", "ExportError", "ExportReport", "OnnxModel",
    "add_subcommand", "compile_explainer", "export_model", "main", "try_compile",
]
