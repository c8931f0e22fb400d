"""LRP and LayerLRP: agreement with Captum in float64 (MLP, CNN; every rule), conservation on a
bias-free network, hand-derived relevances, and nothing stored on or changed in the model."""
from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import explain_serve.attr as ea
from explain_serve.attr import lrp_rules as ours_rules
from tests.layer_models import table
from tests.models import hook_state

captum_attr = pytest.importorskip("captum.attr")
captum_rules = pytest.importorskip("captum.attr._utils.lrp_rules")
warnings.filterwarnings("ignore", category=UserWarning)


pytestmark = pytest.mark.usefixtures("one_thread")


def _weighted(model):
    return [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


# rule configurations: builder(model, rules module) -> {module: rule}
RULES = {
    "default": lambda m, R: {},
    "epsilon": lambda m, R: {_weighted(m)[-1]: R.EpsilonRule(epsilon=0.05)},
    "gamma": lambda m, R: {_weighted(m)[0]: R.GammaRule(gamma=0.3)},
    "gamma_no_bias": lambda m, R: {_weighted(m)[1]: R.GammaRule(set_bias_to_zero=True)},
    "alpha1_beta0": lambda m, R: {_weighted(m)[1]: R.Alpha1_Beta0_Rule(), _weighted(m)[0]: R.Alpha1_Beta0_Rule(set_bias_to_zero=True)},
    "identity": lambda m, R: {m.relu: R.IdentityRule()},
}
CASES = [(r, n) for r in sorted(RULES) for n in ("mlp", "cnn")]


def _assign(model, rules):
    for module in model.modules():
        if "rule" in vars(module):
            del module.rule
    for module, rule in rules.items():
        module.rule = rule


def _captum(model, rule_case, fn):
    _assign(model, RULES[rule_case](model, captum_rules))
    try:
        return fn()
    finally:
        _assign(model, {})


@pytest.mark.parametrize("rule_case,name", CASES, ids=[f"{r}-{n}" for r, n in CASES])
def test_lrp_agrees_with_captum(rule_case, name):
    model, inputs, _, layer, _, target = table(name)
    x = inputs[0]
    rules = RULES[rule_case](model, ours_rules)
    got, delta = ea.LRP(model, rules=rules).attribute(x, target=target, return_convergence_delta=True)
    want, want_delta = _captum(model, rule_case, lambda: captum_attr.LRP(model).attribute(x, target=target, return_convergence_delta=True))
    assert torch.allclose(got, want, atol=1e-5, rtol=0) and torch.allclose(delta, want_delta, atol=1e-5, rtol=0)
    for to_input in (False, True):
        got = ea.LayerLRP(model, layer, rules=rules).attribute(x, target=target, attribute_to_layer_input=to_input, return_convergence_delta=True)
        want = _captum(model, rule_case, lambda: captum_attr.LayerLRP(model, layer).attribute(
            x, target=target, attribute_to_layer_input=to_input, return_convergence_delta=True))
        assert torch.allclose(got[0], want[0], atol=1e-5, rtol=0) and torch.allclose(got[1], want[1], atol=1e-5, rtol=0)


def test_rules_assigned_on_modules_like_captum():
    """``module.rule = ...`` is honoured, kept after the call (Captum deletes it) and equals ``rules=``."""
    model, inputs, _, _, _, target = table("cnn")
    rule = ours_rules.GammaRule(0.5)
    by_dict = ea.LRP(model, rules={model.conv1: rule}).attribute(inputs[0], target=target)
    model.conv1.rule = rule
    try:
        by_attr = ea.LRP(model).attribute(inputs[0], target=target)
        assert model.conv1.rule is rule
    finally:
        del model.conv1.rule
    assert torch.equal(by_dict, by_attr)
    assert not torch.equal(by_dict, ea.LRP(model).attribute(inputs[0], target=target))


def _bias_free():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 3, 3, bias=False), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(3, 4, 2, bias=False), nn.ReLU(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 5, bias=False), nn.Tanh(), nn.Linear(5, 2, bias=False),
    ).double()


def test_conservation_on_bias_free_network():
    """Without biases and with a vanishing epsilon, relevance is conserved layer by layer."""
    model = _bias_free()
    x = torch.rand(4, 1, 9, 9, dtype=torch.float64)
    attr, delta = ea.LRP(model).attribute(x, target=1, return_convergence_delta=True)
    out = model(x)[:, 1].detach()
    assert torch.allclose(attr.reshape(4, -1).sum(1), out, atol=1e-8)
    assert delta.abs().max() < 1e-8
    for layer in (model[3], model[7]):  # every layer carries the whole relevance
        rel = ea.LayerLRP(model, layer).attribute(x, target=1)
        assert torch.allclose(rel.reshape(4, -1).sum(1), out, atol=1e-8)
    with_gamma = ea.LRP(model, rules={model[0]: ours_rules.GammaRule(), model[7]: ours_rules.Alpha1_Beta0_Rule()})
    assert with_gamma.attribute(x, target=1, return_convergence_delta=True)[1].abs().max() < 1e-8


def test_linear_relevances_by_hand():
    lin = nn.Linear(3, 1, bias=False).double()
    model = nn.Sequential(lin)
    x = torch.tensor([[1.0, -2.0, 3.0]], dtype=torch.float64)
    w = lin.weight[0].detach()
    assert torch.allclose(ea.LRP(model).attribute(x), x * w, atol=1e-12)  # epsilon -> 0: R_i = x_i w_i
    ab = ea.LRP(model, rules={lin: ours_rules.Alpha1_Beta0_Rule()}).attribute(x)
    z_plus = x * w.clamp(min=0)
    expected = z_plus / z_plus.sum() * (x @ w)  # z+ rule: positive contributions share the output
    assert torch.allclose(ab, expected, atol=1e-9)
    eps = ea.LRP(model, rules={lin: ours_rules.EpsilonRule(epsilon=1.0)}).attribute(x)
    z = (x * w).sum()
    assert torch.allclose(eps, x * w / (z + torch.sign(z)) * z, atol=1e-12)


def test_nothing_stored_and_parameters_untouched():
    model, inputs, _, layer, _, target = table("cnn")
    before = hook_state(model)
    params = {k: v.clone() for k, v in model.state_dict().items()}
    ptrs = {k: v.data_ptr() for k, v in model.state_dict().items()}
    rules = {model.conv1: ours_rules.GammaRule(), model.fc: ours_rules.Alpha1_Beta0_Rule(set_bias_to_zero=True)}
    ea.LRP(model, rules=rules).attribute(inputs[0], target=target)
    ea.LayerLRP(model, [layer, model.conv1]).attribute(inputs[0], target=target)
    with pytest.raises(Exception):
        ea.LRP(model, rules=rules).attribute(inputs[0], target=(99, 99))
    assert hook_state(model) == before
    for k, v in model.state_dict().items():
        assert torch.equal(v, params[k]) and v.data_ptr() == ptrs[k]
    assert all(not hasattr(m, attr) for m in model.modules() for attr in ("activations", "rule", "activation"))


def test_unsupported_layer_raises_type_error():
    model = nn.Sequential(nn.Linear(3, 3), nn.Sigmoid(), nn.Linear(3, 1)).double()
    with pytest.raises(TypeError):
        ea.LRP(model).attribute(torch.rand(2, 3, dtype=torch.float64))
    assert hook_state(model) == hook_state(nn.Sequential(nn.Linear(3, 3), nn.Sigmoid(), nn.Linear(3, 1)))
    out = ea.LRP(model, rules={model[1]: ours_rules.IdentityRule()}).attribute(torch.rand(2, 3, dtype=torch.float64))
    assert out.shape == (2, 3)
    with pytest.raises(TypeError):
        ea.LRP(model, rules={model[1]: "epsilon"})


def test_rule_classes_exported_from_attr():
    assert ea.GammaRule is ours_rules.GammaRule and ea.EpsilonRule is ours_rules.EpsilonRule
    assert ea.Alpha1_Beta0_Rule is ours_rules.Alpha1_Beta0_Rule and ea.IdentityRule is ours_rules.IdentityRule
    assert ea.PropagationRule is ours_rules.PropagationRule


@pytest.mark.parametrize("rule_case,name", CASES, ids=[f"{r}-{n}" for r, n in CASES])
def test_captums_rule_objects_work_and_leave_weights_untouched(rule_case, name):
    """Rules written against Captum's interface (here Captum's own) give Captum's answer; their
    in-place weight edit is applied to a private copy of the layer."""
    model, inputs, _, layer, _, target = table(name)
    x = inputs[0]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    theirs = _captum(model, rule_case, lambda: captum_attr.LRP(model).attribute(x, target=target))
    after_captum = {k: v.clone() for k, v in model.state_dict().items()}
    ours = ea.LRP(model, rules=RULES[rule_case](model, captum_rules)).attribute(x, target=target)
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-9)
    for k, v in model.state_dict().items():
        assert torch.equal(v, after_captum[k])  # ours changed nothing
    assert all(torch.equal(before[k], after_captum[k]) for k in before)  # (Captum restores its edits)


class _Reused(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(4, 4).double()
        self.out = nn.Linear(4, 2).double()

    def forward(self, x):
        return self.out(self.fc(torch.relu(self.fc(x))))


def test_module_used_twice_raises_captums_error_and_leaves_no_hooks():
    model, x = _Reused(), torch.randn(3, 4, dtype=torch.float64)
    state = hook_state(model)
    with pytest.raises(RuntimeError, match="used more than once"):
        captum_attr.LRP(_Reused()).attribute(x, target=0)
    with pytest.raises(RuntimeError, match="used more than once"):
        ea.LRP(model).attribute(x, target=0)
    assert hook_state(model) == state
    assert ea.LRP(nn.Sequential(model.fc, nn.ReLU(), model.out)).attribute(x, target=0).shape == x.shape



# --- skip connections: Captum's scheme (relevance hooks on tensors, first rule consumer multiplies) ---

class _Add(nn.Module):
    def forward(self, a, b):
        return a + b


class _Residual(nn.Module):
    """lin1 -> relu -> residual block -> relu -> lin3; the block's sum is ``self.add`` (either
    order), a functional ``+``, or skips from the pre-activation (a tensor shared by a ReLU and the sum)."""

    def __init__(self, form: str, conv: bool = False):
        super().__init__()
        torch.manual_seed(1)
        self.form, self.conv = form, conv
        if conv:
            self.lin1, self.lin2 = nn.Conv2d(1, 3, 3, padding=1), nn.Conv2d(3, 3, 3, padding=1)
            self.pool, self.lin3 = nn.AvgPool2d(2), nn.Linear(27, 3)
        else:
            self.lin1, self.lin2, self.lin3 = nn.Linear(4, 5), nn.Linear(5, 5), nn.Linear(5, 3)
        self.relu1, self.relu2, self.add = nn.ReLU(), nn.ReLU(), _Add()
        self.double()

    def forward(self, x):
        z = self.lin1(x)
        h = self.relu1(z)
        if self.form == "module":
            s = self.add(self.lin2(h), h)
        elif self.form == "module_skip_first":
            s = self.add(h, self.lin2(h))
        elif self.form == "functional":
            s = h + self.lin2(h)
        else:  # "preactivation"
            s = self.add(self.lin2(h), z)
        s = self.relu2(s)
        if self.conv:
            s = self.pool(s).reshape(x.shape[0], -1)
        return self.lin3(s)


SKIP_RULES = {
    "default": lambda m, R: {m.add: R.EpsilonRule()},
    "identity_add": lambda m, R: {m.add: R.IdentityRule()},
    "identity_lin2": lambda m, R: {m.add: R.EpsilonRule(), m.lin2: R.IdentityRule()},
    "gamma_alpha": lambda m, R: {m.add: R.EpsilonRule(0.01), m.lin2: R.GammaRule(), m.lin1: R.Alpha1_Beta0_Rule()},
}
SKIP_CASES = [
    (form, rules, conv)
    for form in ("module", "module_skip_first", "functional", "preactivation")
    for rules in sorted(SKIP_RULES)
    for conv in (False, True)
    if not (form == "functional" and rules == "identity_add")  # the functional sum has no module
]


def _skip_model(form, conv):
    model = _Residual(form, conv)
    g = torch.Generator().manual_seed(3)
    x = torch.randn((3, 1, 6, 6) if conv else (3, 4), generator=g, dtype=torch.float64)
    return model, x


@pytest.mark.parametrize("form,rules,conv", SKIP_CASES, ids=[f"{f}-{r}-{'cnn' if c else 'mlp'}" for f, r, c in SKIP_CASES])
def test_skip_connections_agree_with_captum(form, rules, conv):
    """Residual blocks (sum as a module in either order, functional sum, skip from the
    pre-activation; MLP and CNN) under every rule: Captum's numbers, LRP and LayerLRP."""
    model, x = _skip_model(form, conv)

    def captum(fn):
        _assign(model, SKIP_RULES[rules](model, captum_rules))
        try:
            return fn()
        finally:
            _assign(model, {})

    ours_rules_ = SKIP_RULES[rules](model, ours_rules)
    got, delta = ea.LRP(model, rules=ours_rules_).attribute(x, target=1, return_convergence_delta=True)
    want, want_delta = captum(lambda: captum_attr.LRP(model).attribute(x, target=1, return_convergence_delta=True))
    torch.testing.assert_close(got, want.detach(), rtol=1e-7, atol=1e-10)
    torch.testing.assert_close(delta, want_delta.detach(), rtol=1e-7, atol=1e-10)
    layer = model.lin2
    for to_input in (False, True):
        if to_input and rules == "identity_lin2":
            continue  # Captum keeps no input relevance for an identity layer (its LayerLRP fails)
        got = ea.LayerLRP(model, layer, rules=ours_rules_).attribute(x, target=1, attribute_to_layer_input=to_input)
        want = captum(lambda: captum_attr.LayerLRP(model, layer).attribute(x, target=1, attribute_to_layer_input=to_input))
        torch.testing.assert_close(got, want.detach(), rtol=1e-7, atol=1e-10)


def test_captums_own_skip_connection_case():
    """Captum's test: ``add(linear(x), x)`` with weights 5 and input (2, 3) gives (10, 18), by hand:
    output 28 = 25 + 3; x_i's relevance is x_i * (5 + 5 [linear] + skip_i) / 28 * 28."""
    linear = nn.Linear(2, 2, bias=False)
    linear.weight.data.fill_(5)
    add = ea.Addition_Module()

    class Skip(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear, self.add = linear, add

        def forward(self, x):
            return self.add(self.linear(x), x)

    model, x = Skip(), torch.tensor([[2.0, 3.0]])
    got = ea.LRP(model).attribute(x, target=1)  # Addition_Module: epsilon rule by default
    torch.testing.assert_close(got, torch.tensor([[10.0, 18.0]]))
    add.rule = captum_rules.EpsilonRule()
    try:
        want = captum_attr.LRP(model).attribute(x, target=1)
    finally:
        add.__dict__.pop("rule", None)
    torch.testing.assert_close(got, want.detach())
    from captum.attr._utils.custom_modules import Addition_Module as CaptumAddition

    model.add = CaptumAddition()  # Captum's own class: its default rule too, without a rule set
    torch.testing.assert_close(ea.LRP(model).attribute(x, target=1), want.detach())


def test_residual_conservation_with_addition_module_and_functional_sum():
    """Bias-free, epsilon -> 0: with the sum as a module relevance is conserved; a functional sum
    (as in Captum) multiplies the skip branch's relevance by the input again, so it is not."""
    for form, conserved in (("module", True), ("module_skip_first", True), ("functional", False)):
        model, x = _skip_model(form, False)
        for m in (model.lin1, model.lin2, model.lin3):
            m.bias = None
        x = x.abs()
        attr, delta = ea.LRP(model, rules={model.add: ours_rules.EpsilonRule()}).attribute(x, target=1, return_convergence_delta=True)
        out = model(x)[:, 1].detach()
        assert torch.allclose(delta, out - attr.sum(1))
        assert (delta.abs().max() < 1e-8) == conserved, (form, delta)


def test_skip_model_leaves_no_hooks_and_the_next_call_is_unchanged():
    model, x = _skip_model("preactivation", True)
    state = hook_state(model)
    lrp = ea.LRP(model, rules={model.add: ours_rules.EpsilonRule()})
    first = lrp.attribute(x, target=1)
    with pytest.raises(Exception):
        lrp.attribute(x, target=7)
    assert hook_state(model) == state
    assert torch.equal(lrp.attribute(x, target=1), first)
    with lrp:  # a reusable session (servers): same numbers, hooks gone after close
        assert torch.equal(lrp.attribute(x, target=1), first)
    assert hook_state(model) == state


def test_tensor_hooks_act_in_the_call_only():
    """``HookSession.tensor_hook``: sees the total gradient of a tensor (all consumers) in the call
    and is removed when the call ends, so a tensor kept afterwards has no hook."""
    from explain_serve._core.hooks import HookSession

    x = torch.ones(3, dtype=torch.float64, requires_grad=True)
    seen = []
    with HookSession() as session:
        with pytest.raises(RuntimeError):
            session.tensor_hook(x * 1, lambda scratch, g: None)  # outside a call
        with session.active():
            h = x * 1
            session.tensor_hook(h, lambda scratch, g: seen.append(g.clone()) or g * 10)
            (g,) = torch.autograd.grad((h * 2).sum() + (h * 3).sum(), x, retain_graph=True)
        assert torch.equal(g, torch.full((3,), 50.0, dtype=torch.float64))
        assert torch.equal(seen[0], torch.full((3,), 5.0, dtype=torch.float64))
        (g,) = torch.autograd.grad((h * 2).sum(), x)  # after the call: plain gradient, hook gone
        assert torch.equal(g, torch.full((3,), 2.0, dtype=torch.float64)) and len(seen) == 1
