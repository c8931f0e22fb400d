"""The worker's device comes from TorchServe's context (``gpu_id``); explanations on a GPU equal the
CPU's. The CUDA cases run where a GPU is present and skip elsewhere."""
from __future__ import annotations

import json
import textwrap
from types import SimpleNamespace

import pytest
import torch
import yaml

from explain_serve.serving.service import ExplainService, device_from_context

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
MODEL = '''
from torch import nn


class Conv(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.head = nn.Sequential(nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(12, 4))

    def forward(self, x):
        return self.head(self.conv(x))
'''


@pytest.fixture()
def model_dir(tmp_path):
    (tmp_path / "conv.py").write_text(textwrap.dedent(MODEL))
    import importlib.util

    spec = importlib.util.spec_from_file_location("conv_device", tmp_path / "conv.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    torch.manual_seed(0)
    torch.save(mod.Conv().state_dict(), tmp_path / "weights.pt")
    cfg = {"kind": "image", "input": {"shape": [1, 6, 6]}, "model": {"class": "Conv", "file": "conv.py"},
           "explain": {"layer": "conv"}}
    (tmp_path / "explain.yaml").write_text(yaml.safe_dump(cfg))
    return tmp_path


def _context(model_dir, gpu_id):
    return SimpleNamespace(system_properties={"model_dir": str(model_dir), "gpu_id": gpu_id},
                           manifest={"model": {"modelName": "conv", "serializedFile": "weights.pt", "modelFile": "conv.py"}},
                           model_name="conv")


@pytest.mark.parametrize("gpu_id", [None, "", -1, 0])
def test_device_from_context(gpu_id):
    expected = "cuda:0" if gpu_id == 0 and torch.cuda.is_available() else "cpu"
    assert str(device_from_context({"gpu_id": gpu_id})) == expected


def test_context_without_a_gpu_serves_on_the_cpu(model_dir):
    svc = ExplainService.from_context(_context(model_dir, None))
    try:
        assert svc.device.type == "cpu" and next(svc.model.parameters()).device.type == "cpu"
    finally:
        svc.close()


BODIES = [{"inputs": torch.rand(1, 6, 6, generator=torch.Generator().manual_seed(i)).tolist(), "method": m, "target": 2}
          for i, m in enumerate(["integrated_gradients", "saliency", "deep_lift", "layer_grad_cam", "occlusion",
                                 "guided_backprop"])]


@pytest.mark.cuda
@CUDA
def test_explanations_on_the_gpu_from_the_context_equal_the_cpu(model_dir):
    gpu = ExplainService.from_context(_context(model_dir, 0))
    cpu = ExplainService(model_dir, "weights.pt", "conv", model_file="conv.py")
    try:
        assert gpu.device == torch.device("cuda", 0) and next(gpu.model.parameters()).is_cuda
        rows = [{"body": b} for b in BODIES]
        for (sg, tg), (sc, tc) in zip(gpu.handle(rows, [True] * len(rows)), cpu.handle(rows, [True] * len(rows))):
            assert sg == sc == 200, (tg, tc)
            g, c = json.loads(tg), json.loads(tc)
            torch.testing.assert_close(torch.tensor(g["attributions"]), torch.tensor(c["attributions"]),
                                       rtol=1e-3, atol=1e-4)
            assert g["prediction"]["index"] == c["prediction"]["index"]
    finally:
        gpu.close()
        cpu.close()
