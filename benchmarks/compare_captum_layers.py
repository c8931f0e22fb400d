"""Layer, neuron and LRP methods: explain-serve vs Captum, and the reusable hook session's gain.

Part 1: median wall time per call of Captum and explain-serve, interleaved in one process, for
every layer/neuron method and LRP on a small CNN (3x32x32), a 20-feature MLP and an embedding text
model (LayerIntegratedGradients on the embedding, the serving path for text).
Part 2: the same explain-serve method called one-off (hooks registered and removed per call) vs
through a reusable hook session (``method.reusable()``: hooks registered once, activated per
call), on a small model where per-request overhead matters.
Part 3: what one call leaves on the model's modules (Captum vs explain-serve).

    python benchmarks/compare_captum_layers.py [--repeats 21] [--threads N] [--only part1|part2]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from typing import Callable, List, Optional

import numpy as np
import torch
from torch import nn

warnings.filterwarnings("ignore")

import captum.attr as ca  # noqa: E402  (benchmark-only oracle)

import explain_serve.attr as ea  # noqa: E402


def mlp_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 2)).eval()
    return model, torch.randn(8, 20), model[2]


class CNN(nn.Module):
    """conv-relu-pool x2, linear; flatten is functional (Captum's LRP rejects nn.Flatten)."""

    def __init__(self):
        super().__init__()
        self.conv1, self.relu1, self.pool1 = nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)
        self.conv2, self.relu2, self.pool2 = nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)
        self.fc = nn.Linear(16 * 8 * 8, 10)

    def forward(self, x):
        x = self.pool1(self.relu1(self.conv1(x)))
        return self.fc(self.pool2(self.relu2(self.conv2(x))).flatten(1))


def cnn_model():
    torch.manual_seed(0)
    model = CNN().eval()
    return model, torch.randn(4, 3, 32, 32), model.conv2


class TextModel(nn.Module):
    def __init__(self, vocab=5000, dim=64, n_out=2):
        super().__init__()
        self.embedding = nn.Embedding(vocab, dim)
        self.fc1 = nn.Linear(dim, 64)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(64, n_out)

    def forward(self, ids):
        return self.fc2(self.relu(self.fc1(self.embedding(ids).mean(1))))


def text_model():
    torch.manual_seed(0)
    model = TextModel().eval()
    return model, torch.randint(1, 5000, (4, 32)), model.embedding


def layer_cases(kind, model, x, layer):
    """name -> (constructor(lib), attribute kwargs)"""
    dist = torch.randn((5, *x.shape[1:]))
    sel = 3 if kind == "mlp" else (2, 3, 3)
    patches = (torch.arange(64).view(8, 8).repeat_interleave(4, 0).repeat_interleave(4, 1)).view(1, 1, 32, 32)
    t = {"target": 1}
    return {
        "LayerActivation": (lambda lib: lib.LayerActivation(model, layer), {}),
        "LayerGradientXActivation": (lambda lib: lib.LayerGradientXActivation(model, layer), t),
        "LayerIntegratedGradients": (lambda lib: lib.LayerIntegratedGradients(model, layer), t),
        "LayerConductance": (lambda lib: lib.LayerConductance(model, layer), t),
        "InternalInfluence": (lambda lib: lib.InternalInfluence(model, layer), t),
        "LayerDeepLift": (lambda lib: lib.LayerDeepLift(model, layer), t),
        "LayerDeepLiftShap": (lambda lib: lib.LayerDeepLiftShap(model, layer), dict(t, baselines=dist)),
        "LayerGradientShap": (lambda lib: lib.LayerGradientShap(model, layer), dict(t, baselines=dist)),
        # CNN: one group per channel (16 ablations), as one would ablate feature maps
        "LayerFeatureAblation": (
            lambda lib: lib.LayerFeatureAblation(model, layer),
            dict(t, layer_mask=torch.arange(16).view(1, 16, 1, 1)) if kind == "cnn" else t,
        ),
        "LayerLRP": (lambda lib: lib.LayerLRP(model, layer), t),
        "LRP": (lambda lib: lib.LRP(model), t),
        "NeuronGradient": (lambda lib: lib.NeuronGradient(model, layer), {"neuron_selector": sel}),
        "NeuronIntegratedGradients": (lambda lib: lib.NeuronIntegratedGradients(model, layer), {"neuron_selector": sel}),
        "NeuronConductance": (lambda lib: lib.NeuronConductance(model, layer), dict(t, neuron_selector=sel)),
        "NeuronDeepLift": (lambda lib: lib.NeuronDeepLift(model, layer), {"neuron_selector": sel}),
        "NeuronDeepLiftShap": (lambda lib: lib.NeuronDeepLiftShap(model, layer), {"neuron_selector": sel, "baselines": dist}),
        "NeuronGradientShap": (lambda lib: lib.NeuronGradientShap(model, layer), {"neuron_selector": sel, "baselines": dist}),
        # CNN: 4x4 patches shared by the channels (64 groups) instead of 3072 single pixels
        "NeuronFeatureAblation": (
            lambda lib: lib.NeuronFeatureAblation(model, layer),
            {"neuron_selector": sel, **({"feature_mask": patches} if kind == "cnn" else {})},
        ),
        "NeuronGuidedBackprop": (lambda lib: lib.NeuronGuidedBackprop(model, layer), {"neuron_selector": sel}),
        "NeuronDeconvolution": (lambda lib: lib.NeuronDeconvolution(model, layer), {"neuron_selector": sel}),
    }


def elapsed_ms(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


def interleaved_medians(fns, repeats: int):
    for fn in fns:  # warm-up
        fn()
    times = [[] for _ in fns]
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            np.random.seed(0)
            times[i].append(elapsed_ms(fn))
    return [statistics.median(t) for t in times]


def part1(repeats: int) -> None:
    header = f"{'model':5} {'method':26} {'captum ms':>10} {'ours ms':>10} {'captum/ours':>12}"
    print("\nPart 1: explain-serve vs Captum (one-off calls, medians)")
    print(header)
    print("-" * len(header))
    suites = [("mlp", *mlp_model()), ("cnn", *cnn_model())]
    for kind, model, x, layer in suites:
        for name, (make, kwargs) in layer_cases(kind, model, x, layer).items():
            ours, theirs = make(ea), make(ca)
            c, o = interleaved_medians([lambda: theirs.attribute(x, **kwargs), lambda: ours.attribute(x, **kwargs)], repeats)
            print(f"{kind:5} {name:26} {c:10.2f} {o:10.2f} {c / o:11.1f}x")
            sys.stdout.flush()
    model, ids, emb = text_model()
    ours, theirs = ea.LayerIntegratedGradients(model, emb), ca.LayerIntegratedGradients(model, emb)
    c, o = interleaved_medians([lambda: theirs.attribute(ids, target=1), lambda: ours.attribute(ids, target=1)], repeats)
    print(f"{'text':5} {'LayerIntegratedGradients':26} {c:10.2f} {o:10.2f} {c / o:11.1f}x")


def part2(repeats: int) -> None:
    header = f"{'model':5} {'method':26} {'captum ms':>10} {'one-off ms':>11} {'reusable ms':>12} {'one-off/reusable':>17}"
    print("\nPart 2: reusable hook session (hooks registered once per model) vs one-off calls, medians")
    print(header)
    print("-" * len(header))
    model, x, layer = mlp_model()
    x = x[:1]
    model_t, ids, emb = text_model()
    ids = ids[:1]
    rows = [
        ("text", "LayerIntegratedGradients", lambda lib: lib.LayerIntegratedGradients(model_t, emb), ids, {"target": 1, "n_steps": 8}),
        ("mlp", "LayerGradientXActivation", lambda lib: lib.LayerGradientXActivation(model, layer), x, {"target": 1}),
        ("mlp", "LayerActivation", lambda lib: lib.LayerActivation(model, layer), x, {}),
        ("mlp", "LayerDeepLift", lambda lib: lib.LayerDeepLift(model, layer), x, {"target": 1}),
        ("mlp", "NeuronDeepLift", lambda lib: lib.NeuronDeepLift(model, layer), x, {"neuron_selector": 3}),
        ("mlp", "NeuronGuidedBackprop", lambda lib: lib.NeuronGuidedBackprop(model, layer), x, {"neuron_selector": 3}),
        ("mlp", "LRP", lambda lib: lib.LRP(model), x, {"target": 1}),
        ("mlp", "LayerLRP", lambda lib: lib.LayerLRP(model, layer), x, {"target": 1}),
    ]
    for kind, name, make, inp, kwargs in rows:
        theirs, one_off, reusable = make(ca), make(ea), make(ea).reusable()
        try:
            c, o, r = interleaved_medians(
                [lambda: theirs.attribute(inp, **kwargs), lambda: one_off.attribute(inp, **kwargs), lambda: reusable.attribute(inp, **kwargs)],
                repeats * 5,
            )
        finally:
            reusable.close()
        print(f"{kind:5} {name:26} {c:10.3f} {o:11.3f} {r:12.3f} {o / r:16.2f}x")
        sys.stdout.flush()


def _model_state(model):
    """Hooks and instance attributes of every module (what a call could leave behind)."""
    state = {}
    for name, m in model.named_modules():
        hooks = sum(len(getattr(m, d)) for d in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks"))
        state[name] = (hooks, frozenset(k for k in vars(m) if not k.startswith("_")))
    return state


def part3() -> None:
    print("\nPart 3: what one call leaves on the model (module attributes added; hooks left)")
    header = f"{'method':22} {'captum':>40} {'ours':>8}"
    print(header)
    print("-" * len(header))
    model, x, layer = mlp_model()
    rows = [
        ("LRP", lambda lib: lib.LRP(model), {"target": 1}),
        ("LayerLRP", lambda lib: lib.LayerLRP(model, layer), {"target": 1}),
        ("NeuronDeepLift", lambda lib: lib.NeuronDeepLift(model, layer), {"neuron_selector": 3}),
        ("LayerDeepLift", lambda lib: lib.LayerDeepLift(model, layer), {"target": 1}),
    ]
    for name, make, kwargs in rows:
        left = []
        for lib in (ca, ea):
            fresh, x_, layer_ = mlp_model()
            model.load_state_dict(fresh.state_dict())
            for m in model.modules():  # start clean (Captum leaves attributes behind)
                for k in [k for k in vars(m) if k in ("activations", "input", "output", "rule", "activation")]:
                    delattr(m, k)
            before = _model_state(model)
            make(lib).attribute(x, **kwargs)
            after = _model_state(model)
            added = sorted({f"{k}" for n in after for k in after[n][1] - before[n][1]})
            hooks = sum(after[n][0] - before[n][0] for n in after)
            left.append((", ".join(added) or "nothing") + (f"; {hooks} hooks" if hooks else ""))
        print(f"{name:22} {left[0]:>40} {left[1]:>8}")


def main(argv: Optional[List[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=21)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--only", choices=["part1", "part2", "part3"])
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, repeats {a.repeats}")
    if a.only in (None, "part1"):
        part1(a.repeats)
    if a.only in (None, "part2"):
        part2(a.repeats)
    if a.only in (None, "part3"):
        part3()


if __name__ == "__main__":
    main()
