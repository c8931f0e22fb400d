"""Soak and leak: N mixed requests (every example model: image, tabular, text; predictions and every
allowed method; one in five malformed) from 8 keep-alive clients against one TorchServe, started and
stopped here. Every answer is checked against the in-process service's (status and body); worker RSS,
threads and open file descriptors are read from /proc after the first 10% of requests and at the end.

    .venv/bin/python benchmarks/soak.py [--requests 20000] [--clients 8] [--out out/soak.json]

The logic is ``explain_serve.serving.soak`` (its short version runs in tests/serving/test_soak.py).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from explain_serve.examples import build_examples  # noqa: E402
from explain_serve.serving import server, soak  # noqa: E402

MODELS = ["digits", "cancer", "sentiment"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=20000)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="out/soak.json")
    args = p.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="explain-serve-soak-"))
    build_examples(tmp / "store", MODELS)
    services = soak.services_from_store(tmp / "store", MODELS, tmp / "inprocess")
    hooks = {m: soak.hook_count(s) for m, s in services.items()}
    pool = soak.request_pool(services, seed=args.seed)
    hooks_after = {m: soak.hook_count(s) for m, s in services.items()}
    for s in services.values():
        s.close()
    requests = soak.schedule(pool, args.requests, seed=args.seed)
    workdir = tmp / "torchserve"
    info = server.start(tmp / "store", MODELS, workdir)
    try:
        keys = server.read_token(Path(info["token_file"]))
        pids = lambda: soak.worker_pids(info["endpoints"]["management"], keys["management"], MODELS)  # noqa: E731
        with tqdm(total=len(requests), desc="soak", unit="req") as bar:
            report = soak.run(info["endpoints"]["inference"], keys["inference"], requests, pids,
                              clients=args.clients, progress=bar.update)
    finally:
        server.stop(workdir)
    report["pool"] = {"distinct": len(pool), "malformed": sum(c.malformed for c in pool)}
    report["hooks_in_process"] = {"before": hooks, "after": hooks_after}
    report["rss_growth_pct"] = {m: round(100 * (report["workers"]["end"][m]["rss"] / w["rss"] - 1), 2)
                                for m, w in report["workers"]["after_warmup"].items()}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(json.dumps({k: report[k] for k in ("requests", "clients", "seconds", "counts", "statuses", "rss_growth_pct",
                                             "same_workers")}, indent=1))
    for m in MODELS:
        a, b = report["workers"]["after_warmup"][m], report["workers"]["end"][m]
        print(f"{m}: RSS {a['rss'] / 2**20:.1f} -> {b['rss'] / 2**20:.1f} MiB, threads {a['threads']} -> {b['threads']}, "
              f"fds {a['fds']} -> {b['fds']}")
    ok = report["counts"]["mismatches"] == 0 and report["same_workers"] and all(
        v < 5 for v in report["rss_growth_pct"].values())
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
