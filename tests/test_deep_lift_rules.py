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
    """The max-pool rule position by position, for both rows of every (input, baseline) pair:
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


@pytest.mark.parametrize("case", list(POOLS) + ["pool2d-overlapping"])
def test_max_pool_rule_matches_its_definition(case):
    """Both rows of the rule's output (the baseline row's reaches the input through a later pool)."""
    from explain_serve._core.hooks import GradRecord
    from explain_serve.attr.deep_lift import rules

    _, pool, shape = POOLS.get(case) or (2, nn.MaxPool2d(3, stride=2), (6, 2, 9, 9))
    g = torch.Generator().manual_seed(5)
    x = torch.randn(shape, generator=g, dtype=D)
    # equal to the input in places, else larger or smaller; rectified: whole windows equal as well
    b = torch.where(torch.rand(x.shape, generator=g) < 0.5, x, torch.randn(x.shape, generator=g, dtype=D))
    joined = torch.cat([x, b]).relu()
    rule, prepare = rules(1e-10)[type(pool)]
    record, output = GradRecord(pool, None), pool(joined)
    record.saved = prepare(pool, joined, output)
    record.grad_output = torch.randn(output.shape, generator=g, dtype=D)
    expected, _ = _literal_max_pool_rule(pool, joined, record.grad_output)
    torch.testing.assert_close(rule(record, None), expected, rtol=1e-12, atol=1e-12)
