"""Perturbation methods: hand-derived values, exact Shapley values, Captum agreement, chunking.

One table of model cases (an MLP, a CNN with MaxPool, a two-input model with additional forward
args) drives the Captum-agreement, chunking and batch-vs-one-by-one checks; small cooperative
games with known (brute-force) Shapley values drive the Shapley/KernelShap checks.
"""
import itertools
import math
import warnings

import pytest
import torch

from explain_serve.attr import (
    FeatureAblation,
    FeaturePermutation,
    InterpretableLinearModel,
    KernelShap,
    Lime,
    LimeBase,
    Occlusion,
    ShapleyValues,
    ShapleyValueSampling,
    get_exp_kernel_similarity_function,
)

ca = pytest.importorskip("captum.attr")

D = torch.float64


# --------------------------------------------------------------------------------------------
# models and the case table
# --------------------------------------------------------------------------------------------
def _mlp():
    torch.manual_seed(1)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3)).to(D)


def _cnn():
    torch.manual_seed(2)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 2, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(32, 3),
    ).to(D)


class TwoInput(torch.nn.Module):
    """forward(a, b, shift, scale): shift is a per-example tensor, scale a python float."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.la = torch.nn.Linear(3, 4).to(D)
        self.lb = torch.nn.Linear(4, 4).to(D)

    def forward(self, a, b, shift, scale):
        h = torch.tanh(self.la(a)) * torch.relu(self.lb(b)) + shift
        return scale * h[:, :3]


def _x(shape, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=D)


QUADRANTS = torch.tensor([[0] * 4 + [1] * 4] * 4 + [[2] * 4 + [3] * 4] * 4).reshape(1, 1, 8, 8)

# name -> (model factory, inputs, common kwargs); inputs is a tensor or a tuple
CASES = {
    "mlp-int": (_mlp, lambda: _x((3, 6), 10), dict(target=1)),
    "mlp-list-scalar-baseline": (_mlp, lambda: _x((3, 6), 11), dict(target=[0, 2, 1], baselines=0.3)),
    "mlp-tensor-target-mask": (_mlp, lambda: _x((3, 6), 12), dict(
        target=torch.tensor([2, 0, 1]), feature_mask=torch.tensor([[0, 0, 1, 2, 2, 3]]),
        baselines=_x((1, 6), 13))),
    "mlp-per-example-mask": (_mlp, lambda: _x((3, 6), 14), dict(
        target=0, feature_mask=torch.tensor([[0, 0, 1, 1, 2, 2], [0, 1, 2, 0, 1, 2], [2, 2, 2, 1, 0, 0]]))),
    "cnn-quadrants": (_cnn, lambda: _x((2, 1, 8, 8), 15), dict(target=2, feature_mask=QUADRANTS, baselines=-0.5)),
    "cnn-tensor-baseline": (_cnn, lambda: _x((2, 1, 8, 8), 16), dict(
        target=torch.tensor(1), feature_mask=QUADRANTS, baselines=_x((2, 1, 8, 8), 17))),
    "two-input-args": (TwoInput, lambda: (_x((3, 3), 18), _x((3, 4), 19)), dict(
        target=[1, 0, 2], additional_forward_args=(_x((3, 4), 20), 2.0),
        feature_mask=(torch.tensor([[0, 1, 2]]), torch.tensor([[2, 3, 3, 0]])),  # groups 0 and 2 span both inputs
        baselines=(0.1, _x((1, 4), 21)))),
}

OCCLUSION_WINDOWS = {
    "mlp-int": dict(sliding_window_shapes=(2,), strides=1),
    "mlp-list-scalar-baseline": dict(sliding_window_shapes=(3,), strides=2),
    "mlp-tensor-target-mask": dict(sliding_window_shapes=(2,), strides=2),
    "mlp-per-example-mask": dict(sliding_window_shapes=(4,), strides=(3,)),
    "cnn-quadrants": dict(sliding_window_shapes=(1, 3, 3), strides=(1, 2, 2)),
    "cnn-tensor-baseline": dict(sliding_window_shapes=(1, 4, 3), strides=(1, 3, 2)),
    "two-input-args": dict(sliding_window_shapes=((2,), (3,)), strides=(1, 1)),
}


def _case(name, method):
    model_f, inputs_f, kw = CASES[name]
    kw = dict(kw)
    if method == "Occlusion":
        kw.pop("feature_mask", None)
        kw.update(OCCLUSION_WINDOWS[name])
    if method == "FeaturePermutation":
        kw.pop("baselines", None)
    return model_f(), inputs_f(), kw


def _close(a, b, atol):
    a, b = (a, b) if isinstance(a, tuple) else ((a,), (b,))
    assert len(a) == len(b)
    for p, q in zip(a, b):
        assert p.shape == q.shape, (p.shape, q.shape)
        torch.testing.assert_close(p.to(D), q.to(D), rtol=0, atol=atol)


def _run(cls, method_kw, model, inputs, kw, seed=0):
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cls(model).attribute(inputs, **method_kw, **kw)


# method -> (ours, captum, extra kwargs); random methods are seeded identically
DETERMINISTIC = {
    "FeatureAblation": (FeatureAblation, ca.FeatureAblation, {}),
    "Occlusion": (Occlusion, ca.Occlusion, {}),
    "ShapleyValues": (ShapleyValues, ca.ShapleyValues, {}),
    "ShapleyValueSampling": (ShapleyValueSampling, ca.ShapleyValueSampling, {"n_samples": 5}),
    "FeaturePermutation": (FeaturePermutation, ca.FeaturePermutation, {}),
}


@pytest.mark.parametrize("case", list(CASES))
# ShapleyValueSampling draws antithetic orderings (not Captum's): see tests/test_estimators.py
@pytest.mark.parametrize("method", [m for m in DETERMINISTIC if m != "ShapleyValueSampling"])
def test_matches_captum(method, case):
    ours, theirs, extra = DETERMINISTIC[method]
    model, inputs, kw = _case(case, method)
    if method == "ShapleyValues" and "feature_mask" not in kw:
        kw["feature_mask"] = torch.tensor([[0, 0, 1, 2, 3, 3]])  # 4 players keep Captum's n! fast
    a = _run(ours, extra, model, inputs, kw, seed=7)
    b = _run(theirs, extra, model, inputs, kw, seed=7)
    _close(a, b, 1e-5)


@pytest.mark.parametrize("method", list(DETERMINISTIC) + ["KernelShap", "Lime"])
def test_method_properties_match_captum(method):
    ours, theirs = {"KernelShap": (KernelShap, ca.KernelShap), "Lime": (Lime, ca.Lime)}.get(method) or DETERMINISTIC[method][:2]
    model = _mlp()
    assert ours(model).multiplies_by_inputs == theirs(model).multiplies_by_inputs
    assert ours(model).has_convergence_delta() == theirs(model).has_convergence_delta()


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("method", list(DETERMINISTIC) + ["KernelShap", "Lime"])
def test_chunked_equals_unchunked(method, case):
    ours = {"KernelShap": KernelShap, "Lime": Lime}.get(method) or DETERMINISTIC[method][0]
    extra = {"KernelShap": {"n_samples": 40}, "Lime": {"n_samples": 40},
             "ShapleyValueSampling": {"n_samples": 5}}.get(method, {})
    model, inputs, kw = _case(case, method)
    ref = _run(ours, extra, model, inputs, kw, seed=3)
    for k in (1, 3):
        _close(_run(ours, dict(extra, perturbations_per_eval=k), model, inputs, kw, seed=3), ref, 1e-10)


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("method", ["FeatureAblation", "Occlusion", "ShapleyValues"])
def test_batch_equals_one_by_one(method, case):
    ours = DETERMINISTIC[method][0]
    model, inputs, kw = _case(case, method)
    if method == "ShapleyValues" and "feature_mask" not in kw:
        kw["feature_mask"] = torch.tensor([[0, 0, 1, 2, 3, 3]])
    full = _run(ours, {}, model, inputs, kw)
    tup = isinstance(inputs, tuple)
    n = (inputs[0] if tup else inputs).shape[0]

    def one(v, i):
        if isinstance(v, tuple):
            return tuple(one(e, i) for e in v)
        if isinstance(v, list):
            return [v[i]]
        if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == n:
            return v[i : i + 1]
        return v

    rows = []
    for i in range(n):
        kwi = {k: one(v, i) for k, v in kw.items()}
        rows.append(_run(ours, {}, model, one(inputs, i), kwi))
    if tup:
        _close(full, tuple(torch.cat([r[j] for r in rows]) for j in range(len(inputs))), 1e-12)
    else:
        _close(full, torch.cat(rows), 1e-12)


@pytest.mark.parametrize("method", list(DETERMINISTIC) + ["KernelShap", "Lime"])
def test_float32_and_plain_callable(method):
    """A plain function through numpy (like an ONNX Runtime session), float32 and float64."""
    w = torch.tensor([[1.0, -2.0, 0.5], [0.3, 0.0, 2.0], [-1.0, 1.0, 1.0], [0.5, 0.5, -0.5]])

    def session(x):  # tensor in, tensor out; no torch module, no autograd
        return torch.from_numpy(x.numpy() @ w.numpy().astype(x.numpy().dtype) ** 2)

    cls = {"KernelShap": KernelShap, "Lime": Lime}.get(method) or DETERMINISTIC[method][0]
    kw = {"target": 2}
    if method == "Occlusion":
        kw["sliding_window_shapes"] = (2,)
    if method in ("ShapleyValueSampling", "KernelShap", "Lime"):
        kw["n_samples"] = 30
    out = {}
    for dtype in (torch.float32, torch.float64):
        x = _x((4, 4), 30).to(dtype)
        a = _run(cls, kw, session, x, {}, seed=5)
        assert a.shape == x.shape and a.dtype == dtype
        out[dtype] = a
    _close(out[torch.float32], out[torch.float64], 1e-4)


# --------------------------------------------------------------------------------------------
# hand-derived values
# --------------------------------------------------------------------------------------------
W = torch.tensor([1.0, -2.0, 3.0, 0.5, 1.5], dtype=D)
X = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0], [-1.0, 0.0, 1.0, 2.0, -3.0], [0.5, 0.5, -0.5, 1.0, 2.0]], dtype=D)
B = torch.tensor([0.5, -0.5, 0.0, 1.0, 2.0], dtype=D)


def linear(x):
    return x @ W + 0.7


def test_feature_ablation_linear_by_hand():
    a = FeatureAblation(linear).attribute(X, baselines=B)
    _close(a, W * (X - B), 1e-12)
    # grouped: every member of a group gets the group's total
    a = FeatureAblation(linear).attribute(X, baselines=B, feature_mask=torch.tensor([[0, 0, 1, 1, 1]]))
    g0 = (W * (X - B))[:, :2].sum(1, keepdim=True)
    g1 = (W * (X - B))[:, 2:].sum(1, keepdim=True)
    _close(a, torch.cat([g0.expand(3, 2), g1.expand(3, 3)], 1), 1e-12)


def test_occlusion_window_sums_by_hand():
    x = torch.arange(16, dtype=D).reshape(1, 1, 4, 4)
    f = lambda t: t.reshape(t.shape[0], -1).sum(1)  # noqa: E731
    occ = Occlusion(f)
    a = occ.attribute(x, sliding_window_shapes=(1, 2, 2), strides=(1, 2, 2))
    blocks = torch.tensor([[0 + 1 + 4 + 5, 2 + 3 + 6 + 7], [8 + 9 + 12 + 13, 10 + 11 + 14 + 15]], dtype=D)
    _close(a, blocks.repeat_interleave(2, 0).repeat_interleave(2, 1).reshape(1, 1, 4, 4), 1e-12)
    # stride 1: a corner is covered by one window only, the pixel (1,1) by four
    a = occ.attribute(x, sliding_window_shapes=(1, 2, 2), strides=1, baselines=1.0)
    win = lambda i, j: float((x[0, 0, i : i + 2, j : j + 2] - 1).sum())  # noqa: E731
    assert a[0, 0, 0, 0].item() == pytest.approx(win(0, 0), abs=1e-12)
    assert a[0, 0, 1, 1].item() == pytest.approx((win(0, 0) + win(0, 1) + win(1, 0) + win(1, 1)) / 4, abs=1e-12)
    # window clipped at the border (length 5, window 2, stride 2: windows at 0, 2, 4)
    y = torch.arange(5, dtype=D).reshape(1, 5)
    a = Occlusion(lambda t: t.sum(1)).attribute(y, sliding_window_shapes=(2,), strides=2)
    _close(a, torch.tensor([[1.0, 1.0, 5.0, 5.0, 4.0]], dtype=D), 1e-12)


def test_feature_permutation_properties():
    torch.manual_seed(0)
    a = FeaturePermutation(linear).attribute(X)
    # additive model: attribution = w_i (x_i - x_perm(i)); the shuffled column is a permutation of x_i
    shuffled = X - a / W
    for i in range(X.shape[1]):
        torch.testing.assert_close(torch.sort(shuffled[:, i]).values, torch.sort(X[:, i]).values, rtol=0, atol=1e-12)
        assert (shuffled[:, i] - X[:, i]).abs().max().item() > 1e-6  # never the identity
        assert a[:, i].sum().abs().item() < 1e-12


def test_aggregate_output_like_captum():
    f = lambda x: linear(x).sum()  # noqa: E731  one scalar for the whole batch
    mask = torch.tensor([[0, 0, 1, 2, 2]])
    for ours, theirs in ((FeatureAblation, ca.FeatureAblation), (ShapleyValues, ca.ShapleyValues)):
        a = ours(f).attribute(X, baselines=B, feature_mask=mask)
        # Captum's Shapley evaluates a batch-1 baseline as one row when the forward aggregates
        # (its f(baselines) then sums 1 example, not 3); compare with the batch-shaped baseline
        b = theirs(f).attribute(X, baselines=B.expand(3, 5), feature_mask=mask)
        _close(a, b, 1e-5)
        _close(ours(f).attribute(X, baselines=B.expand(3, 5), feature_mask=mask), a, 1e-12)
        assert a.shape == (1, 5)
        group_sums = (W * (X - B)).sum(0)
        _close(a, torch.stack([group_sums[:2].sum()] * 2 + [group_sums[2]] + [group_sums[3:].sum()] * 2)[None], 1e-12)
    a = Occlusion(f).attribute(X, sliding_window_shapes=(2,))
    _close(a, ca.Occlusion(f).attribute(X, sliding_window_shapes=(2,)), 1e-5)
    k = KernelShap(f).attribute(X, baselines=B, n_samples=40)
    _close(k, (W * (X - B)).sum(0, keepdim=True), 1e-8)
    with pytest.raises(AssertionError):
        FeatureAblation(f).attribute(X, perturbations_per_eval=2)


def test_output_shape_check_for_explicit_chunks():
    # batch of one and an aggregating forward: automatic chunking falls back to one at a time
    f = lambda x: linear(x).sum().reshape(1)  # noqa: E731
    x = X[:1]
    _close(FeatureAblation(f).attribute(x, baselines=B), W * (x - B), 1e-12)
    with pytest.raises(AssertionError):
        FeatureAblation(f).attribute(x, baselines=B, perturbations_per_eval=2)


# --------------------------------------------------------------------------------------------
# Shapley values: brute force on small games
# --------------------------------------------------------------------------------------------
def game_a(x):  # interactions and a max
    return x[:, 0] * x[:, 1] + torch.maximum(x[:, 2], x[:, 3])


def game_b(x):
    return x[:, 0] * x[:, 1] * x[:, 2] + torch.relu(x[:, 3] - x[:, 4]) + 2 * x[:, 4] ** 2


GAMES = {
    "a": (game_a, _x((3, 4), 40), _x((1, 4), 41)),
    "b": (game_b, _x((2, 5), 42), torch.zeros(1, 5, dtype=D)),
}


def brute_force_shapley(f, x, b):
    """Average over all orderings of the marginal contributions (definition, one example at a time)."""
    n = x.shape[1]
    out = torch.zeros_like(x)
    for e in range(x.shape[0]):
        for perm in itertools.permutations(range(n)):
            cur = b[0].clone()
            prev = f(cur[None])[0]
            for i in perm:
                cur[i] = x[e, i]
                val = f(cur[None])[0]
                out[e, i] += val - prev
                prev = val
    return out / math.factorial(n)


@pytest.mark.parametrize("game", list(GAMES))
def test_shapley_values_exact(game):
    f, x, b = GAMES[game]
    exact = brute_force_shapley(f, x, b)
    _close(ShapleyValues(f).attribute(x, baselines=b), exact, 1e-10)
    # efficiency: attributions sum to f(x) - f(b)
    _close(exact.sum(1), f(x) - f(b), 1e-10)


@pytest.mark.parametrize("game", list(GAMES))
def test_shapley_sampling_converges(game):
    f, x, b = GAMES[game]
    exact = brute_force_shapley(f, x, b)
    torch.manual_seed(0)
    est = ShapleyValueSampling(f).attribute(x, baselines=b, n_samples=3000)
    _close(est.sum(1), f(x) - f(b), 1e-10)  # every sampled ordering telescopes
    scale = exact.abs().max().item()
    assert (est - exact).abs().max().item() < 0.03 * scale  # Monte Carlo error ~ sd / sqrt(3000)


@pytest.mark.parametrize("game", list(GAMES))
def test_kernel_shap_converges(game):
    f, x, b = GAMES[game]
    exact = brute_force_shapley(f, x, b)
    torch.manual_seed(0)
    est = KernelShap(f).attribute(x, baselines=b, n_samples=4000)
    _close(est.sum(1), f(x) - f(b), 1e-10)  # efficiency imposed in the fit
    assert (est - exact).abs().max().item() < 0.05 * exact.abs().max().item()


def test_kernel_shap_linear_is_exact():
    torch.manual_seed(0)
    a = KernelShap(linear).attribute(X, baselines=B, n_samples=30)
    _close(a, W * (X - B), 1e-8)
    coefs = KernelShap(linear).attribute(X, baselines=B, n_samples=30, return_input_shape=False,
                                         feature_mask=torch.tensor([[0, 0, 1, 1, 2]]))
    wx = W * (X - B)
    _close(coefs, torch.stack([wx[:, :2].sum(1), wx[:, 2:4].sum(1), wx[:, 4]], 1), 1e-8)


def test_kernel_shap_per_example_masks_and_tuple_inputs():
    torch.manual_seed(0)
    mask = torch.tensor([[0, 0, 1, 1, 2], [2, 1, 0, 1, 0], [0, 1, 2, 2, 2]])
    a = KernelShap(linear).attribute(X, baselines=B, feature_mask=mask, n_samples=30)
    wx = W * (X - B)
    ref = torch.stack([torch.stack([wx[e][mask[e] == mask[e, p]].sum() for p in range(5)]) for e in range(3)])
    _close(a, ref, 1e-8)
    # tuple in -> tuple out, a group spanning both inputs, additional args
    f = lambda a, b, c: a @ W[:3] + b @ W[3:] + c  # noqa: E731
    xa, xb = X[:, :3], X[:, 3:]
    out = KernelShap(f).attribute((xa, xb), baselines=(B[:3], B[3:]), additional_forward_args=(0.5,),
                                  feature_mask=(torch.tensor([[0, 1, 2]]), torch.tensor([[2, 3]])), n_samples=40)
    assert isinstance(out, tuple) and out[0].shape == xa.shape and out[1].shape == xb.shape
    _close(out[0][:, :2], wx[:, :2], 1e-8)
    _close(out[0][:, 2], wx[:, 2] + wx[:, 3], 1e-8)
    _close(out[1][:, 1], wx[:, 4], 1e-8)


def test_feature_permutation_custom_perm_func():
    rev = lambda x, m: torch.where(m, x.flip(0), x)  # noqa: E731
    a = FeaturePermutation(linear, perm_func=rev).attribute(X, perturbations_per_eval=2)
    _close(a, W * (X - X.flip(0)), 1e-12)


def test_lime_recovers_linear_coefficients():
    torch.manual_seed(0)
    a = Lime(linear).attribute(X, baselines=B, n_samples=400)
    ref = W * (X - B)
    assert (a - ref).abs().max().item() < 1e-2 * ref.abs().max().item()  # small ridge bias only
    # unregularised surrogate: exact
    a = Lime(linear, interpretable_model=InterpretableLinearModel()).attribute(X, baselines=B, n_samples=60)
    _close(a, ref, 1e-8)
    # Captum's interpretable-model protocol (fit on a DataLoader, representation()) works too
    from captum._utils.models.linear_model import SkLearnLinearRegression

    a = Lime(linear, interpretable_model=SkLearnLinearRegression()).attribute(X[:1], baselines=B, n_samples=60)
    _close(a, ref[:1], 1e-4)


def test_lime_custom_functions_use_per_sample_path():
    calls = []
    sim = get_exp_kernel_similarity_function("euclidean", kernel_width=3.0)

    def similarity(orig, pert, interp, **kw):
        calls.append(1)
        return sim(orig, pert, interp, **kw)

    torch.manual_seed(0)
    a = Lime(linear, interpretable_model=InterpretableLinearModel(), similarity_func=similarity).attribute(
        X, baselines=B, n_samples=50, perturbations_per_eval=7)
    assert len(calls) == 50 * X.shape[0]
    _close(a, W * (X - B), 1e-8)


def test_limebase_with_to_interp_transform():
    """Sampling in input space: perturbed inputs mapped to z by a user transform."""
    x = X[:1]

    def perturb(inp, **kw):
        z = (torch.rand(1, 5) < 0.5)
        return torch.where(z, inp, B)

    def to_interp(sample, inp, **kw):
        return (sample == inp).to(D)

    lb = LimeBase(linear, InterpretableLinearModel(), lambda *a, **k: 1.0, perturb, False, None, to_interp)
    torch.manual_seed(0)
    coefs = lb.attribute(x, n_samples=40)
    _close(coefs, W * (x - B), 1e-8)


def test_limebase_generator_sampler_stops_early():
    def gen(inp, **kw):
        for code in range(1, 20):  # 19 distinct coalitions, fewer than n_samples
            z = torch.tensor([[(code >> i) & 1 for i in range(5)]])
            yield z

    lb = LimeBase(linear, InterpretableLinearModel(), lambda *a, **k: 1.0, gen, True,
                  lambda z, inp, **kw: torch.where(z.bool(), inp, B), None)
    with pytest.warns(UserWarning, match="Generator completed"):
        coefs = lb.attribute(X[:1], n_samples=50)
    _close(coefs, W * (X[:1] - B), 1e-8)


def test_exp_kernel_matches_captum_and_batched():
    from captum.attr._core.lime import get_exp_kernel_similarity_function as theirs

    x, p = _x((1, 6), 50), _x((1, 6), 51)
    for mode in ("cosine", "euclidean"):
        ours = get_exp_kernel_similarity_function(mode, 0.7)
        assert ours(x, p, None) == pytest.approx(theirs(mode, 0.7)(x, p, None), rel=1e-5)
        batched = ours.batched((x,), (p.unsqueeze(0),), True)
        assert batched.item() == pytest.approx(ours(x, p, None), rel=1e-12)
