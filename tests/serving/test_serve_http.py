"""Served predictions and explanations equal in-process explain_serve results; HTTP and gRPC; tokens."""
from __future__ import annotations

import base64
import io
import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

import explain_serve.attr as attr
from explain_serve.serving.tokenization import tokenize

pytestmark = pytest.mark.serving
RTOL, ATOL = 1e-4, 2e-5


def probs(model, x):
    with torch.no_grad():
        return torch.softmax(model(x), 1)[0].numpy()


def close(served, expected):
    np.testing.assert_allclose(np.asarray(served, dtype=np.float64), np.asarray(expected, dtype=np.float64), rtol=RTOL, atol=ATOL)


def ids_of(store, text):
    vocab = json.loads((store / "build" / "sentiment" / "vocab.json").read_text())
    index = {w: i for i, w in enumerate(vocab)}
    return torch.tensor([[index.get(w, 1) for w in tokenize(text)]])


# -- predictions ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["digits", "cancer"])
def test_prediction_matches_in_process(client, models, reference, name):
    x = reference[name][3]
    status, body = client.predict(name, {"inputs": x.tolist()})
    assert status == 200, body
    expected = probs(models[name], torch.from_numpy(x[None]))
    assert set(body) == {"model", "version", "prediction"}
    assert body["model"] == name and body["version"] == "1.0"
    close(body["prediction"]["probabilities"], expected)
    assert body["prediction"]["index"] == int(expected.argmax())


def test_text_prediction_matches_in_process(client, models, store):
    text = "the plot was dull and boring"
    status, body = client.predict("sentiment", {"inputs": text})
    assert status == 200, body
    expected = probs(models["sentiment"], ids_of(store, text))
    close(body["prediction"]["probabilities"], expected)
    assert body["prediction"]["label"] == "negative"


def test_tabular_object_input_and_feature_names(client, models, reference, store):
    names = json.loads(json.dumps(__import__("yaml").safe_load((store / "build" / "cancer" / "explain.yaml").read_text())["input"]["features"]))
    x = reference["cancer"][5]
    status, body = client.explain("cancer", {"inputs": dict(zip(names, x.tolist())), "method": "saliency"})
    assert status == 200, body
    sal = attr.Saliency(models["cancer"]).attribute(torch.from_numpy(x[None]), target=body["target"])[0]
    close(body["attributions"], sal)
    assert list(body["features"]) == names
    close([body["features"][n] for n in names], sal)


# -- explanations ---------------------------------------------------------------------------------
def test_digits_ig_matches_in_process(client, models, reference):
    x = torch.from_numpy(reference["digits"][7][None])
    status, body = client.explain("digits", {"inputs": x[0].tolist(), "target": 2})
    assert status == 200, body
    a, delta = attr.IntegratedGradients(models["digits"]).attribute(
        x, baselines=0.0, target=2, n_steps=32, method="gausslegendre", return_convergence_delta=True)
    assert body["method"] == "integrated_gradients" and body["target"] == 2 and body["baseline"] == "zeros"
    assert body["params"] == {"n_steps": 32, "method": "gausslegendre", "baselines": "zeros"}
    assert body["shape"] == [1, 8, 8]
    close(body["attributions"], a[0])
    assert body["convergence_delta"] == pytest.approx(float(delta[0]), abs=1e-4)
    assert body["elapsed_ms"] > 0
    close(body["prediction"]["probabilities"], probs(models["digits"], x))


def test_cancer_ig_mean_baseline_matches_in_process(client, models, reference):
    x = torch.from_numpy(reference["cancer"][10][None])
    mean = torch.from_numpy(reference["cancer"].mean(0, keepdims=True))
    status, body = client.explain("cancer", {"inputs": x[0].tolist(), "params": {"n_steps": 64}})
    assert status == 200, body
    pred = int(probs(models["cancer"], x).argmax())
    a = attr.IntegratedGradients(models["cancer"]).attribute(x, baselines=mean, target=pred, n_steps=64)
    assert body["target"] == pred and body["baseline"] == "mean"
    close(body["attributions"], a[0])


@pytest.mark.parametrize("method,params,build", [
    ("saliency", {}, lambda m, x, t: attr.Saliency(m).attribute(x, target=t, abs=True)),
    ("input_x_gradient", {}, lambda m, x, t: attr.InputXGradient(m).attribute(x, target=t)),
    ("deep_lift", {"baselines": 0.25}, lambda m, x, t: attr.DeepLift(m).attribute(x, baselines=0.25, target=t)),
    ("guided_backprop", {}, lambda m, x, t: attr.GuidedBackprop(m).attribute(x, target=t)),
    ("occlusion", {"sliding_window_shapes": [2, 2], "strides": [2, 2]},
     lambda m, x, t: attr.Occlusion(m).attribute(x, sliding_window_shapes=(1, 2, 2), strides=(1, 2, 2), baselines=0.0, target=t)),
    ("layer_grad_cam", {}, lambda m, x, t: torch.nn.functional.interpolate(
        attr.LayerGradCam(m, m.conv2).attribute(x, target=t, relu_attributions=True), size=(8, 8), mode="bilinear", align_corners=False)),
    ("gradient_shap", {"n_samples": 8, "stdevs": 0.1, "baselines": "kmeans", "seed": 3}, None),
])
def test_digits_methods_match_in_process(client, models, reference, store, method, params, build):
    x = torch.from_numpy(reference["digits"][11][None])
    status, body = client.explain("digits", {"inputs": x[0].tolist(), "method": method, "params": params, "target": 5})
    assert status == 200, body
    assert body["method"] == method and body["target"] == 5 and body["shape"] == [1, 8, 8]
    if build is None:  # seeded random method: same seed in-process gives the same answer
        from explain_serve.serving.methods import seed_everything

        import zipfile  # the k-means centroids were computed once, when archiving

        with zipfile.ZipFile(store / "digits.mar") as z:
            centers = torch.from_numpy(np.load(io.BytesIO(z.read("baselines.npz")))["kmeans"])
        seed_everything(3)
        expected = attr.GradientShap(models["digits"]).attribute(x, baselines=centers, n_samples=8, stdevs=0.1, target=5)
    else:
        expected = build(models["digits"], x, 5)
    close(body["attributions"], expected[0])


@pytest.mark.parametrize("method,params,build", [
    ("kernel_shap", {"n_samples": 60, "seed": 4},
     lambda m, x, b, t: attr.KernelShap(m).attribute(x, baselines=b, target=t, n_samples=60)),
    ("lime", {"n_samples": 60, "seed": 5}, lambda m, x, b, t: attr.Lime(m).attribute(x, baselines=b, target=t, n_samples=60)),
    ("shapley_value_sampling", {"n_samples": 3, "seed": 6},
     lambda m, x, b, t: attr.ShapleyValueSampling(m).attribute(x, baselines=b, target=t, n_samples=3)),
    ("feature_ablation", {}, lambda m, x, b, t: attr.FeatureAblation(m).attribute(x, baselines=b, target=t)),
    ("noise_tunnel", {"base": "saliency", "nt_type": "smoothgrad_sq", "nt_samples": 6, "stdevs": 0.2, "seed": 7},
     lambda m, x, b, t: attr.NoiseTunnel(attr.Saliency(m)).attribute(x, nt_type="smoothgrad_sq", nt_samples=6, stdevs=0.2, target=t)),
])
def test_cancer_perturbation_and_random_methods_match_in_process(client, models, reference, method, params, build):
    """Sampling methods over the server: the request's seed gives the in-process answer of the same seed."""
    from explain_serve.serving.methods import seed_everything

    x = torch.from_numpy(reference["cancer"][21][None])
    mean = torch.from_numpy(reference["cancer"].mean(0, keepdims=True))
    status, body = client.explain("cancer", {"inputs": x[0].tolist(), "method": method, "params": params, "target": 1})
    assert status == 200, body
    assert body["method"] == method and body["target"] == 1 and body["shape"] == [30]
    seed_everything(params.get("seed", 0))
    expected = build(models["cancer"], x, mean, 1)[0]
    close(body["attributions"], expected)
    if method == "shapley_value_sampling":  # Shapley values are efficient: they add up to f(x) - f(baseline)
        with torch.no_grad():
            gap = float(models["cancer"](x)[0, 1] - models["cancer"](mean)[0, 1])
        assert sum(body["attributions"]) == pytest.approx(gap, rel=1e-4, abs=1e-5)


def test_text_occlusion_tokens_match_in_process(client, models, store):
    text = "this film was superb but a little dull and fun"
    status, body = client.explain("sentiment", {"inputs": text, "method": "occlusion"})
    assert status == 200, body
    ids = ids_of(store, text)
    expected = attr.Occlusion(models["sentiment"]).attribute(
        ids, sliding_window_shapes=(1,), strides=(1,), baselines=torch.zeros_like(ids), target=body["target"])[0]
    assert [t["token"] for t in body["tokens"]] == tokenize(text)
    close([t["score"] for t in body["tokens"]], expected)
    close(body["attributions"], expected)


def test_text_layer_integrated_gradients(client, models, store):
    """The text model's default: token attributions from LayerIntegratedGradients on the embedding."""
    text = "the acting was excellent"
    status, body = client.explain("sentiment", {"inputs": text})
    try:
        lig_cls = attr.LayerIntegratedGradients
    except (AttributeError, ImportError):
        lig_cls = None
    if lig_cls is None:  # core method not in this checkout yet: a clear 501, and the worker lives
        assert status == 501 and "layer_integrated_gradients" in body["message"], body
        assert client.explain("sentiment", {"inputs": text, "method": "occlusion"})[0] == 200
        return
    assert status == 200, body
    ids = ids_of(store, text)
    m = models["sentiment"]
    a, delta = lig_cls(m, m.embedding).attribute(ids, baselines=torch.zeros_like(ids), target=body["target"],
                                                 n_steps=32, return_convergence_delta=True)
    close([t["score"] for t in body["tokens"]], a.sum(-1)[0])
    assert body["convergence_delta"] == pytest.approx(float(delta[0]), abs=1e-4)


def test_image_bytes_base64_and_heatmap(client, models):
    from PIL import Image

    img = Image.fromarray((np.random.default_rng(0).random((24, 24)) * 255).astype(np.uint8), "L")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    png = buf.getvalue()
    x = torch.from_numpy(np.asarray(img.resize((8, 8), Image.BILINEAR), np.float32)[None, None] / 255)
    expected = probs(models["digits"], x)
    status, raw_answer = client.predict("digits", png, content_type="image/png")
    assert status == 200, raw_answer
    close(raw_answer["prediction"]["probabilities"], expected)
    status, body = client.explain("digits", {"inputs": base64.b64encode(png).decode(), "method": "saliency",
                                             "output": {"heatmap": True}})
    assert status == 200, body
    close(body["attributions"], attr.Saliency(models["digits"]).attribute(x, target=body["target"])[0])
    heat = Image.open(io.BytesIO(base64.b64decode(body["heatmap"])))
    assert heat.format == "PNG" and heat.size == (64, 64)


def test_kserve_routes(client, reference):
    x = reference["digits"][0].tolist()
    s0, plain = client.explain("digits", {"inputs": x})
    for path in ("/v1/models/digits:explain", "/v2/models/digits/explain"):
        status, body = client.request(path, {"inputs": x})
        assert status == 200, body
        assert np.allclose(body["attributions"], plain["attributions"], rtol=1e-5, atol=1e-7)


def test_torchscript_tabular_with_only_flags(client, models, reference):
    """cancer_ts.mar came from `explain-serve archive NAME --model FILE.pt --kind tabular` alone."""
    x = torch.from_numpy(reference["cancer"][20][None])
    status, pred = client.predict("cancer_ts", {"inputs": x[0].tolist()})
    assert status == 200, pred
    close(pred["prediction"]["probabilities"], probs(models["cancer"], x))
    status, body = client.explain("cancer_ts", {"inputs": x[0].tolist()})
    assert status == 200, body
    a = attr.IntegratedGradients(models["cancer"]).attribute(x, baselines=0.0, target=body["target"], n_steps=50)
    assert body["method"] == "integrated_gradients" and body["baseline"] == "zeros"
    assert list(body["features"]) == [f"x{i}" for i in range(30)]
    close(body["attributions"], a[0])


# -- per-item batching ----------------------------------------------------------------------------
def test_concurrent_mixed_burst_answers_each_item(client, models, reference):
    """32 concurrent requests against batch size 8: predictions, IG and saliency explanations with
    their own targets, and bad items; each answer is the one for its own request."""
    m = models["digits"]
    rng = np.random.default_rng(1)
    jobs = []
    for i in range(32):
        x = reference["digits"][40 + i]
        kind = ["predict", "ig", "saliency", "ig"][i % 4]
        target = int(rng.integers(0, 10)) if i % 3 else "predicted"
        bad = i % 11 == 5
        jobs.append((i, x, kind, target, bad))

    def send(job):
        i, x, kind, target, bad = job
        inputs = x[:, :2].tolist() if bad else x.tolist()
        body = {"inputs": inputs, "target": target}
        if kind == "saliency":
            body["method"] = "saliency"
        return client.predict("digits", body) if kind == "predict" else client.explain("digits", body)

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(send, jobs))
    ig_elapsed = []
    for (i, x, kind, target, bad), (status, body) in zip(jobs, answers):
        if bad:
            assert status == 400 and "shape" in body["message"], (i, body)
            continue
        assert status == 200, (i, body)
        xt = torch.from_numpy(x[None])
        p = probs(m, xt)
        close(body["prediction"]["probabilities"], p)
        if kind == "predict":
            assert "attributions" not in body
            continue
        t = int(p.argmax()) if target == "predicted" else target
        assert body["target"] == t, (i, body["target"], t)
        if kind == "ig":
            expected = attr.IntegratedGradients(m).attribute(xt, baselines=0.0, target=t, n_steps=32)
        else:
            expected = attr.Saliency(m).attribute(xt, target=t)
        assert body["method"] == ("integrated_gradients" if kind == "ig" else "saliency")
        close(body["attributions"], expected[0])
        if kind == "ig":
            ig_elapsed.append(body["elapsed_ms"])
    # items of one server-side batch with the same method share one core call (and its elapsed_ms)
    from collections import Counter

    assert Counter(ig_elapsed).most_common(1)[0][1] >= 2, ig_elapsed


# -- gRPC -----------------------------------------------------------------------------------------
def test_grpc_explain_and_predict(client, models, reference):
    x = reference["digits"][2].tolist()
    status, body = client.grpc_explain("digits", {"inputs": x, "target": 4})
    assert status == 200, body
    http_status, http_body = client.explain("digits", {"inputs": x, "target": 4})
    assert np.allclose(body["attributions"], http_body["attributions"], rtol=1e-5, atol=1e-7) and body["target"] == 4
    status, pred = client.grpc_predict("digits", {"inputs": x})
    assert status == 200 and "attributions" not in pred
    close(pred["prediction"]["probabilities"], probs(models["digits"], torch.tensor([x])))
    status, err = client.grpc_explain("cancer", {"inputs": [1.0, 2.0]})
    assert status == 400 and "expected [30]" in err["message"]


# -- tokens ---------------------------------------------------------------------------------------
def test_requests_without_valid_token_are_refused(client, served, reference):
    body = {"inputs": reference["digits"][0].tolist()}
    for token in (None, "not-the-token"):
        status, answer = client.explain("digits", body, token=token)
        assert status == 400 and "Token" in str(answer), answer
        status, answer = client.predict("digits", body, token=token)
        assert status == 400
        status, answer = client.grpc_explain("digits", body, token=token)
        assert status == 403 and "Token" in str(answer)
    assert client.explain("digits", body)[0] == 200
