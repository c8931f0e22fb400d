"""Shapley estimators: the Kernel SHAP design and constrained fit, antithetic permutation sampling.

Properties, not timings: efficiency holds exactly at any budget; a complete budget gives the exact
Shapley values; estimates converge to exact values (enumerated over all coalitions); hand-derived
values where the estimator is exact (antithetic orderings on a game of order 2); agreement with
slow textbook re-implementations on the same random draws; batch == per example under a seed.
"""
import math

import pytest
import torch

from explain_serve._core.shapley_kernel import (
    _sum_zero_basis, constrained_fit, design_rank_bound, kernel_design, kernel_weights, size_mass,
)
from explain_serve.attr import KernelShap, Lime, ShapleyValues, ShapleyValueSampling
from explain_serve._core.spd import orthonormal_rows
from explain_serve.attr.shapley import _walk_keep, antithetic_permutations, orderings

D = torch.float64


def _mlp(m, seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(m, 16), torch.nn.Tanh(), torch.nn.Linear(16, 16), torch.nn.ReLU(),
                               torch.nn.Linear(16, 1)).to(D)


def _data(m, n=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, m, generator=g, dtype=D), 0.3 * torch.randn(1, m, generator=g, dtype=D)


def _value(f, x, b, z):
    """v(z) for one example: features in z from x, the others from b (a plain loop)."""
    return float(f(torch.where(z.bool(), x, b[0])[None]).reshape(-1)[0])


def _rel_err(est, exact):
    return ((est - exact).abs().max() / exact.abs().max()).item()


# --------------------------------------------------------------------------------------------
# the Kernel SHAP design
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("m, n", [(10, 256), (10, 1024), (30, 256), (70, 400), (7, 40), (6, 5), (2, 10), (1, 8)])
def test_kernel_design_structure(m, n):
    torch.manual_seed(0)
    z, w = kernel_design(m, n)
    sizes = z.sum(1)
    assert z.shape == (min(max(n, 2), 2 ** m), m)
    assert z[0].all() and not z[1].any() and w[0] == 0 and w[1] == 0
    if m > 1:
        # the weights spread each size's kernel mass evenly over the design's coalitions of that size
        present = sizes[2:].unique()
        for k in present.tolist():
            torch.testing.assert_close(w[sizes == k], torch.full_like(w[sizes == k], size_mass(m)[k] / int((sizes == k).sum())),
                                       rtol=1e-12, atol=0)
        torch.testing.assert_close(w.sum(), size_mass(m)[present].sum(), rtol=1e-12, atol=0)
        torch.testing.assert_close(kernel_weights(z), w, rtol=0, atol=0)
    # enumerated sizes: all their coalitions, exactly once, with weight W(k) / C(m, k)
    enumerated = [k for k in range(1, m) if (w[sizes == k] == size_mass(m)[k] / float(math.comb(m, k))).all()
                  and int((sizes == k).sum()) == math.comb(m, k)]
    for k in enumerated:
        assert len({tuple(r.tolist()) for r in z[sizes == k]}) == math.comb(m, k)
    # sampled rows come in complementary pairs
    n_enum = sum(math.comb(m, k) for k in enumerated)
    sampled = z[2 + n_enum:]
    pairs = sampled[: sampled.shape[0] // 2 * 2].reshape(-1, 2, m)
    assert (pairs[:, 0] == ~pairs[:, 1]).all()
    # without replacement: no coalition twice
    assert len({tuple(r.tolist()) for r in z}) == z.shape[0]
    # stratified, uniform over sizes: each sampled size pair (s, m - s) gets the floor or the ceiling
    # of twice the middle size's share of pairs, unless it has fewer distinct pairs (then all of them)
    drawn = sampled[0::2].sum(1)
    small = torch.minimum(drawn, m - drawn)
    strata = range(min(enumerated, default=0) + 1 if enumerated else 1, m // 2 + 1)
    strata = [s for s in strata if s not in enumerated]
    if strata and sampled.shape[0]:
        counts = torch.tensor([int((small == s).sum()) for s in strata])
        capacity = torch.tensor([min(math.comb(m, s) // (2 if 2 * s == m else 1), 2 ** 62) for s in strata])
        two = torch.tensor([1.0 if 2 * s == m else 2.0 for s in strata])
        shared = counts < capacity
        if shared.any():
            unit = counts[shared].sum() / two[shared].sum()  # pairs per size
            assert ((counts[shared] - two[shared] * unit).abs() < 1).all()
            assert (counts[~shared] <= two[~shared] * unit + 1).all()


@pytest.mark.parametrize("m, n", [(20, 25), (20, 60), (10, 30), (7, 40), (6, 11), (4, 9), (3, 4)])
def test_design_rank_bound_holds_and_leaves_the_fit_unchanged(m, n):
    """The bound is at least the centred design's numerical rank, and passing it (which skips the
    Cholesky attempt when below M - 1) gives bit-identical Shapley values."""
    bound = design_rank_bound(m, n)
    for seed in range(4):
        torch.manual_seed(seed)
        z, w = kernel_design(m, n)
        zf = z.to(torch.float64)
        assert int(torch.linalg.matrix_rank(zf @ _sum_zero_basis(m), atol=1e-8)) <= bound
        y = torch.randn(3, z.shape[0], dtype=torch.float64)
        assert torch.equal(constrained_fit(zf, w, y, rank_bound=bound), constrained_fit(zf, w, y))


def test_kernel_design_with_more_coalitions_than_a_float_holds():
    """1100 features: C(1100, 550) overflows a double; the design is still drawn, all distinct."""
    torch.manual_seed(0)
    z, w = kernel_design(1100, 300)
    sizes = z.sum(1)
    assert z.shape == (300, 1100) and len({tuple(r.tolist()) for r in z}) == 300
    torch.testing.assert_close(w.sum(), size_mass(1100)[sizes[2:].unique()].sum(), rtol=1e-12, atol=0)


def test_kernel_design_enumerates_the_heaviest_sizes():
    """m = 10: the kernel's mass by size is W(k) = 9 / (k (10 - k)), 5.09 in all. Budget 254: sizes
    1 and 9 (20 coalitions, mass 2) are expected 254 * 2 / 5.09 = 100 >= 20 draws: enumerated;
    sizes 2 and 8 (90, mass 1.125) then 234 * 1.125 / 3.09 = 85 < 90: sampled, 117 pairs
    stratified uniformly over the sizes 2..8: 117 / 7 = 16.7 per size, so 33 or 34 pairs for each of
    (2, 8), (3, 7), (4, 6) and 16 or 17 for (5, 5)."""
    torch.manual_seed(0)
    z, w = kernel_design(10, 256)
    sizes = z.sum(1)
    assert sorted(sizes[2:22].tolist()) == [1] * 10 + [9] * 10
    assert ((sizes[22:] >= 2) & (sizes[22:] <= 8)).all()
    small = torch.minimum(sizes[22::2], 10 - sizes[22::2])
    counts = [int((small == s).sum()) for s in (2, 3, 4, 5)]
    assert sum(counts) == 117 and set(counts[:3]) <= {33, 34} and counts[3] in (16, 17)
    for k in range(2, 9):  # size k's mass 9 / (k (10 - k)) over its drawn coalitions
        torch.testing.assert_close(w[sizes == k].sum(), torch.tensor(9 / (k * (10 - k)), dtype=D), rtol=1e-12, atol=0)
    # a complete budget enumerates every coalition
    z, _ = kernel_design(10, 1024)
    assert len({tuple(r.tolist()) for r in z}) == 1024


# --------------------------------------------------------------------------------------------
# KernelShap
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n_samples", [3, 12, 40, 300])
def test_kernel_shap_efficiency_is_exact(n_samples):
    model, (x, b) = _mlp(10), _data(10)
    torch.manual_seed(0)
    phi = KernelShap(model).attribute(x, baselines=b, target=0, n_samples=n_samples)
    with torch.no_grad():
        gap = model(x)[:, 0] - model(b)[:, 0]
    torch.testing.assert_close(phi.sum(1), gap, rtol=0, atol=1e-12)


@pytest.mark.parametrize("m", [4, 7])
def test_kernel_shap_complete_budget_is_exact(m):
    model, (x, b) = _mlp(m, seed=m), _data(m)
    exact = ShapleyValues(model).attribute(x, baselines=b, target=0)
    est = KernelShap(model).attribute(x, baselines=b, target=0, n_samples=2 ** m + 5)
    torch.testing.assert_close(est, exact, rtol=0, atol=1e-10)


@pytest.mark.filterwarnings("ignore:Exact Shapley")
def test_kernel_shap_converges_to_exact_shapley():
    m = 10
    model, (x, b) = _mlp(m, seed=3), _data(m)
    exact = ShapleyValues(model).attribute(x, baselines=b, target=0)
    errors = {}
    for n in (64, 256, 1000):
        errs = []
        for seed in range(4):
            torch.manual_seed(seed)
            errs.append(_rel_err(KernelShap(model).attribute(x, baselines=b, target=0, n_samples=n), exact))
        errors[n] = sum(errs) / len(errs)
    assert errors[1000] < errors[256] < errors[64]
    assert errors[1000] < 0.01  # 1000 of 1024 coalitions: all but a few middle-sized ones enumerated


def test_kernel_shap_equals_textbook_constrained_least_squares():
    """Same draws, solved the slow way: a loop over coalitions and the KKT system of the
    equality-constrained weighted least squares (Lagrange multiplier), example by example."""
    m = 8
    model, (x, b) = _mlp(m, seed=5), _data(m, n=3)
    torch.manual_seed(11)
    fast = KernelShap(model).attribute(x, baselines=b, target=0, n_samples=60)
    torch.manual_seed(11)
    z, w = kernel_design(m, 60)
    f = lambda t: model(t)[:, 0]  # noqa: E731
    for e in range(x.shape[0]):
        with torch.no_grad():
            v = torch.tensor([_value(f, x[e], b, r) for r in z], dtype=D)
        v0, delta = v[1], v[0] - v[1]
        zf = z[2:].to(D)
        kkt = torch.zeros(m + 1, m + 1, dtype=D)
        kkt[:m, :m] = zf.T @ (w[2:, None] * zf)
        kkt[:m, m] = kkt[m, :m] = 1.0
        rhs = torch.cat([zf.T @ (w[2:] * (v[2:] - v0)), delta.reshape(1)])
        phi = torch.linalg.solve(kkt, rhs)[:m]
        torch.testing.assert_close(fast[e], phi, rtol=0, atol=1e-9)


def test_constrained_fit_linear_game_is_exact_when_underdetermined_in_size():
    """A linear game is recovered exactly once the design spans the sum-zero subspace."""
    torch.manual_seed(0)
    c = torch.randn(2, 6, dtype=D)
    z, w = kernel_design(6, 14)
    y = (z.to(D) @ c.T).T + torch.tensor([[0.5], [-1.0]], dtype=D)
    torch.testing.assert_close(constrained_fit(z, w, y), c, rtol=0, atol=1e-10)


# --------------------------------------------------------------------------------------------
# ShapleyValueSampling: antithetic orderings
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n, k", [(20, 13), (5, 4), (64, 63), (3, 1)])
def test_orthonormal_rows_is_the_sign_fixed_qr(n, k):
    """Cholesky QR against Householder QR with r's diagonal made positive: the same frame."""
    g = torch.randn(n, k, dtype=D, generator=torch.Generator().manual_seed(n + k))
    g -= g.mean(0)
    qt = orthonormal_rows(g.numpy())
    q, r = torch.linalg.qr(g)
    torch.testing.assert_close(torch.from_numpy(qt), (q * torch.sign(r.diagonal())).T, rtol=0, atol=1e-9)


def test_orthonormal_rows_declines_an_ill_conditioned_frame():
    g = torch.randn(6, 3, dtype=D, generator=torch.Generator().manual_seed(0))
    g[:, 2] = g[:, 0] + 1e-9 * g[:, 1]  # nearly dependent columns: the QR fallback's case
    assert orthonormal_rows(g.numpy()) is None
    assert orthonormal_rows(torch.zeros(1, 1, dtype=D).numpy()) is None  # one player: a zero direction


def test_antithetic_permutations_pair_each_ordering_with_its_reverse():
    torch.manual_seed(0)
    p = antithetic_permutations(7, 5)
    assert p.shape == (7, 5)
    assert (p.sort(1).values == torch.arange(5)).all()
    assert (p[0:6:2].flip(1) == p[1:6:2]).all()


@pytest.mark.parametrize("n_samples, n_feat", [(7, 5), (25, 20), (4, 2), (3, 1), (40, 3), (30, 4)])
@pytest.mark.parametrize("dtype", [torch.bool, torch.uint8, torch.int32, torch.int64])
def test_walk_keep_lists_each_walks_prefixes(n_samples, n_feat, dtype):
    """The one-forward units: v(empty), v(full), then the first k + 1 features of each ordering,
    checked against the definition one unit at a time (in select's bit form: all bits set where
    kept); the positions invert the orderings."""
    torch.manual_seed(0)
    pos = orderings(n_samples, n_feat)
    torch.manual_seed(0)
    perms = antithetic_permutations(n_samples, n_feat)
    assert torch.equal(torch.from_numpy(pos).gather(1, perms), torch.arange(n_feat).expand(n_samples, n_feat))
    keep = torch.from_numpy(_walk_keep(pos, dtype))
    expected = torch.zeros(2 + n_samples * (n_feat - 1), n_feat, dtype=torch.bool)
    expected[1] = True
    for s, perm in enumerate(perms.tolist()):
        for k in range(n_feat - 1):
            expected[2 + s * (n_feat - 1) + k, perm[:k + 1]] = True
    on = torch.tensor(True if dtype == torch.bool else -1).to(dtype)
    assert keep.dtype == dtype
    assert torch.equal(keep, torch.where(expected, on, torch.zeros((), dtype=dtype)))


def test_antithetic_sampling_is_exact_on_games_of_order_two():
    """v(S) = sum_i a_i + sum_{i<j} b_ij over the kept features: in an ordering and its reverse each
    pair (i, j) is met once with j before i, so one antithetic pair gives
    phi_i = a_i + sum_j b_ij / 2 (hand-derived) exactly; one ordering alone does not."""
    m = 6
    g = torch.Generator().manual_seed(4)
    w, B = torch.randn(m, generator=g, dtype=D), torch.randn(m, m, generator=g, dtype=D)
    x = torch.randn(3, m, generator=g, dtype=D)
    f = lambda t: t @ w + ((t @ B) * t).sum(1)  # noqa: E731  (baseline 0)
    sym = B + B.T
    expected = x * w + x**2 * B.diagonal() + 0.5 * x * ((x @ sym) - x * sym.diagonal())
    torch.manual_seed(0)
    est = ShapleyValueSampling(f).attribute(x, n_samples=2)
    torch.testing.assert_close(est, expected, rtol=0, atol=1e-12)
    torch.manual_seed(0)
    assert _rel_err(ShapleyValueSampling(f).attribute(x, n_samples=1), expected) > 0.05


def test_shapley_sampling_equals_textbook_walk():
    """Same orderings, the marginal contributions computed one coalition at a time."""
    m = 5
    model, (x, b) = _mlp(m, seed=6), _data(m, n=2)
    torch.manual_seed(9)
    fast = ShapleyValueSampling(model).attribute(x, baselines=b, target=0, n_samples=7)
    torch.manual_seed(9)
    perms = antithetic_permutations(7, m)
    f = lambda t: model(t)[:, 0]  # noqa: E731
    slow = torch.zeros_like(x)
    with torch.no_grad():
        for e in range(x.shape[0]):
            for perm in perms.tolist():
                z = torch.zeros(m, dtype=torch.bool)
                prev = _value(f, x[e], b, z)
                for i in perm:
                    z[i] = True
                    cur = _value(f, x[e], b, z)
                    slow[e, i] += cur - prev
                    prev = cur
    torch.testing.assert_close(fast, slow / 7, rtol=0, atol=1e-12)


def test_antithetic_sampling_converges_with_efficiency():
    m = 8
    model, (x, b) = _mlp(m, seed=7), _data(m)
    exact = ShapleyValues(model).attribute(x, baselines=b, target=0)
    torch.manual_seed(0)
    est = ShapleyValueSampling(model).attribute(x, baselines=b, target=0, n_samples=2000)
    with torch.no_grad():
        torch.testing.assert_close(est.sum(1), model(x)[:, 0] - model(b)[:, 0], rtol=0, atol=1e-12)
    assert _rel_err(est, exact) < 0.02


def _independent_pairs(n, n_feat):
    """The plain antithetic scheme: independent uniform orderings, each followed by its reverse."""
    half = torch.rand((n + 1) // 2, n_feat).argsort(-1)
    return torch.stack([half, half.flip(-1)], 1).reshape(-1, n_feat)[:n]


def _iid_kernel_design(m, n):
    """The textbook paired Kernel SHAP sampler with the same enumerated sizes (those of the design
    here: every coalition present): sizes from the kernel over the sizes left, subsets with
    replacement, complementary pairs, each sampled coalition an equal share of the mass left."""
    z_all, _ = kernel_design(m, n)
    k_all = z_all[2:].sum(1)
    enum_sizes = [k for k in range(1, m) if int((k_all == k).sum()) == math.comb(m, k)]
    enumerated = z_all[2:][torch.isin(k_all, torch.tensor(enum_sizes, dtype=torch.long))]
    left = [k for k in range(1, m) if k not in enum_sizes]
    mass = size_mass(m)
    n_draw = n - 2 - enumerated.shape[0]
    sizes = torch.tensor(left)[torch.multinomial(mass[left], (n_draw + 1) // 2, replacement=True)]
    z = torch.rand(sizes.shape[0], m).argsort(-1).argsort(-1) < sizes[:, None]
    sampled = torch.stack([z, ~z], 1).reshape(-1, m)[:n_draw]
    k_enum = enumerated.sum(1)
    w = torch.cat([torch.zeros(2, dtype=D), mass[k_enum] / torch.tensor([math.comb(m, int(k)) for k in k_enum], dtype=D),
                   torch.full((n_draw,), float(mass[left].sum()) / n_draw, dtype=D)])
    return torch.cat([z_all[:2], enumerated, sampled]), w


@pytest.mark.filterwarnings("ignore:Exact Shapley")
def test_sampling_designs_beat_the_plain_schemes_at_the_same_budget():
    """The point of the designs, on seeds fixed in advance: orthogonal antithetic orderings give a
    lower mean error than independent antithetic pairs, and Kernel SHAP's stratified sizes drawn
    without replacement a lower one than sizes drawn from the kernel with replacement."""
    m = 10
    model, (x, b) = _mlp(m, seed=2), _data(m, n=6)
    exact = ShapleyValues(model).attribute(x, baselines=b, target=0)
    f = lambda t: model(t)[:, 0]  # noqa: E731
    orth, plain, strat, iid = [], [], [], []
    for seed in range(24):
        torch.manual_seed(seed)
        orth.append(_rel_err(ShapleyValueSampling(model).attribute(x, baselines=b, target=0, n_samples=18), exact))
        torch.manual_seed(seed)
        perms = _independent_pairs(18, m)
        slow = torch.zeros_like(x)
        with torch.no_grad():
            for perm in perms:
                z = torch.zeros(x.shape[0], m, dtype=torch.bool)
                prev = f(torch.where(z, x, b))
                for i in perm.tolist():
                    z[:, i] = True
                    cur = f(torch.where(z, x, b))
                    slow[:, i] += cur - prev
                    prev = cur
        plain.append(_rel_err(slow / 18, exact))
        for design, errs in ((kernel_design, strat), (_iid_kernel_design, iid)):
            torch.manual_seed(seed)
            z, w = design(m, 200)
            with torch.no_grad():
                y = f(torch.where(z[None], x[:, None], b[:, None]).reshape(-1, m)).reshape(x.shape[0], -1)
            errs.append(_rel_err(constrained_fit(z, w, y), exact))
    assert sum(orth) < 0.9 * sum(plain)
    assert sum(strat) < 0.9 * sum(iid)


# --------------------------------------------------------------------------------------------
# batch == per example under a seed (one table drives all random methods and paths)
# --------------------------------------------------------------------------------------------
def _lime_custom_similarity(model):
    sim = lambda orig, pert, interp, **kw: float(torch.exp(-((orig - pert) ** 2).sum()))  # noqa: E731
    return Lime(model, similarity_func=sim)


RANDOM_METHODS = {
    "KernelShap": (KernelShap, {"n_samples": 30}),
    "Lime": (Lime, {"n_samples": 30}),
    "Lime-per-sample-path": (_lime_custom_similarity, {"n_samples": 20}),
    "ShapleyValueSampling": (ShapleyValueSampling, {"n_samples": 5}),
}


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("method", list(RANDOM_METHODS))
def test_batch_equals_per_example_under_a_seed(method, masked):
    make, kw = RANDOM_METHODS[method]
    model, (x, b) = _mlp(6, seed=8), _data(6, n=3)
    kw = dict(kw, baselines=b, target=0)
    if masked:
        kw["feature_mask"] = torch.tensor([[0, 0, 1, 2, 3, 4]])  # 5 groups: 32 coalitions > 30
    torch.manual_seed(21)
    batch = make(model).attribute(x, **kw)
    for e in range(x.shape[0]):
        torch.manual_seed(21)
        one = make(model).attribute(x[e:e + 1], **kw)
        torch.testing.assert_close(batch[e:e + 1], one, rtol=0, atol=1e-12)
    torch.manual_seed(22)  # and the seed matters
    assert not torch.equal(make(model).attribute(x, **kw), batch)


@pytest.mark.parametrize("n_samples", [12, 40, 300])
def test_kernel_shap_is_repeatable_under_a_seed(n_samples):
    """Also where the design is rank-deficient (a budget below the number of features)."""
    model, (x, b) = _mlp(30, seed=9), _data(30, n=2)
    runs = []
    for _ in range(3):
        torch.manual_seed(4)
        runs.append(KernelShap(model).attribute(x, baselines=b, target=0, n_samples=n_samples))
    for r in runs[1:]:
        assert torch.equal(r, runs[0])
