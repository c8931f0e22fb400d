"""Gradient methods: hand-derived values, axioms, agreement with Captum, batching and lifecycle.

One table of cases (CASES) drives the Captum agreement, batch == one-by-one, chunked == unchunked,
float32 and hook-lifecycle checks.
"""
from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

import explain_serve.attr as ea
from tests.models import hook_state, make

captum_attr = pytest.importorskip("captum.attr")
warnings.filterwarnings("ignore", category=UserWarning)

TARGETS = {"mlp": 1, "cnn": [0, 2, 1], "two_input": torch.tensor([0, 1, 2, 0])}


def _bl(inputs, scale=0.1):
    g = torch.Generator().manual_seed(7)
    return tuple((torch.randn(x.shape, generator=g, dtype=torch.float64) * scale).to(x.dtype) for x in inputs)


def _dist(inputs, k=5):
    g = torch.Generator().manual_seed(8)
    return tuple(torch.randn((k, *x.shape[1:]), generator=g, dtype=torch.float64).to(x.dtype) for x in inputs)


# (case id, class name, models, constructor extras, attribute kwargs builder(inputs), chunk kwargs)
CASES = [
    ("saliency", "Saliency", ("mlp", "cnn", "two_input"), {}, lambda x: {}, None),
    ("saliency_signed", "Saliency", ("mlp",), {}, lambda x: {"abs": False}, None),
    ("input_x_gradient", "InputXGradient", ("mlp", "cnn", "two_input"), {}, lambda x: {}, None),
    ("ig_gl", "IntegratedGradients", ("mlp", "cnn", "two_input"), {}, lambda x: {"baselines": _bl(x), "n_steps": 16}, {"internal_batch_size": 5}),
    ("ig_left", "IntegratedGradients", ("mlp",), {}, lambda x: {"method": "riemann_left", "n_steps": 9}, {"internal_batch_size": 4}),
    ("ig_right", "IntegratedGradients", ("mlp",), {}, lambda x: {"method": "riemann_right", "n_steps": 9}, None),
    ("ig_middle", "IntegratedGradients", ("cnn",), {}, lambda x: {"method": "riemann_middle", "n_steps": 7}, None),
    ("ig_trapezoid", "IntegratedGradients", ("mlp",), {}, lambda x: {"method": "riemann_trapezoid", "n_steps": 9}, None),
    ("ig_no_multiply", "IntegratedGradients", ("mlp",), {"multiply_by_inputs": False}, lambda x: {"baselines": 0.5}, None),
    ("deep_lift", "DeepLift", ("mlp", "cnn", "two_input"), {}, lambda x: {"baselines": _bl(x)}, None),
    ("deep_lift_no_multiply", "DeepLift", ("cnn",), {"multiply_by_inputs": False}, lambda x: {"baselines": _bl(x)}, None),
    ("deep_lift_shap", "DeepLiftShap", ("mlp", "cnn", "two_input"), {}, lambda x: {"baselines": _dist(x)}, None),
    ("guided_backprop", "GuidedBackprop", ("mlp", "cnn", "two_input"), {}, lambda x: {}, None),
    ("deconvolution", "Deconvolution", ("mlp", "cnn", "two_input"), {}, lambda x: {}, None),
    ("layer_grad_cam", "LayerGradCam", ("cnn",), {"layer": "conv2"}, lambda x: {}, None),
    ("layer_grad_cam_input", "LayerGradCam", ("cnn",), {"layer": "conv2"}, lambda x: {"attribute_to_layer_input": True, "relu_attributions": True}, None),
    ("guided_grad_cam", "GuidedGradCam", ("cnn",), {"layer": "conv2"}, lambda x: {}, None),
    ("noise_tunnel_ig", "NoiseTunnel", ("mlp", "cnn"), {"inner": "IntegratedGradients"},
     lambda x: {"nt_type": "smoothgrad", "nt_samples": 3, "stdevs": 0.0, "n_steps": 8}, {"nt_samples_batch_size": 2}),
    ("noise_tunnel_vargrad", "NoiseTunnel", ("mlp",), {"inner": "Saliency"},
     lambda x: {"nt_type": "vargrad", "nt_samples": 4, "stdevs": 0.0}, {"nt_samples_batch_size": 1}),
]
ROWS = [pytest.param(case, model, id=f"{case[0]}-{model}") for case in CASES for model in case[2]]


def build(module, case, model):
    _, cls, _, extra, _, _ = case
    extra = dict(extra)
    if "inner" in extra:
        return module.NoiseTunnel(getattr(module, extra.pop("inner"))(model))
    if "layer" in extra:
        return getattr(module, cls)(model, getattr(model, extra.pop("layer")))
    return getattr(module, cls)(model, **extra)


def run(module, case, model_name, dtype=torch.float64, chunked=False, batch_slice=None):
    model, inputs, args = make(model_name, dtype)
    kwargs = case[4](inputs)
    target = TARGETS[model_name]
    if batch_slice is not None:
        inputs = tuple(x[batch_slice] for x in inputs)
        args = tuple(a[batch_slice] for a in args) if args else None
        target = target[batch_slice] if isinstance(target, (list, torch.Tensor)) else target
        if isinstance(kwargs.get("baselines"), tuple) and case[1] != "DeepLiftShap":
            kwargs["baselines"] = tuple(b[batch_slice] for b in kwargs["baselines"])
    if chunked:
        kwargs.update(case[5])
    method = build(module, case, model)
    inp = inputs if len(inputs) > 1 else inputs[0]
    return method.attribute(inp, target=target, additional_forward_args=args, **kwargs)


def as_tuple(t):
    return t if isinstance(t, tuple) else (t,)


def assert_close(a, b, tol):
    for x, y in zip(as_tuple(a), as_tuple(b)):
        assert x.shape == y.shape
        assert (x - y).abs().max().item() <= tol * max(1.0, y.abs().max().item())


@pytest.mark.parametrize("case,model_name", ROWS)
def test_agrees_with_captum(case, model_name):
    assert_close(run(ea, case, model_name), run(captum_attr, case, model_name), 1e-5)


@pytest.mark.parametrize("case,model_name", ROWS)
def test_method_properties_match_captum(case, model_name):
    model, _, _ = make(model_name)
    ours, theirs = build(ea, case, model), build(captum_attr, case, model)
    assert ours.has_convergence_delta() == theirs.has_convergence_delta()
    assert ours.multiplies_by_inputs == theirs.multiplies_by_inputs


@pytest.mark.parametrize("case,model_name", ROWS)
def test_batch_equals_one_by_one(case, model_name):
    whole = as_tuple(run(ea, case, model_name))
    n = whole[0].shape[0]
    singles = [as_tuple(run(ea, case, model_name, batch_slice=slice(i, i + 1))) for i in range(n)]
    for j, w in enumerate(whole):
        assert_close(w, torch.cat([s[j] for s in singles]), 1e-9)


@pytest.mark.parametrize("case,model_name", [r for r in ROWS if r.values[0][5]])
def test_chunked_equals_unchunked(case, model_name):
    assert_close(run(ea, case, model_name, chunked=True), run(ea, case, model_name), 1e-10)


@pytest.mark.parametrize("case,model_name", ROWS)
def test_float32_matches_float64(case, model_name):
    a32 = run(ea, case, model_name, dtype=torch.float32)
    a64 = run(ea, case, model_name)
    for x, y in zip(as_tuple(a32), as_tuple(a64)):
        assert x.dtype == torch.float32
        assert (x.double() - y).abs().max().item() <= 1e-4 * max(1.0, y.abs().max().item())


@pytest.mark.parametrize("case,model_name", ROWS)
def test_hooks_and_attributes_unchanged_after_success_and_error(case, model_name):
    model, inputs, args = make(model_name)
    before = hook_state(model)
    method = build(ea, case, model)
    inp = inputs if len(inputs) > 1 else inputs[0]
    method.attribute(inp, target=TARGETS[model_name], additional_forward_args=args, **case[4](inputs))
    assert hook_state(model) == before
    with pytest.raises(Exception):
        method.attribute(inp, target=99, additional_forward_args=args, **case[4](inputs))
    assert hook_state(model) == before


# ---- hand-derived values ------------------------------------------------------------------------

def _linear(w, c=0.5):
    lin = nn.Linear(len(w), 1).double()
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([w], dtype=torch.float64))
        lin.bias.fill_(c)
    return lin


def test_linear_model_by_hand():
    w = [2.0, -1.0, 0.5]
    f = _linear(w)
    x = torch.tensor([[1.0, 2.0, -4.0]], dtype=torch.float64)
    b = torch.tensor([[0.5, 0.0, 1.0]], dtype=torch.float64)
    wt = torch.tensor([w], dtype=torch.float64)
    assert torch.allclose(ea.Saliency(f).attribute(x, target=0), wt.abs())
    assert torch.allclose(ea.Saliency(f).attribute(x, target=0, abs=False), wt)
    assert torch.allclose(ea.InputXGradient(f).attribute(x, target=0), wt * x)
    for method in ("gausslegendre", "riemann_left", "riemann_right", "riemann_middle"):
        assert torch.allclose(ea.IntegratedGradients(f).attribute(x, b, target=0, method=method, n_steps=3), wt * (x - b))
    assert torch.allclose(ea.DeepLift(f).attribute(x, b, target=0), wt * (x - b))


def test_single_relu_by_hand():
    # f(x) = relu(x0 - x1); x = (3, 1), baseline 0: the path crosses the kink only at a = 0.
    f = nn.Sequential(_linear([1.0, -1.0], c=0.0), nn.ReLU()).double()
    x = torch.tensor([[3.0, 1.0]], dtype=torch.float64)
    expected = torch.tensor([[3.0, -1.0]], dtype=torch.float64)
    ig, delta = ea.IntegratedGradients(f).attribute(x, target=0, return_convergence_delta=True)
    assert torch.allclose(ig, expected) and abs(delta.item()) < 1e-12
    # DeepLift multiplier of the ReLU: (relu(2) - relu(0)) / (2 - 0) = 1.
    assert torch.allclose(ea.DeepLift(f).attribute(x, target=0), expected)
    # With x = (1, 3) the ReLU is off: gradient 0, DeepLift (0 - 0) / (-2 - 0) = 0.
    assert torch.equal(ea.DeepLift(f).attribute(x.flip(1), target=0), torch.zeros_like(x))


def test_grad_cam_by_hand():
    # One 1x1 conv channel pair feeding a global sum: score = sum(a0) - 2 * sum(a1).
    conv = nn.Conv2d(1, 2, 1, bias=False).double()
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([1.0, 3.0], dtype=torch.float64).view(2, 1, 1, 1))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = conv

        def forward(self, x):
            a = self.conv(x)
            return (a[:, 0].sum((1, 2)) - 2 * a[:, 1].sum((1, 2))).unsqueeze(1)

    net = Net()
    x = torch.arange(4, dtype=torch.float64).view(1, 1, 2, 2)
    cam = ea.LayerGradCam(net, net.conv).attribute(x, target=0)
    # channel weights = mean gradient = (1, -2); activations = (x, 3x); cam = x - 6x = -5x
    assert torch.allclose(cam, -5 * x)
    assert torch.equal(ea.LayerGradCam(net, net.conv).attribute(x, target=0, relu_attributions=True), torch.zeros_like(x))


# ---- axioms ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("model_name", ["mlp", "cnn", "two_input"])
def test_integrated_gradients_completeness(model_name):
    model, inputs, args = make(model_name)
    inp = inputs if len(inputs) > 1 else inputs[0]
    _, delta = ea.IntegratedGradients(model).attribute(
        inp, _bl(inputs) if len(inputs) > 1 else _bl(inputs)[0], target=TARGETS[model_name],
        additional_forward_args=args, n_steps=400, return_convergence_delta=True, internal_batch_size=256,
    )
    assert delta.abs().max().item() < 2e-3


@pytest.mark.parametrize("model_name", ["mlp", "cnn", "two_input"])
def test_deep_lift_and_shap_completeness_exact(model_name):
    model, inputs, args = make(model_name)
    inp = inputs if len(inputs) > 1 else inputs[0]
    bl = _bl(inputs) if len(inputs) > 1 else _bl(inputs)[0]
    _, delta = ea.DeepLift(model).attribute(inp, bl, target=TARGETS[model_name], additional_forward_args=args, return_convergence_delta=True)
    assert delta.abs().max().item() < 1e-10
    dist = _dist(inputs) if len(inputs) > 1 else _dist(inputs)[0]
    attr, delta = ea.DeepLiftShap(model).attribute(inp, dist, target=TARGETS[model_name], additional_forward_args=args, return_convergence_delta=True)
    assert delta.abs().max().item() < 1e-10
    # the mean attribution sums to f(x) - mean_j f(b_j) (each example with its own extra args)
    n, k = inputs[0].shape[0], as_tuple(dist)[0].shape[0]
    tgt = TARGETS[model_name]
    total = sum(a.reshape(n, -1).sum(1) for a in as_tuple(attr))
    fx, fb = [], []
    with torch.no_grad():
        for i in range(n):
            extra = tuple(a[i:i + 1].expand(k, -1) for a in args) if args else ()
            t = tgt if isinstance(tgt, int) else int(tgt[i])
            fx.append(model(*(x[i:i + 1] for x in inputs), *(e[:1] for e in extra))[0, t])
            fb.append(model(*as_tuple(dist), *extra)[:, t].mean())
    fx, fb = torch.stack(fx), torch.stack(fb)
    assert torch.allclose(total, fx - fb, atol=1e-10)


def test_deep_lift_exact_where_captum_is_not():
    """MaxPool directly followed by ReLU: our Rescale/MaxPool multipliers still sum to the output
    difference; Captum 0.9's hooks on adjacent nonlinearities do not (documented deviation)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.MaxPool2d(2), nn.ReLU(), nn.Flatten(), nn.Linear(27, 4)).double()
    x = torch.randn(3, 1, 8, 8, dtype=torch.float64)
    b = torch.randn(3, 1, 8, 8, dtype=torch.float64) * 0.1
    _, ours = ea.DeepLift(model).attribute(x, b, target=1, return_convergence_delta=True)
    assert ours.abs().max().item() < 1e-10


def test_gradient_shap_converges_to_integrated_gradients():
    model, (x,), _ = make("mlp")
    b = torch.zeros(1, 6, dtype=torch.float64)
    torch.manual_seed(1)
    import numpy as np
    np.random.seed(1)
    gs = ea.GradientShap(model).attribute(x, b, n_samples=4000, stdevs=0.0, target=1)
    ig = ea.IntegratedGradients(model).attribute(x, b, target=1, n_steps=200)
    assert (gs - ig).abs().max().item() < 0.02 * ig.abs().max().item()


def test_gradient_shap_completeness_in_expectation():
    model, (x,), _ = make("mlp")
    dist = torch.randn(8, 6, dtype=torch.float64)
    import numpy as np
    np.random.seed(2)
    attr, delta = ea.GradientShap(model).attribute(x, dist, n_samples=3000, target=1, return_convergence_delta=True)
    with torch.no_grad():
        expected = model(x)[:, 1] - model(dist)[:, 1].mean()
    assert delta.shape == (4 * 3000,)
    assert torch.allclose(attr.sum(1), expected, atol=0.03 * expected.abs().max().item())


def test_smoothgrad_of_quadratic_equals_gradient():
    # f(x) = x^T A x has a linear gradient, so E[grad f(x + noise)] = grad f(x).
    A = torch.randn(5, 5, dtype=torch.float64)
    f = lambda x: ((x @ A) * x).sum(1, keepdim=True)
    x = torch.randn(2, 5, dtype=torch.float64)
    torch.manual_seed(3)
    sg = ea.NoiseTunnel(ea.Saliency(f)).attribute(x, nt_samples=20000, nt_samples_batch_size=5000, stdevs=0.5, target=0, abs=False)
    grad = x @ (A + A.T)
    assert (sg - grad).abs().max().item() < 0.05 * grad.abs().max().item()
    sq = ea.NoiseTunnel(ea.Saliency(f)).attribute(x, nt_type="vargrad", nt_samples=20000, stdevs=0.5, target=0, abs=False)
    # Var of grad = Var((A + A^T) noise) = 0.25 * row norms of (A + A^T)^2
    expected_var = 0.25 * ((A + A.T) ** 2).sum(0)
    assert torch.allclose(sq, expected_var.expand_as(sq), rtol=0.08)


# ---- targets --------------------------------------------------------------------------------------

def test_every_target_form():
    model, (x,), _ = make("mlp")
    sal = ea.Saliency(model)
    by_int = sal.attribute(x, target=2)
    assert torch.equal(sal.attribute(x, target=torch.tensor(2)), by_int)
    assert torch.equal(sal.attribute(x, target=[2, 2, 2, 2]), by_int)
    assert torch.equal(sal.attribute(x, target=torch.tensor([2, 2, 2, 2])), by_int)
    assert torch.equal(sal.attribute(x, target=[(2,)] * 4), by_int)
    assert torch.equal(sal.attribute(x, target=(2,)), by_int)
    with pytest.raises(ValueError, match="more than one value"):
        sal.attribute(x)


# ---- reusable hook session ------------------------------------------------------------------------

def test_reusable_hooks_registered_once_and_inert_between_calls():
    model, (x,), _ = make("cnn")
    clean = hook_state(model)
    expected = ea.DeepLift(model).attribute(x, target=1)
    with torch.no_grad():
        prediction = model(x)
    with ea.DeepLift(model) as dl:
        registered = hook_state(model)
        assert registered != clean
        for _ in range(100):
            assert torch.equal(dl.attribute(x, target=1), expected)
            assert hook_state(model) == registered
            assert not dl._hook_session.scratch
        with torch.no_grad():
            assert torch.equal(model(x), prediction)  # inactive hooks do not touch predictions
    assert hook_state(model) == clean


# ---- the core never imports Captum ----------------------------------------------------------------

def test_explain_serve_never_imports_captum():
    import pathlib
    import subprocess
    import sys

    code = (
        "import sys, explain_serve.attr as a\n"
        "[getattr(a, n) for n in a.__all__ if n not in ()]\n"
        "import importlib, pkgutil, explain_serve\n"
        "for m in pkgutil.walk_packages(explain_serve.__path__, 'explain_serve.'):\n"
        "    try: importlib.import_module(m.name)\n"
        "    except ImportError as e:\n"
        "        assert 'captum' not in str(e), e\n"
        "assert not any(k == 'captum' or k.startswith('captum.') for k in sys.modules), 'captum was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    root = pathlib.Path(__file__).resolve().parents[1]
    for folder in ("explain_serve", "handlers"):
        for path in (root / folder).rglob("*.py"):
            text = path.read_text()
            assert "import captum" not in text and "from captum" not in text, path


# ---- CUDA -----------------------------------------------------------------------------------------

@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("case,model_name", [r for r in ROWS if r.values[1] == "cnn"])
def test_cuda_matches_cpu(case, model_name):
    cpu = run(ea, case, model_name)
    model, inputs, args = make(model_name, device="cuda")
    kwargs = case[4](tuple(x.cpu() for x in inputs))
    kwargs = {k: tuple(t.cuda() for t in v) if isinstance(v, tuple) else v for k, v in kwargs.items()}
    target = TARGETS[model_name]
    method = build(ea, case, model)
    out = method.attribute(inputs[0], target=target, **kwargs)
    assert_close(tuple(t.cpu() for t in as_tuple(out)), cpu, 1e-6)
