"""ONNX Runtime sessions behind a torch-tensor interface.

``OnnxModel`` is a callable (torch tensors in, a torch tensor out) so an exported model can be the
``forward_func`` of every forward-only attribution method (FeatureAblation, Occlusion, Shapley
values, KernelShap, Lime, FeaturePermutation) with no change to those methods.
"""
from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

_NP_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(bool)": np.bool_,
    "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8,
}

ModelSource = Union[str, os.PathLike, bytes]


def make_session(source: ModelSource, threads: Optional[int] = None, providers: Optional[Sequence[str]] = None):
    """An ``onnxruntime.InferenceSession`` with full graph optimisation (CPU unless told otherwise)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = int(threads)
    source = os.fspath(source) if not isinstance(source, bytes) else source
    return ort.InferenceSession(source, options, providers=list(providers or ["CPUExecutionProvider"]))


def to_numpy(value: Any, dtype) -> np.ndarray:
    if isinstance(value, Tensor):
        value = value.detach().cpu().numpy()
    return np.ascontiguousarray(np.asarray(value, dtype=dtype))


class OnnxModel:
    """An ONNX model as a torch callable: ``OnnxModel("model.onnx")(x) -> Tensor``.

    Positional arguments map to the graph's inputs in order; inputs are cast to the dtypes the graph
    declares. A graph with several outputs returns a tuple. ``session`` is the ORT session.
    """

    def __init__(self, source: ModelSource, threads: Optional[int] = None, providers: Optional[Sequence[str]] = None):
        self.session = make_session(source, threads, providers)
        self.input_names: List[str] = [i.name for i in self.session.get_inputs()]
        self.input_dtypes = [_NP_DTYPES.get(i.type, np.float32) for i in self.session.get_inputs()]
        self.output_names: List[str] = [o.name for o in self.session.get_outputs()]
        self.metadata: Dict[str, str] = dict(self.session.get_modelmeta().custom_metadata_map)

    def feeds(self, *args: Any) -> Dict[str, np.ndarray]:
        if len(args) != len(self.input_names):
            raise TypeError(f"the ONNX model takes {len(self.input_names)} inputs {self.input_names}, got {len(args)}")
        return {n: to_numpy(a, d) for n, a, d in zip(self.input_names, args, self.input_dtypes)}

    def run_numpy(self, *args: Any) -> List[np.ndarray]:
        return self.session.run(self.output_names, self.feeds(*args))

    def __call__(self, *args: Any):
        device = next((a.device for a in args if isinstance(a, Tensor)), torch.device("cpu"))
        outputs = [torch.from_numpy(o).to(device) for o in self.run_numpy(*args)]
        return outputs[0] if len(outputs) == 1 else tuple(outputs)

    def __repr__(self) -> str:
        return f"OnnxModel(inputs={self.input_names}, outputs={self.output_names})"
