"""An audit's files: ``summary.json`` and ``report.html`` (one self-contained page, no network).

The page reads top-down: the verdict and gates, prediction agreement, the distribution of
per-example agreement (inline SVG histograms), global importance of A and B side by side, the
quality of each version, then the examples where the versions disagree most, drawn as the kind
requires (image heat maps next to the input, highlighted tokens, feature bars). Every label, token
and message from a model or a user is HTML-escaped.
"""
from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path
from typing import Any, Dict, Sequence

import numpy as np
import torch

from ..serving.encode import heatmap_png
from ..visualization import format_word_importances
from .agreement import PER_EXAMPLE
from .quality import QUALITY

COLOR_A, COLOR_B = "#1f77b4", "#ff7f0e"
N_BARS = 20
TARGET_TEXT = {"a": "A's predicted class", "b": "B's predicted class", "each": "each version its own prediction",
               "label": "the given labels"}
STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;max-width:1100px;color:#222;padding:0 16px}
h1{font-size:1.5em;margin-bottom:4px} h2{font-size:1.2em;margin-top:32px;border-bottom:1px solid #ddd;padding-bottom:4px}
table{border-collapse:collapse;margin:8px 0} td,th{padding:4px 10px;border-bottom:1px solid #eee;text-align:left;font-variant-numeric:tabular-nums}
th{background:#f6f6f6} .verdict{display:inline-block;padding:8px 16px;border-radius:6px;font-weight:bold;font-size:1.2em;color:#fff}
.pass{background:#2e7d32} .fail{background:#c62828} .muted{color:#666;font-size:.9em}
.grid{display:flex;flex-wrap:wrap;gap:16px} .card{border:1px solid #ddd;border-radius:6px;padding:10px;margin:10px 0}
.legend span{display:inline-block;width:12px;height:12px;margin:0 4px 0 12px;vertical-align:middle}
img.px{image-rendering:pixelated;width:128px;height:128px;border:1px solid #ccc}
figure{margin:0;text-align:center} figcaption{font-size:.85em;color:#555}
"""


def _clean(obj: Any) -> Any:
    """JSON-safe: nan/inf -> null, numpy scalars -> Python."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e-3 and value != 0 else f"{value:.{digits}f}"
    return html.escape(str(value))


def _ci(pair: Sequence[Any]) -> str:
    return f"[{_fmt(pair[0])}, {_fmt(pair[1])}]" if pair and pair[0] is not None else "n/a"


def _histogram_svg(hist: Dict[str, list], color: str, label: str) -> str:
    edges, counts = hist["edges"], hist["counts"]
    width, height, pad = 260, 110, 18
    top = max(counts) or 1
    bar_w = (width - 2 * pad) / len(counts)
    bars = []
    for i, c in enumerate(counts):
        h = (height - 2 * pad) * c / top
        x = pad + i * bar_w
        bars.append(f'<rect x="{x:.1f}" y="{height - pad - h:.1f}" width="{bar_w - 1:.1f}" height="{h:.1f}" fill="{color}">'
                    f'<title>{edges[i]:.2f} to {edges[i + 1]:.2f}: {c}</title></rect>')
    return (f'<svg width="{width}" height="{height}" role="img" aria-label="{html.escape(label)}">'
            f'<text x="{pad}" y="12" font-size="12">{html.escape(label)}</text>{"".join(bars)}'
            f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" stroke="#999"/>'
            f'<text x="{pad}" y="{height - 4}" font-size="10">{edges[0]:g}</text>'
            f'<text x="{width - pad}" y="{height - 4}" font-size="10" text-anchor="end">{edges[-1]:g}</text></svg>')


def _paired_bars_svg(names: Sequence[str], a: Sequence[float], b: Sequence[float], title: str) -> str:
    """Horizontal bars of A and B per feature (shap's bar plot of mean |value|, two versions)."""
    label_w, bar_w, row_h = 170, 380, 22
    top = max([abs(v) for v in list(a) + list(b)] or [1.0]) or 1.0
    rows = []
    for i, (n, va, vb) in enumerate(zip(names, a, b)):
        y = 20 + i * row_h
        name = str(n)
        short = name if len(name) <= 26 else name[:25] + "…"
        rows.append(f'<text x="{label_w - 6}" y="{y + 13}" font-size="11" text-anchor="end">{html.escape(short)}'
                    f'<title>{html.escape(name)}</title></text>')
        for j, (v, color) in enumerate(((va, COLOR_A), (vb, COLOR_B))):
            w = bar_w * abs(v) / top
            rows.append(f'<rect x="{label_w}" y="{y + 2 + 9 * j}" width="{w:.1f}" height="8" fill="{color}">'
                        f'<title>{"AB"[j]}: {v:.4g}</title></rect>')
    height = 28 + len(names) * row_h
    return (f'<svg width="{label_w + bar_w + 20}" height="{height}" role="img" aria-label="{html.escape(title)}">'
            f'<text x="0" y="12" font-size="12">{html.escape(title)}</text>{"".join(rows)}</svg>')


def _signed_bars_svg(names: Sequence[str], a: Sequence[float], b: Sequence[float], title: str) -> str:
    """Signed attributions of one example: A and B per feature around a zero line."""
    label_w, half, row_h = 170, 170, 22
    top = max([abs(v) for v in list(a) + list(b)] or [1.0]) or 1.0
    zero = label_w + half
    rows = [f'<line x1="{zero}" y1="16" x2="{zero}" y2="{20 + len(names) * row_h}" stroke="#999"/>']
    for i, (n, va, vb) in enumerate(zip(names, a, b)):
        y = 20 + i * row_h
        name = str(n)
        short = name if len(name) <= 26 else name[:25] + "…"
        rows.append(f'<text x="{label_w - 6}" y="{y + 13}" font-size="11" text-anchor="end">{html.escape(short)}</text>')
        for j, (v, color) in enumerate(((va, COLOR_A), (vb, COLOR_B))):
            w = half * abs(v) / top
            x = zero if v >= 0 else zero - w
            rows.append(f'<rect x="{x:.1f}" y="{y + 2 + 9 * j}" width="{w:.1f}" height="8" fill="{color}">'
                        f'<title>{"AB"[j]}: {v:.4g}</title></rect>')
    height = 28 + len(names) * row_h
    return (f'<svg width="{zero + half + 10}" height="{height}" role="img" aria-label="{html.escape(title)}">'
            f'<text x="0" y="12" font-size="12">{html.escape(title)}</text>{"".join(rows)}</svg>')


def _png_img(b64: str, caption: str) -> str:
    return (f'<figure><img class="px" alt="{html.escape(caption)}" src="data:image/png;base64,{b64}">'
            f'<figcaption>{html.escape(caption)}</figcaption></figure>')


def _grey_png(x: np.ndarray) -> str:
    """An input image (C, H, W) as a base64 PNG, its range stretched to 0..255."""
    from PIL import Image

    img = x.mean(0) if x.shape[0] != 3 else x.transpose(1, 2, 0)
    lo, hi = float(img.min()), float(img.max())
    img = (img - lo) / (hi - lo) if hi > lo else img * 0
    arr = (np.clip(img, 0, 1) * 255).astype(np.uint8)
    pil = Image.fromarray(arr, "RGB" if arr.ndim == 3 else "L")
    buf = io.BytesIO()
    pil.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _gates_html(summary: Dict[str, Any]) -> str:
    if not summary["gates"]:
        return '<p class="muted">No gates were set (<code>--fail-under METRIC=VALUE</code>).</p>'
    rows = "".join(f'<tr data-testid="gate"><td>{html.escape(g["metric"])}</td><td>&ge; {_fmt(g["threshold"])}</td>'
                   f'<td>{_fmt(g["value"])}</td><td>{"pass" if g["passed"] else "<b>FAIL</b>"}</td></tr>'
                   for g in summary["gates"])
    return f'<table data-testid="gates"><tr><th>gate</th><th>threshold</th><th>value</th><th>result</th></tr>{rows}</table>'


def _agreement_html(summary: Dict[str, Any]) -> str:
    rows = "".join(
        f'<tr><td>{m}</td><td>{_fmt(s["mean"])}</td><td>{_ci(s["ci95"])}</td><td>{_fmt(s["median"])}</td>'
        f'<td>{_fmt(s["p05"])}</td><td>{s["n_undefined"]}</td></tr>'
        for m, s in summary["metrics"].items())
    hists = "".join(_histogram_svg(summary["histograms"][m], COLOR_A, m) for m in PER_EXAMPLE)
    return (f'<table data-testid="agreement"><tr><th>metric (higher = more agreement)</th><th>mean</th><th>95% CI</th>'
            f'<th>median</th><th>5th percentile</th><th>undefined</th></tr>{rows}</table>'
            f'<div class="grid" data-testid="histograms">{hists}</div>')


def _global_html(summary: Dict[str, Any]) -> str:
    g = summary["global"]
    a, b = np.asarray(g["importance_a"], dtype=float), np.asarray(g["importance_b"], dtype=float)
    order = np.argsort(-np.maximum(a, b), kind="mergesort")[:N_BARS]
    names = [g["features"][i] for i in order]
    chart = _paired_bars_svg(names, a[order].tolist(), b[order].tolist(),
                             f"mean |attribution| per feature (top {len(order)} of {len(a)})")
    maps = ""
    if summary["kind"] == "image":
        first = summary["top_disagreements"][0] if summary["top_disagreements"] else None
        hw = first["shape"][-2:] if first else None
        if hw and hw[0] * hw[1] == a.size:
            maps = ('<div class="grid">'
                    + _png_img(heatmap_png(torch.tensor(a).reshape(hw)), "importance of A")
                    + _png_img(heatmap_png(torch.tensor(b).reshape(hw)), "importance of B") + "</div>")
    shifts = "".join(f'<tr><td>{html.escape(str(s["feature"]))}</td><td>{_fmt(s["a"])}</td><td>{_fmt(s["b"])}</td>'
                     f'<td>{_fmt(s["delta"])}</td></tr>' for s in g["largest_shifts"])
    legend = (f'<p class="legend"><span style="background:{COLOR_A}"></span>A<span style="background:{COLOR_B}"></span>B '
              f'&nbsp; ndcg@{g["k"]} of B\'s ranking against A\'s: <b data-testid="ndcg">{_fmt(g["ndcg_at_k"])}</b></p>')
    return (f'{legend}<div class="grid" data-testid="global">{chart}{maps}</div>'
            f'<h3>Largest shifts</h3><table data-testid="shifts"><tr><th>feature</th><th>A</th><th>B</th><th>B - A</th></tr>{shifts}</table>')


def _quality_html(summary: Dict[str, Any]) -> str:
    q = summary["quality"]
    rows = []
    for name in QUALITY:
        qa, qb, better = q["a"][name], q["b"][name], q["better"][name]
        if qa["mean"] is None and qb["mean"] is None:
            continue
        if better["version"] in ("a", "b"):
            verdict = f'{better["version"].upper()} ({"significant" if better["significant"] else "not significant"})'
        else:
            verdict = "n/a"
        rows.append(f'<tr><td>{name}</td><td>{"higher" if qa["higher_is_better"] else "lower"}</td>'
                    f'<td>{_fmt(qa["mean"])} {_ci(qa["ci95"])}</td><td>{_fmt(qb["mean"])} {_ci(qb["ci95"])}</td>'
                    f'<td>{_fmt(better["mean_difference"])} {_ci(better["ci95"])}</td><td>{verdict}</td></tr>')
    return ('<table data-testid="quality"><tr><th>metric</th><th>better</th><th>A mean [95% CI]</th><th>B mean [95% CI]</th>'
            f'<th>A - B [95% CI]</th><th>better version</th></tr>{"".join(rows)}</table>')


def _example_html(d: Dict[str, Any], kind: str) -> str:
    a, b = np.asarray(d["attributions_a"], dtype=float), np.asarray(d["attributions_b"], dtype=float)
    head = (f'<p><b>example {d["index"]}</b> &mdash; prediction A {d["pred_a"]}, B {d["pred_b"]}; target A {d["target_a"]},'
            f' B {d["target_b"]}; spearman {_fmt(d["spearman"])}, cosine {_fmt(d["cosine"])}, '
            f'top-k jaccard {_fmt(d["top_k_jaccard"])}</p>')
    if kind == "image":
        shape = d["shape"]
        parts = []
        if d["input"] is not None:
            parts.append(_png_img(_grey_png(np.asarray(d["input"]).reshape(shape)), "input"))
        parts.append(_png_img(heatmap_png(torch.tensor(a).reshape(shape)), "A (red +, blue -)"))
        parts.append(_png_img(heatmap_png(torch.tensor(b).reshape(shape)), "B (red +, blue -)"))
        body = f'<div class="grid">{"".join(parts)}</div>'
    elif kind == "text":
        tokens = d["features"] or [str(i) for i in range(a.size)]
        scale = max(np.abs(a).max(), np.abs(b).max()) or 1.0
        body = (f'<table><tr><td>A</td>{format_word_importances(tokens, a / scale)}</tr>'
                f'<tr><td>B</td>{format_word_importances(tokens, b / scale)}</tr></table>')
    else:
        names = d["features"] or [str(i) for i in range(a.size)]
        order = np.argsort(-np.maximum(np.abs(a), np.abs(b)), kind="mergesort")[:12]
        body = _signed_bars_svg([names[i] for i in order], a[order].tolist(), b[order].tolist(),
                                "attributions of this example (largest 12): A blue, B orange")
    return f'<div class="card" data-testid="disagreement">{head}{body}</div>'


def render_html(summary: Dict[str, Any]) -> str:
    passed = summary["passed"]
    sa, sb = summary["a"], summary["b"]
    title = f'Explanation audit: {sa["name"]} {sa["version"] or ""} vs {sb["name"]} {sb["version"] or ""}'
    examples = "".join(_example_html(d, summary["kind"]) for d in summary["top_disagreements"])
    params = html.escape(json.dumps(summary["params"], sort_keys=True))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{STYLE}</style></head>
<body>
<h1>{html.escape(title)}</h1>
<p class="muted">A: {html.escape(sa["spec"])} &middot; B: {html.escape(sb["spec"])}</p>
<p><span class="verdict {"pass" if passed else "fail"}" data-testid="verdict">{"PASSED" if passed else "FAILED"}</span></p>
{_gates_html(summary)}
<p>{summary["n_examples"]} {html.escape(summary["kind"])} examples &middot; method <code>{html.escape(summary["method"])}</code>
<code>{params}</code> &middot; target: {html.escape(TARGET_TEXT.get(summary["target"], summary["target"]))} &middot; predictions agree on
<b data-testid="prediction-agreement">{100 * summary["prediction_agreement"]:.1f}%</b> of examples</p>
<h2>Agreement of A's and B's explanations, per example</h2>{_agreement_html(summary)}
<h2>Global importance</h2>{_global_html(summary)}
<h2>Quality of each version's explanations</h2>{_quality_html(summary)}
<p class="muted">Paired differences are A - B per example with a seeded 95% bootstrap interval; "significant" means it excludes 0.</p>
<h2>Where A and B disagree most (lowest Spearman)</h2>{examples or '<p class="muted">none</p>'}
</body></html>
"""


def write_report(summary: Dict[str, Any], out_dir: Path) -> None:
    """``summary.json`` and ``report.html`` in ``out_dir``."""
    clean = _clean(summary)
    summary.clear()
    summary.update(clean)
    (Path(out_dir) / "summary.json").write_text(json.dumps(clean, indent=1, allow_nan=False))
    (Path(out_dir) / "report.html").write_text(render_html(clean))
