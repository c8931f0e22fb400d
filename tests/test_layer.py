"""Layer methods: axioms (completeness, conductance sums to IG), agreement with Captum in float64
on one table of models (MLP, CNN, embedding text model), list-of-layers and layer-input forms."""
from __future__ import annotations

import warnings

import pytest
import torch

import explain_serve.attr as ea
from tests.layer_models import MODELS, table

captum_attr = pytest.importorskip("captum.attr")
warnings.filterwarnings("ignore", category=UserWarning)


def _close(a, b, tol=1e-5):
    if isinstance(a, (tuple, list)):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b):
            _close(x, y, tol)
        return
    assert a.shape == b.shape, (a.shape, b.shape)
    assert torch.allclose(a, b, atol=tol, rtol=0), (a - b).abs().max()


def _baselines(name, inputs):
    if name == "text":
        return (torch.zeros_like(inputs[0]),)
    g = torch.Generator().manual_seed(3)
    return tuple(torch.randn(x.shape, generator=g, dtype=x.dtype) * 0.1 for x in inputs)


# (class, attribute kwargs builder(name, inputs)) for deterministic layer methods
LAYER_CASES = {
    "LayerIntegratedGradients": lambda n, x: {"baselines": _baselines(n, x), "n_steps": 12, "return_convergence_delta": True},
    "LayerIntegratedGradients_input": lambda n, x: {"n_steps": 7, "method": "riemann_trapezoid", "internal_batch_size": 5, "attribute_to_layer_input": True},
}


def _run(lib, cls_name, name, kwargs_of, ctor=None):
    model, inputs, args, layer, _, target = table(name)
    kwargs = kwargs_of(name, inputs)
    cls = getattr(lib, cls_name.split("_")[0])
    method = cls(model, layer, **(ctor or {}))
    return method.attribute(inputs if len(inputs) > 1 else inputs[0], target=target, additional_forward_args=args, **kwargs)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("case", sorted(LAYER_CASES))
def test_layer_agrees_with_captum(case, name):
    if case.endswith("_input") and name == "text":
        pytest.skip("an embedding's input is the integer ids")
    ours = _run(ea, case, name, LAYER_CASES[case])
    theirs = _run(captum_attr, case, name, LAYER_CASES[case])
    _close(ours, theirs)


@pytest.mark.parametrize("name", MODELS)
def test_lig_completeness(name):
    model, inputs, args, layer, _, target = table(name)
    x = inputs[0]
    b = _baselines(name, inputs)[0]
    lig = ea.LayerIntegratedGradients(model, layer)
    attr, delta = lig.attribute(x, b, target=target, additional_forward_args=args, n_steps=64, return_convergence_delta=True)
    with torch.no_grad():
        from explain_serve._core.targets import select_targets
        diff = select_targets(model(x, *(args or ())), target) - select_targets(model(b, *(args or ())), target)
    total = attr.reshape(len(x), -1).sum(1)
    assert torch.allclose(total - diff.reshape(-1), delta, atol=1e-10)  # delta is the completeness gap
    tol = 5e-3 if name == "cnn" else 1e-6  # ReLU kinks downstream of the CNN's conv slow the quadrature
    assert delta.abs().max() < tol * max(1.0, diff.abs().max().item())


def test_lig_embedding_by_hand():
    """Linear model on the mean embedding: LIG = emb(x) - emb(b) times the constant gradient."""
    model = torch.nn.Sequential(torch.nn.Embedding(5, 2), torch.nn.Flatten(), torch.nn.Linear(6, 1)).double()
    ids = torch.tensor([[1, 2, 3]])
    attr = ea.LayerIntegratedGradients(model, model[0]).attribute(ids, baselines=torch.zeros_like(ids))
    w = model[2].weight.reshape(3, 2)
    e = model[0].weight
    expected = (e[ids[0]] - e[0]) * w
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
