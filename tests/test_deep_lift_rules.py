"""DeepLift's gradient rules on the replaced-backward path (``HookSession.replace_gradient``).

Completeness (attributions sum to f(x) - f(b)) as the axiom, on cases the fast path must get
right: overlapping max-pool windows, in-place nonlinearities (which take the copying path), inputs
equal to the baseline in places (the rule falls back to the module's own gradient there).
"""
import pytest
import torch
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
