"""Over a real TorchServe: archives built with ``runtime="onnx"`` answer from ONNX Runtime.

Each example is served twice, from its plain archive (eager core, torch predictions) and from an
``--runtime onnx`` archive (compiled explainers, ONNX Runtime predictions); the answers must agree.
The worker log must show the compiled graphs installed and, for a request with parameters other
than the compiled ones, the logged fallback to the eager core.
"""
from __future__ import annotations

import json
import shutil
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from explain_serve.client import Client
from explain_serve.serving import server as ts_server
from explain_serve.serving.archive import archive
from explain_serve.serving.server import read_token

pytestmark = pytest.mark.serving
NAMES = ("digits", "cancer", "sentiment")


@pytest.fixture(scope="module")
def onnx_served(store, tmp_path_factory):
    if shutil.which("java") is None:
        pytest.skip("TorchServe needs Java")
    pytest.importorskip("onnxruntime")
    root = tmp_path_factory.mktemp("onnx_store")
    for name in NAMES:
        build = store / "build" / name
        kind = {"digits": "image", "cancer": "tabular", "sentiment": "text"}[name]
        reference = build / "reference.npy"
        extra = [build / "vocab.json"] if name == "sentiment" else []
        archive(f"{name}_onnx", build / "weights.pt", kind, root, config=build / "explain.yaml",
                reference_data=reference if reference.is_file() else None, extra_files=extra, runtime="onnx")
        shutil.copy(store / f"{name}.mar", root / f"{name}.mar")
    workdir = tmp_path_factory.mktemp("torchserve_onnx")
    models = [n for name in NAMES for n in (name, f"{name}_onnx")]
    info = ts_server.start(root, models, workdir, batch_size=4, max_batch_delay=5)
    try:
        keys = read_token(Path(info["token_file"]))
        client = Client(info["endpoints"]["inference"], info["endpoints"]["grpc"], keys["inference"])
        yield {"client": client, "info": info, "root": root}
        client.close()
    finally:
        ts_server.stop(workdir)


def _pair(client, name, body, predict=False):
    call = client.predict if predict else client.explain
    eager_status, eager = call(name, body)
    onnx_status, onnx = call(f"{name}_onnx", body)
    assert eager_status == 200 and onnx_status == 200, (eager, onnx)
    return eager, onnx


def _close(a, b, rtol=1e-4, atol=2e-5):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    scale = max(float(np.abs(b).max()), 1e-6)
    assert a.shape == b.shape and float(np.abs(a - b).max()) <= rtol * scale + atol, (a, b)


def _log_text(info) -> str:
    logs = Path(info["logs"]) if "logs" in info else None
    texts = [p.read_text(errors="replace") for p in logs.rglob("*.log")] if logs and logs.exists() else []
    return "\n".join(texts)


def test_onnx_archive_holds_the_graphs(onnx_served):
    with zipfile.ZipFile(onnx_served["root"] / "digits_onnx.mar") as z:
        names = set(z.namelist())
        manifest = json.loads(z.read("onnx.json"))
    assert {"model.onnx", "onnx.json", "compiled.integrated_gradients.onnx", "compiled.layer_grad_cam.onnx"} <= names
    assert manifest["export"]["ok"] and manifest["export"]["argmax_agreement"] == 1.0
    assert manifest["explainers"]["integrated_gradients"]["relative_error"] < 1e-4
    assert "deep_lift" in manifest["not_compiled"]


@pytest.mark.parametrize("name", NAMES)
def test_served_compiled_default_explanations_equal_eager(onnx_served, store, name):
    client = onnx_served["client"]
    if name == "sentiment":
        inputs = ["the movie was really great and fun", "the plot felt dull but a little lovely"]
    else:
        reference = np.load(store / "build" / name / "reference.npy")
        inputs = [reference[i].tolist() for i in (3, 17)]
    for x in inputs:
        for target in ("predicted", 0):
            eager, onnx = _pair(client, name, {"inputs": x, "target": target})
            assert onnx["method"] == eager["method"] and onnx["target"] == eager["target"]
            assert onnx["params"] == eager["params"] and onnx["shape"] == eager["shape"]
            _close(onnx["attributions"], eager["attributions"])
            assert onnx["convergence_delta"] == pytest.approx(eager["convergence_delta"], abs=1e-4)
            _close(onnx["prediction"]["probabilities"], eager["prediction"]["probabilities"], atol=1e-6)
            if name == "sentiment":
                assert [t["token"] for t in onnx["tokens"]] == [t["token"] for t in eager["tokens"]]


@pytest.mark.parametrize("method", ["saliency", "input_x_gradient", "layer_grad_cam"])
def test_served_compiled_digits_methods_equal_eager(onnx_served, store, method):
    x = np.load(store / "build" / "digits" / "reference.npy")[5].tolist()
    eager, onnx = _pair(onnx_served["client"], "digits", {"inputs": x, "method": method, "target": 4})
    _close(onnx["attributions"], eager["attributions"])


def test_served_predictions_equal(onnx_served, store):
    x = np.load(store / "build" / "cancer" / "reference.npy")[:1].tolist()[0]
    eager, onnx = _pair(onnx_served["client"], "cancer", {"inputs": x}, predict=True)
    assert onnx["prediction"]["index"] == eager["prediction"]["index"]
    _close(onnx["prediction"]["probabilities"], eager["prediction"]["probabilities"], atol=1e-6)


def test_other_parameters_fall_back_to_the_eager_core_with_a_logged_reason(onnx_served, store):
    client = onnx_served["client"]
    x = np.load(store / "build" / "cancer" / "reference.npy")[9].tolist()
    eager, onnx = _pair(client, "cancer", {"inputs": x, "params": {"n_steps": 7}})
    _close(onnx["attributions"], eager["attributions"])
    # a method with no compiled form is answered too
    eager, onnx = _pair(client, "cancer", {"inputs": x, "method": "feature_ablation"})
    _close(onnx["attributions"], eager["attributions"])
    deadline = time.time() + 10
    text = _log_text(onnx_served["info"])
    while "n_steps=7" not in text and time.time() < deadline:
        time.sleep(0.5)
        text = _log_text(onnx_served["info"])
    assert "compiled explanations: saliency, input_x_gradient, integrated_gradients" in text
    assert "integrated_gradients served by the eager core: n_steps=7 differs from the compiled n_steps=32" in text


def test_describe_says_which_methods_a_compiled_graph_serves(onnx_served):
    """The self-description names the compiled methods and the parameters their graphs answer."""
    client = onnx_served["client"]
    for name in NAMES:
        status, eager = client.describe(name)
        assert status == 200 and not any(m["compiled"] for m in eager["methods"].values())
        status, onnx = client.describe(f"{name}_onnx")
        assert status == 200
        with zipfile.ZipFile(onnx_served["root"] / f"{name}_onnx.mar") as z:
            built = set(json.loads(z.read("onnx.json"))["explainers"])
        assert {m for m, d in onnx["methods"].items() if d["compiled"]} == built
    status, digits = client.describe("digits_onnx")
    assert digits["methods"]["integrated_gradients"]["compiled"] == {
        "runtime": "onnxruntime", "params": {"n_steps": 32, "method": "gausslegendre"}}
    assert digits["methods"]["occlusion"]["compiled"] is False
