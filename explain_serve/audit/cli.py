"""``explain-serve audit``: compare how two model versions explain the same data; exit 0/1/2 for CI.

Exit codes: 0 every ``--fail-under`` gate holds, 1 a gate fails, 2 bad arguments or data (the
message says what to fix), 130 interrupted (nothing written).
"""
from __future__ import annotations

import argparse
import json
import sys

from .sources import AuditError


def _audit(args) -> int:
    from .run import run_audit

    try:
        params = json.loads(args.params) if args.params else None
    except ValueError as exc:
        print(f"explain-serve audit: --params is not JSON ({exc})", file=sys.stderr)
        return 2
    try:
        summary = run_audit(args.a, args.b, args.data, args.out, labels=args.labels, method=args.method, params=params,
                            target=args.target, top_k=args.top_k, fail_under=args.fail_under, token_file=args.token_file,
                            batch_size=args.batch_size, limit=args.limit, seed=args.seed, ray=args.ray,
                            progress=not args.no_progress)
    except AuditError as exc:
        print(f"explain-serve audit: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("explain-serve audit: interrupted; nothing was written", file=sys.stderr)
        return 130
    failed = [g for g in summary["gates"] if not g["passed"]]
    verdict = "PASSED" if summary["passed"] else "FAILED: " + ", ".join(
        f"{g['metric']} {g['value'] if g['value'] is None else round(g['value'], 4)} < {g['threshold']}" for g in failed)
    print(json.dumps({"passed": summary["passed"], "verdict": verdict, "n_examples": summary["n_examples"],
                      "report": str(args.out.rstrip("/") + "/report.html")}))
    return 0 if summary["passed"] else 1


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from exc
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def add_subcommand(sub) -> None:
    p = sub.add_parser("audit", help="compare two model versions' explanations on the same data (report and gate)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--a", required=True, metavar="SPEC",
                   help="version A (the reference): a .mar, or http(s)://HOST:PORT/explanations/NAME[/VERSION]")
    p.add_argument("--b", required=True, metavar="SPEC", help="version B (the candidate), same forms as --a")
    p.add_argument("--data", required=True, metavar="FILE",
                   help=".npy rows, .csv with a header of feature names, .jsonl request bodies, or a folder of images")
    p.add_argument("--labels", metavar="FILE", help="class index per example (.npy or one per line), for --target label")
    p.add_argument("--method", help="attribution method (default: A's config default); the same for both versions")
    p.add_argument("--params", metavar="JSON", help="the method's parameters (default: A's config defaults)")
    p.add_argument("--target", choices=("a", "b", "each", "label"), default="a",
                   help="whose class both explain: A's prediction (default), B's, each its own, or --labels")
    p.add_argument("--top-k", type=_positive, default=10, metavar="K", help="k of top_k_jaccard, sign_agreement and ndcg_at_k")
    p.add_argument("--out", default="out/audit", metavar="DIR", help="where summary.json, examples.csv, report.html go")
    p.add_argument("--fail-under", nargs="+", default=[], metavar="METRIC=VALUE",
                   help="exit 1 when a metric's mean is below VALUE (spearman, kendall, top_k_jaccard, sign_agreement, "
                        "cosine, ndcg_at_k, prediction_agreement)")
    p.add_argument("--token-file", metavar="F", help="TorchServe key_file.json (or a file with the inference key)")
    p.add_argument("--batch-size", type=_positive, default=32, metavar="N")
    p.add_argument("--limit", type=_positive, metavar="N", help="audit only the first N examples")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="seeds random methods, quality perturbations, bootstrap")
    p.add_argument("--ray", metavar="ADDRESS", help="distribute batches over a Ray cluster (ADDRESS, auto, or local)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.set_defaults(func=_audit)
