"""Prediction and explanation latency: torch vs ONNX Runtime, eager core vs compiled graph.

For each bundled example model (digits CNN, cancer MLP, sentiment text model) this measures, in one
run and on the same inputs:

- prediction latency of the torch model and of its ONNX export on ONNX Runtime;
- explanation latency of the eager core (``explain_serve.attr``) and of the compiled explainer
  (``explain_serve.export.compile_explainer``), for the example's default method with its default
  ``n_steps`` (IntegratedGradients for digits and cancer, LayerIntegratedGradients for sentiment),
  and for Saliency where it applies.

Latencies are medians over repeated calls after warm-up, for one request of ``--batch`` items.
Torch and ONNX Runtime get the same number of intra-op threads (``--threads``, default 1 as in a
TorchServe worker of this project).
The models are trained (seconds) so inputs and attributions are realistic; ``--untrained`` skips it.

    python benchmarks/compiled.py [--batch 1] [--threads 1] [--repeats 200] [--json out.json]
"""
from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from explain_serve import examples  # noqa: E402
from explain_serve.export import OnnxModel, compile_explainer  # noqa: E402
from explain_serve.export.model import export_model  # noqa: E402


def median_ms(fn: Callable[[], object], repeats: int, warmup: int = 5, budget_s: float = 5.0) -> float:
    for _ in range(warmup):
        fn()
    times: List[float] = []
    deadline = time.perf_counter() + budget_s
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
        if time.perf_counter() > deadline and len(times) >= 10:
            break
    return 1000.0 * statistics.median(times)


def example_data(name: str, trained: Dict, batch: int) -> torch.Tensor:
    if name == "sentiment":
        texts, _ = examples.sentiment_corpus(n=max(batch, 8), seed=1)
        return examples.encode_texts(texts[:batch], trained["vocab"])
    rows = np.asarray(trained["reference"])[:batch]
    return torch.from_numpy(rows)


def eager_method(name: str, model: torch.nn.Module, method: str, layer: Optional[str]):
    import explain_serve.attr as attr

    try:
        cls = getattr(attr, method)
    except (AttributeError, ImportError):
        return None
    return cls(model, model.get_submodule(layer)) if layer else cls(model)


@functools.lru_cache(maxsize=None)
def _trained(name: str) -> Dict:
    return examples.train(name)


def bench_example(name: str, batch: int, repeats: int, untrained: bool, out_dir: Path, threads: int) -> List[Dict]:
    torch.manual_seed(0)
    if untrained:
        cls = {"digits": examples.DigitsCNN, "cancer": examples.CancerMLP, "sentiment": examples.SentimentClassifier}[name]
        trained = {"model": cls().eval()}
        if name == "sentiment":
            texts, _ = examples.sentiment_corpus(n=64)
            trained["vocab"] = examples.build_vocab(texts)
            trained["model"] = examples.SentimentClassifier(vocab_size=len(trained["vocab"])).eval()
        elif name == "digits":
            trained["reference"] = np.random.default_rng(0).random((64, 1, 8, 8), dtype=np.float32)
        else:
            trained["reference"] = np.random.default_rng(0).normal(size=(64, 30)).astype(np.float32)
    else:
        trained = _trained(name)
    model = trained["model"].eval()
    config = examples.explain_config(name, {**trained, "labels": ["0", "1"], "features": ["f"] * 30})
    explain = config["explain"]
    method_key = explain["default_method"]
    n_steps = explain["default_params"][method_key]["n_steps"]
    layer = explain.get("layer") if method_key.startswith("layer_") else None
    x = example_data(name, trained, batch)
    with torch.no_grad():
        target = model(x).argmax(1)
    baseline = torch.zeros_like(x)

    rows: List[Dict] = []
    report = export_model(model, x, out_dir / f"{name}.onnx", reference_inputs=example_data(name, trained, 64))
    ort_model = OnnxModel(out_dir / f"{name}.onnx", threads=threads)
    with torch.inference_mode():
        torch_ms = median_ms(lambda: model(x), repeats)
    ort_ms = median_ms(lambda: ort_model(x), repeats)
    rows.append({"example": name, "what": "predict", "method": "-", "torch_or_eager_ms": torch_ms,
                 "onnx_ms": ort_ms, "speedup": torch_ms / ort_ms,
                 "max_abs_error": report.max_abs_error, "argmax_agreement": report.argmax_agreement})

    methods = [("LayerIntegratedGradients" if layer else "IntegratedGradients", layer)]
    if not layer:
        methods.append(("Saliency", None))
    for method, layer_name in methods:
        path_method = "IntegratedGradients" in method
        kwargs = {"n_steps": n_steps} if path_method else {}
        compiled = compile_explainer(model, method, x, layer=layer_name, threads=threads, **kwargs)
        if path_method:
            run_compiled = lambda: compiled.attribute(x, baseline, target, return_convergence_delta=True)  # noqa: E731
        else:
            run_compiled = lambda: compiled.attribute(x, target=target)  # noqa: E731
        compiled_ms = median_ms(run_compiled, repeats)
        eager = eager_method(name, model, method, layer_name)
        eager_ms = err = None
        if eager is not None:
            if path_method:
                run_eager = lambda: eager.attribute(  # noqa: E731
                    x, baselines=baseline, target=target, n_steps=n_steps, return_convergence_delta=True)
            else:
                run_eager = lambda: eager.attribute(x, target=target)  # noqa: E731
            eager_ms = median_ms(run_eager, repeats)
            expected = run_eager()
            got = run_compiled()
            e = (expected[0] if path_method else expected).detach()
            g = got[0] if path_method else got
            err = float((e - g).abs().max() / e.abs().max().clamp(min=1e-12))
        rows.append({"example": name, "what": "explain", "method": method + (f"(n_steps={n_steps})" if path_method else ""),
                     "torch_or_eager_ms": eager_ms, "onnx_ms": compiled_ms,
                     "speedup": (eager_ms / compiled_ms) if eager_ms else None, "relative_error": err})
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[1], help="items per request (default 1; several allowed)")
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads for torch and ONNX Runtime")
    parser.add_argument("--examples", nargs="*", default=list(examples.EXAMPLES))
    parser.add_argument("--untrained", action="store_true", help="skip training (latency does not depend on it)")
    parser.add_argument("--json", help="also write the rows as JSON here")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    rows: List[Dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.examples:
            for batch in args.batch:
                rows += [{**r, "batch": batch}
                         for r in bench_example(name, batch, args.repeats, args.untrained, Path(tmp), args.threads)]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads (torch and ONNX Runtime); medians in ms")
    header = f"{'example':<10} {'batch':>5} {'what':<8} {'method':<36} {'torch/eager':>11} {'onnx':>9} {'speedup':>8}  check"
    print(header)
    print("-" * len(header))
    for r in rows:
        eager = f"{r['torch_or_eager_ms']:.3f}" if r["torch_or_eager_ms"] is not None else "n/a"
        speed = f"{r['speedup']:.1f}x" if r["speedup"] else "n/a"
        if r["what"] == "predict":
            check = f"max abs err {r['max_abs_error']:.1e}, argmax agree {100 * (r['argmax_agreement'] or 0):.0f}%"
        else:
            check = f"rel err {r['relative_error']:.1e}" if r["relative_error"] is not None else "eager core n/a"
        print(f"{r['example']:<10} {r['batch']:>5} {r['what']:<8} {r['method']:<36} {eager:>11} {r['onnx_ms']:>9.3f} {speed:>8}  {check}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
