"""Faults over a real TorchServe (issue #14): a worker killed during a batch, a model whose forward
raises for some inputs, an explanation slower than the response timeout, an archive with a corrupt
or missing file (at archive time, and at load time in the log and the management API), and
``serve`` when a port is taken.

One server of its own (the kills and timeouts must not disturb the shared one) serves ``faulty``, a
tiny tabular model that raises when feature 0 is 7 and sleeps ``x[1]`` seconds when feature 0 is 9;
``broken`` (its state dict corrupted after archiving) and ``noconfig`` (explain.yaml removed) get
short-lived servers of their own."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from explain_serve.client import Client
from explain_serve.serving import server as ts_server
from explain_serve.serving.archive import archive
from explain_serve.serving.config import ConfigError

pytestmark = pytest.mark.serving

FAULTY = '''
import time

import torch
from torch import nn


class Faulty(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))

    def forward(self, x):
        if bool((x[:, 0] == 7).any()):
            raise ValueError("feature 0 is 7, which this model refuses")
        if bool((x[:, 0] == 9).any()):
            time.sleep(float(x[x[:, 0] == 9][0, 1]))
        return self.net(x)
'''
TIMEOUT_S = 3  # the faulty model's responseTimeout


def _load(path: Path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("faulty_model", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def fault_store(tmp_path_factory):
    d = tmp_path_factory.mktemp("faults")
    (d / "faulty.py").write_text(textwrap.dedent(FAULTY))
    mod = _load(d / "faulty.py")
    torch.manual_seed(0)
    model = mod.Faulty().eval()
    torch.save(model.state_dict(), d / "faulty.pt")
    store = d / "store"
    archive("faulty", d / "faulty.py", "tabular", store, weights=d / "faulty.pt")
    archive("broken", d / "faulty.py", "tabular", store, weights=d / "faulty.pt")
    _rewrite(store / "broken.mar", {"weights.pt": b"this is not a state dict"})
    return {"dir": d, "store": store, "model": model}


def _rewrite(mar: Path, replace: dict, drop=()) -> None:
    """Rewrite the zip ``mar`` with some members replaced or dropped."""
    with zipfile.ZipFile(mar) as z:
        members = {n: z.read(n) for n in z.namelist()}
    with zipfile.ZipFile(mar, "w") as z:
        for n, data in members.items():
            if n not in drop:
                z.writestr(n, replace.get(n, data))


@pytest.fixture(scope="module")
def fault_server(fault_store, tmp_path_factory):
    if not ts_server.shutil.which("java"):
        pytest.skip("TorchServe needs Java")
    workdir = tmp_path_factory.mktemp("fault_ts")
    info = ts_server.start(fault_store["store"], ["faulty"], workdir, batch_size=8, max_batch_delay=50,
                           per_model={"faulty": {"responseTimeout": TIMEOUT_S}})
    try:
        info["keys"] = ts_server.read_token(Path(info["token_file"]))
        info["client"] = Client(info["endpoints"]["inference"], None, info["keys"]["inference"], timeout=60)
        yield info
    finally:
        ts_server.stop(workdir)
        assert not any(ts_server.port_in_use(info["host"], p) for p in info["ports"].values())


def _describe(info, name):
    req = urllib.request.Request(f"{info['endpoints']['management']}/models/{name}",
                                 headers={"Authorization": f"Bearer {info['keys']['management']}"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())[0]


def _ready_pid(info, name="faulty", timeout=90.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        workers = _describe(info, name).get("workers", [])
        ready = [w for w in workers if w.get("status") == "READY"]
        if ready:
            return int(ready[0]["pid"])
        time.sleep(0.2)
    raise AssertionError(f"no READY worker for {name} within {timeout} s")


def _new_worker(info, old_pid, timeout=90.0):
    """Wait until the model has a READY worker in a process other than ``old_pid`` (which is gone)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        pid = _ready_pid(info, timeout=timeout)
        if pid != old_pid:
            assert not ts_server.pid_alive(old_pid)
            return pid
        time.sleep(0.2)
    raise AssertionError(f"worker {old_pid} was not replaced within {timeout} s")


def _expected(model, x):
    with torch.no_grad():
        return torch.softmax(model(torch.tensor([x], dtype=torch.float32)), 1)[0].tolist()


def _check_answer(model, x, status, body):
    """A 200 that answers exactly this request (its own prediction)."""
    assert status == 200, body
    np.testing.assert_allclose(body["prediction"]["probabilities"], _expected(model, x), rtol=1e-4, atol=1e-6)


def test_forward_raising_for_some_items_fails_only_those(fault_server, fault_store):
    client, model = fault_server["client"], fault_store["model"]
    pid = _ready_pid(fault_server)
    xs = [[float(i % 4), 0.5, -0.25 * i, 1.0] if i % 3 else [7.0, 0.5, 0.0, float(i)] for i in range(12)]
    bodies = [{"inputs": x, "target": 1} for x in xs]
    with ThreadPoolExecutor(12) as pool:  # one server-side batch (up to 8), the rest in another
        answers = list(pool.map(lambda b: client.explain("faulty", b), bodies))
    for x, (status, body) in zip(xs, answers):
        if x[0] == 7:
            assert status == 500 and body["code"] == 500, body
            assert "ValueError" in body["message"] and "feature 0 is 7" in body["message"], body
        else:
            _check_answer(model, x, status, body)
            assert len(body["attributions"]) == 4
    assert _ready_pid(fault_server) == pid  # the worker lived


def test_explanation_slower_than_the_response_timeout(fault_server, fault_store):
    client, model = fault_server["client"], fault_store["model"]
    pid = _ready_pid(fault_server)
    status, body = client.predict("faulty", {"inputs": [9.0, TIMEOUT_S + 3.0, 0.0, 0.0]})
    assert status == 500 and isinstance(body, dict) and body.get("message") == "Worker died.", (status, body)
    _new_worker(fault_server, pid)  # the frontend replaced the stuck worker
    x = [1.0, 2.0, 3.0, 4.0]
    _check_answer(model, x, *client.explain("faulty", {"inputs": x}))


def test_worker_killed_during_a_batch(fault_server, fault_store):
    client, model = fault_server["client"], fault_store["model"]
    pid = _ready_pid(fault_server)
    slow = [{"inputs": [9.0, 1.5, float(i), 0.0]} for i in range(6)]
    with ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(client.predict, "faulty", b) for b in slow]
        time.sleep(0.8)  # the batch is inside the model's forward (it sleeps 1.5 s)
        os.kill(pid, signal.SIGKILL)
        answers = [f.result() for f in futures]
    failed = [(s, b) for s, b in answers if s != 200]
    assert failed, "the kill landed after the batch"
    for status, body in failed:
        assert status in (500, 503, 507) and isinstance(body, dict) and body.get("message"), (status, body)
    _new_worker(fault_server, pid)  # back, with a new process
    xs = [[float(i % 5), 0.1 * i, -1.0, 2.0] for i in range(16)]
    with ThreadPoolExecutor(8) as pool:  # nothing is answered for the wrong request
        answers = list(pool.map(lambda x: client.predict("faulty", {"inputs": x}), xs))
    for x, (status, body) in zip(xs, answers):
        _check_answer(model, x, status, body)


def test_corrupt_archive_at_load_time_in_the_log_and_the_management_api(fault_store, tmp_path):
    """A server asked not to wait for it: the worker logs the cause, the management API shows no READY worker."""
    info = ts_server.start(fault_store["store"], ["broken"], tmp_path / "wd", wait_for=[])
    try:
        info["keys"] = ts_server.read_token(Path(info["token_file"]))
        deadline, error = time.time() + 120, None
        while error is None and time.time() < deadline:
            error = ts_server.load_error(Path(info["logs"]), "broken")
            time.sleep(0.2)
        assert error and error.startswith("ConfigError: weights.pt is not a readable state dict"), error
        desc = _describe(info, "broken")
        assert desc["modelName"] == "broken"
        assert not any(w.get("status") == "READY" for w in desc.get("workers", [])), desc
    finally:
        ts_server.stop(tmp_path / "wd")
    assert not ts_server.pid_alive(info["pid"])


@pytest.mark.parametrize("damage,pattern", [
    ("weights", r"is not a readable state dict"),
    ("missing weights", r"--weights .*: no such file"),
    ("missing model", r"--model .*: no such file"),
])
def test_corrupt_or_missing_file_at_archive_time(fault_store, tmp_path, damage, pattern):
    d = fault_store["dir"]
    weights, model = d / "faulty.pt", d / "faulty.py"
    if damage == "weights":
        weights = tmp_path / "corrupt.pt"
        weights.write_bytes((d / "faulty.pt").read_bytes()[:100])
    elif damage == "missing weights":
        weights = tmp_path / "absent.pt"
    else:
        model = tmp_path / "absent.py"
    with pytest.raises(ConfigError, match=pattern):
        archive("damaged", model, "tabular", tmp_path / "store", weights=weights)
    assert not (tmp_path / "store" / "damaged.mar").exists()


def test_serve_an_archive_with_a_missing_file_fails_with_its_cause_and_leaves_nothing(fault_store, tmp_path):
    mar = tmp_path / "store" / "noconfig.mar"
    mar.parent.mkdir()
    mar.write_bytes((fault_store["store"] / "faulty.mar").read_bytes())
    _rewrite(mar, {}, drop=("explain.yaml",))
    cli = str(Path(sys.executable).parent / "explain-serve")
    proc = subprocess.run([cli, "serve", "--model-store", str(mar.parent), "--workdir", str(tmp_path / "wd")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert "model noconfig failed to load: FileNotFoundError" in proc.stderr and "explain.yaml" in proc.stderr, proc.stderr
    assert not (tmp_path / "wd" / ts_server.STATE).exists()
    pid_file = tmp_path / "wd" / "tmp" / ".model_server.pid"
    assert not ts_server.pid_alive(int(pid_file.read_text())), "TorchServe left running"


def test_serve_when_a_port_is_taken(fault_store, tmp_path):
    cli = str(Path(sys.executable).parent / "explain-serve")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        proc = subprocess.run([cli, "serve", "--model-store", str(fault_store["store"]), "--models", "faulty",
                               "--workdir", str(tmp_path / "wd"), "--http-port", str(port)],
                              capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert f"http port {port} on 127.0.0.1 is in use" in proc.stderr, proc.stderr
    assert not (tmp_path / "wd" / ts_server.STATE).exists()
    assert not (tmp_path / "wd" / "tmp" / ".model_server.pid").exists()  # nothing was started
