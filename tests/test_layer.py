"""Layer methods: axioms (completeness, conductance sums to the IG total, DeepLift summation to
delta), hand-derived values, and agreement with Captum in float64 on one table of models (MLP,
CNN, embedding text model) for every deterministic layer method."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import explain_serve.attr as ea
from explain_serve._core.targets import select_targets
from tests.per_example import per_example
from tests.layer_models import MODELS, table

captum_attr = pytest.importorskip("captum.attr")
warnings.filterwarnings("ignore", category=UserWarning)


pytestmark = pytest.mark.usefixtures("one_thread")


def _close(a, b, tol=1e-5):
    if isinstance(a, (tuple, list)):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b):
            _close(x, y, tol)
        return
    assert a.shape == b.shape, (a.shape, b.shape)
    assert torch.allclose(a, b, atol=tol, rtol=0), (a - b).abs().max()


def _baseline(name, x):
    if name == "text":
        return torch.zeros_like(x)
    g = torch.Generator().manual_seed(3)
    return torch.randn(x.shape, generator=g, dtype=x.dtype) * 0.1


def _distribution(name, x, k=4):
    g = torch.Generator().manual_seed(4)
    if name == "text":
        return torch.randint(0, 30, (k, *x.shape[1:]), generator=g)
    return torch.randn((k, *x.shape[1:]), generator=g, dtype=x.dtype)


def _score(model, x, args, target):
    with torch.no_grad():
        return select_targets(model(x, *(args or ())), target).reshape(-1)


# case id -> (class, models it applies to, attribute kwargs builder(name, x)); float inputs only for
# methods that move along the input path (an embedding's input is integer ids)
FLOAT = ("mlp", "cnn")
LAYER_CASES = {
    "activation": ("LayerActivation", MODELS, lambda n, x: {}),
    "activation_input": ("LayerActivation", FLOAT, lambda n, x: {"attribute_to_layer_input": True}),
    "grad_x_act": ("LayerGradientXActivation", MODELS, lambda n, x: {}),
    "grad_x_act_input": ("LayerGradientXActivation", FLOAT, lambda n, x: {"attribute_to_layer_input": True}),
    "lig": ("LayerIntegratedGradients", MODELS, lambda n, x: {"baselines": _baseline(n, x), "n_steps": 12, "return_convergence_delta": True}),
    "lig_input": ("LayerIntegratedGradients", FLOAT, lambda n, x: {"n_steps": 7, "method": "riemann_trapezoid", "internal_batch_size": 5, "attribute_to_layer_input": True}),
    "conductance": ("LayerConductance", FLOAT, lambda n, x: {"baselines": _baseline(n, x), "n_steps": 9, "return_convergence_delta": True}),
    "conductance_chunked": ("LayerConductance", FLOAT, lambda n, x: {"n_steps": 9, "method": "riemann_left", "internal_batch_size": 7}),
    "internal_influence": ("InternalInfluence", FLOAT, lambda n, x: {"baselines": _baseline(n, x), "n_steps": 9}),
    "internal_influence_input": ("InternalInfluence", FLOAT, lambda n, x: {"n_steps": 6, "internal_batch_size": 5, "attribute_to_layer_input": True}),
    "deep_lift": ("LayerDeepLift", MODELS, lambda n, x: {"baselines": _baseline(n, x), "return_convergence_delta": True}),
    "deep_lift_input": ("LayerDeepLift", FLOAT, lambda n, x: {"baselines": _baseline(n, x), "attribute_to_layer_input": True}),
    "deep_lift_shap": ("LayerDeepLiftShap", FLOAT, lambda n, x: {"baselines": _distribution(n, x), "return_convergence_delta": True}),
    "gradient_shap_seeded": ("LayerGradientShap", FLOAT, lambda n, x: {"baselines": _distribution(n, x), "n_samples": 3}),
    "ablation": ("LayerFeatureAblation", MODELS, lambda n, x: {}),
    "ablation_mask": ("LayerFeatureAblation", ("mlp",), lambda n, x: {"layer_mask": torch.tensor([[0, 0, 1, 1, 2, 2, 3, 3]]), "layer_baselines": 0.5}),
}
CAPTUM_CASES = [(c, n) for c, (_, models, _) in sorted(LAYER_CASES.items()) for n in models]


def _run(lib, case, name):
    cls_name, _, kwargs_of = LAYER_CASES[case]
    model, inputs, args, layer, _, target = table(name)
    torch.manual_seed(5)
    np.random.seed(5)
    method = getattr(lib, cls_name)(model, layer)
    kwargs = dict(kwargs_of(name, inputs[0]), additional_forward_args=args)
    if cls_name != "LayerActivation":
        kwargs["target"] = target
    return method.attribute(inputs[0], **kwargs)


def _run_captum_per_example(case, name):
    """Captum on each example alone: what a seeded batch-invariant method (GradientShap) gives."""
    cls_name, _, kwargs_of = LAYER_CASES[case]
    model, inputs, args, layer, _, target = table(name)
    method = getattr(captum_attr, cls_name)(model, layer)
    fixed = kwargs_of(name, inputs[0])
    return per_example(lambda x, a, t: method.attribute(x, additional_forward_args=a, target=t, **fixed),
                       inputs[0].shape[0], {"x": inputs[0], "a": args, "t": target})


@pytest.mark.parametrize("case,name", CAPTUM_CASES, ids=[f"{c}-{n}" for c, n in CAPTUM_CASES])
def test_layer_agrees_with_captum(case, name):
    theirs = _run_captum_per_example(case, name) if case == "gradient_shap_seeded" else _run(captum_attr, case, name)
    _close(_run(ea, case, name), theirs)


@pytest.mark.parametrize("name", MODELS)
def test_lig_completeness(name):
    model, inputs, args, layer, _, target = table(name)
    x = inputs[0]
    b = _baseline(name, x)
    lig = ea.LayerIntegratedGradients(model, layer)
    attr, delta = lig.attribute(x, b, target=target, additional_forward_args=args, n_steps=64, return_convergence_delta=True)
    diff = _score(model, x, args, target) - _score(model, b, args, target)
    total = attr.reshape(len(x), -1).sum(1)
    assert torch.allclose(total - diff, delta, atol=1e-10)  # delta is the completeness gap
    tol = 5e-3 if name == "cnn" else 1e-6  # ReLU kinks downstream of the CNN's conv slow the quadrature
    assert delta.abs().max() < tol * max(1.0, diff.abs().max().item())


def test_lig_embedding_by_hand():
    """Linear model on the embeddings: LIG = (emb(x) - emb(b)) times the constant weight."""
    model = torch.nn.Sequential(torch.nn.Embedding(5, 2), torch.nn.Flatten(), torch.nn.Linear(6, 1)).double()
    ids = torch.tensor([[1, 2, 3]])
    attr = ea.LayerIntegratedGradients(model, model[0]).attribute(ids, baselines=torch.zeros_like(ids))
    expected = (model[0].weight[ids[0]] - model[0].weight[0]) * model[2].weight.reshape(3, 2)
    assert torch.allclose(attr[0], expected, atol=1e-12)


def test_lig_list_of_layers_matches_captum():
    class Two(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.tok, self.pos, self.fc = torch.nn.Embedding(20, 4), torch.nn.Embedding(6, 4), torch.nn.Linear(4, 2)

        def forward(self, ids, pos):
            return self.fc(torch.tanh(self.tok(ids) + self.pos(pos)).mean(1))

    torch.manual_seed(0)
    m = Two().double()
    ids, pos = torch.randint(0, 20, (3, 6)), torch.arange(6).repeat(3, 1)
    ours, d1 = ea.LayerIntegratedGradients(m, [m.tok, m.pos]).attribute((ids, pos), target=1, return_convergence_delta=True)
    theirs, d2 = captum_attr.LayerIntegratedGradients(m, [m.tok, m.pos]).attribute((ids, pos), target=1, return_convergence_delta=True)
    assert isinstance(ours, list) and len(ours) == 2
    _close(ours, theirs)
    _close(d1, d2)
    total = sum(a.reshape(3, -1).sum(1) for a in ours)
    diff = m(ids, pos)[:, 1] - m(torch.zeros_like(ids), torch.zeros_like(pos))[:, 1]
    assert torch.allclose(total, diff.detach(), atol=1e-6)


@pytest.mark.parametrize("name", FLOAT)
def test_conductance_sums_to_ig_total(name):
    """Summed over the layer's neurons, conductance is the output difference, like the IG total."""
    model, inputs, args, layer, _, target = table(name)
    x = inputs[0]
    b = _baseline(name, x)
    cond = ea.LayerConductance(model, layer).attribute(x, b, target=target, n_steps=400, method="riemann_trapezoid")
    ig = ea.IntegratedGradients(model).attribute(x, b, target=target, n_steps=400)
    diff = _score(model, x, args, target) - _score(model, b, args, target)
    cond_total = cond.reshape(len(x), -1).sum(1)
    ig_total = ig.reshape(len(x), -1).sum(1)
    assert torch.allclose(cond_total, ig_total, atol=2e-3)
    assert torch.allclose(cond_total, diff, atol=2e-3)


def test_linear_head_by_hand():
    """At the tanh layer of the MLP the rest is linear (fc3): the gradient is fc3's weight row, so
    internal influence = w, gradient x activation = w * a, ablating a neuron to 0 removes w_j a_j."""
    model, inputs, _, _, _, _ = table("mlp")
    x, t = inputs[0], 2
    w = model.fc3.weight[t].detach()
    with torch.no_grad():
        a = model.tanh(model.fc2(model.relu(model.fc1(x))))
    infl = ea.InternalInfluence(model, model.tanh).attribute(x, target=t, n_steps=5)
    assert torch.allclose(infl, w.expand_as(a), atol=1e-12)
    gxa = ea.LayerGradientXActivation(model, model.tanh).attribute(x, target=t)
    assert torch.allclose(gxa, w * a, atol=1e-12)
    abl = ea.LayerFeatureAblation(model, model.tanh).attribute(x, target=t)
    assert torch.allclose(abl, w * a, atol=1e-12)
    act = ea.LayerActivation(model, [model.tanh, model.fc1]).attribute(x)
    assert isinstance(act, list) and torch.equal(act[0], a) and torch.equal(act[1], model.fc1(x).detach())


@pytest.mark.parametrize("name", FLOAT)
def test_layer_deep_lift_summation_to_delta(name):
    model, inputs, args, layer, _, target = table(name)
    x = inputs[0]
    b = _baseline(name, x)
    attr, delta = ea.LayerDeepLift(model, layer).attribute(x, b, target=target, return_convergence_delta=True)
    diff = _score(model, x, args, target) - _score(model, b, args, target)
    assert torch.allclose(attr.reshape(len(x), -1).sum(1), diff, atol=1e-10)
    assert delta.abs().max() < 1e-10


def test_layer_gradient_shap_expectation():
    """With one baseline and no noise, the mean over samples tends to internal influence x (a(x) - a(b))."""
    model, inputs, _, layer, _, target = table("mlp")
    x = inputs[0]
    b = _baseline("mlp", x)[:1]
    np.random.seed(0)
    gs = ea.LayerGradientShap(model, layer).attribute(x, b, n_samples=3000, target=target)
    infl = ea.InternalInfluence(model, layer).attribute(x, b.expand_as(x), target=target, n_steps=64)
    acts = ea.LayerActivation(model, layer)
    expected = infl * (acts.attribute(x) - acts.attribute(b.expand_as(x)))
    assert torch.allclose(gs, expected, atol=3e-2 * expected.abs().max().item())


def test_layer_feature_permutation_is_permutation_of_the_layer():
    """Same seed: permuting the tanh layer's neurons = FeaturePermutation on the linear head."""
    model, inputs, _, _, _, _ = table("mlp")
    x = inputs[0]
    with torch.no_grad():
        a = model.tanh(model.fc2(model.relu(model.fc1(x))))
    torch.manual_seed(11)
    ours = ea.LayerFeaturePermutation(model, model.tanh).attribute(x, target=1)
    torch.manual_seed(11)
    head = ea.FeaturePermutation(model.fc3).attribute(a, target=1)
    assert torch.allclose(ours, head, atol=1e-12)


def test_layer_taps_do_not_change_the_output():
    model, inputs, _, layer, _, _ = table("cnn")
    x = inputs[0]
    expected = model(x)
    method = ea.LayerGradientXActivation(model, layer).reusable()
    method.attribute(x, target=0)
    assert torch.equal(model(x), expected)  # inactive taps are a no-op
    method.close()


def test_frozen_model_layer_gradients():
    """A serving model without parameter gradients still gets layer gradients."""
    model, inputs, _, layer, _, target = table("mlp")
    expected = ea.LayerGradientXActivation(model, layer).attribute(inputs[0], target=target)
    for p in model.parameters():
        p.requires_grad_(False)
    got = ea.LayerGradientXActivation(model, layer).attribute(inputs[0], target=target)
    assert torch.allclose(got, expected, atol=1e-12)


def test_interpretable_embedding_equals_layer_integrated_gradients():
    """Captum's embedding route (IG on embeddings fed through the swapped layer) = LIG on the layer."""
    from tests.models import hook_state

    model, (ids,), args, _, _, _ = table("text")
    before = hook_state(model)
    original = model.emb
    lig = ea.LayerIntegratedGradients(model, model.emb).attribute(ids, target=1, additional_forward_args=args, n_steps=16)
    wrapper = ea.configure_interpretable_embedding_layer(model, "emb")
    try:
        assert model.emb is wrapper
        with pytest.raises(AssertionError):
            ea.configure_interpretable_embedding_layer(model, "emb")
        emb = wrapper.indices_to_embeddings(ids)
        ref = wrapper.indices_to_embeddings(torch.zeros_like(ids))
        ig = ea.IntegratedGradients(model).attribute(emb, ref, target=1, additional_forward_args=args, n_steps=16)
    finally:
        ea.remove_interpretable_embedding_layer(model, wrapper)
    assert model.emb is original and hook_state(model) == before
    assert torch.allclose(ig, lig, atol=1e-12)
    with pytest.raises(RuntimeError):
        with ea.interpretable_embedding(model, "emb") as w:
            assert model.emb is w
            raise RuntimeError("restored even on error")
    assert model.emb is original
    ref_ids = ea.TokenReferenceBase(reference_token_idx=0).generate_reference(5, torch.device("cpu"))
    assert ref_ids.tolist() == [0] * 5


class _Split(torch.nn.Module):
    def forward(self, h):
        return torch.tanh(h[:, :3]), torch.sigmoid(h[:, 3:])


class _Join(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(6, 2)

    def forward(self, a, b):
        return self.lin(torch.cat([a * b, a + b], 1))


class _TupleModel(torch.nn.Module):
    """A layer with two output tensors (split) and one with two input tensors (join)."""

    def __init__(self):
        super().__init__()
        self.fc, self.split, self.join = torch.nn.Linear(4, 6), _Split(), _Join()

    def forward(self, x):
        return self.join(*self.split(self.fc(x)))


@pytest.mark.parametrize("cls_name", ["LayerIntegratedGradients", "LayerActivation", "LayerGradientXActivation",
                                      "LayerDeepLift", "LayerFeatureAblation", "LayerConductance", "InternalInfluence"])
@pytest.mark.parametrize("side", ["split_output", "join_input"])
def test_layers_with_several_tensors_agree_with_captum(cls_name, side):
    torch.manual_seed(0)
    model = _TupleModel().double()
    x = torch.randn(3, 4, dtype=torch.float64)
    layer, kwargs = (model.split, {}) if side == "split_output" else (model.join, {"attribute_to_layer_input": True})
    if cls_name != "LayerActivation":
        kwargs["target"] = 1
    ours = getattr(ea, cls_name)(model, layer).attribute(x, **kwargs)
    theirs = getattr(captum_attr, cls_name)(model, layer).attribute(x, **kwargs)
    assert isinstance(ours, tuple) and len(ours) == 2
    _close(ours, theirs)


MULTI_INPUT_CASES = {
    "LayerIntegratedGradients": lambda bl, dist: {"baselines": bl},
    "LayerConductance": lambda bl, dist: {"baselines": bl, "return_convergence_delta": True},
    "InternalInfluence": lambda bl, dist: {"baselines": bl},
    "LayerDeepLift": lambda bl, dist: {"baselines": bl, "return_convergence_delta": True},
    "LayerDeepLiftShap": lambda bl, dist: {"baselines": dist},
    "LayerGradientShap": lambda bl, dist: {"baselines": dist},
    "LayerFeatureAblation": lambda bl, dist: {},  # Captum does not expand a tensor target over perturbations_per_eval > 1
    "LayerGradientXActivation": lambda bl, dist: {},
    "LayerLRP": lambda bl, dist: {},
}


@pytest.mark.parametrize("cls_name", sorted(MULTI_INPUT_CASES))
def test_two_inputs_additional_args_tensor_target_agree_with_captum(cls_name):
    """Tuple inputs, a per-example additional forward argument and per-example targets."""
    from tests.models import make

    model, x, args = make("two_input")
    bl = tuple(t * 0.1 for t in x)
    g = torch.Generator().manual_seed(2)
    dist = tuple(torch.randn(3, t.shape[1], generator=g, dtype=torch.float64) for t in x)
    results = []
    target = torch.tensor([0, 1, 2, 0])
    for lib in (ea, captum_attr):
        torch.manual_seed(1)
        np.random.seed(1)
        method = getattr(lib, cls_name)(model, model.fc1)
        results.append(method.attribute(x, target=target, additional_forward_args=args,
                                        **MULTI_INPUT_CASES[cls_name](bl, dist)))
    if cls_name == "LayerGradientShap":  # seeded and batch-invariant: Captum on each example alone
        method = captum_attr.LayerGradientShap(model, model.fc1)
        results[1] = per_example(lambda x, t, a: method.attribute(x, target=t, additional_forward_args=a, baselines=dist),
                                 4, {"x": x, "t": target, "a": args}, seed=1)
    _close(*results)


def test_layer_ablation_batched_perturbations_with_per_example_targets():
    """Unlike Captum, per-example targets work with several perturbations per forward."""
    model, inputs, _, layer, _, target = table("cnn")  # target is a list, one class per example
    method = ea.LayerFeatureAblation(model, layer)
    one = method.attribute(inputs[0], target=target)
    batched = method.attribute(inputs[0], target=target, perturbations_per_eval=7)
    assert torch.allclose(one, batched, atol=1e-12)


SIGNATURE_NAMES = [
    "LayerActivation", "LayerGradientXActivation", "LayerConductance", "InternalInfluence", "LayerIntegratedGradients",
    "LayerDeepLift", "LayerDeepLiftShap", "LayerGradientShap", "LayerFeatureAblation", "LayerFeaturePermutation",
    "LayerLRP", "LRP", "NeuronGradient", "NeuronIntegratedGradients", "NeuronConductance", "NeuronDeepLift",
    "NeuronDeepLiftShap", "NeuronGradientShap", "NeuronFeatureAblation", "NeuronGuidedBackprop", "NeuronDeconvolution",
]


@pytest.mark.parametrize("name", SIGNATURE_NAMES)
def test_public_signatures_match_captum(name):
    """Same positional/keyword parameters and defaults as Captum (keyword-only extras allowed)."""
    import inspect

    def params(fn, drop_keyword_only):
        sig = inspect.signature(inspect.unwrap(fn))
        return [
            (p.name, p.default) for p in sig.parameters.values()
            if p.name != "self" and not (drop_keyword_only and p.kind is p.KEYWORD_ONLY)
        ]

    for member in ("__init__", "attribute"):
        ours = params(getattr(getattr(ea, name), member), True)
        theirs = params(getattr(getattr(captum_attr, name), member), False)
        assert ours == theirs, (member, ours, theirs)
