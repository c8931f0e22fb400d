"""Neuron methods: gradients against finite differences, completeness, selectors (int, tuple with
slices, callable), and agreement with Captum in float64 on the shared table of models."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import explain_serve.attr as ea
from tests.layer_models import table
from tests.per_example import per_example

captum_attr = pytest.importorskip("captum.attr")
warnings.filterwarnings("ignore", category=UserWarning)


pytestmark = pytest.mark.usefixtures("one_thread")


def _close(a, b, tol=1e-5):
    if isinstance(a, tuple):
        assert isinstance(b, tuple) and len(a) == len(b)
        for x, y in zip(a, b):
            _close(x, y, tol)
        return
    assert a.shape == b.shape, (a.shape, b.shape)
    assert torch.allclose(a, b, atol=tol, rtol=0), (a - b).abs().max()


def _baseline(x):
    g = torch.Generator().manual_seed(3)
    return torch.randn(x.shape, generator=g, dtype=x.dtype) * 0.1


def _distribution(x, k=4):
    g = torch.Generator().manual_seed(4)
    return torch.randn((k, *x.shape[1:]), generator=g, dtype=x.dtype)


def _sum_block(t):
    return t[:, 1:3].reshape(t.shape[0], -1).sum(1)


SELECTORS = {
    "index": lambda name, default: default,
    "slices": lambda name, default: (slice(1, 3),) if name == "mlp" else (1, slice(0, 2), 2),
    "callable": lambda name, default: _sum_block,
}

NEURON_CASES = {
    "gradient": ("NeuronGradient", lambda x, t: {}),
    "gradient_input": ("NeuronGradient", lambda x, t: {"attribute_to_neuron_input": True}),
    "ig": ("NeuronIntegratedGradients", lambda x, t: {"baselines": _baseline(x), "n_steps": 8}),
    "ig_chunked": ("NeuronIntegratedGradients", lambda x, t: {"n_steps": 8, "method": "riemann_left", "internal_batch_size": 5}),
    "conductance": ("NeuronConductance", lambda x, t: {"target": t, "n_steps": 8}),
    "conductance_gl": ("NeuronConductance", lambda x, t: {"target": t, "n_steps": 8, "method": "gausslegendre", "internal_batch_size": 5, "baselines": _baseline(x)}),
    "deep_lift": ("NeuronDeepLift", lambda x, t: {"baselines": _baseline(x)}),
    "deep_lift_input": ("NeuronDeepLift", lambda x, t: {"attribute_to_neuron_input": True}),
    "deep_lift_shap": ("NeuronDeepLiftShap", lambda x, t: {"baselines": _distribution(x)}),
    "guided_backprop": ("NeuronGuidedBackprop", lambda x, t: {}),
    "deconvolution": ("NeuronDeconvolution", lambda x, t: {}),
    "ablation": ("NeuronFeatureAblation", lambda x, t: {}),
    "ablation_batched": ("NeuronFeatureAblation", lambda x, t: {"baselines": 0.3, "perturbations_per_eval": 4}),
    "gradient_shap_seeded": ("NeuronGradientShap", lambda x, t: {"baselines": _distribution(x)}),
}
CASES = [
    (case, name, sel)
    for case in sorted(NEURON_CASES)
    for name in ("mlp", "cnn")
    for sel in SELECTORS
    if not (sel == "callable" and NEURON_CASES[case][0] == "NeuronConductance")  # Captum: callables unsupported there
]


def _run(lib, case, name, sel):
    cls_name, kwargs_of = NEURON_CASES[case]
    model, inputs, args, layer, default, target = table(name)
    torch.manual_seed(5)
    np.random.seed(5)
    method = getattr(lib, cls_name)(model, layer)
    return method.attribute(inputs[0], neuron_selector=SELECTORS[sel](name, default), **kwargs_of(inputs[0], target))


def _run_captum_per_example(case, name, sel):
    """Captum on each example alone: what a seeded batch-invariant method (GradientShap) gives."""
    cls_name, kwargs_of = NEURON_CASES[case]
    model, inputs, args, layer, default, target = table(name)
    method = getattr(captum_attr, cls_name)(model, layer)
    fixed = kwargs_of(inputs[0], target)
    return per_example(lambda x: method.attribute(x, neuron_selector=SELECTORS[sel](name, default), **fixed),
                       inputs[0].shape[0], {"x": inputs[0]})


@pytest.mark.parametrize("case,name,sel", CASES, ids=[f"{c}-{n}-{s}" for c, n, s in CASES])
def test_neuron_agrees_with_captum(case, name, sel):
    seeded = case == "gradient_shap_seeded"
    _close(_run(ea, case, name, sel), _run_captum_per_example(case, name, sel) if seeded else _run(captum_attr, case, name, sel))


@pytest.mark.parametrize("cls_name", sorted({c for c, _ in NEURON_CASES.values()}))
def test_neuron_method_properties_match_captum(cls_name):
    model, _, _, layer, _, _ = table("mlp")
    ours, theirs = getattr(ea, cls_name)(model, layer), getattr(captum_attr, cls_name)(model, layer)
    assert ours.multiplies_by_inputs == theirs.multiplies_by_inputs
    assert ours.has_convergence_delta() == theirs.has_convergence_delta()
    if "multiply_by_inputs" in getattr(captum_attr, cls_name).__init__.__code__.co_varnames:
        assert not getattr(ea, cls_name)(model, layer, multiply_by_inputs=False).multiplies_by_inputs


def test_neuron_feature_ablation_text_model():
    model, inputs, args, layer, sel, _ = table("text")
    ours = ea.NeuronFeatureAblation(model, layer).attribute(inputs[0], sel, additional_forward_args=args)
    theirs = captum_attr.NeuronFeatureAblation(model, layer).attribute(inputs[0], sel, additional_forward_args=args)
    _close(ours, theirs)


def _neuron_value(model, layer, x, selector):
    out = {}
    handle = layer.register_forward_hook(lambda m, i, o: out.setdefault("v", o))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    v = out["v"]
    if callable(selector):
        return selector(v)
    index = (selector,) if isinstance(selector, int) else selector
    v = v[(slice(None), *index)]
    return v.reshape(v.shape[0], -1).sum(1) if any(isinstance(i, slice) for i in index) else v


@pytest.mark.parametrize("name", ("mlp", "cnn"))
@pytest.mark.parametrize("sel", sorted(SELECTORS))
def test_neuron_gradient_finite_differences(name, sel):
    model, inputs, _, layer, default, _ = table(name)
    selector = SELECTORS[sel](name, default)
    x = inputs[0]
    grad = ea.NeuronGradient(model, layer).attribute(x, selector)
    eps = 1e-6
    flat = x.reshape(-1)
    numeric = torch.zeros_like(flat)
    for i in range(0, flat.numel(), max(1, flat.numel() // 40)):  # a spread of coordinates
        e = torch.zeros_like(flat)
        e[i] = eps
        up = _neuron_value(model, layer, (flat + e).reshape(x.shape), selector)
        down = _neuron_value(model, layer, (flat - e).reshape(x.shape), selector)
        numeric[i] = (up - down).sum() / (2 * eps)
        assert abs(numeric[i] - grad.reshape(-1)[i]) < 1e-6, (i, numeric[i], grad.reshape(-1)[i])


@pytest.mark.parametrize("name", ("mlp", "cnn"))
def test_neuron_ig_completeness(name):
    model, inputs, _, layer, selector, _ = table(name)
    x = inputs[0]
    b = _baseline(x)
    attr = ea.NeuronIntegratedGradients(model, layer).attribute(x, selector, b, n_steps=200)
    diff = _neuron_value(model, layer, x, selector) - _neuron_value(model, layer, b, selector)
    assert torch.allclose(attr.reshape(len(x), -1).sum(1), diff, atol=2e-3)  # ReLU kinks on the path


def test_neuron_deep_lift_summation_to_delta():
    model, inputs, _, layer, selector, _ = table("cnn")
    x = inputs[0]
    b = _baseline(x)
    attr = ea.NeuronDeepLift(model, layer).attribute(x, selector, b)
    diff = _neuron_value(model, layer, x, selector) - _neuron_value(model, layer, b, selector)
    assert torch.allclose(attr.reshape(len(x), -1).sum(1), diff, atol=1e-10)


def test_neuron_conductance_sums_to_layer_conductance():
    """Summed over the inputs, a neuron's conductance is the layer conductance of that neuron."""
    model, inputs, _, layer, selector, target = table("mlp")
    x = inputs[0]
    b = _baseline(x)
    neuron = ea.NeuronConductance(model, layer).attribute(x, selector, b, target=target, n_steps=300)
    layer_cond = ea.LayerConductance(model, layer).attribute(x, b, target=target, n_steps=300, method="riemann_trapezoid")
    assert torch.allclose(neuron.sum(1), layer_cond[:, selector], atol=2e-3)


def test_neuron_methods_do_not_run_the_rest_of_the_model():
    """The forward stops at the tapped layer: a head that raises is never reached."""

    class Exploding(torch.nn.Module):
        def forward(self, x):
            raise AssertionError("ran past the layer")

    body = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Tanh(), torch.nn.ReLU(), Exploding()).double()
    x = torch.randn(3, 4, dtype=torch.float64)
    for method in (ea.NeuronGradient(body, body[1]), ea.NeuronDeepLift(body, body[1]), ea.NeuronGuidedBackprop(body, body[1])):
        assert method.attribute(x, 2).shape == x.shape
    grad = ea.NeuronGradient(body, body[1]).attribute(x, 2)
    h = body[0](x)
    expected = (1 - torch.tanh(h[:, 2]) ** 2)[:, None] * body[0].weight[2]
    assert torch.allclose(grad, expected.detach(), atol=1e-12)


MULTI_INPUT_CASES = {
    "NeuronGradient": lambda bl, dist: {},
    "NeuronIntegratedGradients": lambda bl, dist: {"baselines": bl},
    "NeuronConductance": lambda bl, dist: {"target": torch.tensor([0, 1, 2, 0])},
    "NeuronDeepLift": lambda bl, dist: {"baselines": bl},
    "NeuronDeepLiftShap": lambda bl, dist: {"baselines": dist},
    "NeuronGradientShap": lambda bl, dist: {"baselines": dist},
    "NeuronFeatureAblation": lambda bl, dist: {},
    "NeuronGuidedBackprop": lambda bl, dist: {},
    "NeuronDeconvolution": lambda bl, dist: {},
}


@pytest.mark.parametrize("cls_name", sorted(MULTI_INPUT_CASES))
def test_two_inputs_and_additional_args_agree_with_captum(cls_name):
    from tests.models import make

    model, x, args = make("two_input")
    bl = tuple(t * 0.1 for t in x)
    g = torch.Generator().manual_seed(2)
    dist = tuple(torch.randn(3, t.shape[1], generator=g, dtype=torch.float64) for t in x)
    results = []
    for lib in (ea, captum_attr):
        torch.manual_seed(1)
        np.random.seed(1)
        method = getattr(lib, cls_name)(model, model.fc1)
        results.append(method.attribute(x, neuron_selector=2, additional_forward_args=args, **MULTI_INPUT_CASES[cls_name](bl, dist)))
    if cls_name == "NeuronGradientShap":  # seeded and batch-invariant: Captum on each example alone
        method = captum_attr.NeuronGradientShap(model, model.fc1)
        results[1] = per_example(lambda x, a: method.attribute(x, neuron_selector=2, additional_forward_args=a, baselines=dist),
                                 4, {"x": x, "a": args}, seed=1)
    _close(*results)
