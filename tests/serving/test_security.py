"""Security review (issue #14): a config or archive cannot make ``archive`` or a worker read or run a
file from outside the archive, state dicts load with ``weights_only=True``, the server's config keeps
token auth on, management and metrics on loopback and model API control off, and tokens never
appear in logs or error messages. Plus the two archive/load bugs: a model file with several classes
archives when the config names ``model.class``, and every allowed method is warmed at load."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import textwrap
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import pytest
import torch
import yaml

from explain_serve.serving.archive import archive
from explain_serve.serving.config import ConfigError
from explain_serve.serving.service import WARMUP_ENV, ExplainService
from explain_serve.serving.server import write_config

TINY = '''
import torch
from torch import nn


class Helper(nn.Module):  # a second nn.Module class in the same file
    def forward(self, x):
        return x


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), Helper(), nn.Linear(8, 3))

    def forward(self, x):
        return self.net(x)


class TinyText(nn.Module):
    def __init__(self):
        super().__init__()
        self.embedding = nn.Embedding(6, 4)
        self.out = nn.Linear(4, 2)

    def forward(self, ids):
        return self.out(self.embedding(ids).mean(1))
'''
VOCAB = ["<pad>", "<unk>", "good", "bad", "film", "plot"]


def _evil(path: Path, marker: Path) -> Path:
    """A Python file that leaves ``marker`` behind when anything executes it."""
    path.write_text(f"open({str(marker)!r}, 'w').write('ran')\nfrom torch import nn\n\n"
                    "class Tiny(nn.Module):\n    pass\n")
    return path


@pytest.fixture()
def files(tmp_path, monkeypatch):
    """tiny.py (two nn.Module classes), its state dicts, a vocabulary, hostile files one folder up."""
    import importlib.util

    src = tmp_path / "cfg" / "tiny.py"
    src.parent.mkdir()
    src.write_text(textwrap.dedent(TINY))
    spec = importlib.util.spec_from_file_location("tiny_security", src)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    torch.manual_seed(0)
    torch.save(mod.Tiny().state_dict(), tmp_path / "cfg" / "tiny.pt")
    torch.save(mod.TinyText().state_dict(), tmp_path / "cfg" / "text.pt")
    (tmp_path / "cfg" / "vocab.json").write_text(json.dumps(VOCAB))
    (tmp_path / "secret.json").write_text(json.dumps(["top", "secret"]))
    marker = tmp_path / "evil-ran"
    _evil(tmp_path / "evil.py", marker)
    # archive() stages in a temporary folder: make "../evil.py" from there the hostile file above
    (tmp_path / "stage").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "stage"))
    _evil(tmp_path / "stage" / "evil.py", marker)
    return {"dir": tmp_path / "cfg", "module": mod, "marker": marker, "store": tmp_path / "store"}


def _config(files, name: str, data) -> Path:
    path = files["dir"] / name
    path.write_text(yaml.safe_dump(data))
    return path


TEXT = {"kind": "text", "model": {"class": "TinyText"}, "explain": {"layer": "embedding"}}
# (id, kind, model file, weights, config, error pattern)
HOSTILE = [
    ("model.file ../evil.py with a state dict", "tabular", "tiny.pt", None,
     {"model": {"class": "Tiny", "file": "../evil.py"}}, r"model.file must be a plain file name.*'\.\./evil\.py'"),
    ("model.file absolute", "tabular", "tiny.pt", None,
     {"model": {"class": "Tiny", "file": "/tmp/evil.py"}}, r"model.file must be a plain file name"),
    ("vocab ../secret.json", "text", "tiny.py", "text.pt",
     {**TEXT, "input": {"text": {"vocab": "../secret.json"}}}, r"input.text.vocab must be a plain file name.*secret"),
    ("vocab ../../etc/passwd", "text", "tiny.py", "text.pt",
     {**TEXT, "input": {"text": {"vocab": "../../etc/passwd"}}}, r"input.text.vocab .*'\.\./\.\./etc/passwd'"),
    ("vocab in a sub-folder", "text", "tiny.py", "text.pt",
     {**TEXT, "input": {"text": {"vocab": "sub/vocab.json"}}}, r"input.text.vocab must be a plain file name"),
]


@pytest.mark.parametrize("case", HOSTILE, ids=[c[0] for c in HOSTILE])
def test_archive_refuses_files_outside_the_archive(files, case):
    _, kind, model, weights, cfg, pattern = case
    config = _config(files, "hostile.yaml", cfg)
    with pytest.raises(ConfigError, match=pattern):
        archive("hostile", files["dir"] / model, kind, files["store"], config=config,
                weights=files["dir"] / weights if weights else None)
    assert not files["marker"].exists(), "a file from outside the archive was executed"
    assert not (files["store"] / "hostile.mar").exists()


def _unpacked(files, cfg, *, vocab=True) -> Path:
    """A model folder as a worker sees it (explain.yaml, weights.pt, tiny.py, vocab.json)."""
    d = files["dir"].parent / "archive" / "model"
    d.mkdir(parents=True)
    for name in ("tiny.py",) + (("vocab.json",) if vocab else ()):
        shutil.copy(files["dir"] / name, d / name)
    shutil.copy(files["dir"] / ("text.pt" if cfg["kind"] == "text" else "tiny.pt"), d / "weights.pt")
    (d / "explain.yaml").write_text(yaml.safe_dump(cfg))
    return d


@pytest.mark.parametrize("cfg,pattern", [
    ({"kind": "tabular", "input": {"shape": [4]}, "model": {"class": "Tiny", "file": "../evil.py"}}, "model.file"),
    ({**TEXT, "model": {"class": "TinyText", "file": "tiny.py"}, "input": {"text": {"vocab": "../../secret.json"}}},
     "input.text.vocab"),
], ids=["model.file", "vocab"])
def test_worker_refuses_files_outside_the_archive(files, cfg, pattern):
    d = _unpacked(files, cfg)
    _evil(d.parent / "evil.py", files["marker"])
    with pytest.raises(ConfigError, match=pattern):
        ExplainService(d, "weights.pt", "hostile", model_file="tiny.py")
    assert not files["marker"].exists()


def test_worker_refuses_a_vocab_link_out_of_the_archive_and_names_a_bad_vocab(files):
    cfg = {**TEXT, "model": {"class": "TinyText", "file": "tiny.py"}, "input": {"text": {"vocab": "vocab.json"}}}
    d = _unpacked(files, cfg, vocab=False)
    os.symlink(files["dir"].parent / "secret.json", d / "vocab.json")
    with pytest.raises(ConfigError, match="links outside the archive"):
        ExplainService(d, "weights.pt", "hostile", model_file="tiny.py")
    (d / "vocab.json").unlink()
    (d / "vocab.json").write_text("root:x:0:0:root:/root:/bin/bash\n")
    with pytest.raises(ConfigError, match=r"input.text.vocab 'vocab.json': cannot read vocab.json as a JSON list"):
        ExplainService(d, "weights.pt", "hostile", model_file="tiny.py")


class _Payload:
    """Pickled into a 'state dict': unpickling it would run ``open(marker, 'w')``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_state_dicts_load_weights_only(files):
    bad = files["dir"] / "bad.pt"
    state = dict(torch.load(files["dir"] / "tiny.pt"))
    state["payload"] = _Payload(files["marker"])
    torch.save(state, bad)
    with pytest.raises(ConfigError, match=r"bad.pt|weights.pt.*weights_only=True"):
        archive("bad", files["dir"] / "tiny.py", "tabular", files["store"], weights=bad,
                config=_config(files, "c.yaml", {"model": {"class": "Tiny"}}))
    assert not files["marker"].exists(), "unpickling ran code"


def test_a_model_file_with_several_classes_archives_when_the_config_names_one(files):
    config = _config(files, "tiny.yaml", {"model": {"class": "Tiny"}})
    mar = archive("tiny", files["dir"] / "tiny.py", "tabular", files["store"], config=config,
                  weights=files["dir"] / "tiny.pt")
    out = files["dir"].parent / "unpacked"
    with zipfile.ZipFile(mar) as z:
        z.extractall(out)
    svc = ExplainService(out, "weights.pt", "tiny", model_file="tiny.py")
    try:
        assert type(svc.model).__name__ == "Tiny" and svc.n_classes == 3
    finally:
        svc.close()
    with pytest.raises(ConfigError, match="defines 3 nn.Module classes"):  # no class named: still a clear error
        archive("tiny2", files["dir"] / "tiny.py", "tabular", files["store"], weights=files["dir"] / "tiny.pt",
                config=_config(files, "plain.yaml", {"input": {"shape": [4]}}))


def test_every_allowed_method_is_warmed_at_load_within_the_budget(files, monkeypatch):
    cfg = {"kind": "tabular", "input": {"shape": [4]}, "model": {"class": "Tiny", "file": "tiny.py"}}
    d = _unpacked(files, cfg)
    svc = ExplainService(d, "weights.pt", "tiny", model_file="tiny.py")
    try:
        nt_bases = {f"noise_tunnel/{b}" for b in svc.methods["noise_tunnel"]} - {"noise_tunnel/saliency"}
        assert set(svc.warmup_ms) == set(svc.methods) | nt_bases
        assert list(svc.warmup_ms)[0] == svc.cfg["explain"]["default_method"]
    finally:
        svc.close()
    monkeypatch.setenv(WARMUP_ENV, "0")  # budget spent at once: only the default method is warmed
    svc = ExplainService(d, "weights.pt", "tiny", model_file="tiny.py")
    try:
        assert list(svc.warmup_ms) == [svc.cfg["explain"]["default_method"]]
    finally:
        svc.close()


# ---- the server's configuration and tokens ------------------------------------------------------

def test_server_config_is_locked_down(tmp_path):
    ports = {"http": 1, "grpc": 2, "management": 3, "metrics": 4, "grpc_management": 5}
    path = write_config(tmp_path, tmp_path, ["m"], "127.0.0.1", ports, True, 1, 1, 100, 100)
    props = dict(line.split("=", 1) for line in path.read_text().splitlines())
    assert props["disable_token_authorization"] == "false"
    assert props["enable_model_api"] == "false"
    for key in ("inference_address", "management_address", "metrics_address"):
        assert props[key].startswith("http://127.0.0.1:"), key
    assert props["grpc_inference_address"] == props["grpc_management_address"] == "127.0.0.1"


def _status(url: str, method: str = "GET", token=None):
    req = urllib.request.Request(url, method=method, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


@pytest.mark.serving
def test_live_server_refuses_model_control_and_keeps_tokens_out_of_logs(served, client):
    mgmt, keys = served["endpoints"]["management"], served["keys"]
    code, body = _status(f"{mgmt}/models?url=/etc/passwd.mar", "POST", keys["management"])
    assert code in (400, 403, 405), (code, body)  # model API control off: no registering archives by URL
    wrong = "not-the-token-1234567890"
    code, body = _status(f"{served['endpoints']['inference']}/predictions/cancer", "POST", wrong)
    assert code in (400, 401) and wrong not in body  # TorchServe answers a wrong token with 400
    code, body = _status(f"{mgmt}/models", token=wrong)
    assert code in (400, 401) and wrong not in body  # TorchServe answers a wrong token with 400
    assert client.explain("cancer", {"inputs": [0.0] * 30, "target": 7})[0] == 400
    logs = [p for p in Path(served["logs"]).rglob("*") if p.is_file()]
    assert logs
    for p in logs + [Path(served["workdir"]) / "server.json", Path(served["config"])]:
        text = p.read_text(errors="replace")
        for secret in (keys["inference"], keys["management"], wrong):
            assert secret not in text, f"a token is written in {p}"
