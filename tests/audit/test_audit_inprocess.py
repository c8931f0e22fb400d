"""The audit end to end on real archives in-process: identical versions, a swapped feature caught by
a gate, per-example metrics against scipy on the core's attributions, every input kind, bad arguments."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from scipy import stats

from explain_serve.cli import main

from tests.audit.versions import N_FEATURES, SWAP


def _audit(a, b, data, out, *extra):
    return main(["audit", "--a", str(a), "--b", str(b), "--data", str(data), "--out", str(out), "--no-progress", *extra])


def _read(out):
    summary = json.loads((out / "summary.json").read_text())
    with open(out / "examples.csv") as f:
        rows = list(csv.DictReader(f))
    return summary, rows


def test_identical_versions_agree_fully(lin, tmp_path, capsys):
    rc = _audit(lin["a"], lin["a"], lin["csv"], tmp_path, "--fail-under", "spearman=0.999", "ndcg_at_k=0.999")
    assert rc == 0
    summary, rows = _read(tmp_path)
    assert summary["passed"] is True and summary["n_examples"] == 40
    for m in ("spearman", "kendall", "top_k_jaccard", "sign_agreement", "cosine"):
        assert summary["metrics"][m]["mean"] == pytest.approx(1.0, abs=1e-12), m
        assert summary["metrics"][m]["ci95"] == pytest.approx([1.0, 1.0], abs=1e-12)
    assert summary["prediction_agreement"] == 1.0
    assert summary["global"]["ndcg_at_k"] == pytest.approx(1.0)
    assert summary["global"]["importance_a"] == summary["global"]["importance_b"]
    assert [g["passed"] for g in summary["gates"]] == [True, True]
    assert len(rows) == 40 and (tmp_path / "report.html").stat().st_size > 1000
    assert json.loads(capsys.readouterr().out)["passed"] is True


def test_swapped_feature_moves_exactly_those_features_and_fails_the_gate(lin, tmp_path):
    rc = _audit(lin["a"], lin["swapped"], lin["npy"], tmp_path, "--fail-under", "spearman=0.99")
    assert rc == 1
    summary, _ = _read(tmp_path)
    g = summary["global"]
    a, b = np.array(g["importance_a"]), np.array(g["importance_b"])
    moved = np.flatnonzero(~np.isclose(a, b, rtol=1e-5, atol=1e-9))
    assert sorted(moved.tolist()) == sorted(SWAP)
    assert {s["feature"] for s in g["largest_shifts"][:2]} == {f"f{i}" for i in SWAP}
    gate, = summary["gates"]
    assert gate["metric"] == "spearman" and gate["passed"] is False and gate["value"] < 0.99
    assert summary["passed"] is False
    assert summary["metrics"]["spearman"]["mean"] < 1.0


def test_per_example_metrics_equal_scipy_on_core_attributions(lin, tmp_path):
    from explain_serve.attr import IntegratedGradients


    assert _audit(lin["a"], lin["swapped"], lin["npy"], tmp_path, "--top-k", "4") == 0
    _, rows = _read(tmp_path)
    weight_a = lin["state"]["fc.weight"].double()
    i, j = SWAP
    weight_b = weight_a.clone()
    weight_b[:, [i, j]] = weight_a[:, [j, i]]
    x = torch.from_numpy(lin["x"]).double()
    for row in rows:
        k, target = int(row["index"]), int(row["target"])
        attrs = []
        for w in (weight_a, weight_b):
            fc = torch.nn.Linear(N_FEATURES, 3).double()
            fc.weight.data.copy_(w)
            ig = IntegratedGradients(fc)
            attrs.append(ig.attribute(x[k:k + 1], baselines=0.0, target=target, n_steps=8).reshape(-1).numpy())
        assert float(row["spearman"]) == pytest.approx(stats.spearmanr(*attrs).statistic, abs=1e-9)
        assert float(row["kendall"]) == pytest.approx(stats.kendalltau(*attrs).statistic, abs=1e-9)
        top_a = set(np.argsort(-np.abs(attrs[0]))[:4]) ; top_b = set(np.argsort(-np.abs(attrs[1]))[:4])
        assert float(row["top_k_jaccard"]) == pytest.approx(len(top_a & top_b) / len(top_a | top_b))


def test_same_seed_same_numbers(lin, tmp_path):
    args = ("--method", "gradient_shap", "--params", '{"n_samples": 4, "stdevs": 0.1}', "--seed", "3", "--limit", "10")
    assert _audit(lin["a"], lin["swapped"], lin["npy"], tmp_path / "one", *args) == 0
    assert _audit(lin["a"], lin["swapped"], lin["npy"], tmp_path / "two", *args) == 0
    one, two = _read(tmp_path / "one"), _read(tmp_path / "two")
    assert one[0]["params"]["seed"] == 3 and one[0]["n_examples"] == 10
    assert one == two


@pytest.mark.parametrize("kind,data", [("digits", "npy"), ("digits", "folder"), ("sentiment", "jsonl")])
def test_every_kind_produces_a_report(kind, data, request, tmp_path):
    versions = request.getfixturevalue(kind)
    assert _audit(versions["a"], versions["b"], versions[data], tmp_path, "--target", "each") == 0
    summary, rows = _read(tmp_path)
    assert summary["kind"] == ("image" if kind == "digits" else "text")
    assert summary["n_examples"] == len(rows) > 0
    assert summary["top_disagreements"] and summary["global"]["features"]
    html = (tmp_path / "report.html").read_text()
    assert 'data-testid="verdict"' in html and "http://" not in html.replace("http://www.w3.org", "")
    quality = summary["quality"]
    assert quality["a"]["deletion_auc"]["mean"] is not None
    if kind == "digits":
        assert quality["a"]["infidelity"]["mean"] is not None and quality["b"]["sensitivity"]["mean"] is not None
        assert "data:image/png;base64," in html


BAD = [
    ("missing data", lambda f, tmp: ["--data", str(tmp / "nope.npy")], "no such file"),
    ("mismatched input shapes", lambda f, tmp: ["--b", str(f["wider"])], "expected [13]"),
    ("unknown gate metric", lambda f, tmp: ["--fail-under", "accuracy=0.9"], "unknown metric 'accuracy'"),
    ("gate without a value", lambda f, tmp: ["--fail-under", "spearman"], "METRIC=VALUE"),
    ("method one side does not allow", lambda f, tmp: ["--b", str(f["few_methods"]), "--method", "feature_ablation"],
     "not allowed"),
    ("unknown method", lambda f, tmp: ["--method", "magic"], "unknown method 'magic'"),
    ("label target without labels", lambda f, tmp: ["--target", "label"], "needs --labels"),
    ("params not JSON", lambda f, tmp: ["--params", "{n_steps: 3}"], "not JSON"),
    ("archive missing", lambda f, tmp: ["--a", str(tmp / "x.mar")], "no such archive"),
    ("bad endpoint", lambda f, tmp: ["--a", "http://127.0.0.1:1/predictions/x"], "expected http(s)://HOST:PORT/explanations"),
]


@pytest.mark.parametrize("name,args,message", BAD, ids=[b[0] for b in BAD])
def test_bad_arguments_exit_2_with_a_message(lin, tmp_path, capsys, name, args, message):
    base = {"--a": str(lin["a"]), "--b": str(lin["a"]), "--data": str(lin["npy"])}
    extra = args(lin, tmp_path)
    for flag in list(base):
        if flag in extra:
            base.pop(flag)
    argv = ["audit", *[x for kv in base.items() for x in kv], "--out", str(tmp_path / "out"), "--no-progress", *extra]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out" / "summary.json").exists()
    assert not list((tmp_path / "out").glob(".audit-*")) if (tmp_path / "out").exists() else True


def test_interrupt_leaves_nothing_half_written(lin, tmp_path, monkeypatch, capsys):
    from explain_serve.audit import run as audit_run

    real = audit_run.Pair.compute
    calls = []

    def compute_then_interrupt(self, batch):
        calls.append(len(batch))
        if len(calls) == 2:
            raise KeyboardInterrupt  # Ctrl-C during the second batch
        return real(self, batch)

    monkeypatch.setattr(audit_run.Pair, "compute", compute_then_interrupt)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "summary.json").write_text("{\"previous\": true}")  # a finished earlier audit stays whole
    rc = _audit(lin["a"], lin["a"], lin["npy"], tmp_path / "out", "--batch-size", "8")
    assert rc == 130 and "interrupted" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["summary.json"]
    assert json.loads((tmp_path / "out" / "summary.json").read_text()) == {"previous": True}
    assert torch.get_num_threads() >= 1


@pytest.mark.parametrize("target", ["label", "b", "each"])
def test_targets(lin, tmp_path, target):
    labels = np.arange(40) % 3
    np.savetxt(tmp_path / "labels.txt", labels, fmt="%d")
    assert _audit(lin["a"], lin["swapped"], lin["npy"], tmp_path / "out", "--target", target,
                  "--labels", str(tmp_path / "labels.txt"), "--limit", "9") == 0
    summary, rows = _read(tmp_path / "out")
    assert summary["target"] == target and len(rows) == 9
    for row in rows:
        expected = {"label": str(labels[int(row["index"])]), "b": row["pred_b"]}.get(target)
        if target == "each":
            expected = row["pred_a"] if row["pred_a"] == row["pred_b"] else f"{row['pred_a']}|{row['pred_b']}"
        assert row["target"] == expected
