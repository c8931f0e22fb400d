"""Served latency of one generated-answer explanation (tiny_lm over TorchServe) next to the same
work in-process, side by side in one run.

    .venv/bin/python benchmarks/serve_llm.py [--requests 30] [--out out/serve_llm.json]

Builds the tiny_lm example archive, starts one TorchServe (batch size 1, one thread per worker),
and times, per row: /predictions (greedy, 2 new tokens), and /explanations of the model's own
greedy answer (generate 2 tokens, then attribute them to the 5 prompt tokens) with feature
ablation, Shapley value sampling (10 samples), and layer integrated gradients (32 steps). The
in-process column is the service's own handling of the same request (parse, generate, attribute,
encode) without HTTP; the elapsed column is the answer's ``elapsed_ms`` (generation plus the LLM
attribution call). 5 unmeasured warm-up requests per row.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import zipfile
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.serve_load import Load, pct  # noqa: E402
from explain_serve.examples import build_examples  # noqa: E402
from explain_serve.llm_example import SAMPLE_PROMPT  # noqa: E402
from explain_serve.serving import server  # noqa: E402
from explain_serve.serving.causal_lm import CausalLMService  # noqa: E402
from explain_serve.serving.server import read_token  # noqa: E402

ROWS = {
    "predict (generate 2 tokens)": ("/predictions", {"inputs": SAMPLE_PROMPT, "params": {"max_new_tokens": 2}}),
    "explain feature_ablation": ("/explanations", {"inputs": SAMPLE_PROMPT, "method": "feature_ablation",
                                                  "params": {"max_new_tokens": 2}}),
    "explain shapley_value_sampling (10)": ("/explanations", {"inputs": SAMPLE_PROMPT, "method": "shapley_value_sampling",
                                                              "params": {"max_new_tokens": 2, "n_samples": 10}}),
    "explain layer_integrated_gradients (32)": ("/explanations", {"inputs": SAMPLE_PROMPT, "method": "layer_integrated_gradients",
                                                                  "params": {"max_new_tokens": 2, "n_steps": 32}}),
}


def in_process(store: Path, n: int) -> dict:
    """Median ms of the service handling each row's request, and of its generation + attribution."""
    import torch

    torch.set_num_threads(1)
    out_dir = Path(tempfile.mkdtemp(prefix="serve-llm-"))
    with zipfile.ZipFile(store / "tiny_lm.mar") as z:
        z.extractall(out_dir)
    svc = CausalLMService(out_dir, "model.safetensors", "tiny_lm")
    res = {}
    for name, (route, body) in ROWS.items():
        explain = route == "/explanations"
        times, core = [], []
        for i in range(n + 5):
            t0 = time.perf_counter()
            (status, text), = svc.handle([{"body": body}], [explain])
            if i >= 5:
                times.append((time.perf_counter() - t0) * 1000)
                if explain:
                    core.append(json.loads(text)["elapsed_ms"])
            assert status == 200, text
        res[name] = {"p50_ms": round(pct(times, 50), 2), "core_p50_ms": round(pct(core, 50), 2) if core else None}
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=30)
    p.add_argument("--out", default="out/serve_llm.json")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="serve-llm-"))
    store = work / "store"
    build_examples(store, ["tiny_lm"])
    info = server.start(store, ["tiny_lm"], work / "ts", batch_size=1)
    table = {}
    try:
        load = Load(info["endpoints"]["inference"], read_token(Path(info["token_file"]))["inference"])
        for name, (route, body) in ROWS.items():
            raw = json.dumps(body).encode()
            for _ in range(5):
                load.post(f"{route}/tiny_lm", raw)
            times = [load.post(f"{route}/tiny_lm", raw) for _ in range(args.requests)]
            table[name] = {"served_p50_ms": round(pct(times, 50), 2), "served_p99_ms": round(pct(times, 99), 2)}
    finally:
        server.stop(work / "ts")
    for name, r in in_process(store, args.requests).items():
        table[name].update(r)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(table, indent=2))
    print(f"{'row':42s} {'served p50':>10s} {'p99':>8s} {'in-process p50':>15s} {'elapsed p50':>12s}")
    for name, r in table.items():
        print(f"{name:42s} {r['served_p50_ms']:10.1f} {r['served_p99_ms']:8.1f} {r['p50_ms']:15.1f} "
              f"{r['core_p50_ms'] if r['core_p50_ms'] is not None else float('nan'):12.1f}")


if __name__ == "__main__":
    main()
