"""Shapley estimates per second: explain-serve vs Captum vs shap, side by side in one run.

Tabular MLPs (10 and 30 features, one output), 8 rows, a zero baseline. For each estimator and
budget: the median wall time of one call over the 8 rows and the error
``max |estimate - reference| / max |reference|`` averaged over ``--seeds`` seeded runs (with its
standard error: the seed-to-seed spread of the mean). The
reference is the exact Shapley value on the 10-feature model (all 2^10 coalitions) and a long-run
estimate on the 30-feature one (antithetic permutation sampling, ``--ref-perms`` orderings). The
gradient-based rows (expected gradients, DeepLift with a background) estimate other quantities:
times only. Calls of the libraries are interleaved so that they see the same machine state.

    pip install -e ".[bench]"   # shap, benchmark-only
    python benchmarks/compare_shap.py [--seeds 20] [--repeats 3] [--threads 1] [--only 10|30]
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time
import warnings
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import nn

warnings.filterwarnings("ignore")

import captum.attr as ca  # noqa: E402  (benchmark-only)
import shap  # noqa: E402  (benchmark-only)

import explain_serve.attr as ea  # noqa: E402


def tabular_model(n_features: int) -> Tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(n_features)
    model = nn.Sequential(nn.Linear(n_features, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                          nn.Linear(64, 1)).eval()
    return model, torch.randn(8, n_features), torch.zeros(1, n_features)


def as_numpy_fn(model: nn.Module) -> Callable[[np.ndarray], np.ndarray]:
    def f(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.as_tensor(np.asarray(x), dtype=torch.float32)).numpy()[:, 0]
    return f


def reference(model, x, b, ref_perms: int) -> torch.Tensor:
    """Exact Shapley values (m <= 12) or a long antithetic-permutation run, in float64."""
    model64, x, b = copy.deepcopy(model).double(), x.double(), b.double()
    if x.shape[1] <= 12:
        return ea.ShapleyValues(model64).attribute(x, baselines=b, target=0)
    torch.manual_seed(12345)
    return ea.ShapleyValueSampling(model64).attribute(x, baselines=b, target=0, n_samples=ref_perms)


def estimators(model, x, b, m: int) -> Dict[str, Tuple[str, Callable[[], object], bool]]:
    """row name -> (budget text, call returning the (8, m) estimates, scored against the reference)."""
    f = as_numpy_fn(model)
    xn, bn = x.numpy(), b.numpy()
    rows: Dict[str, Tuple[str, Callable[[], object], bool]] = {}
    budgets = (256, 1024) if m <= 10 else (256, 1024, 4096)
    for n in budgets:
        ours, theirs, ke = ea.KernelShap(model), ca.KernelShap(model), shap.KernelExplainer(f, bn)
        rows[f"explain-serve KernelShap|{n}"] = (
            f"{n}", lambda o=ours, n=n: o.attribute(x, baselines=b, target=0, n_samples=n), True)
        if n * m <= 10240:  # Captum's takes a minute and more per call beyond
            # Captum's KernelShap explains one example per call with its default feature mask
            rows[f"Captum KernelShap|{n}"] = (f"{n}", lambda t=theirs, n=n: torch.cat(
                [t.attribute(x[i:i + 1], baselines=b, target=0, n_samples=n) for i in range(x.shape[0])]), True)
        rows[f"shap KernelExplainer|{n}"] = (
            f"{n}", lambda ke=ke, n=n: ke.shap_values(xn, nsamples=n, l1_reg=False, silent=True), True)
    svs, csvs = ea.ShapleyValueSampling(model), ca.ShapleyValueSampling(model)
    for perms in (500 // (m - 1), 1000 // (m - 1)):  # about 500 and 1000 model evaluations per row
        # explain-serve evaluates m - 1 coalitions per ordering, Captum m
        budget = f"{perms} perms ({perms * (m - 1)} / {perms * m} evals)"
        rows[f"explain-serve ShapleyValueSampling|{perms}"] = (
            budget, lambda p=perms: svs.attribute(x, baselines=b, target=0, n_samples=p), True)
        rows[f"Captum ShapleyValueSampling|{perms}"] = (
            budget, lambda p=perms: csvs.attribute(x, baselines=b, target=0, n_samples=p), True)
    pe = shap.PermutationExplainer(f, shap.maskers.Independent(bn, max_samples=1))
    rows["shap PermutationExplainer"] = ("1000 evals", lambda: pe(xn, max_evals=1000, silent=True).values, True)
    # time only: the gradient estimators of shap and their counterparts here
    bg50 = torch.randn(50, m) * 0.1
    ge, gs = shap.GradientExplainer(model, bg50), ea.GradientShap(model)
    rows["shap GradientExplainer"] = ("50 samples", lambda: ge.shap_values(x, nsamples=50), False)
    rows["explain-serve GradientShap"] = (
        "50 samples", lambda: gs.attribute(x, baselines=bg50, target=0, n_samples=50), False)
    bg16 = bg50[:16]
    de, dls = shap.DeepExplainer(model, bg16), ea.DeepLiftShap(model)
    rows["shap DeepExplainer"] = ("16 background", lambda: de.shap_values(x, check_additivity=False), False)
    rows["explain-serve DeepLiftShap"] = ("16 background", lambda: dls.attribute(x, baselines=bg16, target=0), False)
    return rows


def to_tensor(a) -> torch.Tensor:
    a = a[0] if isinstance(a, list) else a
    return torch.as_tensor(np.asarray(a), dtype=torch.float64).reshape(8, -1)


def _mean_se(errors: List[float]) -> str:
    if not errors:
        return "-"
    if len(errors) < 2:
        return f"{errors[0]:.3g}"
    return f"{statistics.mean(errors):.3g} ± {statistics.stdev(errors) / len(errors) ** 0.5:.2g}"


def run(m: int, seeds: int, repeats: int, ref_perms: int) -> List[Tuple[str, str, float, str]]:
    model, x, b = tabular_model(m)
    ref = reference(model, x, b, ref_perms).double()
    scale = ref.abs().max().item()
    table = estimators(model, x, b, m)
    times: Dict[str, List[float]] = {k: [] for k in table}
    errors: Dict[str, List[float]] = {k: [] for k in table}
    for _, fn, _ in table.values():  # warm-up
        fn()
    for r in range(max(repeats, seeds)):
        for k, (_, fn, scored) in table.items():  # interleaved: all see the same machine state
            torch.manual_seed(r)
            np.random.seed(r)
            start = time.perf_counter()
            est = fn()
            times[k].append((time.perf_counter() - start) * 1e3)
            if scored and r < seeds:
                errors[k].append((to_tensor(est) - ref).abs().max().item() / scale)
    return [(k.split("|")[0], budget, statistics.median(times[k]), _mean_se(errors[k]))
            for k, (budget, _, _) in table.items()]


def main(argv: Optional[List[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=20, help="seeded runs averaged for the error")
    p.add_argument("--repeats", type=int, default=3, help="timed calls per estimator (median)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--ref-perms", type=int, default=20000, help="orderings of the 30-feature reference")
    p.add_argument("--only", type=int, choices=[10, 30])
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    print(f"torch {torch.__version__}, captum {__import__('captum').__version__}, shap {shap.__version__}, "
          f"threads {torch.get_num_threads()}; time: median ms per call (8 rows); "
          f"error: mean ± standard error over {a.seeds} seeds of max|est - ref| / max|ref|")
    for m in ([a.only] if a.only else [10, 30]):
        ref = "exact Shapley" if m <= 12 else f"{a.ref_perms} orthogonal antithetic orderings"
        print(f"\n{m} features (reference: {ref})\n")
        print("| estimator | budget | ms | error |\n| --- | --- | --- | --- |")
        for name, budget, ms, err in run(m, a.seeds, a.repeats, a.ref_perms):
            print(f"| {name} | {budget} | {ms:.3g} | {err} |", flush=True)


if __name__ == "__main__":
    main()
