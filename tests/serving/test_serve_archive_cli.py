"""Archiving (eager model file + state dict, config errors), deterministic example training, and the
console script end to end: serve (tokens off) -> explain over HTTP and gRPC -> stop frees the ports."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from explain_serve.examples import EXAMPLES, train
from explain_serve.serving.archive import archive
from explain_serve.serving.config import ConfigError
from explain_serve.serving.service import ExplainService

CLI = [str(Path(sys.executable).parent / "explain-serve")]


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_training_is_deterministic(name):
    a, b = train(name), train(name)
    for (k, va), vb in zip(a["model"].state_dict().items(), b["model"].state_dict().values()):
        assert torch.equal(va, vb), k
    assert a["accuracy"] > 0.9


def test_build_examples_with_the_onnx_runtime(tmp_path):
    """``build-examples --runtime onnx``: the archive carries model.onnx and the compiled default method."""
    pytest.importorskip("onnxruntime")
    out = subprocess.run(CLI + ["build-examples", "cancer", "--runtime", "onnx", "--model-store", str(tmp_path)],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"cancer": str(tmp_path / "cancer.mar")}
    with zipfile.ZipFile(tmp_path / "cancer.mar") as z:
        names = set(z.namelist())
        manifest = json.loads(z.read("onnx.json"))
    assert {"model.onnx", "onnx.json", "compiled.integrated_gradients.onnx"} <= names, names
    assert "integrated_gradients" not in manifest.get("not_compiled", {})


def _eager_model(tmp_path: Path):
    src = tmp_path / "tiny.py"
    src.write_text(textwrap.dedent('''
        import torch
        from torch import nn

        class Tiny(nn.Module):
            def __init__(self):
                super().__init__()
                self.net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))

            def forward(self, x):
                return self.net(x)
    '''))
    import importlib.util

    spec = importlib.util.spec_from_file_location("tiny_for_test", src)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    torch.manual_seed(0)
    model = mod.Tiny().eval()
    torch.save(model.state_dict(), tmp_path / "tiny.pt")
    return src, model


def test_archive_eager_file_with_state_dict_and_reference(tmp_path):
    src, model = _eager_model(tmp_path)
    ref = np.random.default_rng(0).normal(size=(50, 4)).astype(np.float32)
    np.save(tmp_path / "ref.npy", ref)
    mar = archive("tiny", src, "tabular", tmp_path / "store", weights=tmp_path / "tiny.pt",
                  reference_data=tmp_path / "ref.npy")
    out = tmp_path / "unpacked"
    with zipfile.ZipFile(mar) as z:
        z.extractall(out)
    svc = ExplainService(out, "weights.pt", "tiny", model_file="tiny.py")
    assert svc.cfg["explain"]["baseline"] == "mean" and svc.n_classes == 3
    x = ref[0]
    (status, text), = svc.handle([{"body": {"inputs": x.tolist(), "target": 2}}], [True])
    body = json.loads(text)
    assert status == 200 and body["baseline"] == "mean"
    import explain_serve.attr as attr

    expected = attr.IntegratedGradients(model).attribute(
        torch.from_numpy(x[None]), baselines=torch.from_numpy(ref.mean(0, keepdims=True)), target=2, n_steps=50)
    np.testing.assert_allclose(body["attributions"], expected[0].numpy(), rtol=1e-4, atol=1e-6)
    svc.close()


def test_archive_refuses_configs_that_cannot_serve(tmp_path):
    src, _ = _eager_model(tmp_path)
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("explain:\n  methods: [integrated_gradients, layer_grad_cam]\n")
    with pytest.raises(ConfigError, match="needs explain.layer"):
        archive("tiny", src, "tabular", tmp_path / "store", weights=tmp_path / "tiny.pt", config=cfg)
    cfg.write_text("explain:\n  baseline: mean\n  baselines: {mean: {type: mean}}\n")
    with pytest.raises(ConfigError, match="reference data"):
        archive("tiny", src, "tabular", tmp_path / "store", weights=tmp_path / "tiny.pt", config=cfg)
    with pytest.raises(ConfigError, match="--weights"):
        archive("tiny", src, "tabular", tmp_path / "store")
    assert not (tmp_path / "store" / "tiny.mar").exists()


@pytest.mark.serving
def test_console_script_serve_explain_stop(store, tmp_path, reference):
    from explain_serve.serving.server import port_in_use

    workdir = tmp_path / "wd"
    run = lambda *a: subprocess.run(CLI + list(a), capture_output=True, text=True, timeout=300)  # noqa: E731
    proc = run("serve", "--model-store", str(store), "--models", "cancer", "--workdir", str(workdir),
               "--no-token", "--batch-size", "1")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert info["token_file"] is None and info["models"] == ["cancer"]
    try:
        for extra in ([], ["--grpc"]):
            proc = run("explain", "cancer", "--inputs", json.dumps(reference["cancer"][1].tolist()), "--target", "1",
                       "--method", "saliency", "--workdir", str(workdir), *extra)
            assert proc.returncode == 0, proc.stderr
            body = json.loads(proc.stdout)
            assert body["target"] == 1 and len(body["attributions"]) == 30
        proc = run("explain", "cancer", "--inputs", "[1, 2]", "--workdir", str(workdir))
        assert proc.returncode == 1 and json.loads(proc.stdout)["code"] == 400
    finally:
        proc = run("stop", "--workdir", str(workdir))
    assert proc.returncode == 0 and json.loads(proc.stdout)["stopped"] is True
    ports = [int(u.rsplit(":", 1)[1]) for u in info["endpoints"].values()]
    assert not any(port_in_use("127.0.0.1", p) for p in ports)
