"""Time of an A/B explanation audit of N digits images: in-process archives vs the same two versions
served by one TorchServe (``/explanations/digits/1.0`` vs ``/2.0``), side by side in one run.

Both versions are the digits CNN trained with seeds 0 and 1; default method (integrated gradients,
32 Gauss-Legendre steps), every quality metric, batch size 32. The server runs one worker per
version with one intra-op thread (as ``explain-serve serve``), batch size 8.

    python benchmarks/audit.py [--n 1000] [--workdir out/bench_audit]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def main(argv=None) -> int:
    from explain_serve.audit.demo import _digits_archive
    from explain_serve.audit.run import run_audit
    from explain_serve.examples import digits_data
    from explain_serve.serving import server as ts_server

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--workdir", default="out/bench_audit")
    args = p.parse_args(argv)
    root = Path(args.workdir).resolve()
    store = root / "store"
    a = _digits_archive(root / "build", store, seed=0, version="1.0")
    b = _digits_archive(root / "build", store, seed=1, version="2.0")
    x, _ = digits_data()
    np.save(root / "digits.npy", x[: args.n])
    rows = {}
    t0 = time.perf_counter()
    local = run_audit(str(a), str(b), str(root / "digits.npy"), str(root / "in_process"), progress=False)
    rows["in-process (two .mar)"] = time.perf_counter() - t0
    info = ts_server.start(store, [f"digits={a.name}", f"digits={b.name}"], root / "torchserve", batch_size=8, max_batch_delay=2)
    try:
        base = info["endpoints"]["inference"]
        t0 = time.perf_counter()
        served = run_audit(f"{base}/explanations/digits/1.0", f"{base}/explanations/digits/2.0", str(root / "digits.npy"),
                           str(root / "served"), token_file=info["token_file"], progress=False)
        rows["served (one TorchServe, two versions)"] = time.perf_counter() - t0
    finally:
        ts_server.stop(root / "torchserve")
    print(f"audit of {args.n} digits, integrated gradients, every quality metric:")
    for name, seconds in rows.items():
        print(f"  {name:40s} {seconds:7.1f} s  {args.n / seconds:6.1f} examples/s")
    print(f"  served / in-process time: {rows['served (one TorchServe, two versions)'] / rows['in-process (two .mar)']:.2f}x")
    print("  spearman mean in-process / served:", round(local["metrics"]["spearman"]["mean"], 6),
          round(served["metrics"]["spearman"]["mean"], 6))
    (root / "bench.json").write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
