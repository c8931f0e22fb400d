"""The audit step ``make demo`` ends with: two digits versions, a verdict and the report's path."""
import json

from explain_serve.audit.demo import audit_demo


def test_audit_demo_prints_verdict_and_report(tmp_path, capsys):
    result = audit_demo(tmp_path, model_store=None, n_examples=24, progress=False)
    out = capsys.readouterr().out
    report = tmp_path / "audit" / "report.html"
    assert result["report"] == str(report) and report.is_file()
    assert f"audit report: {report}" in out
    assert ("PASSED" in out) == result["passed"] and result["verdict"].split()[0] in out
    summary = json.loads((tmp_path / "audit" / "summary.json").read_text())
    assert summary["n_examples"] == 24 and summary["a"]["version"] == "1.0" and summary["b"]["version"] == "2.0"
    assert 0.0 < summary["metrics"]["spearman"]["mean"] < 1.0  # two seeds: related, not identical explanations
