"""Nothing left behind: hooks and attributes of every module are unchanged after a call (successful
or raising), a reusable hook session keeps its hook count constant over 100 calls and retains no
tensors, and owned inner methods share their owner's session."""
from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest
import torch

import explain_serve.attr as ea
from explain_serve._core.hooks import HookedMethod
from tests.layer_models import table
from tests.models import hook_state


pytestmark = pytest.mark.usefixtures("one_thread")


def _held_tensors(obj, seen=None):
    """Tensors reachable from a method object (modules excluded: they hold only the model's own)."""
    seen = set() if seen is None else seen
    if id(obj) in seen or isinstance(obj, torch.nn.Module):
        return []
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        items = list(obj.values())
    elif isinstance(obj, (list, tuple, set)):
        items = list(obj)
    elif hasattr(obj, "__dict__") and not callable(obj) or isinstance(obj, (HookedMethod, ea.Attribution)):
        items = list(vars(obj).values())
    else:
        return []
    return [t for item in items for t in _held_tensors(item, seen)]


def _n_hooks(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules())


def _dist(x, k=3):
    return torch.randn((k, *x.shape[1:]), dtype=x.dtype)


# (class name, model, constructor builder(model, layer), attribute kwargs builder(inputs, args, target, selector))
# The error call passes an impossible target (or neuron selector), raising inside the hooked call.
LIFECYCLE = [
    ("LayerIntegratedGradients", "text", lambda m, l: (m, l), lambda x, a, t, s: dict(target=t, additional_forward_args=a, n_steps=4)),
    ("LayerIntegratedGradients", "cnn", lambda m, l: (m, [l]), lambda x, a, t, s: dict(target=t, n_steps=4)),
    ("LayerGradientXActivation", "cnn", lambda m, l: (m, l), lambda x, a, t, s: dict(target=t)),
    ("LayerConductance", "mlp", lambda m, l: (m, l), lambda x, a, t, s: dict(target=t, n_steps=4, internal_batch_size=8)),
    ("InternalInfluence", "cnn", lambda m, l: (m, l), lambda x, a, t, s: dict(target=t, n_steps=4)),
    ("LayerDeepLift", "cnn", lambda m, l: (m, l), lambda x, a, t, s: dict(target=t)),
    ("LayerDeepLiftShap", "mlp", lambda m, l: (m, l), lambda x, a, t, s: dict(target=t, baselines=_dist(x[0]))),
    ("LayerGradientShap", "mlp", lambda m, l: (m, l), lambda x, a, t, s: dict(target=t, baselines=_dist(x[0]))),
    ("LayerFeatureAblation", "text", lambda m, l: (m, l), lambda x, a, t, s: dict(target=t, additional_forward_args=a)),
    ("LayerFeaturePermutation", "mlp", lambda m, l: (m, l), lambda x, a, t, s: dict(target=t)),
    ("LayerLRP", "mlp", lambda m, l: (m, l), lambda x, a, t, s: dict(target=t)),
    ("LRP", "cnn", lambda m, l: (m,), lambda x, a, t, s: dict(target=t)),
]
NEURON_LIFECYCLE = [
    ("NeuronGradient", "cnn", lambda x, s: {}),
    ("NeuronIntegratedGradients", "mlp", lambda x, s: dict(n_steps=4)),
    ("NeuronConductance", "mlp", lambda x, s: dict(n_steps=4, target=1)),
    ("NeuronDeepLift", "cnn", lambda x, s: {}),
    ("NeuronDeepLiftShap", "mlp", lambda x, s: dict(baselines=_dist(x[0]))),
    ("NeuronGradientShap", "mlp", lambda x, s: dict(baselines=_dist(x[0]))),
    ("NeuronFeatureAblation", "cnn", lambda x, s: dict(perturbations_per_eval=64)),
    ("NeuronGuidedBackprop", "cnn", lambda x, s: {}),
    ("NeuronDeconvolution", "mlp", lambda x, s: {}),
]
LIFECYCLE += [
    (cls, name, (lambda m, l: (m, l)), (lambda kw: lambda x, a, t, s: dict(kw(x, s), neuron_selector=s))(kw))
    for cls, name, kw in NEURON_LIFECYCLE
]


# the serving paths get the full 100 reusable calls; the rest 5 (the same code path, faster suite)
HUNDRED_CALLS = {("LayerIntegratedGradients", "text"), ("LayerDeepLift", "cnn"), ("NeuronDeepLift", "cnn"), ("LRP", "cnn")}


def _bad(cls_name, kwargs):
    if cls_name.startswith("Neuron"):
        return {**kwargs, "neuron_selector": (99, 99, 99, 99)}
    return {**kwargs, "target": (99, 99, 99)}


def _available(cases):
    out = []
    for case in cases:
        try:
            getattr(ea, case[0])
        except (AttributeError, ImportError):
            continue
        out.append(case)
    return out


def _ids(cases):
    return [f"{c[0]}-{c[1]}" for c in cases]


@pytest.mark.parametrize("case", _available(LIFECYCLE), ids=_ids(_available(LIFECYCLE)))
def test_model_unchanged_after_success_and_error(case):
    cls_name, name, ctor, kw = case
    model, inputs, args, layer, sel, target = table(name)
    before = hook_state(model)
    method = getattr(ea, cls_name)(*ctor(model, layer))
    method.attribute(inputs[0], **kw(inputs, args, target, sel))
    assert hook_state(model) == before
    with pytest.raises(Exception):
        method.attribute(inputs[0], **_bad(cls_name, kw(inputs, args, target, sel)))
    assert hook_state(model) == before


@pytest.mark.parametrize("case", _available(LIFECYCLE), ids=_ids(_available(LIFECYCLE)))
def test_reusable_session_constant_hooks_no_retained_tensors(case):
    cls_name, name, ctor, kw = case
    model, inputs, args, layer, sel, target = table(name)
    before = hook_state(model)
    method = getattr(ea, cls_name)(*ctor(model, layer))
    torch.manual_seed(0)
    np.random.seed(0)
    reference = method.attribute(inputs[0], **kw(inputs, args, target, sel))
    with method.reusable() as m:
        registered = _n_hooks(model)
        assert registered > 0
        for i in range(100 if (cls_name, name) in HUNDRED_CALLS else 5):
            x = inputs[0].clone()
            ref = weakref.ref(x)
            torch.manual_seed(0)
            np.random.seed(0)
            out = m.attribute(x, **kw(inputs, args, target, sel))
            del x
            if i % 25 == 0 or i < 5:
                gc.collect()
                assert ref() is None, "the call retained its input"
            assert _n_hooks(model) == registered
            assert m._hook_session.scratch == {}
        assert _held_tensors(m) == [], "the method keeps tensors between calls"
        for a, b in zip(out if isinstance(out, list) else [out], reference if isinstance(reference, list) else [reference]):
            assert torch.allclose(a, b, atol=1e-12)
        with pytest.raises(Exception):
            m.attribute(inputs[0], **_bad(cls_name, kw(inputs, args, target, sel)))
        assert m._hook_session.scratch == {} and _n_hooks(model) == registered
    assert hook_state(model) == before


def test_owned_method_shares_owner_session():
    class Inner(HookedMethod):
        installs = 0

        def _install_hooks(self, session):
            Inner.installs += 1

        def run(self):
            with self._hooks() as scratch:
                return scratch

    class Outer(HookedMethod):
        def __init__(self):
            self.inner = self.adopt(Inner())

        def _install_hooks(self, session):
            self.inner._install_hooks(session)

        def run(self):
            with self._hooks() as scratch:
                scratch["x"] = 1
                return self.inner.run() is scratch

    outer = Outer()
    assert outer.run() and Inner.installs == 1
    with pytest.raises(RuntimeError):
        outer.inner.run()  # an owned method cannot be called on its own


def test_active_session_hooks_fire_only_in_the_calling_thread():
    """While one request's call has its taps armed, a forward of the same model in another
    thread (a plain prediction, say) is not affected."""
    import threading

    from explain_serve._core.layers import tapped

    model, inputs, _, layer, _, _ = table("mlp")
    x = inputs[0]
    expected = model(x).detach()
    method = ea.LayerGradientXActivation(model, layer).reusable()
    try:
        with method._hooks() as scratch:
            acts = model.fc2(model.relu(model.fc1(x))).detach()
            with tapped(scratch, [layer], False, values=[(torch.zeros_like(acts),)]):
                here = model(x).detach()
                box = {}
                worker = threading.Thread(target=lambda: box.setdefault("out", model(x).detach()))
                worker.start()
                worker.join()
        assert not torch.allclose(here, expected)  # substituted in the calling thread
        assert torch.equal(box["out"], expected)  # untouched elsewhere
    finally:
        method.close()


def test_concurrent_one_off_calls_on_one_method_and_model():
    """Two threads explaining with the same (one-off) method object get their own answers."""
    from concurrent.futures import ThreadPoolExecutor

    model, inputs, _, layer, sel, _ = table("cnn")
    x = inputs[0]
    method = ea.NeuronDeepLift(model, layer)
    expected = [method.attribute(x * s, sel) for s in (1.0, 2.0)]
    before = hook_state(model)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda i: method.attribute(x * (1.0 + i % 2), sel), range(24)))
    for i, r in enumerate(results):
        assert torch.allclose(r, expected[i % 2], atol=1e-12)
    assert hook_state(model) == before
