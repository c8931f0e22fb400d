"""The audit loop: explain every example with both versions, measure, aggregate, gate, write.

``Pair.compute(batch)`` is all the per-example work (explanations through each side's server path,
agreement, quality) and returns plain records; ``Aggregator`` folds records in example order into
streaming statistics. A Ray run (``explain_serve.audit.distributed``) calls ``compute`` in actors and
folds the same records in the same order, so its summary equals the single-process one.
"""
from __future__ import annotations

import csv
import math
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..serving.methods import METHODS
from .agreement import PER_EXAMPLE, agreement, ndcg_at_k
from .data import open_data, read_labels
from .quality import HIGHER_IS_BETTER as QUALITY_HIGHER, QUALITY, quality
from .sources import AuditError, open_source, token_from_file
from .stats import Stream, TopK, bootstrap_ci

TARGETS = ("a", "b", "each", "label")
GATE_METRICS = PER_EXAMPLE + ("ndcg_at_k", "prediction_agreement")
N_DISAGREEMENTS = 8
N_SHIFTS = 10
CSV_COLUMNS = ["index", "pred_a", "pred_b", "target", *PER_EXAMPLE] + [f"{q}_{s}" for q in QUALITY for s in "ab"]


@dataclass
class Plan:
    """Everything a worker needs to compute records (picklable for Ray)."""

    a: str
    b: str
    target: str = "a"
    method: Optional[str] = None
    params: Optional[Dict[str, Any]] = None
    top_k: int = 10
    seed: int = 0
    token: Optional[str] = None
    labels: Optional[np.ndarray] = field(default=None, repr=False)


def parse_gates(specs: Sequence[str]) -> List[Tuple[str, float]]:
    """``METRIC=VALUE`` strings as (metric, threshold); AuditError names what is wrong."""
    gates = []
    for spec in specs or ():
        name, sep, value = spec.partition("=")
        if not sep:
            raise AuditError(f"--fail-under {spec!r}: write METRIC=VALUE, e.g. spearman=0.8")
        name = name.strip()
        if name not in GATE_METRICS:
            raise AuditError(f"--fail-under {spec!r}: unknown metric {name!r}; gate on one of {', '.join(GATE_METRICS)}")
        try:
            threshold = float(value)
        except ValueError as exc:
            raise AuditError(f"--fail-under {spec!r}: {value!r} is not a number") from exc
        if not math.isfinite(threshold):
            raise AuditError(f"--fail-under {spec!r}: the threshold must be finite")
        gates.append((name, threshold))
    return gates


def _body(inputs: Any, target: Any, plan: Plan) -> Dict[str, Any]:
    body = {"inputs": inputs, "target": target}
    if plan.method is not None:
        body["method"] = plan.method
    if plan.params is not None:
        body["params"] = plan.params
    return body


class Pair:
    """Versions A and B opened once; ``compute`` turns a batch of ``(index, inputs)`` into records."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.a = open_source(plan.a, "a", plan.token)
        try:
            self.b = open_source(plan.b, "b", plan.token)
        except BaseException:
            self.a.close()
            raise

    def close(self) -> None:
        self.a.close()
        self.b.close()

    def fix_method(self, index: int, inputs: Any) -> Plan:
        """A's method and parameters (its config's defaults unless given), checked against B on one example."""
        plan = self.plan
        first = self.a.explain([index], [_body(inputs, "predicted", plan)])[0]
        params = dict(first["params"])
        spec = METHODS.get(first["method"])
        if spec is not None and spec.param("seed") is not None and "seed" not in (plan.params or {}):
            params["seed"] = plan.seed
        self.plan = replace(plan, method=first["method"], params=params)
        self.b.explain([index], [_body(inputs, first["target"], self.plan)])
        kinds = {self.a.kind, self.b.kind}
        if len(kinds) != 1:
            raise AuditError(f"A serves {self.a.kind} inputs and B serves {self.b.kind} inputs; audit two versions of one model")
        return self.plan

    def _explain_both(self, index: List[int], inputs: List[Any]):
        plan, mode = self.plan, self.plan.target
        if mode == "label":
            targets = [int(plan.labels[i]) for i in index]
            return (self.a.explain(index, [_body(v, t, plan) for v, t in zip(inputs, targets)]),
                    self.b.explain(index, [_body(v, t, plan) for v, t in zip(inputs, targets)]))
        if mode == "each":
            return (self.a.explain(index, [_body(v, "predicted", plan) for v in inputs]),
                    self.b.explain(index, [_body(v, "predicted", plan) for v in inputs]))
        first, second = (self.a, self.b) if mode == "a" else (self.b, self.a)
        leading = first.explain(index, [_body(v, "predicted", plan) for v in inputs])
        following = second.explain(index, [_body(v, ans["target"], plan) for v, ans in zip(inputs, leading)])
        return (leading, following) if mode == "a" else (following, leading)

    def _explainer(self, source, index: List[int]):
        """``explain(x_batch, target)`` through the side's server path (examples repeated consecutively)."""
        def explain(xs: torch.Tensor, target) -> torch.Tensor:
            k = xs.shape[0] // len(index)
            rows = [i for i in index for _ in range(k)]
            bodies = [_body(row.tolist(), int(t), self.plan) for row, t in zip(xs, target)]
            answers = source.explain(rows, bodies)
            return torch.from_numpy(np.array([np.ravel(a["attributions"]) for a in answers], dtype=np.float64))
        return explain

    def compute(self, batch: Sequence[Tuple[int, Any]]) -> List[Dict[str, Any]]:
        index = [i for i, _ in batch]
        inputs = [v for _, v in batch]
        answers_a, answers_b = self._explain_both(index, inputs)
        kind = self.a.kind
        attrs: Dict[str, List[np.ndarray]] = {"a": [], "b": []}
        for i, ans_a, ans_b in zip(index, answers_a, answers_b):
            attrs["a"].append(np.asarray(ans_a["attributions"], dtype=np.float64))
            attrs["b"].append(np.asarray(ans_b["attributions"], dtype=np.float64))
            if attrs["a"][-1].shape != attrs["b"][-1].shape:
                raise AuditError(f"example {i}: A explains an input of shape {list(attrs['a'][-1].shape)} and B one of "
                                 f"shape {list(attrs['b'][-1].shape)}; both versions must take the same inputs")
        sides = {"a": (self.a, answers_a), "b": (self.b, answers_b)}
        xs_a: List[Optional[torch.Tensor]] = []
        qualities = {}
        for side, (source, answers) in sides.items():
            xs = [source.resolve(i, v, ans) for i, v, ans in zip(index, inputs, answers)]
            xs_a = xs if side == "a" else xs_a
            qualities[side] = quality(source, kind, xs, [torch.from_numpy(a) for a in attrs[side]],
                                      [int(ans["target"]) for ans in answers],
                                      [ans.get("convergence_delta") for ans in answers],
                                      self._explainer(source, index), [self.plan.seed + i for i in index])
        records = []
        for n, (i, ans_a, ans_b) in enumerate(zip(index, answers_a, answers_b)):
            attr_a, attr_b = attrs["a"][n], attrs["b"][n]
            x = xs_a[n]
            records.append({
                "index": i, "pred_a": ans_a["prediction"]["index"], "pred_b": ans_b["prediction"]["index"],
                "target_a": ans_a["target"], "target_b": ans_b["target"], "kind": kind,
                "attr_a": attr_a, "attr_b": attr_b, **agreement(attr_a, attr_b, self.plan.top_k),
                "quality_a": qualities["a"][n], "quality_b": qualities["b"][n],
                "input": x.double().numpy() if x is not None and kind != "text" else None,
                "keys": (list(ans_a["features"]) if kind == "tabular" else
                         [t["token"] for t in ans_a["tokens"]] if kind == "text" else None)})
        return records


def importance(record: Dict[str, Any], side: str) -> np.ndarray:
    """Per-feature |attribution|: tabular and text as returned; image per pixel, channels summed."""
    attr = record[f"attr_{side}"]
    if record["kind"] == "image":
        return np.abs(attr.sum(0)).reshape(-1)
    return np.abs(attr).reshape(-1)


class Aggregator:
    """Folds records (in example order) into the summary's statistics, in bounded memory."""

    def __init__(self, plan: Plan, n_top: int = N_DISAGREEMENTS) -> None:
        self.plan = plan
        self.metrics = {m: Stream(plan.seed) for m in PER_EXAMPLE}
        self.quality = {s: {q: Stream(plan.seed, (0.0, 1.0, 20)) for q in QUALITY} for s in "ab"}
        self.paired = {q: Stream(plan.seed, (-1.0, 1.0, 20)) for q in QUALITY}
        self.agree = Stream(plan.seed, (0.0, 1.0, 2))
        self.n = 0
        self.kind: Optional[str] = None
        self.shape: Optional[Tuple[int, ...]] = None
        self.sums: Optional[np.ndarray] = None  # (2, n_features) for fixed features
        self.token_sums: Dict[str, List[float]] = {}  # text: token -> [sum_a, sum_b, count]
        self.feature_names: Optional[List[str]] = None
        self.top = TopK(n_top)

    def add(self, record: Dict[str, Any]) -> None:
        self.n += 1
        self.kind = record["kind"]
        for m in PER_EXAMPLE:
            self.metrics[m].add(record[m])
        self.agree.add(float(record["pred_a"] == record["pred_b"]))
        for q in QUALITY:
            qa, qb = record["quality_a"][q], record["quality_b"][q]
            self.quality["a"][q].add(qa)
            self.quality["b"][q].add(qb)
            if qa is not None and qb is not None:
                self.paired[q].add(qa - qb)
        imp_a, imp_b = importance(record, "a"), importance(record, "b")
        if self.kind == "text":
            for token, va, vb in zip(record["keys"], imp_a, imp_b):
                entry = self.token_sums.setdefault(token, [0.0, 0.0, 0])
                entry[0] += va
                entry[1] += vb
                entry[2] += 1
        else:
            shape = record["attr_a"].shape
            if self.shape is None:
                self.shape = shape
                self.sums = np.zeros((2, imp_a.size))
                self.feature_names = record["keys"] or [f"({r}, {c})" for r in range(shape[-2]) for c in range(shape[-1])]
            elif shape != self.shape:
                raise AuditError(f"example {record['index']} has attributions of shape {list(shape)}, the first had "
                                 f"{list(self.shape)}; global importance needs inputs of one shape (resize the images)")
            self.sums[0] += imp_a
            self.sums[1] += imp_b
        keep = {k: record[k] for k in ("index", "pred_a", "pred_b", "target_a", "target_b", "keys", "input",
                                       "attr_a", "attr_b", "quality_a", "quality_b", *PER_EXAMPLE)}
        self.top.add(record["spearman"], record["index"], keep)

    def global_importance(self) -> Dict[str, Any]:
        if self.kind == "text":
            names = list(self.token_sums)
            counts = np.array([self.token_sums[t][2] for t in names], dtype=np.float64)
            a = np.array([self.token_sums[t][0] for t in names]) / counts
            b = np.array([self.token_sums[t][1] for t in names]) / counts
        else:
            names = list(self.feature_names)
            a, b = self.sums[0] / self.n, self.sums[1] / self.n
        k = min(self.plan.top_k, len(names))
        shifts = np.argsort(-np.abs(b - a), kind="mergesort")[:N_SHIFTS]
        return {"features": names, "importance_a": a.tolist(), "importance_b": b.tolist(),
                "ndcg_at_k": ndcg_at_k(a, b, k), "k": k,
                "largest_shifts": [{"feature": names[j], "a": float(a[j]), "b": float(b[j]), "delta": float(b[j] - a[j])}
                                   for j in shifts]}

    def quality_summary(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"a": {}, "b": {}, "better": {}}
        for q in QUALITY:
            for s in "ab":
                summary = self.quality[s][q].summary()
                summary["higher_is_better"] = QUALITY_HIGHER[q]
                out[s][q] = summary
            diff = self.paired[q].summary()
            if diff["mean"] is None:
                out["better"][q] = {"version": None, "mean_difference": None, "ci95": [None, None], "significant": False,
                                    "higher_is_better": QUALITY_HIGHER[q]}
                continue
            lo, hi = diff["ci95"]
            sign = 1 if QUALITY_HIGHER[q] else -1
            favoured = "a" if sign * diff["mean"] > 0 else "b" if sign * diff["mean"] < 0 else "tie"
            out["better"][q] = {"version": favoured, "mean_difference": diff["mean"], "ci95": [lo, hi],
                                "significant": bool(lo > 0 or hi < 0), "higher_is_better": QUALITY_HIGHER[q],
                                "difference": "a - b"}
        return out


def _gate_value(summary: Dict[str, Any], name: str) -> Optional[float]:
    if name == "ndcg_at_k":
        return summary["global"]["ndcg_at_k"]
    if name == "prediction_agreement":
        return summary["prediction_agreement"]
    return summary["metrics"][name]["mean"]


def _side(source, spec: str) -> Dict[str, Any]:
    return {"spec": spec, "name": source.name, "version": source.version, "in_process": source.in_process}


def build_summary(plan: Plan, agg: Aggregator, pair: Pair, gates: Sequence[Tuple[str, float]]) -> Dict[str, Any]:
    metrics = {m: {k: v for k, v in agg.metrics[m].summary().items()} for m in PER_EXAMPLE}
    summary: Dict[str, Any] = {
        "a": _side(pair.a, plan.a), "b": _side(pair.b, plan.b), "kind": agg.kind,
        "method": plan.method, "params": plan.params, "target": plan.target, "top_k": plan.top_k, "seed": plan.seed,
        "n_examples": agg.n,
        "prediction_agreement": agg.agree.total / max(agg.agree.n, 1),
        "prediction_agreement_ci95": bootstrap_ci(np.asarray(agg.agree.sample), plan.seed),
        "metrics": metrics,
        "histograms": {m: agg.metrics[m].histogram() for m in PER_EXAMPLE},
        "global": agg.global_importance(),
        "quality": agg.quality_summary(),
        "top_disagreements": [_public(r) for r in agg.top.items()],
    }
    summary["gates"] = []
    for name, threshold in gates:
        value = _gate_value(summary, name)
        passed = value is not None and not (isinstance(value, float) and math.isnan(value)) and value >= threshold
        summary["gates"].append({"metric": name, "threshold": threshold, "value": value, "passed": bool(passed)})
    summary["passed"] = all(g["passed"] for g in summary["gates"])
    return summary


def _public(record: Dict[str, Any]) -> Dict[str, Any]:
    """A kept disagreement as JSON: both explanations with their shape, the input and its quality."""
    out = {k: record[k] for k in ("index", *PER_EXAMPLE, "pred_a", "pred_b", "target_a", "target_b")}
    out["shape"] = list(record["attr_a"].shape)
    out["attributions_a"] = record["attr_a"].reshape(-1).tolist()
    out["attributions_b"] = record["attr_b"].reshape(-1).tolist()
    out["input"] = record["input"].reshape(-1).tolist() if record["input"] is not None else None
    out["features"] = record["keys"]
    out["quality_a"], out["quality_b"] = record["quality_a"], record["quality_b"]
    return out


def _csv_row(record: Dict[str, Any]) -> List[Any]:
    target = record["target_a"] if record["target_a"] == record["target_b"] else f"{record['target_a']}|{record['target_b']}"
    row = [record["index"], record["pred_a"], record["pred_b"], target] + [record[m] for m in PER_EXAMPLE]
    row += [record[f"quality_{s}"][q] for q in QUALITY for s in "ab"]
    return ["" if v is None else v for v in row]


def _batches(rows: Iterator[Tuple[int, Any]], size: int) -> Iterator[List[Tuple[int, Any]]]:
    batch: List[Tuple[int, Any]] = []
    for row in rows:
        batch.append(row)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def run_audit(a: str, b: str, data: str, out: str, labels: Optional[str] = None, method: Optional[str] = None,
              params: Optional[Dict[str, Any]] = None, target: str = "a", top_k: int = 10,
              fail_under: Sequence[str] = (), token_file: Optional[str] = None, batch_size: int = 32,
              limit: Optional[int] = None, seed: int = 0, ray: Optional[str] = None, progress: bool = True) -> Dict[str, Any]:
    """Audit versions ``a`` and ``b`` on ``data``; writes summary.json, examples.csv and report.html to ``out``.

    Returns the summary. Raises ``AuditError`` for bad arguments. The outputs appear all at once
    (written to a temporary folder, then moved), so an interrupted audit leaves nothing half-written.
    """
    from tqdm import tqdm

    from .report import write_report

    gates = parse_gates(fail_under)
    if target not in TARGETS:
        raise AuditError(f"--target {target!r}: choose one of {', '.join(TARGETS)}")
    if target == "label" and labels is None:
        raise AuditError("--target label needs --labels FILE")
    if top_k < 1 or batch_size < 1 or (limit is not None and limit < 1):
        raise AuditError("--top-k, --batch-size and --limit must be positive integers")
    if params is not None and not isinstance(params, dict):
        raise AuditError("--params must be a JSON object of the method's parameters")
    n, rows = open_data(data, limit)
    plan = Plan(a, b, target, method, params, top_k, seed, token_from_file(token_file), read_labels(labels, n))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as a TorchServe worker runs (and no oversubscription on small machines)
    try:
        pair = Pair(plan)
    except BaseException:
        torch.set_num_threads(threads)
        raise
    out_dir = Path(out)
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".audit-", dir=out_dir))  # same file system: the final moves are atomic
    try:
        first = next(rows)
        plan = pair.fix_method(*first)
        agg = Aggregator(plan)

        def all_rows():
            yield first
            yield from rows

        batches = _batches(all_rows(), batch_size)
        if ray:
            from .distributed import compute_distributed

            results: Iterable[List[Dict[str, Any]]] = compute_distributed(ray, plan, batches)
        else:
            results = (pair.compute(batch) for batch in batches)
        with open(stage / "examples.csv", "w", newline="") as f, \
                tqdm(total=n, unit="ex", desc="audit", file=sys.stderr, disable=not progress, dynamic_ncols=True) as bar:
            writer = csv.writer(f)
            writer.writerow(CSV_COLUMNS)
            for records in results:
                for record in records:
                    agg.add(record)
                    writer.writerow(_csv_row(record))
                bar.update(len(records))
        summary = build_summary(plan, agg, pair, gates)
        write_report(summary, stage)
        for name in ("summary.json", "examples.csv", "report.html"):
            os.replace(stage / name, out_dir / name)
        return summary
    finally:
        torch.set_num_threads(threads)
        pair.close()
        shutil.rmtree(stage, ignore_errors=True)
        if created and not any(out_dir.iterdir()):
            out_dir.rmdir()  # a failed audit leaves no empty folder behind
