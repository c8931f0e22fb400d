"""Compare mode: one input explained by two runs (two versions of a model, or two methods) and the
agreement of the two attributions, computed by the audit's own functions (``explain_serve.audit``)
so the number on the page is the number in an audit report.

Run B explains run A's resolved target: two versions that predict different classes would
otherwise explain different questions.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Tuple

from .upstream import Upstream, valid_name

RUN_FIELDS = ("version", "method", "params")
DEFAULT_TOP_K = 10


def _clean(value: float) -> Any:
    return None if value is None or (isinstance(value, float) and not math.isfinite(value)) else value


def compare(upstream: Upstream, model: str, body: Dict[str, Any]) -> Tuple[int, Dict[str, Any]]:
    """``(status, {"runs": [A, B], "agreement": {...}, "top_k": k})`` or the first run's error."""
    from ..audit.agreement import agreement

    runs = body.get("runs")
    if not isinstance(runs, list) or len(runs) != 2 or not all(isinstance(r, dict) for r in runs):
        return 400, {"code": 400, "message": "'runs' must be two objects {version, method, params}", "field": "runs"}
    unknown = sorted(set(body) - {"inputs", "target", "runs", "top_k"})
    if unknown:
        return 400, {"code": 400, "message": f"unknown field(s) {', '.join(unknown)}; compare takes inputs, target, runs, top_k"}
    top_k = body.get("top_k", DEFAULT_TOP_K)
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        return 400, {"code": 400, "message": "'top_k' must be a positive integer", "field": "top_k"}
    answers = []
    target = body.get("target", "predicted")
    for label, run in zip("AB", runs):
        version = str(run.get("version") or "")
        if not valid_name(version) or set(run) - set(RUN_FIELDS):
            return 400, {"code": 400, "message": f"run {label}: give version (such as 1.0), method and params only",
                         "field": "runs"}
        request = {"inputs": body.get("inputs"), "target": target}
        request.update({k: run[k] for k in ("method", "params") if run.get(k) is not None})
        status, answer = upstream.explain(model, version, request)
        if status != 200:
            message = answer.get("message") if isinstance(answer, dict) else str(answer)
            return status, {"code": status, "message": f"run {label} ({model} {version}): {message}", "run": label}
        answers.append(answer)
        target = answer["target"]  # B explains A's target
    a, b = (ans["attributions"] for ans in answers)
    k = min(top_k, max(1, len(_flatten(a))))
    try:
        scores = {name: _clean(v) for name, v in agreement(a, b, k).items()}
    except ValueError as exc:  # different shapes (e.g. two vocabularies)
        return 200, {"runs": answers, "agreement": None, "top_k": k, "why_no_agreement": str(exc)}
    return 200, {"runs": answers, "agreement": scores, "top_k": k}


def _flatten(x: Any) -> list:
    if isinstance(x, list):
        return [v for item in x for v in _flatten(item)]
    return [x]
