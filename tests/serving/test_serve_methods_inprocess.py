"""Every wire method through the handler logic (ExplainService, in-process) for each example kind:
an answer shaped like the input, the params echoed, and items of one method computed as one group."""
from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

from explain_serve.serving.methods import METHODS, resolve_class
from explain_serve.serving.service import ExplainService

PARAMS = {
    "gradient_shap": [{"baselines": "kmeans", "n_samples": 4}, {"baselines": "blur"}, {"baselines": 0.5}],
    "deep_lift_shap": [{"baselines": "kmeans"}],
    "integrated_gradients": [{"baselines": "blur"}, {"baselines": "noise"}, {"baselines": 0.1, "method": "riemann_trapezoid"}],
    "noise_tunnel": [{"base": "integrated_gradients", "nt_samples": 3, "n_steps": 5}, {"nt_type": "vargrad"}],
    "kernel_shap": [{"n_samples": 30}],
    "lime": [{"n_samples": 30}],
    "shapley_value_sampling": [{"n_samples": 2}],
    "occlusion": [{"sliding_window_shapes": [3, 3], "strides": [2, 2]}],
}


@pytest.fixture(scope="module")
def services(store, tmp_path_factory):
    out = {}
    for name in ("digits", "cancer", "sentiment"):
        d = tmp_path_factory.mktemp(name)
        with zipfile.ZipFile(store / f"{name}.mar") as z:
            z.extractall(d)
        out[name] = ExplainService(d, "model.pt", name)
    yield out
    for s in out.values():
        s.close()


def test_every_method_class_exists():
    for spec in METHODS.values():
        assert resolve_class(spec) is not None


def _inputs(name, reference):
    return {"digits": reference["digits"][0].tolist(), "cancer": reference["cancer"][0].tolist(),
            "sentiment": "the story was lovely but a little dull"}[name]


@pytest.mark.parametrize("name", ["digits", "cancer", "sentiment"])
def test_every_allowed_method_answers(services, reference, name):
    svc = services[name]
    x = _inputs(name, reference)
    for method in svc.cfg["explain"]["methods"]:
        for params in PARAMS.get(method, [{}]):
            if name != "digits" and params.get("baselines") in ("blur", "noise", "kmeans") and method != "deep_lift_shap":
                continue
            if name != "digits" and "sliding_window_shapes" in params:
                params = {}
            (status, text), = svc.handle([{"body": {"inputs": x, "method": method, "params": params, "target": 1}}], [True])
            body = json.loads(text)
            assert status == 200, (method, params, body)
            assert body["method"] == method and body["target"] == 1
            for k, v in params.items():  # image windows are echoed with the channel axis filled in
                echoed = body["params"][k][-len(v):] if isinstance(v, list) else body["params"][k]
                assert echoed == v, (method, k)
            shape = body["shape"]
            assert np.asarray(body["attributions"]).shape == tuple(shape)
            if name == "sentiment":
                assert len(body["tokens"]) == shape[0] == 8
            else:
                assert shape == list(np.asarray(x).shape)
            assert np.isfinite(np.asarray(body["attributions"], dtype=float)).all(), (method, params)


def test_items_of_one_method_are_one_group(services, reference):
    """Eight items, two methods, their own targets: two core calls (one elapsed_ms per group)."""
    svc = services["digits"]
    rows, flags = [], []
    for i in range(8):
        body = {"inputs": reference["digits"][i].tolist(), "target": i, "method": ["integrated_gradients", "saliency"][i % 2]}
        rows.append({"body": body})
        flags.append(True)
    answers = [json.loads(t) for s, t in svc.handle(rows, flags)]
    assert [a["target"] for a in answers] == list(range(8))
    assert len({a["elapsed_ms"] for a in answers[0::2]}) == 1 and len({a["elapsed_ms"] for a in answers[1::2]}) == 1
    alone = [json.loads(svc.handle([r], [True])[0][1]) for r in rows]
    for a, b in zip(answers, alone):  # batched answers equal one-at-a-time answers
        np.testing.assert_allclose(a["attributions"], b["attributions"], rtol=1e-4, atol=1e-6)


def test_response_size_estimate_is_an_upper_bound(services, reference):
    """The 413 check runs before computing, from shapes alone: real answers never exceed it."""
    cases = [("digits", {"inputs": np.random.default_rng(0).normal(size=(1, 40, 40)).tolist(),
                         "output": {"heatmap": True}, "method": "saliency"}),
             ("digits", {"inputs": reference["digits"][3].tolist(), "output": {"heatmap": True}}),
             ("cancer", {"inputs": (reference["cancer"][3] * 1e-7).tolist()}),
             ("sentiment", {"inputs": " ".join(["wonderful tedious"] * 32)})]
    for name, body in cases:
        svc = services[name]
        (status, text), = svc.handle([{"body": body}], [True])
        assert status == 200, text
        est = svc.response_estimate(svc.parser.parse(0, body, True))
        assert len(text.encode()) <= est, (name, len(text), est)


@pytest.mark.parametrize("method,params", [("kernel_shap", {"n_samples": 40}), ("gradient_shap", {"n_samples": 4, "stdevs": 0.2}),
                                           ("noise_tunnel", {"nt_samples": 4, "stdevs": 0.3})])
def test_request_seed_decides_the_answer_and_leaves_the_worker_rng_alone(services, reference, method, params):
    import torch

    svc = services["cancer"]

    def explain(seed):
        body = {"inputs": reference["cancer"][2].tolist(), "method": method, "params": {**params, "seed": seed}, "target": 0}
        (status, text), = svc.handle([{"body": body}], [True])
        assert status == 200, text
        return np.asarray(json.loads(text)["attributions"])

    torch.manual_seed(123)
    np.random.seed(456)
    torch_state, np_state = torch.get_rng_state(), np.random.get_state()
    first, again, other = explain(1), explain(1), explain(2)
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, other)
    # in a server-side batch with other items of the same method, the answer is the one it gets alone
    rows = [{"body": {"inputs": reference["cancer"][k].tolist(), "method": method, "params": {**params, "seed": 1},
                      "target": 0}} for k in (5, 2, 9)]
    batched = [json.loads(text)["attributions"] for _, text in svc.handle(rows, [True] * 3)]
    np.testing.assert_array_equal(batched[1], first)
    assert torch.equal(torch.get_rng_state(), torch_state)  # the request's seed did not leak
    after = np.random.get_state()
    assert after[0] == np_state[0] and np.array_equal(after[1], np_state[1]) and after[2:] == np_state[2:]
