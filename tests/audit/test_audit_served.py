"""Two versions of one model served side by side by one real TorchServe (``/explanations/lin/1.0``
and ``/2.0``), audited over HTTP with the inference token: the same numbers as the in-process audit
of the two archives, within float32 JSON precision."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from explain_serve.cli import main
from explain_serve.serving import server as ts_server
from tests.audit.versions import SWAP

pytestmark = pytest.mark.serving


@pytest.fixture(scope="module")
def two_versions(lin, tmp_path_factory):
    if shutil.which("java") is None:
        pytest.skip("TorchServe needs Java")
    store = Path(lin["a"]).parent
    workdir = tmp_path_factory.mktemp("torchserve_audit")
    info = ts_server.start(store, [f"lin={Path(lin['a']).name}", f"lin={Path(lin['swapped']).name}"], workdir,
                           batch_size=8, max_batch_delay=5)
    try:
        yield info
    finally:
        ts_server.stop(workdir)
        assert not any(ts_server.port_in_use(info["host"], p) for p in info["ports"].values())


def _rows(out: Path):
    with open(out / "examples.csv") as f:
        return list(csv.DictReader(f))


def test_served_audit_equals_in_process(lin, two_versions, tmp_path):
    base = two_versions["endpoints"]["inference"]
    common = ["--data", str(lin["npy"]), "--no-progress", "--fail-under", "spearman=0.5"]
    assert main(["audit", "--a", str(lin["a"]), "--b", str(lin["swapped"]), "--out", str(tmp_path / "local"), *common]) == 0
    assert main(["audit", "--a", f"{base}/explanations/lin/1.0", "--b", f"{base}/explanations/lin/2.0",
                 "--token-file", two_versions["token_file"], "--out", str(tmp_path / "served"), *common]) == 0
    local = json.loads((tmp_path / "local" / "summary.json").read_text())
    served = json.loads((tmp_path / "served" / "summary.json").read_text())
    assert served["a"]["version"] == "1.0" and served["b"]["version"] == "2.0" and not served["a"]["in_process"]
    assert served["method"] == local["method"] and served["params"] == local["params"]
    assert served["n_examples"] == local["n_examples"] == 40
    assert served["prediction_agreement"] == local["prediction_agreement"]
    for m, s in local["metrics"].items():
        assert served["metrics"][m]["mean"] == pytest.approx(s["mean"], rel=1e-6, abs=1e-7), m
    for key in ("importance_a", "importance_b"):
        assert served["global"][key] == pytest.approx(local["global"][key], rel=1e-6, abs=1e-9)
    assert {s["feature"] for s in served["global"]["largest_shifts"][:2]} == {f"f{i}" for i in SWAP}
    for q in ("abs_delta", "sensitivity", "deletion_auc"):
        for side in "ab":
            assert served["quality"][side][q]["mean"] == pytest.approx(local["quality"][side][q]["mean"], rel=1e-5, abs=1e-7), q
    assert served["quality"]["a"]["infidelity"]["mean"] is None  # needs the raw model: in-process only
    for lr, sr in zip(_rows(tmp_path / "local"), _rows(tmp_path / "served")):
        assert sr["index"] == lr["index"] and sr["target"] == lr["target"] and sr["pred_b"] == lr["pred_b"]
        for m in ("spearman", "kendall", "top_k_jaccard", "sign_agreement", "cosine"):
            assert float(sr[m]) == pytest.approx(float(lr[m]), rel=1e-6, abs=1e-7)


def test_served_audit_without_token_exits_2(two_versions, lin, tmp_path, capsys):
    base = two_versions["endpoints"]["inference"]
    rc = main(["audit", "--a", f"{base}/explanations/lin/1.0", "--b", f"{base}/explanations/lin/2.0",
               "--data", str(lin["npy"]), "--out", str(tmp_path), "--no-progress"])
    assert rc == 2
    assert "version a" in capsys.readouterr().err
    assert not (tmp_path / "summary.json").exists()
