"""The audit step of ``make demo``: the digits CNN trained with two seeds, audited as versions 1.0 and 2.0."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np

DEMO_GATES = ("spearman=0.3", "prediction_agreement=0.9")


def _digits_archive(build: Path, store: Path, seed: int, version: str) -> Path:
    from ..examples import build_example
    from ..serving.archive import archive

    files = build_example("digits", build / f"seed{seed}", seed=seed)["files"]
    mar = archive("digits", files["weights"], "image", store / f"v{version}", config=files["config"],
                  reference_data=files["reference"], version=version)
    return mar.replace(store / f"digits_v{version}.mar")


def audit_demo(out_dir: Path, model_store: Optional[Path] = None, n_examples: int = 300,
               progress: bool = True) -> Dict[str, Any]:
    """Audit digits (seed 0, ``model_store/digits.mar`` when built) against digits retrained with seed 1.

    Writes ``out_dir/audit/{summary.json, examples.csv, report.html}``, prints the verdict and the
    report's path, and returns ``{"passed", "verdict", "report", ...}``.
    """
    from ..examples import digits_data
    from .run import run_audit

    root = Path(out_dir).resolve() / "audit"
    build, store = root / "build", root / "store"
    a = Path(model_store) / "digits.mar" if model_store else None
    if a is None or not a.is_file():
        a = _digits_archive(build, store, seed=0, version="1.0")
    b = _digits_archive(build, store, seed=1, version="2.0")
    x, _ = digits_data()
    data = root / "digits.npy"
    np.save(data, x[-n_examples:])  # the last images (the first ones are the demo's own samples)
    summary = run_audit(str(a), str(b), str(data), str(root), fail_under=DEMO_GATES, progress=progress)
    failed = [f"{g['metric']} {g['value']:.3f} < {g['threshold']}" for g in summary["gates"] if not g["passed"]]
    verdict = "PASSED" if summary["passed"] else "FAILED (" + ", ".join(failed) + ")"
    m = summary["metrics"]
    report = root / "report.html"
    print(f"audit: digits seed 0 (A) vs seed 1 (B) on {summary['n_examples']} images: {verdict}; "
          f"spearman {m['spearman']['mean']:.3f}, top-k jaccard {m['top_k_jaccard']['mean']:.3f}, "
          f"predictions agree {100 * summary['prediction_agreement']:.1f}%, "
          f"ndcg@{summary['global']['k']} {summary['global']['ndcg_at_k']:.3f}\naudit report: {report}")
    return {"passed": summary["passed"], "verdict": verdict, "report": str(report), "n_examples": summary["n_examples"],
            "spearman": m["spearman"]["mean"], "prediction_agreement": summary["prediction_agreement"]}
