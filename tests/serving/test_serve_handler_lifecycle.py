"""The image handler driven like a TorchServe worker (TorchServe's own model loader and Service,
messages decoded from its wire format): after many requests, good and bad, the model has the hooks
and attributes it had after loading, predictions equal the bare model's, and memory stays flat."""
from __future__ import annotations

import gc
import json
import struct
import sys
import zipfile
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch

from explain_serve import handlers

pytestmark = pytest.mark.serving


def decode_response(msg: bytes):
    """TorchServe's predict response frame -> [(status, body)] per request."""
    pos = 0

    def take_int():
        nonlocal pos
        (v,) = struct.unpack("!i", msg[pos:pos + 4])
        pos += 4
        return v

    def take_bytes():
        nonlocal pos
        n = take_int()
        b = msg[pos:pos + n]
        pos += n
        return b

    take_int()  # batch code
    take_bytes()  # message
    out = []
    while True:
        n = take_int()
        if n == -1:
            return out
        pos += n  # request id
        take_bytes()  # content type
        status = take_int()
        take_bytes()  # phrase
        for _ in range(take_int()):
            take_bytes(), take_bytes()
        out.append((status, json.loads(take_bytes())))


def hook_count(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
               + len(getattr(m, "_backward_pre_hooks", {})) for m in model.modules())


def attributes(model):
    return {name: (sorted(vars(m)), m.training) for name, m in model.named_modules()}


@pytest.fixture(scope="module")
def worker(store, tmp_path_factory):
    from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl
    from ts.model_loader import TsModelLoader
    import ts

    model_dir = tmp_path_factory.mktemp("digits_model")
    with zipfile.ZipFile(store / "digits.mar") as z:
        z.extractall(model_dir)
    sys.path.insert(0, str(model_dir))
    metrics = MetricsCacheYamlImpl(config_file_path=str(Path(ts.__file__).parent / "configs" / "metrics.yaml"))
    metrics.initialize_cache()
    service = TsModelLoader().load("digits", str(model_dir), handler="image_handler.py", gpu_id=None,
                                   batch_size=8, metrics_cache=metrics)
    service.set_cl_socket(None)  # no frontend socket: responses are returned, not streamed
    yield service
    sys.path.remove(str(model_dir))


def request(i, body, explain):
    headers = [{"name": b"explain", "value": b"True"}] if explain else []
    value = body if isinstance(body, (dict, bytes)) else body
    return {"requestId": f"r{i}".encode(), "headers": headers,
            "parameters": [{"name": "body", "contentType": "application/json", "value": value}]}


def mixed_batch(reference, rnd):
    x = reference["digits"]
    methods = ["integrated_gradients", "saliency", "deep_lift", "guided_backprop", "layer_grad_cam",
               "gradient_shap", "occlusion", "guided_grad_cam"]
    batch, expect_ok = [], []
    for i in range(8):
        k = (rnd + i) % 10
        if k == 8:
            batch.append(request(i, {"inputs": [[1.0, float("nan")]]}, True)); expect_ok.append(False)
        elif k == 9:
            batch.append(request(i, b"{broken", True)); expect_ok.append(False)
        else:
            body = {"inputs": x[(rnd * 8 + i) % len(x)].tolist(), "target": (rnd + i) % 10,
                    "method": methods[k % len(methods)]}
            batch.append(request(i, body, explain=k != 0)); expect_ok.append(True)
    return batch, expect_ok


def test_hooks_attributes_and_memory_stay_put(worker, reference, store):
    handler = worker._entry_point.__self__
    model = handler.service.model
    hooks, attrs = hook_count(model), attributes(model)
    assert hooks > 0  # hooked methods registered once at load (reused by every request)
    rss = psutil.Process().memory_info().rss
    for rnd in range(80):
        if rnd == 20:  # warmed up: allocator pools and caches are filled
            gc.collect()
            rss = psutil.Process().memory_info().rss
        batch, expect_ok = mixed_batch(reference, rnd)
        answers = decode_response(worker.predict(batch))
        assert [s == 200 for s, _ in answers] == expect_ok, answers
        assert all(("code" in b) != ok for (s, b), ok in zip(answers, expect_ok))
        assert hook_count(model) == hooks and attributes(model) == attrs
    gc.collect()
    growth = psutil.Process().memory_info().rss - rss
    assert growth < 24 * 2**20, f"RSS grew by {growth / 2**20:.1f} MiB over 60 batches"

    # predictions with the hooks registered equal the bare model's
    from explain_serve.examples import load_example_model

    bare = load_example_model("digits", store / "build" / "digits")
    x = reference["digits"][:4]
    answers = decode_response(worker.predict([request(i, {"inputs": x[i].tolist()}, False) for i in range(4)]))
    with torch.no_grad():
        expected = torch.softmax(bare(torch.from_numpy(x)), 1).numpy()
    for (status, body), e in zip(answers, expected):
        assert status == 200
        np.testing.assert_allclose(body["prediction"]["probabilities"], e, rtol=1e-5, atol=1e-6)
    handler.service.close()
    assert hook_count(model) == 0


def test_generic_handler_takes_the_kind_from_the_config(store, reference, tmp_path):
    """handlers/explain_handler.py (no kind of its own) serves a tabular archive like the tabular handler."""
    import shutil

    from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl
    from ts.model_loader import TsModelLoader
    import ts

    model_dir = tmp_path / "cancer"
    with zipfile.ZipFile(store / "cancer.mar") as z:
        z.extractall(model_dir)
    shutil.copy(handlers.path(None), model_dir)
    sys.path.insert(0, str(model_dir))
    try:
        metrics = MetricsCacheYamlImpl(config_file_path=str(Path(ts.__file__).parent / "configs" / "metrics.yaml"))
        metrics.initialize_cache()
        service = TsModelLoader().load("cancer", str(model_dir), handler="explain_handler.py", gpu_id=None,
                                       batch_size=8, metrics_cache=metrics)
        service.set_cl_socket(None)
        x = reference["cancer"][:2]
        answers = decode_response(service.predict([request(0, {"inputs": x[0].tolist(), "method": "saliency"}, True),
                                                   request(1, {"inputs": x[1].tolist()}, False)]))
    finally:
        sys.path.remove(str(model_dir))
    (s0, explained), (s1, predicted) = answers
    assert s0 == 200 and len(explained["features"]) == 30 and explained["method"] == "saliency"
    assert s1 == 200 and "attributions" not in predicted and predicted["model"] == "cancer"
