"""The perturbation methods' lean path: the unperturbed references (the input, the baseline) ride
in the same forward as the perturbations, and that gives the same numbers as evaluating them
apart (``perturbations_per_eval=1``: Captum's one perturbation per forward), under a seed.

One table of methods drives every check: the number of forwards, agreement with the chunked
path for per-example, aggregating and multi-input forwards, and the building blocks (the bitwise
``select``, the Kernel SHAP and LIME solves) against slow textbook versions.
"""
import pytest
import torch

from explain_serve._core.perturbation import bit_mask_dtype, per_scalar_batch, select
from explain_serve._core.shapley_kernel import constrained_fit, design_rank_bound, kernel_design
from explain_serve.attr import (
    FeatureAblation,
    FeaturePermutation,
    InterpretableLinearModel,
    KernelShap,
    Lime,
    ShapleyValueSampling,
)

D = torch.float64

# name -> (constructor, attribute kwargs)
METHODS = {
    "FeatureAblation": (FeatureAblation, {"baselines": 0.5}),
    "FeaturePermutation": (FeaturePermutation, {}),
    "ShapleyValueSampling": (ShapleyValueSampling, {"n_samples": 4}),
    "KernelShap": (KernelShap, {"n_samples": 12}),
    "Lime": (Lime, {"n_samples": 30}),
}


def _mlp(n_in=6):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(n_in, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)).to(D)


def _x(shape, seed=1):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=D)


class Counting:
    """A forward that records the batch size of every call."""

    def __init__(self, forward):
        self.forward, self.batches = forward, []

    def __call__(self, *args):
        self.batches.append(args[0].shape[0])
        return self.forward(*args)


def _attribute(name, forward, x, seed=3, **extra):
    make, kw = METHODS[name]
    torch.manual_seed(seed)
    return make(forward).attribute(x, **{**kw, **extra})


@pytest.mark.parametrize("name", sorted(METHODS))
@pytest.mark.parametrize("shape", [(4, 6), (1, 6), (3, 2, 3)])
def test_one_forward_equals_one_perturbation_per_forward(name, shape):
    if name == "FeaturePermutation" and shape[0] == 1:
        pytest.skip("a batch of one cannot be permuted")
    model = _mlp()
    forward = lambda t: model(t.reshape(t.shape[0], -1))  # noqa: E731
    x = _x(shape)
    counted = Counting(forward)
    fast = _attribute(name, counted, x, target=1)
    assert len(counted.batches) == 1  # the input (and the baseline) joined the perturbations
    slow = _attribute(name, forward, x, target=1, perturbations_per_eval=1)
    assert fast.shape == slow.shape == x.shape
    torch.testing.assert_close(fast, slow, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_aggregating_forward_falls_back_to_the_separate_reference(name):
    """A forward returning one value for the whole batch cannot share a forward with its
    perturbations: the methods notice it from the output's shape and evaluate as before."""
    model = _mlp()
    forward = lambda t: model(t)[:, 1].sum()  # noqa: E731
    x = _x((3, 6))
    fast = _attribute(name, forward, x)
    slow = _attribute(name, forward, x, perturbations_per_eval=1)
    torch.testing.assert_close(fast, slow, rtol=0, atol=1e-12)
    assert fast.abs().sum() > 0
    if name == "FeatureAblation":  # the textbook value: f(x) - f(x with scalar i at 0.5)
        for i in range(6):
            xi = x.clone()
            xi[:, i] = 0.5
            torch.testing.assert_close(fast[0, i], forward(x) - forward(xi), rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", ["FeatureAblation", "ShapleyValueSampling", "KernelShap", "Lime"])
def test_masks_and_two_inputs_in_one_forward(name):
    model = _mlp(9)
    forward = lambda a, b, scale: model(torch.cat([a, b.reshape(b.shape[0], -1)], 1)) * scale  # noqa: E731
    x = (_x((3, 5)), _x((3, 2, 2), seed=2))
    masks = (torch.tensor([[0, 0, 1, 2, 2]]), torch.tensor([[[3, 3], [4, 5]]]))
    kw = {"target": 2, "feature_mask": masks, "additional_forward_args": (2.0,)}
    if name == "FeatureAblation":
        kw["baselines"] = (0.5, -1.0)
    counted = Counting(forward)
    fast = _attribute(name, counted, x, **kw)
    assert len(counted.batches) == 1
    slow = _attribute(name, forward, x, perturbations_per_eval=1, **kw)
    for f, s in zip(fast, slow):
        torch.testing.assert_close(f, s, rtol=0, atol=1e-12)


# --------------------------------------------------------------------------------------------
# building blocks
# --------------------------------------------------------------------------------------------
SPECIAL = [float("nan"), -0.0, 0.0, float("inf"), -float("inf"), 1e-310, -3.5]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64,
                                   torch.int64, torch.int32, torch.uint8, torch.bool])
@pytest.mark.parametrize("mask_form", ["bool", "bits"])
def test_select_is_torch_where_bit_for_bit(dtype, mask_form):
    """The mask as bool, or as the bit mask (-1 where ``a`` is taken) of ``bit_mask_dtype``."""
    gen = torch.Generator().manual_seed(0)
    mask = torch.rand(5, 1, 7, generator=gen) < 0.5
    if dtype.is_floating_point:
        a = torch.tensor(SPECIAL, dtype=dtype).reshape(1, 1, 7).expand(1, 3, 7)
        b = (torch.randn(1, 3, 7, generator=gen) * 10).to(dtype)
    else:
        a = (torch.randn(1, 3, 7, generator=gen) * 50).to(dtype)
        b = (torch.randn(1, 3, 7, generator=gen) * 50).to(dtype)
    given = mask
    if mask_form == "bits":
        bits = bit_mask_dtype(a)
        assert bits == torch.bool if dtype == torch.bool else bits.itemsize == dtype.itemsize
        given = torch.where(mask, torch.tensor(-1).to(bits), torch.tensor(0).to(bits)) if bits != torch.bool else mask
    for m, p, q in ((given, a, b), (given, b, a)):
        ours, ref = select(m, p, q), torch.where(mask, p, q)
        assert ours.dtype == ref.dtype and ours.shape == ref.shape
        if dtype.is_floating_point:  # same bits: NaN payloads and signed zeros included
            width = {2: torch.int16, 4: torch.int32, 8: torch.int64}[ref.element_size()]
            assert torch.equal(ours.view(width), ref.view(width))
        else:
            assert torch.equal(ours, ref)
    # numbers on either side take the tensor's dtype, as in torch.where (+0 by a masking shortcut)
    for number in (0, 0.0, -0.0, 0.5, 2):
        for p, q in ((a, number), (number, a)):
            if dtype == torch.bool:
                continue
            ours, ref = select(given, p, q), torch.where(mask, p, q)
            assert ours.dtype == ref.dtype
            width = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[ref.element_size()]
            assert torch.equal(ours.view(width), ref.view(width)), (p, q)
    assert torch.equal(given if given.dtype == torch.bool else given != 0, mask)  # never modified


_X = torch.tensor(SPECIAL * 2, dtype=torch.float32)[:12].reshape(2, 2, 3)  # NaN, signed zeros, inf
PER_SCALAR_REPLACEMENTS = {  # name -> (x, replacement)
    "number": (_X, 0.5),
    "+0": (_X, 0.0),
    "-0": (_X, -0.0),
    "int": (_X, 2),
    "like x": (_X, torch.randn(2, 2, 3, generator=torch.Generator().manual_seed(3))),
    "one per copy": (_X, torch.randn(7, 2, 2, 3, generator=torch.Generator().manual_seed(4))),
    "float64 on float32 (promoted)": (_X, torch.randn(2, 2, 3, generator=torch.Generator().manual_seed(5), dtype=D)),
    "int input": (torch.arange(12).reshape(2, 6), torch.arange(12).reshape(2, 6) * -1),
}


@pytest.mark.parametrize("name", list(PER_SCALAR_REPLACEMENTS))
def test_per_scalar_batch_replaces_scalar_i_of_copy_1_plus_i(name):
    """Against the definition, one copy and one scalar at a time, bit for bit."""
    x, replacement = PER_SCALAR_REPLACEMENTS[name]
    b, n = x.shape[0], x[0].numel()
    ours = per_scalar_batch(x, replacement).reshape(n + 1, b, n)
    flat = x.reshape(b, n)
    rep = replacement.reshape(-1, b, n) if isinstance(replacement, torch.Tensor) else None
    for c in range(n + 1):
        for e in range(b):
            for i in range(n):
                if c == 1 + i:
                    want = rep[c if rep.shape[0] > 1 else 0, e, i] if rep is not None else torch.tensor(replacement, dtype=x.dtype)
                else:
                    want = flat[e, i]
                got = ours[c, e, i]
                want = want.to(got.dtype)
                assert torch.equal(got.reshape(1).view(torch.uint8), want.reshape(1).view(torch.uint8)), (c, e, i)
    assert ours.dtype == (torch.promote_types(x.dtype, rep.dtype) if rep is not None else x.dtype)


def test_small_tensor_cache_keeps_only_small_results_and_at_most_maxsize():
    from explain_serve._core.caching import small_tensor_cache

    built = []

    @small_tensor_cache(lambda n: n, limit=10, maxsize=2)
    def zeros(n):
        built.append(n)
        return torch.zeros(n)

    assert zeros(3) is zeros(3) and built == [3]  # small: built once
    assert zeros(11) is not zeros(11) and built == [3, 11, 11]  # over the limit: built per call
    zeros(4), zeros(5), zeros(3)  # maxsize 2: 3 was evicted, built again
    assert built == [3, 11, 11, 4, 5, 3]


def _pinv_fit(z, w, y):
    """The textbook minimum-norm solution: the SVD pseudo-inverse of the weighted centred design."""
    z = z.to(D)
    m, k = z.shape[1], z.sum(1)
    v0, delta = y[:, 1:2], y[:, :1] - y[:, 1:2]
    resid = y - v0 - delta * (k / m)
    a = w.sqrt()[:, None] * (z - k[:, None] / m)
    return delta / m + (torch.linalg.pinv(a, rtol=1e-10) @ (resid * w.sqrt()).T).T


# small designs solve in NumPy, the last two (full rank, rank-deficient) in torch (solve_in_numpy)
@pytest.mark.parametrize("m, n", [(20, 25), (20, 12), (30, 40), (6, 5), (8, 9), (10, 60), (62, 40), (30, 1024), (100, 60)])
def test_kernel_shap_fit_is_the_minimum_norm_least_squares(m, n):
    for seed in range(5):
        torch.manual_seed(seed)
        z, w = kernel_design(m, n)
        y = torch.randn(3, z.shape[0], dtype=D)
        phi = constrained_fit(z, w, y, rank_bound=design_rank_bound(m, n))
        ref = _pinv_fit(z, w, y)
        torch.testing.assert_close(phi, ref, rtol=0, atol=1e-11 * ref.abs().max().item())
        torch.testing.assert_close(phi.sum(1), y[:, 0] - y[:, 1], rtol=0, atol=1e-12)


# small systems solve in NumPy, the last two (full rank, rank-deficient) in torch (solve_in_numpy)
@pytest.mark.parametrize("alpha, n_samples, f", [(0.0, 40, 6), (1e-2, 40, 6), (0.0, 4, 6), (0.5, 4, 6),
                                                 (1e-2, 3000, 20), (0.5, 20, 120)])
def test_lime_surrogate_equals_the_weighted_ridge_formula(alpha, n_samples, f):
    gen = torch.Generator().manual_seed(0)
    x = (torch.rand(2, n_samples, f, generator=gen) < 0.5).to(D)
    y = torch.randn(2, n_samples, generator=gen, dtype=D)
    w = torch.rand(2, n_samples, generator=gen, dtype=D)
    model = InterpretableLinearModel(alpha=alpha)
    coef = model.fit_tensors(x, y, w)
    for g in range(2):
        design = torch.cat([x[g], torch.ones(n_samples, 1, dtype=D)], 1)
        sw = (w[g] / w[g].sum()).sqrt()[:, None]
        pen = torch.diag(torch.tensor([alpha] * f + [0.0], dtype=D))
        if n_samples > f:  # the normal equations with the ridge on the coefficients only
            sol = torch.linalg.solve((design * sw).T @ (design * sw) + pen, (design * sw).T @ (y[g, :, None] * sw))
        else:  # fewer samples than features: the minimum-norm solution of the ridge-augmented system
            a = torch.cat([design * sw, pen.sqrt()])
            sol = torch.linalg.pinv(a) @ torch.cat([y[g, :, None] * sw, torch.zeros(f + 1, 1, dtype=D)])
        torch.testing.assert_close(coef[g], sol[:f, 0], rtol=0, atol=1e-9)
        torch.testing.assert_close(model.intercept_[g], sol[f, 0], rtol=0, atol=1e-9)
