"""DeepLift's gradient rules on the replaced-backward path (``HookSession.replace_gradient``).

Completeness (attributions sum to f(x) - f(b)) as the axiom, on cases the fast path must get
right: overlapping max-pool windows, in-place nonlinearities (which take the copying path), inputs
equal to the baseline in places (the rule falls back to the module's own gradient there).
"""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import explain_serve.attr as ea

D = torch.float64


def _net(pool, inplace):
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(inplace=inplace), pool,
        nn.Conv2d(4, 3, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.LazyLinear(5),
    ).to(D)


CASES = {
    "overlapping-pool": (nn.MaxPool2d(3, stride=2, padding=1), False),
    "pool-2": (nn.MaxPool2d(2), False),
    "inplace-relu": (nn.MaxPool2d(2), True),
    "overlapping-rectangular-pool": (nn.MaxPool2d((2, 3), stride=(2, 1)), False),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("baseline", ["zeros", "random", "equal-in-places"])
def test_deep_lift_completeness(case, baseline):
    model = _net(*CASES[case])
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 2, 8, 8, generator=g, dtype=D)
    model(x)  # materialise the lazy layer
    b = {"zeros": torch.zeros_like(x), "random": 0.3 * torch.randn(x.shape, generator=g, dtype=D),
         "equal-in-places": torch.where(torch.rand(x.shape, generator=g) < 0.5, x, torch.zeros_like(x))}[baseline]
    attr, delta = ea.DeepLift(model).attribute(x, b, target=2, return_convergence_delta=True)
    assert attr.shape == x.shape
    assert delta.abs().max().item() < 1e-10


def test_in_place_and_out_of_place_relu_agree():
    g = torch.Generator().manual_seed(2)
    x, b = torch.randn(2, 2, 8, 8, generator=g, dtype=D), torch.zeros(2, 2, 8, 8, dtype=D)
    a, c = _net(nn.MaxPool2d(2), False), _net(nn.MaxPool2d(2), True)
    a(x), c(x)
    c.load_state_dict(a.state_dict())
    torch.testing.assert_close(ea.DeepLift(c).attribute(x, b, target=1), ea.DeepLift(a).attribute(x, b, target=1),
                               rtol=0, atol=1e-12)


def _pool_net(pool: nn.Module, n_out: int = 4):
    torch.manual_seed(3)
    return nn.Sequential(pool, nn.Flatten(), nn.LazyLinear(n_out), nn.Tanh(), nn.Linear(n_out, n_out)).to(D)


# The pool first, so that a baseline equal to the input in places gives windows whose argmax has
# no input difference: there the pool's own gradient is used, per row (the rarely taken branch).
# (Captum mishandles a ReLU right before the pool, so it cannot be the oracle for that model.)
POOLS = {
    "pool1d": (1, nn.MaxPool1d(2), (6, 2, 10)),
    "pool2d": (2, nn.MaxPool2d(2), (6, 2, 8, 8)),
    "pool2d-ceil-padded": (2, nn.MaxPool2d(3, stride=3, padding=1, ceil_mode=True), (6, 2, 8, 7)),
    "pool2d-wide-stride": (2, nn.MaxPool2d(2, stride=3), (6, 2, 8, 8)),
    "pool3d": (3, nn.MaxPool3d(2), (6, 2, 4, 4, 4)),
}  # overlapping windows: Captum unpools (one window's share wins), the chain rule sums them


@pytest.mark.parametrize("case", list(POOLS))
@pytest.mark.parametrize("baseline", ["zeros", "equal-in-places", "random"])
def test_max_pool_rule_matches_captum(case, baseline):
    captum_attr = pytest.importorskip("captum.attr")
    _, pool, shape = POOLS[case]
    model = _pool_net(pool)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(shape, generator=g, dtype=D)
    model(x)
    b = {"zeros": torch.zeros_like(x), "random": 0.3 * torch.randn(x.shape, generator=g, dtype=D),
         "equal-in-places": torch.where(torch.rand(x.shape, generator=g) < 0.5, x, torch.zeros_like(x))}[baseline]
    target = [0, 1, 2, 3, 0, 1]
    ours, delta = ea.DeepLift(model).attribute(x, b, target=target, return_convergence_delta=True)
    theirs = captum_attr.DeepLift(model).attribute(x, b, target=target)
    torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-12)
    assert delta.abs().max().item() < 1e-10


def _literal_max_pool_rule(pool: nn.Module, x, grad_output, eps=1e-10):
    """The max-pool rule position by position, for both rows of every (input, baseline) pair
    (``x`` is the inputs, then the baselines):
    where |x - b| < eps the pool's own gradient of that row, else the output differences of both
    rows' argmaxes, times their output gradients, summed and divided by x - b."""
    y, idx = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[x.dim() - 2](
        x, pool.kernel_size, pool.stride, pool.padding, pool.dilation, pool.ceil_mode, True)
    flat = lambda t: t.reshape(2, t.shape[0] // 2 * t.shape[1], -1)  # noqa: E731
    xs, ys, ids, gs = flat(x), flat(y), flat(idx), flat(grad_output)
    y_max = torch.max(ys[0], ys[1])
    d_out = (y_max - ys[1], ys[0] - y_max)
    out = torch.zeros_like(xs)
    for plane in range(xs.shape[1]):
        for p in range(xs.shape[2]):
            d_in = (xs[0, plane, p] - xs[1, plane, p]).item()
            for row in (0, 1):
                if abs(d_in) < eps:
                    out[row, plane, p] = sum(gs[row, plane, w] for w in range(ys.shape[2]) if ids[row, plane, w] == p)
                else:
                    out[row, plane, p] = sum(gs[h, plane, w] * d_out[h][plane, w] for h in (0, 1)
                                             for w in range(ys.shape[2]) if ids[h, plane, w] == p) / d_in
    return out.reshape(x.shape), idx


OVERLAPPING = {"pool2d-overlapping": (2, nn.MaxPool2d(3, stride=2), (6, 2, 9, 9)),
               "pool1d-overlapping": (1, nn.MaxPool1d(3, stride=2, padding=1), (6, 2, 11))}


@pytest.mark.parametrize("case", list(POOLS) + list(OVERLAPPING))
@pytest.mark.parametrize("reference_rows", ["per-row", "shared", "tiled"])
def test_max_pool_rule_matches_its_definition(case, reference_rows):
    """The input row's gradient (both rows of a pair carry the same output gradient), with the
    reference call's rows one per input row, one shared row, or two rows tiling the inputs."""
    from explain_serve._core.hooks import GradRecord
    from explain_serve.attr.deep_lift import rules

    _, pool, shape = POOLS.get(case) or OVERLAPPING[case]
    g = torch.Generator().manual_seed(5)
    x = torch.randn(shape, generator=g, dtype=D)
    k = {"per-row": shape[0], "shared": 1, "tiled": 2}[reference_rows]
    ref = torch.randn((k, *shape[1:]), generator=g, dtype=D)
    b = ref.repeat(shape[0] // k, *([1] * (len(shape) - 1)))
    # equal to the input in places, else larger or smaller; rectified: whole windows equal as well
    if k == shape[0]:
        b = ref = torch.where(torch.rand(x.shape, generator=g) < 0.5, x, ref)
    else:  # the input equal to the (shared) baseline in places
        x = torch.where(torch.rand(x.shape, generator=g) < 0.5, b, x)
    x, b, ref = x.relu(), b.relu(), ref.relu()
    _, rule, prepare, keep = rules(1e-10)[type(pool)]
    record, output = GradRecord(pool, None), pool(x.requires_grad_())
    record.saved = prepare(pool, x.detach(), output, *keep(pool, ref, pool(ref)))
    record.grad_output = torch.randn(output.shape, generator=g, dtype=D)
    expected, _ = _literal_max_pool_rule(pool, torch.cat([x.detach(), b]), record.grad_output.repeat(2, *([1] * (len(shape) - 1))))
    torch.testing.assert_close(rule(record, None), expected[: shape[0]], rtol=1e-12, atol=1e-12)


class _RowCounter(nn.Module):
    """The MLP of these tests, noting the batch size of every forward."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(6)
        self.net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 6), nn.Softplus(), nn.Linear(6, 3)).to(D)
        self.rows = []

    def forward(self, x, scale=None):
        self.rows.append(x.shape[0])
        return self.net(x if scale is None else x * scale)


X4 = torch.randn(4, 4, generator=torch.Generator().manual_seed(7), dtype=D)
# baselines form -> (baselines, additional args, the rows the baselines' forward runs)
REFERENCE_ROWS = {
    "scalar": (0.5, None, 1),
    "one row": (X4[:1] * 0.3, None, 1),
    "one per row": (X4.flip(0) * 0.3, None, 4),
    "one row, batched forward args": (X4[:1] * 0.3, (torch.linspace(1, 2, 4, dtype=D)[:, None],), 4),
    "one row, unbatched forward args": (X4[:1] * 0.3, (torch.tensor(2.0, dtype=D),), 1),
}


@pytest.mark.parametrize("case", list(REFERENCE_ROWS))
def test_baselines_forward_runs_the_rows_it_needs(case):
    """A baseline shared by the batch goes through the model once (one row); the attributions are
    Captum's, which runs every baseline row beside its input."""
    captum_attr = pytest.importorskip("captum.attr")
    baselines, args, rows = REFERENCE_ROWS[case]
    model = _RowCounter()
    ours, delta = ea.DeepLift(model).attribute(X4, baselines, target=2, additional_forward_args=args,
                                               return_convergence_delta=True)
    assert model.rows[:2] == [rows, 4]  # the baselines' forward, then the inputs'
    theirs = captum_attr.DeepLift(model).attribute(X4, baselines, target=2, additional_forward_args=args)
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12)
    assert delta.abs().max().item() < 1e-10


def test_deep_lift_shap_runs_each_baseline_once():
    captum_attr = pytest.importorskip("captum.attr")
    model, dist = _RowCounter(), torch.randn(3, 4, generator=torch.Generator().manual_seed(8), dtype=D)
    ours = ea.DeepLiftShap(model).attribute(X4, dist, target=1)
    assert model.rows[:2] == [3, 12]  # three baselines, then every input against every baseline
    torch.testing.assert_close(ours, captum_attr.DeepLiftShap(model).attribute(X4, dist, target=1), rtol=1e-10, atol=1e-12)


class _ReusedRelu(nn.Module):
    """One ReLU module applied twice (Captum's hooks cannot tell the calls apart)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(9)
        self.a, self.b, self.c, self.relu = nn.Linear(4, 5), nn.Linear(5, 5), nn.Linear(5, 2), nn.ReLU()

    def forward(self, x):
        return self.c(self.relu(self.b(self.relu(self.a(x)))))


def test_a_module_called_twice_pairs_each_call_with_its_baseline_call():
    model = _ReusedRelu().to(D)
    b = 0.2 * torch.randn(4, 4, generator=torch.Generator().manual_seed(10), dtype=D)
    attr, delta = ea.DeepLift(model).attribute(X4, b, target=1, return_convergence_delta=True)
    assert delta.abs().max().item() < 1e-10
    # hand-derived: each ReLU call's multiplier is (relu(h) - relu(h_b)) / (h - h_b) of that call
    ha, hb = model.a(X4), model.a(b)
    m1 = (ha.relu() - hb.relu()) / (ha - hb)
    ga, gb = model.b(ha.relu()), model.b(hb.relu())
    m2 = (ga.relu() - gb.relu()) / (ga - gb)
    mult = ((model.c.weight[1] * m2) @ model.b.weight * m1) @ model.a.weight
    torch.testing.assert_close(attr, (X4 - b) * mult.detach(), rtol=1e-10, atol=1e-12)


class _Branchy(nn.Module):
    """Applies its ReLU once more where the input's sum is positive: calls depend on the input."""

    def __init__(self):
        super().__init__()
        self.lin, self.relu = nn.Linear(4, 2).to(D), nn.ReLU()

    def forward(self, x):
        h = self.relu(self.lin(x))
        return self.relu(h - 0.1) if x.sum() > 0 else h


@pytest.mark.parametrize("x_sign,b_sign,message", [(1, -1, "more often for the inputs"), (-1, 1, r"more time\(s\) for the baseline")])
def test_calls_that_depend_on_the_input_are_refused(x_sign, b_sign, message):
    from explain_serve._core.errors import AttributionArgumentError

    x = x_sign * torch.ones(2, 4, dtype=D)
    with pytest.raises(AttributionArgumentError, match=message):
        ea.DeepLift(_Branchy()).attribute(x, b_sign * torch.ones(2, 4, dtype=D), target=0)


def _bump_weight(model):
    with torch.no_grad():
        model.net[0].weight.mul_(1.5)


def _other_baseline(model):
    return X4[1:2] * 0.3


# what happens between two calls of a reusable DeepLift -> whether the baselines' forward reruns
BETWEEN_CALLS = {
    "nothing": (None, False),
    "a weight changed in place": (_bump_weight, True),
    "a module switched to train and back": (lambda m: (m.train(), m.eval()), False),
    "the model left in train mode": (lambda m: m.train(), True),
    "another baseline": (_other_baseline, True),
}


@pytest.mark.parametrize("case", list(BETWEEN_CALLS))
def test_reusable_deep_lift_keeps_the_baselines_forward_while_nothing_changed(case):
    change, reruns = BETWEEN_CALLS[case]
    model, baseline = _RowCounter().eval(), X4[:1] * 0.3
    with ea.DeepLift(model) as method:
        method.attribute(X4, baseline, target=2)
        new_baseline = change(model) if change is not None else None
        baseline = new_baseline if isinstance(new_baseline, torch.Tensor) else baseline
        model.rows.clear()
        ours = method.attribute(X4, baseline, target=2)
    assert model.rows == ([1, 4] if reruns else [4])
    torch.testing.assert_close(ours, ea.DeepLift(model).attribute(X4, baseline, target=2), rtol=0, atol=0)


def test_reusable_deep_lift_keeps_no_baselines_forward_larger_than_its_budget(monkeypatch):
    from explain_serve.attr.deep_lift import ReferenceCache

    monkeypatch.setattr(ReferenceCache, "max_bytes", 100)  # the kept activations of one row take more
    model, baseline = _RowCounter().eval(), X4[:1] * 0.3
    with ea.DeepLift(model) as method:
        method.attribute(X4, baseline, target=2)
        model.rows.clear()
        method.attribute(X4, baseline, target=2)
    assert model.rows == [1, 4]
