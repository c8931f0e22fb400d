"""A real TorchServe and a real ``explain-serve view`` process for the viewer tests (session fixtures).

Models: the digits, cancer and sentiment examples; cancer again as version 2.0 (perturbed weights,
same name: compare mode); ``xss``, a tiny tabular model whose label and feature name are HTML.
The viewer runs as the CLI would (``python -m explain_serve.cli view --workdir``) on a free loopback
port with its own TMPDIR; both are stopped by pid.
Use: ``from tests.serving.viewer_server import viewer`` in a test module.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch
import yaml

from explain_serve.client import Client
from explain_serve.examples import load_example_model
from explain_serve.serving import server as ts_server
from explain_serve.serving.archive import archive
from explain_serve.serving.server import read_token

XSS_LABEL = "<img src=x onerror=alert(1)>"
XSS_FEATURE = "<b>bold</b>"


def _xss_archive(root: Path, build: Path) -> None:
    torch.manual_seed(0)
    model = torch.jit.script(torch.nn.Sequential(torch.nn.Linear(2, 2)))
    model.save(str(build / "xss.pt"))
    config = {"kind": "tabular", "labels": [XSS_LABEL, "plain"], "input": {"features": [XSS_FEATURE, "x1"]}}
    (build / "xss.yaml").write_text(yaml.safe_dump(config))
    archive("xss", build / "xss.pt", "tabular", root, config=build / "xss.yaml")


def _cancer_v2(root: Path, store: Path, build: Path) -> None:
    """cancer version 2.0: the example's weights plus noise, archived under the same name."""
    src = store / "build" / "cancer"
    model = load_example_model("cancer", src)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * p.abs().mean() * torch.randn(p.shape, generator=gen))
    torch.save(model.state_dict(), build / "cancer_v2.pt")
    out = build / "v2"
    archive("cancer", build / "cancer_v2.pt", "tabular", out, config=src / "explain.yaml",
            reference_data=src / "reference.npy", version="2.0")
    shutil.move(str(out / "cancer.mar"), str(root / "cancer_v2.mar"))


def _wait_versions(info, token: str, name: str, n: int, timeout: float = 120) -> None:
    mgmt = Client(info["endpoints"]["management"], token=token)
    deadline = time.time() + timeout
    while time.time() < deadline:
        status, versions = mgmt.request(f"/models/{name}/all", None, method="GET")
        if status == 200 and len(versions) == n and all(
                any(w.get("status") == "READY" for w in v.get("workers", [])) for v in versions):
            return
        time.sleep(0.25)
    raise TimeoutError(f"{name}: {n} READY versions expected")


@pytest.fixture(scope="session")
def viewer(store, tmp_path_factory):
    """``{"url", "client", "keys", "info", "reports", "store"}`` for a running server and viewer."""
    if shutil.which("java") is None:
        pytest.skip("TorchServe needs Java")
    pytest.importorskip("starlette", reason="the viewer needs the [view] extra")
    pytest.importorskip("uvicorn", reason="the viewer needs the [view] extra")
    root = tmp_path_factory.mktemp("viewer_store")
    build = tmp_path_factory.mktemp("viewer_build")
    for name in ("digits", "cancer", "sentiment"):
        shutil.copy(store / f"{name}.mar", root / f"{name}.mar")
    _cancer_v2(root, store, build)
    _xss_archive(root, build)
    reports = tmp_path_factory.mktemp("reports")
    (reports / "audit-cancer.html").write_text("<!doctype html><title>audit</title><h1>verdict: agree</h1>")
    (reports / "summary.json").write_text(json.dumps({"verdict": "agree"}))
    (reports / "notes.txt").write_text("not a report")
    workdir = tmp_path_factory.mktemp("viewer_torchserve")
    info = ts_server.start(root, ["digits", "cancer", "cancer=cancer_v2.mar", "sentiment", "xss"], workdir,
                           batch_size=1, max_batch_delay=1)
    proc = None
    try:
        keys = read_token(Path(info["token_file"]))
        _wait_versions(info, keys["management"], "cancer", 2)
        port = ts_server.free_port()
        tmp = tmp_path_factory.mktemp("viewer_tmp")
        env = dict(os.environ, TMPDIR=str(tmp))
        proc = subprocess.Popen([sys.executable, "-m", "explain_serve.cli", "view", "--workdir", str(workdir),
                                 "--port", str(port), "--reports", str(reports)],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
        line = proc.stdout.readline()  # the URL, printed once it listens
        url = f"http://127.0.0.1:{port}"
        assert line.startswith(f"explain-serve viewer on {url}/"), line
        with urllib.request.urlopen(url + "/", timeout=10) as resp:
            assert resp.status == 200
        client = Client(info["endpoints"]["inference"], token=keys["inference"])
        yield {"url": url, "client": client, "keys": keys, "info": info, "reports": reports, "store": root}
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        ts_server.stop(workdir)
