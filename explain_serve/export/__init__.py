"""Export to ONNX: models (served by ONNX Runtime) and attribution computations (compiled explainers).

- ``export_model`` / ``ExportReport``: a model to ONNX with a dynamic batch axis, checked against ORT;
- ``OnnxModel``: an ORT session as a torch callable (a ``forward_func`` for perturbation methods);
- ``compile_explainer`` / ``CompiledExplainer``: gradient methods as one ONNX graph.
"""
from .compiled import CompileError, CompiledExplainer, ExplainerSpec, compile_explainer, try_compile
from .runtime import OnnxModel

__all__ = ["CompileError", "CompiledExplainer", "ExplainerSpec", "OnnxModel", "compile_explainer", "try_compile"]
