"""Serving load: p50/p99 latency and throughput of /predictions and /explanations per example model,
sequential and with N concurrent clients, next to the in-process time and next to a handler in the
same server that calls Captum's IntegratedGradients per request (benchmarks/captum_ig_handler.py).

    .venv/bin/python benchmarks/serve_load.py [--requests 200] [--clients 8] [--out out/serve_load.json]

One TorchServe, started and stopped here, serves: digits, cancer, sentiment, digits_captum (Captum
per request) and digits_onnx (predictions on ONNX Runtime, explanations from the compiled IG graph) at
--batch-size (default: the server's default, 4), and the same digits archive as digits_b1 (batch size
1) and digits_b8 (batch size 8); the batched models wait up to --max-batch-delay
ms for a batch to fill, which a lone request pays.
Every explanation is integrated gradients with 32 Gauss-Legendre steps (layer IG on the embedding for
text), baseline zeros (mean for cancer). Clients use keep-alive connections from this machine, so
client time on a small machine is part of every figure.
"""
from __future__ import annotations

import argparse
import http.client
import json
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from explain_serve.examples import build_examples, load_example_model  # noqa: E402
from explain_serve.serving import server  # noqa: E402
from explain_serve.serving.archive import archive  # noqa: E402
from explain_serve.serving.server import read_token  # noqa: E402


def pct(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


class Load:
    """Keep-alive HTTP clients against one server."""

    def __init__(self, base: str, token: str):
        host, port = base.replace("http://", "").split(":")
        self.host, self.port, self.token = host, int(port), token
        self.local = threading.local()

    def conn(self) -> http.client.HTTPConnection:
        c = getattr(self.local, "conn", None)
        if c is None:
            c = self.local.conn = http.client.HTTPConnection(self.host, self.port, timeout=120)
        return c

    def post(self, path: str, body: bytes) -> float:
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {self.token}"}
        t0 = time.perf_counter()
        c = self.conn()
        c.request("POST", path, body=body, headers=headers)
        resp = c.getresponse()
        data = resp.read()
        ms = (time.perf_counter() - t0) * 1000
        if resp.status != 200:
            raise RuntimeError(f"{path}: {resp.status} {data[:200]!r}")
        return ms

    def run(self, path: str, bodies: List[bytes], clients: int) -> Dict[str, float]:
        for b in bodies[:5]:  # warm-up
            self.post(path, b)
        t0 = time.perf_counter()
        if clients == 1:
            lat = [self.post(path, b) for b in bodies]
        else:
            with ThreadPoolExecutor(clients) as pool:
                lat = list(pool.map(lambda b: self.post(path, b), bodies))
        wall = time.perf_counter() - t0
        return {"p50_ms": round(pct(lat, 50), 2), "p99_ms": round(pct(lat, 99), 2),
                "throughput_rps": round(len(bodies) / wall, 1)}


def in_process_ms(store: Path, name: str, xs: List, n: int) -> Dict[str, float]:
    """p50 of the core call alone and of the whole handler logic (ExplainService.handle), one item each."""
    import zipfile

    import explain_serve.attr as attr
    from explain_serve.serving.service import ExplainService

    model = load_example_model(name, store / "build" / name)
    if name == "digits":
        call = lambda x: attr.IntegratedGradients(model).attribute(x, baselines=0.0, target=0, n_steps=32)  # noqa: E731
        tensors = [torch.tensor([x]) for x in xs]
    elif name == "cancer":
        mean = torch.from_numpy(np.load(store / "build" / "cancer" / "reference.npy").mean(0, keepdims=True))
        call = lambda x: attr.IntegratedGradients(model).attribute(x, baselines=mean, target=0, n_steps=32)  # noqa: E731
        tensors = [torch.tensor([x]) for x in xs]
    else:
        vocab = json.loads((store / "build" / "sentiment" / "vocab.json").read_text())
        index = {w: i for i, w in enumerate(vocab)}
        from explain_serve.serving.tokenization import tokenize

        tensors = [torch.tensor([[index.get(w, 1) for w in tokenize(t)]]) for t in xs]
        lig = attr.LayerIntegratedGradients(model, model.embedding)
        call = lambda x: lig.attribute(x, baselines=torch.zeros_like(x), target=0, n_steps=32)  # noqa: E731
    core = []
    for i in range(n):
        t0 = time.perf_counter()
        call(tensors[i % len(tensors)])
        core.append((time.perf_counter() - t0) * 1000)
    with tempfile.TemporaryDirectory() as tmp:
        with zipfile.ZipFile(store / f"{name}.mar") as z:
            z.extractall(tmp)
        svc = ExplainService(tmp, "model.pt", name)
        rows = [{"body": {"inputs": x}} for x in xs]
        full = []
        for i in range(n):
            t0 = time.perf_counter()
            (status, _), = svc.handle([rows[i % len(rows)]], [True])
            full.append((time.perf_counter() - t0) * 1000)
            assert status == 200
        svc.close()
    out = {"core_p50_ms": round(pct(core[5:], 50), 2), "handler_logic_p50_ms": round(pct(full[5:], 50), 2)}
    if name == "digits":
        from captum.attr import IntegratedGradients as CaptumIG

        cap = []
        for i in range(n):
            t0 = time.perf_counter()
            CaptumIG(model).attribute(tensors[i % len(tensors)], target=0, n_steps=32, method="gausslegendre")
            cap.append((time.perf_counter() - t0) * 1000)
        out["captum_core_p50_ms"] = round(pct(cap[5:], 50), 2)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=200, help="requests per measurement")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--warmup", type=int, default=200, help="unmeasured requests per model and route first")
    p.add_argument("--batch-size", type=int, default=server.DEFAULT_BATCH_SIZE, help="for the batched models")
    p.add_argument("--max-batch-delay", type=int, default=server.DEFAULT_MAX_BATCH_DELAY, help="ms, for the batched models")
    p.add_argument("--models", nargs="*", default=["digits", "digits_b1", "digits_b8", "digits_captum", "digits_onnx", "cancer", "sentiment"])
    p.add_argument("--out", default=str(ROOT / "out" / "serve_load.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory(prefix="serve-load-") as tmp:
        store, workdir = Path(tmp) / "store", Path(tmp) / "server"
        build_examples(store)
        b = store / "build" / "digits"
        archive("digits_captum", b / "weights.pt", "image", store, config=b / "explain.yaml",
                reference_data=b / "reference.npy", handler=ROOT / "benchmarks" / "captum_ig_handler.py")
        if "digits_onnx" in args.models:
            archive("digits_onnx", b / "weights.pt", "image", store, config=b / "explain.yaml",
                    reference_data=b / "reference.npy", runtime="onnx")
        ref = {"digits": np.load(store / "build" / "digits" / "reference.npy"),
               "cancer": np.load(store / "build" / "cancer" / "reference.npy")}
        inputs = {"digits": [x.tolist() for x in ref["digits"][:64]], "cancer": [x.tolist() for x in ref["cancer"][:64]],
                  "sentiment": ["the movie was really great and fun", "this film felt dull and a bit boring",
                                "the plot was superb but a little weak and lovely", "the music was awful"]}
        results: Dict[str, Dict] = {"requests": args.requests, "clients": args.clients, "in_process": {}, "served": {}}
        for name in sorted({m.split("_")[0] for m in args.models}):
            results["in_process"][name] = in_process_ms(store, name, inputs[name], min(args.requests, 200))
        models = ["digits", "cancer", "sentiment", "digits_b1=digits.mar", "digits_b8=digits.mar", "digits_captum",
                  "digits_onnx"]
        models = [m for m in models if m.split("=")[0] in args.models]
        info = server.start(store, models, workdir, batch_size=args.batch_size, max_batch_delay=args.max_batch_delay,
                            per_model={"digits_b1": {"batchSize": 1, "maxBatchDelay": 1}, "digits_b8": {"batchSize": 8}})
        try:
            load = Load(info["endpoints"]["inference"], read_token(Path(info["token_file"]))["inference"])
            for model in args.models:  # warm the JVM's JIT and every worker first, so order does not bias rows
                data = inputs["digits" if model.startswith("digits") else model]
                warm = [json.dumps({"inputs": data[i % len(data)]}).encode() for i in range(args.warmup)]
                for route in ("predictions", "explanations"):
                    load.run(f"/{route}/{model}", warm, args.clients)
            for model in args.models:
                data = inputs["digits" if model.startswith("digits") else model]
                bodies = [json.dumps({"inputs": data[i % len(data)]}).encode() for i in range(args.requests)]
                for route in ("predictions", "explanations"):
                    for clients in (1, args.clients):
                        key = f"{model} /{route} {'sequential' if clients == 1 else f'{clients} clients'}"
                        results["served"][key] = load.run(f"/{route}/{model}", bodies, clients)
                        print(f"{key:48s} {results['served'][key]}", flush=True)
        finally:
            server.stop(workdir)
    s, c = results["served"], args.clients

    def ratio(a: str, b: str):
        ka, kb = f"{a} /explanations {c} clients", f"{b} /explanations {c} clients"
        return round(s[ka]["throughput_rps"] / s[kb]["throughput_rps"], 2) if ka in s and kb in s else None

    summary = {f"{m}_explain_p50_sequential_ms": s[f"{m} /explanations sequential"]["p50_ms"] for m in args.models}
    summary.update({f"{n}_in_process_core_p50_ms": v["core_p50_ms"] for n, v in results["in_process"].items()})
    summary["digits_explain_throughput_batched_vs_unbatched"] = ratio("digits", "digits_b1")
    summary["digits_b8_explain_throughput_vs_unbatched"] = ratio("digits_b8", "digits_b1")
    summary["digits_explain_throughput_vs_captum_per_request"] = ratio("digits", "digits_captum")
    summary["digits_onnx_explain_throughput_vs_eager"] = ratio("digits_onnx", "digits")
    results["summary"] = summary
    print(json.dumps({"in_process": results["in_process"], "summary": results["summary"]}, indent=2))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
