"""Model self-description and the viewer's proxy, over a real TorchServe and a real viewer process.

Describe: management ``?customized=true`` and the inference API's ``{"describe": true}`` answer the
same description, whose fields are the archive's config (labels, features, limits, defaults).
Viewer: only same-origin JSON POSTs of at most the server's request size are proxied, other hosts
are refused, keys never appear in an answer, reports are listed and opened by name only.
"""
from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from explain_serve.audit.agreement import agreement
from explain_serve.cli import main
from explain_serve.client import Client
from explain_serve.serving.server import DEFAULT_MAX_REQUEST
from tests.serving.viewer_server import XSS_FEATURE, XSS_LABEL, viewer  # noqa: F401  (fixture)

pytestmark = pytest.mark.serving


def call(v, path, body=None, headers=None, method=None):
    """(status, headers, parsed JSON or text) of one request to the viewer."""
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    req = urllib.request.Request(v["url"] + path, data=data, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            status, hdrs, raw = resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as err:
        status, hdrs, raw = err.code, err.headers, err.read()
    try:
        return status, hdrs, json.loads(raw)
    except ValueError:
        return status, hdrs, raw.decode(errors="replace")


def page_post(v, path, body, **extra):
    headers = {"Origin": v["url"], "Content-Type": "application/json"}
    headers.update(extra)
    return call(v, path, body, headers, "POST")


def test_describe_management_and_inference_agree(viewer):
    keys, info = viewer["keys"], viewer["info"]
    mgmt = Client(info["endpoints"]["management"], token=keys["management"])
    status, answer = mgmt.request("/models/digits?customized=true", None, method="GET")
    assert status == 200
    from_mgmt = answer[0]["customizedMetadata"]  # TorchServe parses the handler's JSON string
    from_mgmt = json.loads(from_mgmt) if isinstance(from_mgmt, str) else from_mgmt
    status, from_inference = viewer["client"].describe("digits")
    assert status == 200 and from_inference == from_mgmt
    d = from_mgmt
    assert (d["model"], d["version"], d["kind"], d["n_classes"]) == ("digits", "1.0", "image", 10)
    assert d["labels"] == [str(i) for i in range(10)]
    assert d["input"]["shape"] == [1, 8, 8] and d["input"]["image"] == {"mode": "L", "size": [8, 8]}
    assert d["input"]["max_numel"] == 65536 and d["input"]["variable_size"] is True
    assert d["default_method"] == "integrated_gradients"
    ig = {p["name"]: p for p in d["methods"]["integrated_gradients"]["params"]}
    assert ig["n_steps"] == {"name": "n_steps", "type": "int", "default": 32, "min": 1, "max": 256}
    assert ig["baselines"]["default"] == "zeros" and ig["baselines"]["choices"] == ["zeros", "mean", "kmeans", "blur", "noise"]
    assert "gausslegendre" in ig["method"]["choices"]
    assert d["methods"]["integrated_gradients"]["convergence_delta"] is True
    assert d["methods"]["integrated_gradients"]["compiled"] is False  # eager archive
    assert "default" not in {p["name"]: p for p in d["methods"]["occlusion"]["params"]}["strides"]  # none: absent
    assert d["methods"]["layer_grad_cam"]["layer"] is True
    assert {p["name"]: p["max"] for p in d["methods"]["noise_tunnel"]["params"] if "max" in p} == {
        "nt_samples": 64, "stdevs": 10.0, "n_steps": 256}
    assert d["baselines"] == {"names": ["zeros", "mean", "kmeans", "blur", "noise"], "default": "zeros"}


@pytest.mark.parametrize("model, version, kind, check", [
    ("cancer", None, "tabular", lambda d: len(d["input"]["features"]) == 30 and len(d["input"]["example"]) == 30),
    ("cancer", "2.0", "tabular", lambda d: d["version"] == "2.0"),
    ("sentiment", None, "text", lambda d: d["input"]["text"] == {"max_tokens": 64, "lowercase": True}
     and d["default_method"] == "layer_integrated_gradients"),
    ("xss", None, "tabular", lambda d: d["labels"] == [XSS_LABEL, "plain"] and d["input"]["features"] == [XSS_FEATURE, "x1"]),
])
def test_describe_per_model(viewer, model, version, kind, check):
    status, d = viewer["client"].describe(model, version)
    assert status == 200 and d["kind"] == kind and check(d), d


def test_describe_cli_prints_the_description(viewer, capsys):
    assert main(["describe", "cancer", "--version", "2.0", "--workdir", viewer["info"]["workdir"]]) == 0
    d = json.loads(capsys.readouterr().out)
    assert (d["model"], d["version"]) == ("cancer", "2.0")
    assert main(["describe", "nosuchmodel", "--workdir", viewer["info"]["workdir"]]) == 1
    assert "nosuchmodel" in capsys.readouterr().out


def test_models_and_versions(viewer):
    status, _, models = call(viewer, "/api/models")
    assert status == 200
    by_name = {m["name"]: m for m in models}
    assert set(by_name) == {"digits", "cancer", "sentiment", "xss"}
    assert sorted(by_name["cancer"]["versions"]) == ["1.0", "2.0"] and by_name["cancer"]["default"] == "1.0"


def test_explain_proxy_answers_as_the_server(viewer):
    body = {"inputs": "the acting was superb and fun", "method": "layer_integrated_gradients", "params": {"n_steps": 16}}
    status, _, via_viewer = page_post(viewer, "/api/explain/sentiment/1.0", body)
    direct_status, direct = viewer["client"].explain("sentiment", body)
    assert status == direct_status == 200
    assert via_viewer["tokens"] == direct["tokens"] and via_viewer["prediction"] == direct["prediction"]
    status, _, err = page_post(viewer, "/api/explain/cancer/1.0", {"inputs": [1.0, 2.0, 3.0]})
    assert status == 400 and err["message"] == "'inputs' has shape [3]; expected [30]"


def test_compare_agreement_is_the_audits(viewer):
    status, d = viewer["client"].describe("cancer")
    x = d["input"]["example"]  # the first reference row, as the page prefills it
    runs = [{"version": "1.0", "method": "integrated_gradients"}, {"version": "2.0", "method": "integrated_gradients"}]
    status, _, cmp = page_post(viewer, "/api/compare/cancer", {"inputs": x, "runs": runs, "top_k": 5})
    assert status == 200
    a, b = cmp["runs"]
    assert (a["version"], b["version"]) == ("1.0", "2.0") and b["target"] == a["target"]
    for run, version in ((a, "1.0"), (b, "2.0")):  # the same answers as asking the server directly
        s, direct = viewer["client"].request(f"/explanations/cancer/{version}",
                                             {"inputs": x, "method": "integrated_gradients", "target": a["target"]})
        assert s == 200 and direct["attributions"] == run["attributions"]
    expected = agreement(a["attributions"], b["attributions"], 5)
    assert cmp["top_k"] == 5 and cmp["agreement"] == pytest.approx(expected)
    assert 0.0 < cmp["agreement"]["spearman"] < 1.0  # perturbed weights: related, not identical
    status, _, err = page_post(viewer, "/api/compare/cancer", {"inputs": x, "runs": [runs[0], {"version": "9.9"}]})
    assert status == 404 and err["run"] == "B" and "9.9" in err["message"]


@pytest.mark.parametrize("headers, body, status, message", [
    ({"Content-Type": "application/json"}, b'{"inputs": [0]}', 403, "only this page may post"),  # no Origin
    ({"Origin": "http://evil.example", "Content-Type": "application/json"}, b'{"inputs": [0]}', 403, "cross-origin"),
    ({"ORIGIN": "self", "Content-Type": "application/json", "Sec-Fetch-Site": "cross-site"}, b'{"inputs": [0]}', 403, "cross-origin"),
    ({"ORIGIN": "self", "Content-Type": "text/plain"}, b'{"inputs": [0]}', 415, "send application/json"),
    ({"ORIGIN": "self", "Content-Type": "application/json"}, b"[1, 2]", 400, "JSON object"),
    ({"ORIGIN": "self", "Content-Type": "application/json"}, b"{nope", 400, "not valid JSON"),
])
def test_post_guard(viewer, headers, body, status, message):
    headers = {k if k != "ORIGIN" else "Origin": (viewer["url"] if v == "self" else v) for k, v in headers.items()}
    got, _, answer = call(viewer, "/api/explain/cancer/1.0", body, headers, "POST")
    assert got == status and message in answer["message"], answer


def test_request_over_the_servers_size_limit(viewer):
    """Refused from its Content-Length before the body is read (the server's max_request_size)."""
    host, port = viewer["url"].split("//")[1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.putrequest("POST", "/api/explain/cancer/1.0")
    for k, v in {"Origin": viewer["url"], "Content-Type": "application/json",
                 "Content-Length": str(DEFAULT_MAX_REQUEST + 1)}.items():
        conn.putheader(k, v)
    conn.endheaders()
    resp = conn.getresponse()
    assert resp.status == 413 and "at most 6553500" in json.loads(resp.read())["message"]
    conn.close()


def test_other_hosts_and_paths_are_refused(viewer):
    status, _, _ = call(viewer, "/api/models", headers={"Host": "evil.example"})  # DNS rebinding
    assert status == 400
    status, _, _ = call(viewer, "/api/models", headers={"Host": "evil.example", "Origin": "http://evil.example"})
    assert status == 400
    status, _, err = call(viewer, "/api/describe/..%2F..%2Fetc/1.0")
    assert status in (400, 404)
    status, _, _ = call(viewer, "/api/explain/cancer/1.0")  # GET: not a route
    assert status == 405


def test_page_headers_and_keys_never_leave(viewer):
    status, hdrs, html = call(viewer, "/")
    assert status == 200 and "script-src 'self'" in hdrs["Content-Security-Policy"]
    assert 'data-testid="explain-button"' in html
    seen = [html]
    for path in ("/api/models", "/api/describe/cancer/2.0", "/api/describe/xss/1.0", "/api/reports", "/static/viewer.js"):
        status, _, answer = call(viewer, path)
        assert status == 200, path
        seen.append(json.dumps(answer) if not isinstance(answer, str) else answer)
    status, _, answer = page_post(viewer, "/api/explain/digits/1.0", {"inputs": "not base64!"})
    assert status == 400
    seen.append(json.dumps(answer))
    for key in viewer["keys"].values():
        assert all(key not in text for text in seen)


def test_reports_listed_and_opened_by_name(viewer):
    status, _, listing = call(viewer, "/api/reports")
    assert status == 200 and {r["name"] for r in listing["reports"]} == {"audit-cancer.html", "summary.json"}
    status, hdrs, html = call(viewer, "/reports/audit-cancer.html")
    assert status == 200 and "verdict: agree" in html and hdrs["Content-Security-Policy"].startswith("sandbox")
    for name in ("notes.txt", "..%2Fviewer_store0", "%2Fetc%2Fpasswd"):
        status, _, _ = call(viewer, f"/reports/{name}")
        assert status == 404, name


@pytest.mark.parametrize("args, message", [
    (["--host", "0.0.0.0"], "--allow-remote"),
    (["--server", "http://127.0.0.1:1", "--workdir", "x"], "not both"),
    (["--management", "http://127.0.0.1:1"], "goes with --server"),
    (["--workdir", "/nonexistent/workdir", "--port", "0"], "cannot find the server"),
])
def test_view_cli_bad_arguments_exit_2(args, message):
    proc = subprocess.run([sys.executable, "-m", "explain_serve.cli", "view", *args], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr


def test_view_with_server_urls_and_token_file(viewer, tmp_path):
    """``--server --management --token-file`` instead of ``--workdir``: the same models, keys kept."""
    from explain_serve.serving.server import free_port

    info, port = viewer["info"], free_port()
    proc = subprocess.Popen([sys.executable, "-m", "explain_serve.cli", "view", "--server", info["endpoints"]["inference"],
                             "--management", info["endpoints"]["management"], "--token-file", info["token_file"],
                             "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "TMPDIR": str(tmp_path)})
    try:
        assert proc.stdout.readline().startswith(f"explain-serve viewer on http://127.0.0.1:{port}/")
        other = {"url": f"http://127.0.0.1:{port}"}
        status, _, models = call(other, "/api/models")
        assert status == 200 and {m["name"] for m in models} == {"digits", "cancer", "sentiment", "xss"}
        status, _, answer = page_post(other, "/api/explain/xss/1.0", {"inputs": [0.5, -0.5]})
        assert status == 200 and answer["prediction"]["label"] in (XSS_LABEL, "plain")
    finally:
        proc.terminate()
        proc.wait(timeout=15)
