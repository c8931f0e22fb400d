"""Captum public behaviours beyond the numbers: show_progress, attribute_future, the argument
error class, input forms. Captum is the test-only oracle where it defines the answer."""
import warnings

import numpy as np
import pytest
import torch
from torch.futures import Future

import explain_serve.attr as esa
from explain_serve._core.errors import AttributionArgumentError

ca = pytest.importorskip("captum.attr")
D = torch.float64


def _mlp(n_in=4, n_out=3, seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(n_in, 5), torch.nn.ReLU(), torch.nn.Linear(5, n_out)).to(D)


def _x(shape, seed=1, dtype=D):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# --------------------------------------------------------------------------------------------
# show_progress: name -> (factory(model) -> method, attribute kwargs, bar description)
# --------------------------------------------------------------------------------------------
PROGRESS = {
    "FeatureAblation": (lambda m: esa.FeatureAblation(m), {}, "Feature Ablation attribution"),
    "FeaturePermutation": (lambda m: esa.FeaturePermutation(m), {}, "Feature Permutation attribution"),
    "Occlusion": (lambda m: esa.Occlusion(m), {"sliding_window_shapes": (2,)}, "Occlusion attribution"),
    "ShapleyValueSampling": (lambda m: esa.ShapleyValueSampling(m), {"n_samples": 2}, "Shapley Value Sampling attribution"),
    "ShapleyValues": (lambda m: esa.ShapleyValues(m), {}, "Shapley Values attribution"),
    "KernelShap": (lambda m: esa.KernelShap(m), {"n_samples": 20}, "Kernel Shap attribution"),
    "Lime": (lambda m: esa.Lime(m), {"n_samples": 20}, "Lime attribution"),
    "LayerFeatureAblation": (lambda m: esa.LayerFeatureAblation(m, m[0]), {}, "Layer Feature Ablation attribution"),
    "LayerFeaturePermutation": (lambda m: esa.LayerFeaturePermutation(m, m[0]), {}, "Layer Feature Permutation attribution"),
    "NeuronFeatureAblation": (lambda m: esa.NeuronFeatureAblation(m, m[0]), {"neuron_selector": 1}, "Neuron Feature Ablation attribution"),
}


@pytest.mark.parametrize("name", sorted(PROGRESS))
def test_show_progress_draws_a_finished_bar_only_when_asked(name, capsys):
    make, kw, desc = PROGRESS[name]
    model, x = _mlp(), _x((3, 4))
    target = {} if name.startswith("Neuron") else {"target": 1}
    quiet = make(model).attribute(x, **target, **kw)
    assert capsys.readouterr().err == ""
    torch.manual_seed(0)
    shown = make(model).attribute(x, **target, **kw, show_progress=True)
    err = capsys.readouterr().err
    assert f"{desc}: 100%" in err, err
    assert err.count(desc + ":") >= 1 and "Feature Ablation attribution" not in err.replace(desc, "")
    if "Permutation" not in name and "Sampling" not in name and name not in ("KernelShap", "Lime"):
        torch.testing.assert_close(quiet, shown)


def test_progress_bar_text_matches_captum(capsys):
    model, x = _mlp(), _x((3, 4))
    ca.FeatureAblation(model).attribute(x, target=0, show_progress=True)
    theirs = capsys.readouterr().err
    esa.FeatureAblation(model).attribute(x, target=0, show_progress=True)
    ours = capsys.readouterr().err
    assert "Feature Ablation attribution: 100%" in theirs and "Feature Ablation attribution: 100%" in ours


# --------------------------------------------------------------------------------------------
# attribute_future
# --------------------------------------------------------------------------------------------
def _future_forward(model):
    def forward(*args):
        fut = Future()
        fut.set_result(model(*args))
        return fut

    return forward


FUTURE = {
    "FeatureAblation": ({"feature_mask": torch.tensor([[0, 0, 1, 2]]), "baselines": 0.5}, False),
    "FeaturePermutation": ({"feature_mask": torch.tensor([[0, 1, 1, 2]])}, True),
    "ShapleyValueSampling": ({"n_samples": 3, "feature_mask": torch.tensor([[0, 0, 1, 2]])}, True),
    "ShapleyValues": ({"feature_mask": torch.tensor([[0, 0, 1, 2]])}, False),
}


@pytest.mark.parametrize("name", sorted(FUTURE))
def test_attribute_future_equals_attribute_and_captum(name):
    kw, seeded = FUTURE[name]
    model, x = _mlp(), _x((3, 4))
    torch.manual_seed(5)
    plain = getattr(esa, name)(model).attribute(x, target=2, **kw)
    torch.manual_seed(5)
    fut = getattr(esa, name)(_future_forward(model)).attribute_future(x, target=2, **kw)
    assert isinstance(fut, Future)
    torch.testing.assert_close(fut.wait(), plain)
    if not seeded:
        theirs = getattr(ca, name)(_future_forward(model)).attribute_future(x, target=2, **kw).wait()
        torch.testing.assert_close(fut.wait(), theirs.to(D))  # ours keeps float64 (README)


NOT_IMPLEMENTED = ["Saliency", "IntegratedGradients", "InputXGradient", "DeepLift", "GradientShap",
                   "GuidedBackprop", "Lime", "KernelShap", "LRP", "Occlusion", "NoiseTunnel"]


@pytest.mark.parametrize("name", NOT_IMPLEMENTED)
def test_attribute_future_not_implemented_where_captum_raises(name):
    model = _mlp()
    arg = esa.Saliency(model) if name == "NoiseTunnel" else model
    with pytest.raises(NotImplementedError, match="attribute_future is not implemented"):
        getattr(esa, name)(arg).attribute_future()
    with pytest.raises(NotImplementedError):
        getattr(ca, name)(ca.Saliency(model) if name == "NoiseTunnel" else model).attribute_future()


def test_wrong_use_of_futures_raises_captums_assertion():
    model, x = _mlp(), _x((3, 4))
    with pytest.raises(AssertionError, match="attribute_future"):
        esa.FeatureAblation(_future_forward(model)).attribute(x, target=0)
    with pytest.raises(AssertionError, match="Future"):
        esa.FeatureAblation(model).attribute_future(x, target=0)
    with pytest.raises(AssertionError):  # Captum raises the same kind
        ca.FeatureAblation(model).attribute_future(x, target=0)


def test_forward_future_error_is_delivered_through_the_future():
    def failing(*args):
        fut = Future()
        fut.set_exception(RuntimeError("remote model is down"))
        return fut

    fut = esa.FeatureAblation(failing).attribute_future(_x((2, 4)), target=0)
    with pytest.raises(RuntimeError, match="remote model is down"):
        fut.wait()


# --------------------------------------------------------------------------------------------
# bad arguments: one error class that is what Captum raises (AssertionError / IndexError) and a ValueError
# --------------------------------------------------------------------------------------------
def _err_model():
    return _mlp(4, 3, seed=0)


X3 = _x((3, 4), 2)
BAD = {
    "target int out of range": lambda A, m: A.IntegratedGradients(m).attribute(X3, target=7),
    "target negative out of range": lambda A, m: A.Saliency(m).attribute(X3, target=-5),
    "target list wrong length": lambda A, m: A.IntegratedGradients(m).attribute(X3, target=[0, 1]),
    "target tensor wrong length": lambda A, m: A.Saliency(m).attribute(X3, target=torch.tensor([0, 1])),
    "target tuple too long": lambda A, m: A.Saliency(m).attribute(X3, target=(0, 1)),
    "ablation target out of range": lambda A, m: A.FeatureAblation(m).attribute(X3, target=3),
    "deeplift target out of range": lambda A, m: A.DeepLift(m).attribute(X3, target=3),
    "layer target out of range": lambda A, m: A.LayerConductance(m, m[0]).attribute(X3, target=5),
    "neuron out of range": lambda A, m: A.NeuronGradient(m, m[0]).attribute(X3, neuron_selector=9),
    "neuron selector too long": lambda A, m: A.NeuronGradient(m, m[0]).attribute(X3, neuron_selector=(1, 2)),
    "neuron deeplift out of range": lambda A, m: A.NeuronDeepLift(m, m[0]).attribute(X3, neuron_selector=5),
    "occlusion window too large": lambda A, m: A.Occlusion(m).attribute(X3, sliding_window_shapes=(5,), target=0),
    "occlusion window dims": lambda A, m: A.Occlusion(m).attribute(X3, sliding_window_shapes=(2, 2), target=0),
    "occlusion stride > window": lambda A, m: A.Occlusion(m).attribute(X3, sliding_window_shapes=(2,), strides=(3,), target=0),
    "baselines count": lambda A, m: A.IntegratedGradients(m).attribute(X3, target=0, baselines=(X3, X3)),
    "baseline batch size": lambda A, m: A.IntegratedGradients(m).attribute(X3, target=0, baselines=X3[:2]),
    "noise tunnel type": lambda A, m: A.NoiseTunnel(A.Saliency(m)).attribute(X3, target=0, nt_type="foo"),
    "integration method": lambda A, m: A.IntegratedGradients(m).attribute(X3, target=0, method="foo"),
    "perturbations_per_eval 0": lambda A, m: A.FeatureAblation(m).attribute(X3, target=0, perturbations_per_eval=0),
    "gradient shap baseline shape": lambda A, m: A.GradientShap(m).attribute(X3, baselines=torch.zeros(2, 3, dtype=D), target=0),
}


def _hook_state(model):
    return [(len(mod._forward_hooks), len(mod._forward_pre_hooks), len(mod._backward_hooks),
             len(getattr(mod, "_backward_pre_hooks", {})), sorted(vars(mod))) for mod in model.modules()]


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_arguments_raise_captums_kind_and_value_error(case):
    model = _err_model()
    before = _hook_state(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(Exception) as theirs:
            BAD[case](ca, _err_model())
        with pytest.raises(AttributionArgumentError) as ours:
            BAD[case](esa, model)
    assert isinstance(ours.value, ValueError) and isinstance(ours.value, AssertionError)
    if isinstance(theirs.value, (AssertionError, IndexError)):
        assert isinstance(ours.value, type(theirs.value)), (type(theirs.value), type(ours.value))
    assert str(ours.value)  # says what to fix
    assert _hook_state(model) == before
    x = _x((2, 4), 9)  # the model still works and is unchanged
    torch.testing.assert_close(esa.Saliency(model).attribute(x, target=0), ca.Saliency(model).attribute(x, target=0))


# --------------------------------------------------------------------------------------------
# input forms Captum accepts
# --------------------------------------------------------------------------------------------
INT_X = torch.tensor([[1, 2, 3, 4], [0, 1, 0, 2]])


def _as_float_forward(model):
    return lambda t: model(t.to(D))


@pytest.mark.parametrize("baselines", [0.5, torch.full((1, 4), 0.5, dtype=D)], ids=["scalar", "tensor"])
def test_integer_inputs_float_baseline_feature_ablation_equals_captum(baselines):
    f = _as_float_forward(_mlp())
    ours = esa.FeatureAblation(f).attribute(INT_X, baselines=baselines, target=0)
    theirs = ca.FeatureAblation(f).attribute(INT_X, baselines=baselines, target=0)
    torch.testing.assert_close(ours, theirs)


@pytest.mark.parametrize("name", ["ShapleyValues", "ShapleyValueSampling"])
def test_integer_inputs_float_baseline_shapley_completeness(name):
    """Shapley values sum to f(x) - f(baseline) with the float baseline itself (Captum truncates
    the baseline to the input's integer dtype; with input 1 and baseline 1.5 it answers zeros)."""
    model = _mlp()
    f = _as_float_forward(model)
    x = torch.tensor([[1, 1, 1, 1], [1, 0, 2, 1]])
    kw = {"n_samples": 3} if name == "ShapleyValueSampling" else {}
    attr = getattr(esa, name)(f).attribute(x, baselines=1.5, target=0, **kw)
    expected = f(x)[:, 0] - model(torch.full((2, 4), 1.5, dtype=D))[:, 0]
    torch.testing.assert_close(attr.sum(1), expected.detach())
    assert attr[0].abs().sum() > 0


def _two_inputs(a, b):
    return a.sum(1) * 2 + b.sum()


def test_feature_permutation_sparse_groups_and_small_batch_input_equal_captum():
    x = _x((3, 4))
    torch.manual_seed(3)
    ours = esa.FeaturePermutation(_mlp()).attribute(x, target=0, feature_mask=torch.tensor([[0, 5, 5, 9]]))
    torch.manual_seed(3)
    theirs = ca.FeaturePermutation(_mlp()).attribute(x, target=0, feature_mask=torch.tensor([[0, 5, 5, 9]]))
    torch.testing.assert_close(ours, theirs)
    context = torch.ones(1, 2, dtype=D)  # a shared input with one example: its features are not permuted
    torch.manual_seed(4)
    with pytest.warns(UserWarning, match="Skipping feature groups"):
        ours = esa.FeaturePermutation(_two_inputs).attribute((x, context))
    torch.manual_seed(4)
    theirs = ca.FeaturePermutation(_two_inputs).attribute((x, context))
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b)
    assert ours[1].abs().sum() == 0 and ours[0].abs().sum() > 0
    with pytest.warns(UserWarning, match="Skipping"):
        one = esa.FeaturePermutation(_mlp()).attribute(x[:1], target=0)
    assert one.abs().sum() == 0  # Captum: zeros and a warning for a batch of one


def test_feature_permutation_min_examples_none_permutes_every_group():
    method = esa.FeaturePermutation(_two_inputs)
    method._min_examples_per_batch_grouped = None
    with pytest.raises(AssertionError, match="batch_size = 1"):  # the default perm_func cannot permute 1 example
        method.attribute((_x((3, 4)), torch.ones(1, 2, dtype=D)))


@pytest.mark.parametrize("name", ["GradientShap", "DeepLiftShap"])
@pytest.mark.parametrize("form", ["no-argument", "of-inputs"])
def test_callable_baselines_equal_captum(name, form):
    dist = _x((2, 4), 7)
    baselines = (lambda: dist) if form == "no-argument" else (lambda inp: dist * inp.mean())
    kw = {"n_samples": 4} if name == "GradientShap" else {}
    x = _x((3, 4))
    torch.manual_seed(0)
    np.random.seed(0)
    ours = getattr(esa, name)(_mlp()).attribute(x, baselines=baselines, target=0, **kw)
    if name == "GradientShap":  # seeded and batch-invariant: Captum on each example alone
        from tests.per_example import per_example

        fixed = (lambda: dist) if form == "no-argument" else (lambda inp: dist * x.mean())  # the batch's baselines
        theirs = per_example(lambda x: ca.GradientShap(_mlp()).attribute(x, baselines=fixed, target=0, **kw), 3, {"x": x}, seed=0)
    else:
        torch.manual_seed(0)
        np.random.seed(0)
        theirs = ca.DeepLiftShap(_mlp()).attribute(x, baselines=baselines, target=0)
    torch.testing.assert_close(ours, theirs)


@pytest.mark.parametrize("baselines", [torch.arange(4.0, dtype=D), torch.arange(4.0, dtype=D).unsqueeze(0)], ids=["per-feature", "batch-1"])
def test_occlusion_baselines_broadcast_per_feature_equal_captum(baselines):
    x = _x((3, 4))
    ours = esa.Occlusion(_mlp()).attribute(x, sliding_window_shapes=(2,), baselines=baselines, target=1)
    theirs = ca.Occlusion(_mlp()).attribute(x, sliding_window_shapes=(2,), baselines=baselines, target=1)
    torch.testing.assert_close(ours, theirs.to(D))  # Captum returns float32 here (README)


@pytest.mark.parametrize("name", ["Lime", "KernelShap"])
def test_forward_output_that_requires_grad(name):
    model = _mlp()
    x = _x((2, 4))
    assert model(x).requires_grad
    attr = getattr(esa, name)(model).attribute(x, target=0, n_samples=64)
    assert attr.shape == x.shape and torch.isfinite(attr).all() and not attr.requires_grad


@pytest.mark.parametrize("interpretable", ["SkLearnLasso", "SkLearnLinearRegression", "SGDLasso"])
def test_lime_accepts_captums_interpretable_models(interpretable):
    """Captum's interpretable models (fit(DataLoader), representation()) plug into our Lime: with all
    2^4 binary samples and an unregularized fit, Lime's linear surrogate of an additive model is exact."""
    from captum._utils.models import linear_model

    w = torch.tensor([[1.0, -2.0, 0.5, 3.0]], dtype=D)
    f = lambda t: (t * w).sum(1)  # noqa: E731 - additive: f(x) - f(x with features removed) per feature
    kw = {"alpha": 1e-6} if interpretable == "SkLearnLasso" else {}
    model = getattr(linear_model, interpretable)(**kw)
    x = torch.ones(1, 4, dtype=D)
    attr = esa.Lime(f, interpretable_model=model).attribute(x, n_samples=200, baselines=0.0)
    if interpretable == "SGDLasso":  # SGD with its default regularization: close, not exact
        assert attr.shape == x.shape and torch.isfinite(attr).all()
    else:
        torch.testing.assert_close(attr.to(D), w, atol=1e-3, rtol=1e-3)


class _InplaceNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin, self.relu, self.out = torch.nn.Linear(4, 5).to(D), torch.nn.ReLU(inplace=True), torch.nn.Linear(5, 3).to(D)

    def forward(self, x):
        return self.out(self.relu(self.lin(x)))


INPLACE = {
    "LayerActivation": {},
    "LayerGradientXActivation": {"target": 0},
    "LayerConductance": {"target": 0},
    "LayerFeatureAblation": {"target": 0},
    "LayerGradCam": {"target": 0},
}


@pytest.mark.parametrize("name", sorted(INPLACE))
def test_inplace_module_after_the_layer_equals_captum(name):
    net, x = _InplaceNet(), _x((3, 4))
    ours = getattr(esa, name)(net, net.lin).attribute(x, **INPLACE[name])
    theirs = getattr(ca, name)(net, net.lin).attribute(x, **INPLACE[name])
    torch.testing.assert_close(ours, theirs)
    assert (ours < 0).any() if name == "LayerActivation" else True  # the pre-ReLU values, not the rectified ones


# --------------------------------------------------------------------------------------------
# seeded NoiseTunnel: an example's answer does not depend on its batch or on the chunking
# --------------------------------------------------------------------------------------------
NOISE_TUNNEL = {
    "smoothgrad-saliency": (lambda m: esa.NoiseTunnel(esa.Saliency(m)), {"nt_type": "smoothgrad", "stdevs": 0.3}),
    "vargrad-ig": (lambda m: esa.NoiseTunnel(esa.IntegratedGradients(m)), {"nt_type": "vargrad", "stdevs": 0.2, "n_steps": 5}),
    "smoothgrad_sq-two-inputs": (lambda m: esa.NoiseTunnel(esa.InputXGradient(lambda a, b: m(torch.cat([a, b], 1)))),
                                 {"nt_type": "smoothgrad_sq", "stdevs": (0.1, 0.4)}),
}


@pytest.mark.parametrize("name", sorted(NOISE_TUNNEL))
def test_noise_tunnel_batch_equals_each_example_alone(name):
    make, kw = NOISE_TUNNEL[name]
    model, x = _mlp(), _x((3, 4), 11)
    inputs = (x[:, :2], x[:, 2:]) if "two-inputs" in name else x
    pick = (lambda t, i: tuple(a[i:i + 1] for a in t)) if isinstance(inputs, tuple) else (lambda t, i: t[i:i + 1])
    torch.manual_seed(7)
    batch = make(model).attribute(inputs, target=1, nt_samples=6, **kw)
    torch.manual_seed(7)
    chunked = make(model).attribute(inputs, target=1, nt_samples=6, nt_samples_batch_size=4, **kw)
    tup = lambda t: t if isinstance(t, tuple) else (t,)  # noqa: E731
    for a, b in zip(tup(batch), tup(chunked)):
        torch.testing.assert_close(a, b)
    for i in range(3):
        torch.manual_seed(7)
        alone = make(model).attribute(pick(inputs, i), target=1, nt_samples=6, **kw)
        for a, b in zip(tup(batch), tup(alone)):
            torch.testing.assert_close(a[i:i + 1], b)
    torch.manual_seed(8)  # the seed decides the noise
    assert not torch.equal(tup(make(model).attribute(inputs, target=1, nt_samples=6, **kw))[0], tup(batch)[0])


GRADIENT_SHAP = {
    "GradientShap": lambda m: (esa.GradientShap(m), {"target": 1}),
    "LayerGradientShap": lambda m: (esa.LayerGradientShap(m, m[0]), {"target": 1}),
    "NeuronGradientShap": lambda m: (esa.NeuronGradientShap(m, m[0]), {"neuron_selector": 2}),
}


@pytest.mark.parametrize("name", sorted(GRADIENT_SHAP))
@pytest.mark.parametrize("stdevs", [0.0, 0.3])
def test_gradient_shap_batch_equals_each_example_alone(name, stdevs):
    """Seeded (torch and numpy, as Captum): each example's baselines, path points and noise do not
    depend on the rest of the batch (without noise, each equals Captum's answer for it alone)."""
    from tests.per_example import per_example

    model, x, dist = _mlp(), _x((3, 4), 12), _x((5, 4), 13)
    method, kw = GRADIENT_SHAP[name](model)
    kw = dict(kw, baselines=dist, n_samples=6, stdevs=stdevs)
    torch.manual_seed(3)
    np.random.seed(3)
    batch = method.attribute(x, **kw)
    alone = per_example(lambda x: method.attribute(x, **kw), 3, {"x": x}, seed=3)
    torch.testing.assert_close(batch, alone)
