"""explain_serve.metrics: hand-derived values, a slow literal re-implementation and Captum as oracle.

Perturbations are deterministic so results can be compared exactly: ``IndexedPerturb`` gives sample
``j`` of every example a noise that depends only on ``j`` and the example's values, whatever the
chunking, so chunked and unchunked runs (and Captum) see the same perturbations.
"""
from __future__ import annotations

import warnings

import pytest
import torch

import explain_serve.metrics as es_metrics
from explain_serve.metrics import (
    HIGHER_IS_BETTER,
    infidelity,
    infidelity_perturb_func_decorator,
    sensitivity_max,
)

captum_metrics = pytest.importorskip("captum.metrics")

D = torch.float64


# --------------------------------------------------------------------------------------------
# helpers


def noise(x: torch.Tensor, j: torch.Tensor, scale: float) -> torch.Tensor:
    """Deterministic noise for rows ``x`` that are sample ``j`` (one index per row)."""
    flat = x.reshape(x.shape[0], -1)
    pos = torch.arange(flat.shape[1], dtype=x.dtype)
    jj = j.to(x.dtype).reshape(-1, 1)
    return (scale * torch.sin(1.7 * jj + 0.9 * pos + 2.3 * flat)).reshape(x.shape)


class IndexedPerturb:
    """Stateful but chunking-independent: remembers how many samples per example were drawn."""

    def __init__(self, batch_size: int, scale: float = 0.1, return_perturbation: bool = True):
        self.batch_size, self.scale, self.done = batch_size, scale, 0
        self.return_perturbation = return_perturbation

    def _sample_index(self, rows: int) -> torch.Tensor:
        k = rows // self.batch_size
        j = self.done + torch.arange(rows) % k
        self.done += k
        return j

    def __call__(self, inputs, *rest):
        xs = inputs if isinstance(inputs, tuple) else (inputs,)
        j = self._sample_index(xs[0].shape[0])
        eps = tuple(noise(x, j, self.scale) for x in xs)
        perturbed = tuple(x - e for x, e in zip(xs, eps))
        if not isinstance(inputs, tuple):
            eps, perturbed = eps[0], perturbed[0]
        return (eps, perturbed) if self.return_perturbation else perturbed


class SensitivityPerturb(IndexedPerturb):
    def __call__(self, inputs, perturb_radius):  # two parameters: receives the radius
        xs = inputs if isinstance(inputs, tuple) else (inputs,)
        j = self._sample_index(xs[0].shape[0])
        out = tuple(x + noise(x, j, perturb_radius) for x in xs)
        return out if isinstance(inputs, tuple) else out[0]


def make_net(n_in: int = 5, n_out: int = 3) -> torch.nn.Module:
    torch.manual_seed(1)
    return torch.nn.Sequential(torch.nn.Linear(n_in, 7), torch.nn.Tanh(), torch.nn.Linear(7, n_out)).to(D)


def grad_explainer(forward):
    """A local gradient explanation (Saliency without abs) that accepts tensors or tuples."""

    def explain(inputs, target=None, additional_forward_args=None):
        xs = inputs if isinstance(inputs, tuple) else (inputs,)
        args = additional_forward_args if isinstance(additional_forward_args, tuple) else (
            () if additional_forward_args is None else (additional_forward_args,)
        )
        with torch.enable_grad():
            leaves = tuple(x.detach().requires_grad_(True) for x in xs)
            out = forward(*leaves, *args)
            if target is not None:
                t = target if isinstance(target, torch.Tensor) else torch.tensor(target)
                out = out.gather(1, t.reshape(-1, 1)) if t.dim() > 0 else out[:, int(t)]
            grads = torch.autograd.grad(out.sum(), leaves)
        return grads if isinstance(inputs, tuple) else grads[0]

    return explain


# --------------------------------------------------------------------------------------------
# direction


def test_metrics_declare_lower_is_better():
    assert infidelity.higher_is_better is False
    assert sensitivity_max.higher_is_better is False
    assert HIGHER_IS_BETTER == {"infidelity": False, "sensitivity_max": False}
    import explain_serve.metrics.infidelity as inf_mod
    import explain_serve.metrics.sensitivity as sens_mod

    assert inf_mod.higher_is_better is False and sens_mod.higher_is_better is False


def test_metrics_source_never_imports_captum():
    import pathlib

    root = pathlib.Path(es_metrics.__file__).parent
    for path in root.glob("*.py"):
        assert "import captum" not in path.read_text() and "from captum" not in path.read_text(), path


# --------------------------------------------------------------------------------------------
# infidelity: hand-derived values on f(x) = w.x + 0.7

W = torch.tensor([1.0, -2.0, 0.5], dtype=D)
X = torch.tensor([[1.0, 2.0, 3.0]], dtype=D)


def linear(x):
    return x @ W + 0.7


@infidelity_perturb_func_decorator(multiply_by_inputs=True)
def shift_all(inputs, baselines=None):
    """x -> x - 0.1: I = 0.1 / x (global), f(x) - f(x - I') = 0.1 * sum(w) = -0.05."""
    return inputs - 0.1


@infidelity_perturb_func_decorator(multiply_by_inputs=False)
def shift_all_local(inputs):
    return inputs - 0.1


@pytest.mark.parametrize(
    "perturb, attributions, expected",
    [
        # exact global explanation w * x: I.Phi = sum(w * 0.1) = f(x) - f(x - 0.1)
        (shift_all, W * X, 0.0),
        # exact local explanation w (saliency of a linear model)
        (shift_all_local, W.expand_as(X), 0.0),
        # twice the exact explanation predicts -0.1 for a change of -0.05: (0.05)^2
        (shift_all, 2 * W * X, 0.0025),
        # no explanation at all: the whole change is missed
        (shift_all, torch.zeros_like(X), 0.0025),
        # one extra unit on feature 0: I_0 * 1 = 0.1 / 1 too much -> 0.01
        (shift_all, W * X + torch.tensor([[1.0, 0.0, 0.0]], dtype=D), 0.01),
        # local: extra 2.0 on feature 2 -> 0.1 * 2 = 0.2 too much -> 0.04
        (shift_all_local, W.expand_as(X) + torch.tensor([[0.0, 0.0, 2.0]], dtype=D), 0.04),
    ],
)
def test_infidelity_hand_derived_linear(perturb, attributions, expected):
    got = infidelity(linear, perturb, X, attributions, n_perturb_samples=3)
    assert got.shape == (1,)
    assert got.item() == pytest.approx(expected, abs=1e-12)


def test_infidelity_exact_with_baselines_is_zero():
    """Global attributions w * (x - b) with I = (x - x') / (x - b) have zero infidelity."""
    base = torch.tensor([[0.5, -1.0, 2.0]], dtype=D)
    got = infidelity(linear, shift_all, X, W * (X - base), baselines=base, n_perturb_samples=2)
    assert got.item() == pytest.approx(0.0, abs=1e-12)


class TwoFixedPerturbations:
    """Sample 0 moves feature 0 by 1, sample 1 moves feature 1 by 1 (I = x - x')."""

    def __init__(self):
        self.done = 0

    def __call__(self, inputs):
        k = inputs.shape[0]
        eps = torch.zeros_like(inputs)
        for r in range(k):
            eps[r, self.done + r] = 1.0
        self.done += k
        return eps, inputs - eps


@pytest.mark.parametrize(
    "phi, normalize, expected",
    [
        # I.Phi = (2, 0), changes (1, -2): ((2-1)^2 + (0+2)^2) / 2
        ([2.0, 0.0, 0.0], False, 2.5),
        # beta = (2*1 + 0) / (4 + 0) = 0.5: ((1-1)^2 + (0+2)^2) / 2
        ([2.0, 0.0, 0.0], True, 2.0),
        # I.Phi = (1, 1): (0 + 9) / 2
        ([1.0, 1.0, 0.0], False, 4.5),
        # beta = (1 - 2) / 2 = -0.5: ((-0.5-1)^2 + (-0.5+2)^2) / 2 = 2.25
        ([1.0, 1.0, 0.0], True, 2.25),
        # normalization is blind to the scale of the explanation
        ([-30.0, -30.0, 0.0], True, 2.25),
    ],
)
@pytest.mark.parametrize("max_examples_per_batch", [None, 1])
def test_infidelity_hand_derived_two_samples(phi, normalize, expected, max_examples_per_batch):
    got = infidelity(
        linear,
        TwoFixedPerturbations(),
        X,
        torch.tensor([phi], dtype=D),
        n_perturb_samples=2,
        max_examples_per_batch=max_examples_per_batch,
        normalize=normalize,
    )
    assert got.item() == pytest.approx(expected, abs=1e-12)


# --------------------------------------------------------------------------------------------
# infidelity vs Captum, and chunking


INFIDELITY_CASES = {
    "single, int target": dict(tuple_inputs=False, target=1),
    "single, tensor target": dict(tuple_inputs=False, target="tensor"),
    "single, list target, baselines": dict(tuple_inputs=False, target="list", baselines="tensor"),
    "single, scalar baseline, decorated": dict(tuple_inputs=False, target=0, baselines=0.25, decorated=True),
    "single, decorated no baseline": dict(tuple_inputs=False, target=2, decorated=True),
    "single, normalize": dict(tuple_inputs=False, target="tensor", normalize=True),
    "tuple + args": dict(tuple_inputs=True, target="tensor", args=True),
    "tuple + args, decorated baselines, normalize": dict(
        tuple_inputs=True, target=1, args=True, baselines="tensor", decorated=True, normalize=True
    ),
}


def _infidelity_setup(tuple_inputs, target, baselines=None, args=False, decorated=False, normalize=False):
    net = make_net(5, 3)
    g = torch.Generator().manual_seed(3)
    bsz = 4
    x = torch.randn(bsz, 5, generator=g, dtype=D)
    if tuple_inputs:
        inputs = (x[:, :2].clone(), x[:, 2:].clone())
        scale = torch.rand(bsz, 1, generator=g, dtype=D) + 0.5
        if args:
            forward = lambda a, b, s: net(torch.cat([a, b], 1)) * s  # noqa: E731
        else:
            forward = lambda a, b: net(torch.cat([a, b], 1))  # noqa: E731
        extra = scale if args else None
        attributions = tuple(torch.randn(t.shape, generator=g, dtype=D) for t in inputs)
    else:
        inputs, forward, extra = x, net, None
        attributions = torch.randn(x.shape, generator=g, dtype=D)
    if target == "tensor":
        target = torch.tensor([0, 2, 1, 2])
    elif target == "list":
        target = [2, 0, 0, 1]
    if baselines == "tensor":
        base = torch.randn(x.shape, generator=g, dtype=D)
        baselines = (base[:, :2], base[:, 2:]) if tuple_inputs else base
    if decorated:
        # global perturbation: I = (x - x') / (x - b), computed by the decorator
        def make_perturb():
            inner = IndexedPerturb(bsz, return_perturbation=False)
            return infidelity_perturb_func_decorator(True)(lambda inp, *b: inner(inp))
    else:

        def make_perturb():
            return IndexedPerturb(bsz)

    kwargs = dict(
        baselines=baselines, additional_forward_args=extra, target=target, n_perturb_samples=5, normalize=normalize
    )
    return forward, make_perturb, inputs, attributions, kwargs


def _captum_perturb(make_perturb, decorated):
    """Captum's decorator for the Captum run, so both sides use their own."""
    if not decorated:
        return make_perturb()
    inner = IndexedPerturb(4, return_perturbation=False)
    return captum_metrics.infidelity_perturb_func_decorator(True)(lambda inp, *b: inner(inp))


@pytest.mark.parametrize("case", list(INFIDELITY_CASES), ids=list(INFIDELITY_CASES))
def test_infidelity_matches_captum(case):
    spec = INFIDELITY_CASES[case]
    forward, make_perturb, inputs, attributions, kwargs = _infidelity_setup(**spec)
    for m in (None, 8):
        ours = infidelity(forward, make_perturb(), inputs, attributions, max_examples_per_batch=m, **kwargs)
        theirs = captum_metrics.infidelity(
            forward, _captum_perturb(make_perturb, spec.get("decorated", False)), inputs, attributions,
            max_examples_per_batch=m, **kwargs,
        )
        assert ours.shape == (4,)
        assert ours.dtype == D
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
        assert float(ours.abs().max()) > 1e-4  # the comparison is not between zeros


@pytest.mark.parametrize("case", list(INFIDELITY_CASES), ids=list(INFIDELITY_CASES))
def test_infidelity_chunked_equals_unchunked(case):
    forward, make_perturb, inputs, attributions, kwargs = _infidelity_setup(**INFIDELITY_CASES[case])
    whole = infidelity(forward, make_perturb(), inputs, attributions, **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 1 and 2 rows are below the batch size: one sample per chunk
        for m in (1, 2, 8, 12):
            part = infidelity(forward, make_perturb(), inputs, attributions, max_examples_per_batch=m, **kwargs)
            torch.testing.assert_close(part, whole, atol=1e-12, rtol=1e-12)


def test_infidelity_warns_on_too_small_chunks_and_checks_shapes():
    forward, make_perturb, inputs, attributions, kwargs = _infidelity_setup(False, 1)
    with pytest.warns(UserWarning, match="max_examples_per_batch"):
        infidelity(forward, make_perturb(), inputs, attributions, max_examples_per_batch=2, **kwargs)
    with pytest.raises(ValueError, match="shape"):
        infidelity(forward, make_perturb(), inputs, attributions[:, :3], **kwargs)
    with pytest.raises(ValueError):
        infidelity(forward, make_perturb(), inputs, (attributions, attributions), **kwargs)


# --------------------------------------------------------------------------------------------
# sensitivity_max


def literal_sensitivity_max(explain, x, radius, n, norm_ord, target):
    """The definition, one example and one sample at a time."""
    ords = {"fro": 2}
    out = []
    for i in range(x.shape[0]):
        xi = x[i : i + 1]
        ti = None if target is None else (target[i : i + 1] if isinstance(target, torch.Tensor) else target)
        e0 = explain(xi, target=ti).reshape(-1)
        denom = torch.linalg.vector_norm(e0, ord=ords.get(norm_ord, norm_ord))
        denom = denom if denom != 0 else torch.tensor(1.0, dtype=D)
        worst = -1.0
        for j in range(n):
            y = xi + noise(xi, torch.tensor([j]), radius)
            e = explain(y, target=ti).reshape(-1)
            worst = max(worst, float(torch.linalg.vector_norm(e0 - e, ord=ords.get(norm_ord, norm_ord)) / denom))
        out.append(worst)
    return torch.tensor(out, dtype=D)


SENSITIVITY_CASES = [
    ("fro", "tensor", None),
    ("fro", 1, 4),
    (1, "tensor", 8),
    (float("inf"), 2, None),
    (3, "tensor", 12),
]


@pytest.mark.parametrize("norm_ord, target, m", SENSITIVITY_CASES)
def test_sensitivity_max_matches_literal_and_captum(norm_ord, target, m):
    net = make_net(5, 3)
    explain = grad_explainer(net)
    x = torch.randn(4, 5, dtype=D, generator=torch.Generator().manual_seed(5))
    target = torch.tensor([0, 1, 2, 1]) if target == "tensor" else target
    common = dict(perturb_radius=0.3, n_perturb_samples=5, norm_ord=norm_ord, max_examples_per_batch=m, target=target)

    ours = sensitivity_max(explain, x, SensitivityPerturb(4), **common)
    theirs = captum_metrics.sensitivity_max(explain, x, SensitivityPerturb(4), **common)
    slow = literal_sensitivity_max(explain, x, 0.3, 5, norm_ord, target)

    assert ours.shape == (4,)
    assert float(ours.min()) > 1e-3  # a non-trivial value, so agreement means something
    torch.testing.assert_close(ours, slow, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_sensitivity_max_tuple_inputs_args_and_baselines_match_captum():
    net = make_net(5, 3)

    def forward(a, b, scale):
        return net(torch.cat([a, b], 1)) * scale

    base_explain = grad_explainer(forward)

    def explain(inputs, target=None, additional_forward_args=None, baselines=None):
        # a gradient x (input - baseline) explanation, to check baselines follow their examples
        grads = base_explain(inputs, target=target, additional_forward_args=additional_forward_args)
        return tuple(gr * (x - b) for gr, x, b in zip(grads, inputs, baselines))

    g = torch.Generator().manual_seed(7)
    x = torch.randn(3, 5, dtype=D, generator=g)
    inputs = (x[:, :2].clone(), x[:, 2:].clone())
    scale = torch.rand(3, 1, dtype=D, generator=g) + 0.5
    baselines = (torch.randn(3, 2, dtype=D, generator=g), torch.randn(3, 3, dtype=D, generator=g))
    kwargs = dict(target=[2, 0, 1], additional_forward_args=(scale,), baselines=baselines)
    for m in (None, 6):
        ours = sensitivity_max(explain, inputs, SensitivityPerturb(3), 0.2, 4, max_examples_per_batch=m, **kwargs)
        theirs = captum_metrics.sensitivity_max(
            explain, inputs, SensitivityPerturb(3), 0.2, 4, max_examples_per_batch=m, **kwargs
        )
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
        assert float(ours.min()) > 1e-3


def test_sensitivity_max_chunked_equals_unchunked():
    net = make_net(5, 3)
    explain = grad_explainer(net)
    x = torch.randn(3, 5, dtype=D)
    whole = sensitivity_max(explain, x, SensitivityPerturb(3), 0.3, 7, target=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for m in (1, 3, 6, 9, 21):
            part = sensitivity_max(explain, x, SensitivityPerturb(3), 0.3, 7, max_examples_per_batch=m, target=1)
            torch.testing.assert_close(part, whole, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("perturb_func", ["default", "deterministic"])
def test_sensitivity_max_of_saliency_on_linear_model_is_zero(perturb_func):
    lin = torch.nn.Linear(6, 4).to(D)
    explain = grad_explainer(lin)
    x = torch.randn(5, 6, dtype=D)
    kwargs = {} if perturb_func == "default" else {"perturb_func": SensitivityPerturb(5)}
    got = sensitivity_max(explain, x, perturb_radius=0.5, n_perturb_samples=6, target=2, **kwargs)
    assert got.shape == (5,)
    assert torch.equal(got, torch.zeros(5, dtype=D))


def test_sensitivity_max_default_perturbation_stays_in_the_ball():
    seen = []

    def record(inputs):
        seen.append(inputs.clone())
        return inputs.sum(1, keepdim=True) * inputs  # a non-linear "explanation"

    x = torch.randn(2, 4, dtype=D)
    got = sensitivity_max(record, x, perturb_radius=0.05, n_perturb_samples=8)
    assert got.shape == (2,) and bool((got > 0).all())
    moved = seen[1] - x.repeat_interleave(8, dim=0)
    assert float(moved.abs().max()) <= 0.05 + 1e-7
    assert float(moved.abs().max()) > 0.0


def test_sensitivity_max_radius_passed_only_to_two_argument_functions():
    radii = []

    def one_arg(inputs):
        radii.append(None)
        return inputs + 0.01

    def two_args(inputs, radius):
        radii.append(radius)
        return inputs + radius

    explain = lambda inputs: inputs ** 2  # noqa: E731
    x = torch.ones(2, 3, dtype=D)
    sensitivity_max(explain, x, one_arg, perturb_radius=0.3, n_perturb_samples=2)
    got = sensitivity_max(explain, x, two_args, perturb_radius=0.5, n_perturb_samples=2)
    assert radii == [None, 0.5]
    # the explanation x^2 moves from 1 to 1.5^2 = 2.25 in every element: relative change 1.25
    torch.testing.assert_close(got, torch.full((2,), 1.25, dtype=D))


def test_sensitivity_max_zero_explanation_is_not_divided():
    """An explanation of norm 0 at x is compared in absolute terms (its norm is taken as 1)."""
    x = torch.ones(2, 3, dtype=D)
    explain = lambda inputs: inputs - 1.0  # noqa: E731 - zero at x, 0.5 everywhere after the shift
    got = sensitivity_max(explain, x, lambda inputs, r: inputs + r, perturb_radius=0.5, n_perturb_samples=3)
    torch.testing.assert_close(got, torch.full((2,), 0.5 * 3 ** 0.5, dtype=D))
