"""KernelShap's and Lime's lean path (one tensor input with the default feature mask, on the CPU:
the design drawn and fitted in NumPy, the copies stacked by one ``where``) against their generic
path (the same feature mask given explicitly: masks, torch similarity, the generic fit) on the
same draw under a seed, and the lean path's parts against the generic ones they replace.

One table of cases drives the end-to-end agreement; each case also checks that the lean path
ran (a subclass counts its calls, and Kernel SHAP's lean forward holds one copy fewer: its
design's first coalition is the input itself).
"""
import math

import numpy as np
import pytest
import torch

from explain_serve._core.perturbation import select, select_copies
from explain_serve._core.shapley_kernel import (
    _fit_arrays,
    _fit_folded,
    _fold_of,
    _fold_weights,
    constrained_fit,
    kernel_coalitions,
    kernel_design,
    kernel_design_folded,
    kernel_fit_folded,
)
from explain_serve._core.spd import solve_spd
from explain_serve.attr import KernelShap, Lime
from explain_serve.attr.lime import get_exp_kernel_similarity_function

D = torch.float64


class Counted:
    """Mixin: count the lean path's calls and the rows of every forward."""

    def __init__(self, forward, **kwargs):
        self.lean_calls, self.rows = 0, []

        def counted(*args):
            self.rows.append(args[0].shape[0])
            return forward(*args)

        super().__init__(counted, **kwargs)

    def _lean_in_one_forward(self, *args):
        self.lean_calls += 1
        return super()._lean_in_one_forward(*args)


class CountedKernelShap(Counted, KernelShap):
    pass


class CountedLime(Counted, Lime):
    pass


def _mlp(n_in, n_out=3, dtype=D):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(n_in, 16), torch.nn.Tanh(), torch.nn.Linear(16, n_out)).to(dtype)


def _flat(model):
    return lambda x: model(x.reshape(x.shape[0], -1))


# name -> (method, input shape, dtype, attribute kwargs, model constructor)
CASES = {
    "kshap-default": (CountedKernelShap, (1, 20), D, {"target": 1}),
    "kshap-batch-baseline-tensor": (CountedKernelShap, (4, 10), D, {"target": 0, "n_samples": 30,
                                                                     "baselines": "per-example"}),
    "kshap-enumerated-odd": (CountedKernelShap, (2, 6), D, {"target": 2, "n_samples": 41, "baselines": 0.25}),
    "kshap-complete": (CountedKernelShap, (2, 5), D, {"target": 1, "n_samples": 40}),
    "kshap-2d-input-list-target": (CountedKernelShap, (3, 3, 4), D, {"target": [0, 2, 1], "n_samples": 50}),
    "kshap-float32-coefs": (CountedKernelShap, (2, 12), torch.float32, {"target": 1, "return_input_shape": False}),
    "lime-default": (CountedLime, (1, 20), D, {"target": 1}),
    "lime-batch-baseline": (CountedLime, (3, 8), D, {"target": 2, "n_samples": 40, "baselines": "per-example"}),
    "lime-euclidean-scalar-baseline": (CountedLime, (2, 7), D, {"target": 0, "n_samples": 30, "baselines": -0.5,
                                                                  "similarity": "euclidean"}),
    "lime-2d-input-float32": (CountedLime, (2, 2, 5), torch.float32, {"target": 1, "n_samples": 35}),
}


def _run(case, lean, seed):
    cls, shape, dtype, kw = CASES[case]
    kw = dict(kw)
    n_feat = math.prod(shape[1:])
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1), dtype=dtype)
    if kw.get("baselines") == "per-example":
        kw["baselines"] = torch.randn(*shape, generator=torch.Generator().manual_seed(2), dtype=dtype)
    similarity = kw.pop("similarity", None)
    extra = {} if similarity is None else {"similarity_func": get_exp_kernel_similarity_function(similarity, 2.0)}
    method = cls(_flat(_mlp(n_feat, dtype=dtype)), **extra)
    if not lean:
        kw["feature_mask"] = torch.arange(n_feat).reshape((1,) + tuple(shape[1:]))
    torch.manual_seed(seed)
    return method.attribute(x, **kw), method


@pytest.mark.parametrize("case", list(CASES))
def test_lean_path_equals_the_generic_path_on_the_same_draw(case):
    cls, shape, dtype, kw = CASES[case]
    for seed in (0, 1, 2):
        lean, m_lean = _run(case, True, seed)
        generic, m_generic = _run(case, False, seed)
        assert m_lean.lean_calls == 1 and m_generic.lean_calls == 0
        n_samples, bsz = kw.get("n_samples", 25), shape[0]
        if cls is CountedKernelShap:  # the full coalition is the input: one copy fewer
            s = min(n_samples, 2 ** math.prod(shape[1:]))
            assert m_lean.rows == [s * bsz] and m_generic.rows == [(s + 1) * bsz]
        else:
            assert m_lean.rows == m_generic.rows == [(n_samples + 1) * bsz]
        assert lean.shape == generic.shape and lean.dtype == generic.dtype
        tol = 1e-10 if dtype == D else 1e-5
        torch.testing.assert_close(lean, generic, rtol=0, atol=tol * max(1.0, generic.abs().max().item()))


def test_lean_kernel_shap_is_efficient_and_matches_the_minimum_norm_fit():
    """Efficiency exactly, and the values of the textbook minimum-norm least squares on the same
    design (the SVD pseudo-inverse of the weighted centred design) at the benchmark's budget."""
    model = _mlp(20)
    x = torch.randn(2, 20, generator=torch.Generator().manual_seed(4), dtype=D)
    torch.manual_seed(5)
    phi = KernelShap(model).attribute(x, target=1)
    torch.manual_seed(5)
    z, w = kernel_design(20, 25)
    with torch.no_grad():
        y = model(torch.where(z[:, None, :], x[None], 0.0).reshape(-1, 20))[:, 1].reshape(25, 2).T
    torch.testing.assert_close(phi.sum(1), y[:, 0] - y[:, 1], rtol=0, atol=1e-12)
    m, k = 20, z.sum(1).to(D)
    resid = y - y[:, 1:2] - (y[:, :1] - y[:, 1:2]) * (k / m)
    a = w.sqrt()[:, None] * (z.to(D) - k[:, None] / m)
    ref = (y[:, :1] - y[:, 1:2]) / m + (torch.linalg.pinv(a, rtol=1e-10) @ (resid * w.sqrt()).T).T
    torch.testing.assert_close(phi, ref, rtol=0, atol=1e-11)


# --------------------------------------------------------------------------------------------
# the parts
# --------------------------------------------------------------------------------------------
def _to_pairs(folded, n_rows):
    """The folded design's map of row residuals to pair targets as a dense (S, D) matrix."""
    out = np.zeros((n_rows, folded.rep.shape[0]))
    out[folded.rows, folded.group] = folded.coef
    return out


@pytest.mark.parametrize("m, n", [(20, 25), (20, 60), (10, 256), (8, 61), (6, 14), (5, 40), (3, 4), (70, 40)])
def test_cached_folded_weights_equal_the_design_s_own(m, n):
    """The pairs and weights cached per count pattern are those found on the drawn design."""
    for seed in range(4):
        torch.manual_seed(seed)
        z, folded = kernel_design_folded(m, n)
        torch.manual_seed(seed)
        assert np.array_equal(z, kernel_coalitions(m, n).numpy())
        assert folded.to_target is not None  # the cached layout's target map is what gets fitted below
        own = _fold_weights(z.sum(1), None, _fold_of(z), m)
        order = np.argsort(folded.rep)
        assert np.array_equal(folded.rep[order], np.sort(own.rep))
        np.testing.assert_allclose(folded.frac, own.frac, rtol=0, atol=0)
        np.testing.assert_allclose(folded.weight[order], own.weight[np.argsort(own.rep)], rtol=1e-14, atol=0)
        np.testing.assert_allclose(_to_pairs(folded, z.shape[0])[:, order],
                                   _to_pairs(own, z.shape[0])[:, np.argsort(own.rep)], rtol=1e-14, atol=0)
        y = np.random.default_rng(seed).normal(size=(3, z.shape[0]))
        fast = kernel_fit_folded(z, torch.from_numpy(y), folded).numpy()
        np.testing.assert_allclose(fast, constrained_fit(torch.from_numpy(z), None, torch.from_numpy(y)).numpy(),
                                   rtol=0, atol=1e-12 * np.abs(fast).max())
        np.testing.assert_allclose(fast, _fit_folded(z, y, own), rtol=0, atol=1e-12 * np.abs(fast).max())


def test_fold_of_repeated_and_complementary_rows():
    """A design with a repeat and a complement: the fold sums their weights, with signs."""
    z = np.array([[1, 1, 1, 1], [0, 0, 0, 0], [1, 0, 0, 0], [0, 1, 1, 1], [1, 0, 0, 0], [1, 1, 0, 0]], dtype=bool)
    w = np.array([0.0, 0.0, 1.0, 2.0, 3.0, 4.0])
    fold = _fold_of(z)
    assert sorted(fold.rep.tolist()) == [2, 5]
    folded = _fold_weights(z.sum(1), w, fold, 4)
    col = {int(r): j for j, r in enumerate(folded.rep)}
    np.testing.assert_allclose(folded.weight[col[2]], 6.0)
    np.testing.assert_allclose(_to_pairs(folded, 6)[:, col[2]], [0, 0, 1 / 6, -2 / 6, 3 / 6, 0])
    # the fold leaves the weighted least squares unchanged: against the unfolded pseudo-inverse
    y = np.random.default_rng(0).normal(size=(2, 6))
    k = z.sum(1)
    resid = y - y[:, 1:2] - (y[:, :1] - y[:, 1:2]) * (k / 4)
    a = np.sqrt(w)[:, None] * (z - k[:, None] / 4)
    ref = (y[:, :1] - y[:, 1:2]) / 4 + (np.linalg.pinv(a, rcond=1e-10) @ (resid * np.sqrt(w)).T).T
    np.testing.assert_allclose(_fit_arrays(z, w, y), ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.int64, torch.bfloat16])
@pytest.mark.parametrize("base", ["zero", "tensor"])
def test_select_copies_equals_select(dtype, base):
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(3, 2, 4, generator=gen) * 10).to(dtype)
    x.view(-1)[0] = -0.0 if dtype.is_floating_point else 0
    b = 0 if base == "zero" else (torch.randn(3, 2, 4, generator=gen) * 10).to(dtype)
    keep = np.random.default_rng(1).random((5, 8)) < 0.5
    ours = select_copies(keep, x, b)
    mask = torch.from_numpy(keep).reshape(5, 1, 2, 4)
    ref = select(mask, x.unsqueeze(0), b.unsqueeze(0) if isinstance(b, torch.Tensor) else b).expand(5, 3, 2, 4)
    assert ours.shape == ref.shape and ours.dtype == ref.dtype
    width = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[ref.element_size()]
    assert torch.equal(ours.contiguous().view(width), ref.contiguous().view(width))


@pytest.mark.parametrize("mode, width", [("cosine", 1.0), ("cosine", 0.3), ("euclidean", 2.0)])
@pytest.mark.parametrize("base", ["zero", "tensor"])
def test_similarity_on_the_design_equals_the_batched_one(mode, width, base):
    sim = get_exp_kernel_similarity_function(mode, width)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 6, generator=gen, dtype=D)
    b = 0 if base == "zero" else torch.randn(3, 6, generator=gen, dtype=D)
    keep = np.random.default_rng(2).random((9, 6)) < 0.5
    keep[0] = False  # a copy of the baseline alone (zero norm against 0)
    perturbed = select_copies(keep, x, b)
    ref = sim.batched((x,), (perturbed,), True)
    ours = sim.on_design(keep, x.numpy(), b if base == "zero" else b.numpy())
    np.testing.assert_allclose(ours, ref.numpy(), rtol=1e-12, atol=1e-12)


def test_solve_spd_single_stacked_and_ill_conditioned():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(3, 12, 7))
    gram, rhs = a.transpose(0, 2, 1) @ a, rng.normal(size=(3, 7, 2))
    np.testing.assert_allclose(solve_spd(gram[0], rhs[0]), np.linalg.solve(gram[0], rhs[0]), rtol=1e-10)
    np.testing.assert_allclose(solve_spd(gram[:1], rhs[:1]), np.linalg.solve(gram[:1], rhs[:1]), rtol=1e-10)
    np.testing.assert_allclose(solve_spd(gram, rhs), np.linalg.solve(gram, rhs), rtol=1e-10)
    low = a[0, :5].T @ a[0, :5]  # rank 5 of 7
    assert solve_spd(low, rhs[0]) is None and solve_spd(np.stack([gram[0], low]), rhs[:2]) is None
    assert solve_spd(np.zeros((0, 0)), np.zeros((0, 2))).shape == (0, 2)
