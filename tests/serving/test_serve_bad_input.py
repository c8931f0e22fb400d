"""Every row of the README's bad-input table against the real server: a 4xx JSON error that says
what to fix, and the worker serves the next request normally."""
from __future__ import annotations

import json

import numpy as np
import pytest

pytestmark = pytest.mark.serving
GOOD_CANCER = [1.0] * 30


def digits_x(n=8):
    return np.full((1, n, n), 0.5).tolist()


# (id, model, route, body, content type, status, fragment of the message)
ROWS = [
    ("non_json", "digits", "explanations", b"{inputs: [1, 2", "application/json", 400, "not valid JSON"),
    ("deeply_nested", "cancer", "explanations", b'{"inputs": ' + b"[" * 50000 + b"1" + b"]" * 50000 + b"}",
     "application/json", 400, "not valid JSON"),
    ("json_list_body", "digits", "explanations", b"[1, 2, 3]", "application/json", 400, "JSON object"),
    ("wrong_content_type", "cancer", "explanations", b"1,2,3", "text/plain", 415, "application/json"),
    ("missing_inputs", "cancer", "explanations", {"target": 1}, None, 400, "missing 'inputs'"),
    ("unknown_field", "cancer", "predictions", {"inputs": GOOD_CANCER, "extra": 1}, None, 400, "unknown field"),
    ("wrong_shape", "cancer", "explanations", {"inputs": [1.0, 2.0, 3.0]}, None, 400, "expected [30]"),
    ("wrong_rank_image", "digits", "explanations", {"inputs": [[0.1] * 8] * 8}, None, 400, "expected [1, H, W]"),
    ("ragged", "cancer", "predictions", {"inputs": [[1.0, 2.0], [3.0]]}, None, 400, "rectangular"),
    ("wrong_type", "cancer", "explanations", {"inputs": ["a"] * 30}, None, 400, "numbers"),
    ("wrong_type_object", "digits", "explanations", {"inputs": {"a": 1}}, None, 400, "nested list"),
    ("nan", "cancer", "explanations", b'{"inputs": [NaN' + b", 1.0" * 29 + b"]}", "application/json", 400, "NaN"),
    ("inf", "cancer", "predictions", b'{"inputs": [Infinity' + b", 1.0" * 29 + b"]}", "application/json", 400, "infinity"),
    ("missing_feature", "cancer", "explanations", {"inputs": {"mean radius": 1.0}}, None, 400, "missing feature"),
    ("bad_base64", "digits", "explanations", {"inputs": "not*base64"}, None, 400, "base64"),
    ("undecodable_image", "digits", "predictions", {"inputs": "aGVsbG8gd29ybGQ="}, None, 400, "could not be decoded"),
    ("unknown_method", "digits", "explanations", {"inputs": digits_x(), "method": "magic"}, None, 400, "unknown method"),
    ("method_not_allowed", "sentiment", "explanations", {"inputs": "good film", "method": "saliency"}, None, 403, "not allowed"),
    ("method_not_allowed_kind", "digits", "explanations", {"inputs": digits_x(), "method": "shapley_value_sampling"}, None, 403, "not allowed"),
    ("unknown_param", "digits", "explanations", {"inputs": digits_x(), "params": {"n_stepz": 5}}, None, 400, "unknown parameter"),
    ("param_over_limit", "digits", "explanations", {"inputs": digits_x(), "params": {"n_steps": 100000}}, None, 400, "over this model's limit"),
    ("param_wrong_type", "digits", "explanations", {"inputs": digits_x(), "params": {"n_steps": "many"}}, None, 400, "must be a number"),
    ("samples_over_limit", "digits", "explanations", {"inputs": digits_x(), "method": "gradient_shap", "params": {"n_samples": 10**6}}, None, 400, "limit"),
    ("occlusion_too_costly", "digits", "explanations", {"inputs": np.full((1, 200, 200), 0.1).tolist(), "method": "occlusion", "params": {"sliding_window_shapes": [1, 1], "strides": [1, 1]}}, None, 413, "response limit"),
    ("unknown_baseline", "digits", "explanations", {"inputs": digits_x(), "params": {"baselines": "sky"}}, None, 400, "unknown baseline"),
    ("distribution_baseline_for_ig", "digits", "explanations", {"inputs": digits_x(), "params": {"baselines": "kmeans"}}, None, 400, "distribution"),
    ("target_out_of_range", "digits", "explanations", {"inputs": digits_x(), "target": 10}, None, 400, "out of range"),
    ("target_wrong_type", "cancer", "explanations", {"inputs": GOOD_CANCER, "target": "benign"}, None, 400, "'target'"),
    ("heatmap_not_image", "cancer", "explanations", {"inputs": GOOD_CANCER, "output": {"heatmap": True}}, None, 400, "image models"),
    ("input_over_size_limit", "digits", "explanations", {"inputs": np.zeros((1, 300, 300)).tolist()}, None, 413, "at most 65536"),
    ("response_over_limit", "digits", "explanations", {"inputs": np.zeros((1, 150, 150)).tolist()}, None, 413, "max_response_size"),
    ("too_many_tokens", "sentiment", "explanations", {"inputs": "good " * 65}, None, 413, "at most 64"),
    ("no_tokens", "sentiment", "predictions", {"inputs": "!!!"}, None, 400, "no tokens"),
    ("token_id_out_of_vocab", "sentiment", "explanations", {"inputs": [1, 2, 100000], "method": "occlusion"}, None, 400, "token ids"),
]


@pytest.mark.parametrize("row", ROWS, ids=[r[0] for r in ROWS])
def test_bad_input_row(client, row):
    _, model, route, body, ctype, status, fragment = row
    kw = {"content_type": ctype} if ctype else {}
    got, answer = client.request(f"/{route}/{model}", body, **kw)
    assert got == status, answer
    assert isinstance(answer, dict) and answer["code"] == status, answer
    assert fragment.lower() in answer["message"].lower(), answer
    # the worker lives and the next request is served normally
    ok_body = {"cancer": {"inputs": GOOD_CANCER}, "digits": {"inputs": digits_x()},
               "sentiment": {"inputs": "good film", "method": "occlusion"}}[model]
    got, answer = client.explain(model, ok_body)
    assert got == 200 and "attributions" in answer, answer


def test_bad_items_fail_alone_in_a_batch(client, reference):
    """Concurrent good and bad items land in the same server-side batches; only the bad ones fail."""
    from concurrent.futures import ThreadPoolExecutor

    good = {"inputs": reference["cancer"][0].tolist(), "method": "saliency", "target": 1}
    bads = [{"inputs": [float("nan")] * 30}, {"inputs": [1.0] * 3}, {"inputs": GOOD_CANCER, "target": 7},
            {"inputs": GOOD_CANCER, "method": "magic"}]
    bodies = [bads[i // 2 % 4] if i % 2 else good for i in range(16)]
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda b: client.request("/explanations/cancer", json.dumps(b, allow_nan=True)), bodies))
    first_good = next(a for (s, a), b in zip(answers, bodies) if b is good)
    for (status, answer), body in zip(answers, bodies):
        if body is good:
            # float32 results may differ in the last digit with the batch they were computed in
            assert status == 200, answer
            assert np.allclose(answer["attributions"], first_good["attributions"], rtol=1e-5, atol=1e-7), answer
        else:
            assert status == 400, answer


def test_frontend_rows_unknown_model_and_oversize_body(client, served):
    """The rows TorchServe's frontend answers itself, before any worker sees the request."""
    import socket

    status, answer = client.explain("no_such_model", {"inputs": GOOD_CANCER})
    assert status == 404 and answer["code"] == 404 and "no_such_model" in answer["message"]
    host, port = served["host"], served["ports"]["http"]
    with socket.create_connection((host, port), timeout=30) as sock:  # headers announce a body over max_request_size
        sock.sendall((f"POST /explanations/cancer HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                      f"Authorization: Bearer {served['keys']['inference']}\r\nContent-Length: 7000000\r\n\r\n").encode())
        sock.sendall(b"{" * 65536)
        head = sock.recv(4096).decode(errors="replace")
    assert head.split("\r\n")[0].split()[1] == "413", head
    assert client.explain("cancer", {"inputs": GOOD_CANCER})[0] == 200


def test_method_missing_from_the_core_is_501():
    from explain_serve.serving.errors import ServeError
    from explain_serve.serving.methods import MethodSpec, resolve_class

    with pytest.raises(ServeError) as err:
        resolve_class(MethodSpec("future_method", "FutureMethod"))
    assert err.value.code == 501 and "future_method" in err.value.message
