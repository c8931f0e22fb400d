"""explain-serve vs Captum vs the compute floor, side by side in one process.

For each method, on a small CNN (3x64x64) and a 20-feature MLP: median wall time of Captum, of
explain-serve and of the *compute floor* (the same forward/backward passes done as one batch, with
no attribution logic), interleaved in an order where each follows each of the others equally
often, so that all three see the same machine state; by default each timed call comes right after
an untimed call of itself (``--order warm``: a server's steady state), ``--order interleaved``
times it right after one of the other two instead (cold caches after Captum's call).

    python benchmarks/compare_captum.py [--repeats 15] [--only mlp|cnn] [--methods A,B] [--threads N]
                                        [--clock wall|cpu] [--order warm|interleaved]
                                        [--default-malloc]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from typing import Callable, Dict, Iterator, List, Optional

import torch
from torch import nn

warnings.filterwarnings("ignore")

import captum.attr as ca  # noqa: E402  (benchmark-only oracle)

import explain_serve.attr as ea  # noqa: E402
from allocator import pin_malloc_thresholds  # noqa: E402  (benchmarks/ is the script's directory)


def mlp_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 2)).eval()
    return model, torch.randn(8, 20), torch.zeros(1, 20)


def cnn_model():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(16 * 16 * 16, 10),
    ).eval()
    return model, torch.randn(2, 3, 64, 64), torch.zeros(1, 3, 64, 64)


def fwd_bwd(model, rows: torch.Tensor, target: int) -> None:
    x = rows.detach().requires_grad_(True)
    torch.autograd.grad(model(x)[:, target].sum(), x)


def fwd(model, rows: torch.Tensor) -> None:
    with torch.no_grad():
        model(rows)


def repeat_rows(x: torch.Tensor, k: int) -> torch.Tensor:
    return x.repeat(k, *([1] * (x.dim() - 1)))


def cases(kind: str, model, x, b):
    """name -> (constructor(lib), attribute kwargs, floor callable)"""
    t = 1
    n_features = x[0].numel()
    table = {
        "Saliency": (lambda lib: lib.Saliency(model), {}, lambda: fwd_bwd(model, x, t)),
        "InputXGradient": (lambda lib: lib.InputXGradient(model), {}, lambda: fwd_bwd(model, x, t)),
        "IntegratedGradients": (lambda lib: lib.IntegratedGradients(model), {"baselines": b}, lambda: fwd_bwd(model, repeat_rows(x, 50), t)),
        "DeepLift": (lambda lib: lib.DeepLift(model), {"baselines": b}, lambda: fwd_bwd(model, repeat_rows(x, 2), t)),
        # as a server runs it: hooks registered once, the baseline's forward kept between calls
        "DeepLift reusable": (lambda lib: lib.DeepLift(model).reusable() if lib is ea else lib.DeepLift(model),
                              {"baselines": b}, lambda: fwd_bwd(model, repeat_rows(x, 2), t)),
        "GradientShap": (lambda lib: lib.GradientShap(model), {"baselines": repeat_rows(b, 4)}, lambda: fwd_bwd(model, repeat_rows(x, 5), t)),
        "GuidedBackprop": (lambda lib: lib.GuidedBackprop(model), {}, lambda: fwd_bwd(model, x, t)),
        "NoiseTunnel": (lambda lib: lib.NoiseTunnel(lib.Saliency(model)), {"nt_samples": 10, "stdevs": 0.1}, lambda: fwd_bwd(model, repeat_rows(x, 10), t)),
    }
    if kind == "cnn":
        window, stride = (3, 8, 8), (3, 8, 8)
        n_windows = (64 // 8) ** 2
        table["Occlusion"] = (
            lambda lib: lib.Occlusion(model),
            {"sliding_window_shapes": window, "strides": stride},
            lambda: fwd(model, repeat_rows(x, n_windows + 1)),
        )
        table["LayerGradCam"] = (lambda lib: lib.LayerGradCam(model, model[3]), {}, lambda: fwd_bwd(model, x, t))
    else:
        table["FeatureAblation"] = (lambda lib: lib.FeatureAblation(model), {}, lambda: fwd(model, repeat_rows(x, n_features + 1)))
        table["ShapleyValueSampling"] = (
            lambda lib: lib.ShapleyValueSampling(model), {},
            lambda: fwd(model, repeat_rows(x, 25 * n_features + 1)),
        )
        table["KernelShap"] = (lambda lib: lib.KernelShap(model), {}, lambda: fwd(model, repeat_rows(x[:1], 25 + 1)) or None)
        table["Lime"] = (lambda lib: lib.Lime(model), {}, lambda: fwd(model, repeat_rows(x[:1], 25 + 1)))  # n_samples=25 (Lime.attribute)
        table["FeaturePermutation"] = (lambda lib: lib.FeaturePermutation(model), {}, lambda: fwd(model, repeat_rows(x, n_features + 1)))
    return table


CLOCK = time.perf_counter  # --clock cpu: time.process_time (a shared machine's preemption excluded)


def median_ms(fn: Callable[[], object]) -> float:
    start = CLOCK()
    fn()
    return (CLOCK() - start) * 1e3


def bench(kind: str, repeats: int, methods: Optional[List[str]] = None, order: str = "warm") -> Iterator[Dict[str, object]]:
    """The rows of one model, each as soon as it is measured."""
    model, x, b = cnn_model() if kind == "cnn" else mlp_model()
    for name, (make, kwargs, floor) in cases(kind, model, x, b).items():
        if methods and name not in methods:
            continue
        try:
            ours, theirs = make(ea), make(ca)
        except (AttributeError, ImportError) as exc:
            yield {"model": kind, "method": name, "error": str(exc)}
            continue
        # KernelShap/Lime explain one example per call in both libraries (Captum's limitation for
        # their default feature masks); others take the batch.
        inp = x[:1] if name in ("KernelShap", "Lime") else x
        call_ours = lambda: ours.attribute(inp, target=1, **kwargs)  # noqa: E731
        call_theirs = lambda: theirs.attribute(inp, target=1, **kwargs)  # noqa: E731
        for fn in (call_ours, call_theirs, floor):  # warm-up
            fn()
        t_ours, t_theirs, t_floor = [], [], []
        theirs_run, ours_run, floor_run = (call_theirs, t_theirs), (call_ours, t_ours), (floor, t_floor)
        # the three in the cycle Captum, ours, floor, Captum, floor, ours: each runs right after
        # each of the other two equally often, so the machine's drift is shared alike
        cycle = [theirs_run, ours_run, floor_run, theirs_run, floor_run, ours_run]
        for i in range(repeats):
            for fn, times in cycle[3 * (i % 2):3 * (i % 2) + 3]:
                if order == "warm":
                    fn()  # steady state, as a server answering a stream of requests: timed after a call of itself
                times.append(median_ms(fn))
        o, c, f = (statistics.median(v) for v in (t_ours, t_theirs, t_floor))
        yield {"model": kind, "method": name, "captum_ms": c, "ours_ms": o, "floor_ms": f,
                     "speedup": c / o, "ours_vs_floor": o / f, "captum_vs_floor": c / f}


def main(argv: Optional[List[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--only", choices=["mlp", "cnn"])
    p.add_argument("--methods", help="comma-separated method names (default: all)")
    p.add_argument("--order", choices=["warm", "interleaved"], default="warm",
                   help="warm: each timed call right after an untimed call of itself (a server's steady state); "
                        "interleaved: right after one of the other two (after Captum's, cold caches: a call "
                        "pays ~10-40 us per distinct operation, so the floor's few operations gain most)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--default-malloc", action="store_true",
                   help="keep glibc's moving malloc thresholds (see allocator.py; rows then vary with page faults)")
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="cpu: process CPU time, steadier on a shared machine (use with --threads 1)")
    a = p.parse_args(argv)
    if a.methods:
        known = set()
        for kind in ("mlp", "cnn"):
            model, x, b = cnn_model() if kind == "cnn" else mlp_model()
            known |= set(cases(kind, model, x, b))
        unknown = sorted(set(a.methods.split(",")) - known)
        if unknown:
            p.error(f"unknown method(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    global CLOCK
    CLOCK = time.process_time if a.clock == "cpu" else time.perf_counter
    if a.threads:
        torch.set_num_threads(a.threads)
    pinned = not a.default_malloc and pin_malloc_thresholds()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, repeats {a.repeats} (medians, ms, {a.clock} clock, "
          f"{a.order} order, {'fixed' if pinned else 'default'} malloc thresholds)")
    header = (f"{'model':5} {'method':22} {'captum':>9} {'ours':>9} {'floor':>9} {'captum/ours':>12} {'ours/floor':>11} "
              f"{'captum/floor':>13} {'ours-floor':>11}")
    print(header)
    print("-" * len(header))
    for kind in ([a.only] if a.only else ["mlp", "cnn"]):
        for r in bench(kind, a.repeats, a.methods.split(",") if a.methods else None, a.order):
            if "error" in r:
                print(f"{r['model']:5} {r['method']:22} n/a: {r['error']}")
                continue
            print(f"{r['model']:5} {r['method']:22} {r['captum_ms']:9.2f} {r['ours_ms']:9.2f} {r['floor_ms']:9.2f} "
                  f"{r['speedup']:11.1f}x {r['ours_vs_floor']:10.2f}x {r['captum_vs_floor']:12.1f}x "
                  f"{r['ours_ms'] - r['floor_ms']:11.2f}")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
