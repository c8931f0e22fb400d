"""DataLoaderAttribution: the ablation of a metric over a whole DataLoader, against Captum and a
hand-computed accuracy drop, from one table of cases."""
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import explain_serve.attr as esa
from explain_serve.attr import InputRole

ca = pytest.importorskip("captum.attr")
D = torch.float64


def _data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(10, 4, generator=g, dtype=D)
    z = torch.randn(10, 2, generator=g, dtype=D)
    y = torch.randint(0, 3, (10,), generator=g)
    torch.manual_seed(1)
    model = torch.nn.Linear(4, 3).to(D)
    return x, z, y, model


def _accuracy_reduce(acc, out, inputs):
    correct = (out.argmax(1) == inputs[-1]).sum()
    return correct if acc is None else acc + correct


def _case(name):
    x, z, y, model = _data()
    two = lambda a, b: model(a) + b.sum(1, keepdim=True)  # noqa: E731
    cases = {
        "concat-default": (model, TensorDataset(x), {}),
        "accuracy-roles-mask": (model, TensorDataset(x, y), dict(
            input_roles=(InputRole.need_attr, InputRole.no_forward), reduce=_accuracy_reduce,
            to_metric=lambda a: a.to(D) / 10, feature_mask=torch.tensor([[0, 0, 1, 1]]))),
        "sum-baseline-two-passes": (lambda t: model(t).sum(1), TensorDataset(x), dict(
            reduce=lambda a, o, i: o.sum() if a is None else a + o.sum(), baselines=0.5, perturbations_per_pass=2)),
        "two-attr-inputs-shared-group": (two, TensorDataset(x, z), dict(
            feature_mask=(torch.tensor([[0, 1, 1, 2]]), torch.tensor([[2, 3]])),
            baselines=(torch.full((1, 4), -1.0, dtype=D), 0.0), perturbations_per_pass=3)),
        "forward-only-role": (two, TensorDataset(x, z), dict(input_roles=(0, 1))),
    }
    return cases[name]


@pytest.mark.parametrize("return_input_shape", [True, False])
@pytest.mark.parametrize("name", ["concat-default", "accuracy-roles-mask", "sum-baseline-two-passes",
                                  "two-attr-inputs-shared-group", "forward-only-role"])
def test_equals_captum(name, return_input_shape):
    fwd, data, kw = _case(name)
    out = []
    for lib in (esa, ca):
        loader = DataLoader(data, batch_size=4)
        out.append(lib.DataLoaderAttribution(lib.FeatureAblation(fwd)).attribute(
            loader, return_input_shape=return_input_shape, **kw))
    ours, theirs = out
    if isinstance(theirs, tuple):
        assert isinstance(ours, tuple) and len(ours) == len(theirs)
    else:
        ours, theirs = (ours,), (theirs,)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b.to(a.dtype))


def test_accuracy_drop_by_hand():
    x, _, y, model = _data()
    loader = DataLoader(TensorDataset(x, y), batch_size=3)
    attr = esa.DataLoaderAttribution(esa.FeatureAblation(model)).attribute(
        loader, input_roles=(0, 2), reduce=_accuracy_reduce, to_metric=lambda a: a.to(D) / len(y),
        feature_mask=torch.tensor([[0, 1, 1, 0]]), return_input_shape=False)
    acc = lambda inp: (model(inp).argmax(1) == y).to(D).mean()  # noqa: E731
    for f, cols in enumerate(([0, 3], [1, 2])):
        ablated = x.clone()
        ablated[:, cols] = 0
        torch.testing.assert_close(attr[0, f], acc(x) - acc(ablated))


def test_progress_bar(capsys):
    fwd, data, kw = _case("concat-default")
    esa.DataLoaderAttribution(esa.FeatureAblation(fwd)).attribute(DataLoader(data, batch_size=4), show_progress=True)
    assert "Data Loader Attribution attribution: 100%" in capsys.readouterr().err


BAD = {
    "roles length": dict(input_roles=(0,)),
    "nothing to attribute": dict(input_roles=(1, 2)),
    "baseline batch": dict(baselines=torch.zeros(2, 4, dtype=D), input_roles=(0, 2)),
    "mask batch": dict(feature_mask=torch.zeros(2, 4, dtype=torch.long), input_roles=(0, 2)),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_arguments(case):
    x, _, y, model = _data()
    loader = DataLoader(TensorDataset(x, y), batch_size=4)
    with pytest.raises(AssertionError):
        ca.DataLoaderAttribution(ca.FeatureAblation(model)).attribute(loader, **BAD[case])
    with pytest.raises(ValueError) as e:
        esa.DataLoaderAttribution(esa.FeatureAblation(model)).attribute(loader, **BAD[case])
    assert isinstance(e.value, AssertionError)


def test_only_feature_ablation_is_supported():
    with pytest.raises(AssertionError, match="FeatureAblation"):
        esa.DataLoaderAttribution(esa.Occlusion(torch.nn.Linear(2, 1)))
    with pytest.raises(NotImplementedError):
        esa.DataLoaderAttribution(esa.FeatureAblation(torch.nn.Linear(2, 1))).attribute_future()
