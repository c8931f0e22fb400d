"""Compiled explainers: one ONNX graph per method, run by ONNX Runtime, equal to the eager core.

Models: an MLP (ReLU and tanh), a CNN with max/avg pooling, eval-mode batch norm and a strided
convolution, an embedding text model, and the three bundled example architectures. Every compiled
result is compared with ``explain_serve.attr`` at a batch size other than the one traced (the batch
axis is dynamic), within 1e-4 relative (max abs error / max |eager|). The backward-operator
translations are also checked one by one against PyTorch's own backward kernels.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

pytest.importorskip("onnxruntime")

import explain_serve.attr as attr  # noqa: E402
from explain_serve import examples  # noqa: E402
from explain_serve.export import CompileError, CompiledExplainer, compile_explainer, try_compile  # noqa: E402
from explain_serve.export import backward_ops  # noqa: E402

RTOL = 1e-4


def rel(actual: torch.Tensor, expected: torch.Tensor) -> float:
    actual, expected = actual.detach().double(), expected.detach().double()
    assert actual.shape == expected.shape, (tuple(actual.shape), tuple(expected.shape))
    return float((actual - expected).abs().max() / expected.abs().max().clamp(min=1e-12))


# -- models --------------------------------------------------------------------------------------------
class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.relu, self.fc2, self.tanh, self.fc3 = nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 8), nn.Tanh(), nn.Linear(8, 3)

    def forward(self, x):
        return self.fc3(self.tanh(self.fc2(self.relu(self.fc1(x)))))


class PoolCNN(nn.Module):
    """conv-bn-relu-maxpool, strided conv-bn-relu, avgpool, adaptive pool, linear."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(2, 6, 3, padding=1), nn.BatchNorm2d(6)
        self.pool1 = nn.MaxPool2d(2)
        self.conv2, self.bn2 = nn.Conv2d(6, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8)
        self.pool2 = nn.AvgPool2d(2)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = self.pool1(F.relu(self.bn1(self.conv1(x))))
        x = self.pool2(F.relu(self.bn2(self.conv2(x))))
        return self.fc(self.gap(x).flatten(1))


class UpsamplingCNN(nn.Module):
    """Bilinear (by a scale factor) and nearest (to a size) upsampling between convolutions."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(2, 3, 3, padding=1), nn.Conv2d(3, 4, 3, stride=2)
        self.fc = nn.Linear(4 * 10 * 10, 3)

    def forward(self, x):
        x = F.interpolate(torch.relu(self.conv1(x)), scale_factor=1.5, mode="bilinear", align_corners=False)
        x = F.interpolate(torch.relu(self.conv2(x)), size=(10, 10), mode="nearest")
        return self.fc(x.flatten(1))


class TextModel(nn.Module):
    def __init__(self, vocab=40, dim=8):
        super().__init__()
        self.embedding = nn.Embedding(vocab, dim, padding_idx=0)
        self.fc1, self.fc2 = nn.Linear(dim, 16), nn.Linear(16, 3)

    def forward(self, ids):
        mask = (ids != 0).unsqueeze(-1).to(torch.float32)
        pooled = (self.embedding(ids) * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return self.fc2(torch.tanh(self.fc1(pooled)))


def _randomize_bn(model):
    g = torch.Generator().manual_seed(3)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.num_features, generator=g) - 0.5)
    return model


def model_case(name):
    """(model, example batch used for compiling, a batch of another size for checking, layer name)."""
    g = torch.Generator().manual_seed(1)
    torch.manual_seed(0)
    if name == "mlp":
        return MLP().eval(), torch.randn(4, 6, generator=g), torch.randn(7, 6, generator=g), "fc2"
    if name == "cnn":
        return _randomize_bn(PoolCNN()).eval(), torch.randn(3, 2, 12, 12, generator=g), torch.randn(5, 2, 12, 12, generator=g), "conv2"
    if name == "upsampling":
        return UpsamplingCNN().eval(), torch.randn(3, 2, 12, 12, generator=g), torch.randn(5, 2, 12, 12, generator=g), "conv2"
    if name == "text":
        ids = torch.randint(1, 40, (3, 6), generator=g)
        other = torch.randint(0, 40, (5, 9), generator=g)  # other batch size and sequence length
        return TextModel().eval(), ids, other, "embedding"
    if name == "digits":
        return examples.DigitsCNN().eval(), torch.rand(3, 1, 8, 8, generator=g), torch.rand(5, 1, 8, 8, generator=g), "conv2"
    if name == "cancer":
        model = examples.CancerMLP().eval()
        with torch.no_grad():
            model.mean.uniform_(-1, 1)
            model.std.uniform_(0.5, 2)
        return model, torch.randn(4, 30, generator=g), torch.randn(6, 30, generator=g), "fc1"
    if name == "sentiment":
        model = examples.SentimentClassifier(vocab_size=50).eval()
        return model, torch.randint(1, 50, (3, 7), generator=g), torch.randint(0, 50, (4, 11), generator=g), "embedding"
    raise KeyError(name)


def targets_for(model, x):
    with torch.no_grad():
        return model(x).argmin(1)  # not the argmax: the target really is an input of the graph


DENSE = ("mlp", "cnn", "upsampling", "digits", "cancer")
TEXT = ("text", "sentiment")


# -- input-gradient methods ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", DENSE)
@pytest.mark.parametrize("method", ["Saliency", "InputXGradient"])
def test_gradient_methods_match_eager_core(name, method):
    model, example, x, _ = model_case(name)
    compiled = compile_explainer(model, method, example)
    t = targets_for(model, x)
    expected = getattr(attr, method)(model).attribute(x, target=t)
    assert rel(compiled.attribute(x, target=t), expected) < RTOL
    assert compiled.spec.parity["relative_error"] < RTOL


@pytest.mark.parametrize("name", DENSE)
@pytest.mark.parametrize("integration", ["gausslegendre", "riemann_trapezoid"])
def test_integrated_gradients_matches_eager_core(name, integration):
    model, example, x, _ = model_case(name)
    compiled = compile_explainer(model, "IntegratedGradients", example, n_steps=12, integration=integration)
    t = targets_for(model, x)
    baseline = 0.1 * torch.randn_like(x)
    got, delta = compiled.attribute(x, baselines=baseline, target=t, return_convergence_delta=True)
    expected, expected_delta = attr.IntegratedGradients(model).attribute(
        x, baselines=baseline, target=t, n_steps=12, method=integration, return_convergence_delta=True
    )
    assert rel(got, expected) < RTOL
    assert delta.shape == (x.shape[0],)
    scale = float(expected.abs().sum(tuple(range(1, x.dim()))).max())
    assert float((delta.double() - expected_delta.double()).abs().max()) < 1e-4 * max(scale, 1.0)


@pytest.mark.parametrize("method", ["Saliency", "IntegratedGradients"])
def test_channels_last_model(method):
    """Weights in channels-last layout (as training can leave them) trace to other view operators."""
    model, example, x, _ = model_case("digits")
    model = model.to(memory_format=torch.channels_last)
    compiled = compile_explainer(model, method, example, n_steps=8) if method != "Saliency" else compile_explainer(model, method, example)
    t = targets_for(model, x)
    kwargs = {"n_steps": 8} if method != "Saliency" else {}
    expected = getattr(attr, method)(model).attribute(x, target=t, **kwargs)
    assert rel(compiled.attribute(x, target=t), expected) < RTOL


def test_integrated_gradients_target_forms_and_saved_graph(tmp_path):
    model, example, x, _ = model_case("mlp")
    path = tmp_path / "ig.onnx"
    compile_explainer(model, "IntegratedGradients", example, n_steps=8, path=path)
    loaded = CompiledExplainer.load(path)
    assert loaded.spec.method == "IntegratedGradients" and loaded.spec.n_steps == 8
    assert loaded.model.input_names == ["input", "baseline", "target"]
    assert loaded.model.output_names == ["attributions", "delta"]
    ig = attr.IntegratedGradients(model)
    for target in (2, [0, 1, 2, 0, 1, 2, 0], torch.tensor([1, 1, 0, 2, 2, 0, 1]), torch.tensor(1)):
        expected = ig.attribute(x, target=target, n_steps=8)
        assert rel(loaded.attribute(x, target=target), expected) < RTOL
    # a single example and a scalar baseline
    expected = ig.attribute(x[:1], baselines=0.5, target=1, n_steps=8)
    assert rel(loaded.attribute(x[:1], baselines=0.5, target=1), expected) < RTOL
    # tuple in, tuple out
    out = loaded.attribute((x,), target=0)
    assert isinstance(out, tuple) and rel(out[0], ig.attribute((x,), target=0, n_steps=8)[0]) < RTOL


# -- layer methods ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["cnn", "digits"])
@pytest.mark.parametrize("relu", [False, True])
def test_layer_grad_cam_matches_eager_core(name, relu):
    model, example, x, layer = model_case(name)
    compiled = compile_explainer(model, "LayerGradCam", example, layer=layer, relu_attributions=relu)
    t = targets_for(model, x)
    expected = attr.LayerGradCam(model, model.get_submodule(layer)).attribute(x, target=t, relu_attributions=relu)
    got = compiled.attribute(x, target=t)
    assert got.shape[1] == 1 and got.shape[0] == x.shape[0]
    assert rel(got, expected) < RTOL


def test_layer_grad_cam_on_a_linear_layer():
    model, example, x, layer = model_case("mlp")
    compiled = compile_explainer(model, "LayerGradCam", example, layer=layer)
    t = targets_for(model, x)
    expected = attr.LayerGradCam(model, model.fc2).attribute(x, target=t)
    assert rel(compiled.attribute(x, target=t), expected) < RTOL


@pytest.mark.parametrize("name", TEXT)
def test_layer_integrated_gradients_on_embedding_matches_eager_core(name):
    model, example, ids, layer = model_case(name)
    compiled = compile_explainer(model, "LayerIntegratedGradients", example, layer=layer, n_steps=16)
    t = targets_for(model, ids)
    baseline = torch.zeros_like(ids)
    got, delta = compiled.attribute(ids, baselines=baseline, target=t, return_convergence_delta=True)
    expected, expected_delta = attr.LayerIntegratedGradients(model, model.get_submodule(layer)).attribute(
        ids, baselines=baseline, target=t, n_steps=16, return_convergence_delta=True
    )
    assert got.shape == expected.shape == (*ids.shape, model.get_submodule(layer).embedding_dim)
    assert rel(got, expected) < RTOL
    assert float((delta - expected_delta).abs().max()) < 1e-5


def test_compiled_layer_methods_leave_no_hooks():
    model, example, _, layer = model_case("cnn")
    compile_explainer(model, "LayerGradCam", example, layer=layer)
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks
    assert not model.training


# -- fallback -----------------------------------------------------------------------------------------
class DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        if x.sum() > 0:  # control flow on values: no single graph can hold both branches
            return self.fc(x)
        return -self.fc(x)


class Unsupported(nn.Module):
    """Adaptive pooling to a size that does not divide the input: no translation for its backward."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.pool = nn.AdaptiveAvgPool2d(3)
        self.fc = nn.Linear(18, 2)

    def forward(self, x):
        return self.fc(self.pool(self.conv(x)).flatten(1))


@pytest.mark.parametrize(
    "model, x, method, kwargs, reason",
    [
        (DataDependent(), torch.randn(3, 4), "IntegratedGradients", {}, "could not be compiled"),
        (Unsupported(), torch.randn(2, 1, 10, 10), "Saliency", {}, "adaptive_avg_pool2d"),
        (MLP(), torch.randn(2, 6), "DeepLift", {}, "cannot be compiled"),
        (MLP(), torch.randn(2, 6), "LayerGradCam", {}, "needs a layer"),
    ],
    ids=["data-dependent", "no-translation", "method", "no-layer"],
)
def test_uncompilable_models_and_methods_give_a_reason(model, x, method, kwargs, reason):
    with pytest.raises(CompileError, match=reason):
        compile_explainer(model.eval(), method, x, **kwargs)
    explainer, why = try_compile(model.eval(), method, x, **kwargs)
    assert explainer is None and reason in why


def test_parity_check_rejects_a_wrong_graph(monkeypatch):
    """The compile-time check compares with eager torch: a wrong translation is caught, not served."""
    def wrong_threshold_backward(grad_output, self, threshold):
        return grad_output  # forgets the ReLU mask

    model, example, _, _ = model_case("mlp")
    with pytest.raises(CompileError, match="differs from eager torch"):
        compile_explainer(
            model, "Saliency", example,
            extra_decompositions={torch.ops.aten.threshold_backward.default: wrong_threshold_backward},
        )


# -- the backward translations, one by one -----------------------------------------------------------
def _input_grad(fn, x, seed=0):
    x = x.detach().requires_grad_(True)
    y = fn(x)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed), dtype=y.dtype)
    return torch.autograd.grad(y, x, g)[0], g, y


@pytest.mark.parametrize(
    "shape, conv",
    [
        ((2, 3, 9, 9), nn.Conv2d(3, 4, 3, padding=1)),
        ((2, 3, 9, 9), nn.Conv2d(3, 4, 3, stride=2)),  # the stride drops the last row: output_padding
        ((2, 3, 10, 10), nn.Conv2d(3, 4, (3, 2), stride=(2, 3), padding=(1, 0), dilation=(1, 2))),
        ((2, 4, 8, 8), nn.Conv2d(4, 6, 3, groups=2, padding=2)),
        ((2, 3, 11), nn.Conv1d(3, 5, 4, stride=3)),
        ((2, 4, 5, 5), nn.ConvTranspose2d(4, 3, 3, stride=1)),
    ],
)
def test_convolution_backward_translation(shape, conv):
    x = torch.randn(shape, dtype=torch.float64)
    conv = conv.double()
    expected, g, y = _input_grad(conv, x)
    weight = conv.weight.detach()
    nd = weight.dim() - 2
    transposed = isinstance(conv, nn.ConvTranspose2d)
    got, _, _ = backward_ops.convolution_backward(
        g, x, weight, [weight.shape[0]], list(conv.stride), list(conv.padding), list(conv.dilation),
        transposed, [0] * nd, conv.groups, [True, False, False],
    )
    torch.testing.assert_close(got, expected)


def test_pooling_and_batch_norm_translations():
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    # max pool: scatter-add through the argmax indices (overlapping windows accumulate)
    out, idx = F.max_pool2d(x, 3, stride=2, padding=1, return_indices=True)
    expected, g, _ = _input_grad(lambda t: F.max_pool2d(t, 3, stride=2, padding=1), x)
    torch.testing.assert_close(backward_ops.max_pool2d_with_indices_backward(g, x, [3], [2], [1], [1], False, idx), expected)
    # average pools
    expected, g, _ = _input_grad(lambda t: F.avg_pool2d(t, 2), x)
    torch.testing.assert_close(backward_ops.avg_pool2d_backward(g, x, [2], [], [0], False, True, None), expected)
    expected, g, _ = _input_grad(lambda t: F.avg_pool2d(t, 3, stride=2, padding=1), x)
    torch.testing.assert_close(backward_ops.avg_pool2d_backward(g, x, [3], [2], [1], False, True, None), expected)
    for size in (1, 2, 4):
        expected, g, _ = _input_grad(lambda t: F.adaptive_avg_pool2d(t, size), x)
        torch.testing.assert_close(backward_ops.adaptive_avg_pool2d_backward(g, x), expected)
        expected, g, _ = _input_grad(lambda t: F.adaptive_avg_pool2d(t, size), x[0])  # no batch axis
        torch.testing.assert_close(backward_ops.adaptive_avg_pool2d_backward(g, x[0]), expected)
        torch.testing.assert_close(backward_ops.adaptive_avg_pool2d(x, [size, size]), F.adaptive_avg_pool2d(x, size))
    # batch norm in eval mode, forward and backward
    bn = _randomize_bn(nn.BatchNorm2d(3)).double().eval()
    expected, g, y = _input_grad(bn, x)
    got, _, _ = backward_ops.native_batch_norm_backward(
        g, x, bn.weight.detach(), bn.running_mean, bn.running_var, None, None, False, bn.eps, [True, False, False])
    torch.testing.assert_close(got, expected)
    out, _, _ = backward_ops.native_batch_norm_eval(x, bn.weight.detach(), bn.bias.detach(), bn.running_mean, bn.running_var, False, 0.1, bn.eps)
    torch.testing.assert_close(out, y.detach())
    with pytest.raises(NotImplementedError, match="training"):
        backward_ops.native_batch_norm_backward(g, x, None, None, None, None, None, True, 1e-5, [True, False, False])


@pytest.mark.parametrize(
    "first, shape",
    [
        (nn.Linear(5, 7), (5,)),  # input gradient: mm, then the division by the inline scale
        (nn.Conv2d(2, 3, 3, padding=1), (2, 6, 6)),  # input gradient: a convolution with the flipped kernel
    ],
)
def test_sum_over_path_copies_runs_before_the_first_layers_backward(first, shape):
    """The traced graph adds the stacked copies' gradients before the linear input-gradient operators."""
    from explain_serve.export._trace import trace

    torch.manual_seed(0)
    model = nn.Sequential(first, nn.ReLU(), nn.Flatten(), nn.LazyLinear(4)).eval()
    scale = torch.rand(shape) + 0.5
    model(torch.zeros((1,) + shape))
    frozen = {k: v.detach() for k, v in model.state_dict().items()}

    def fn(x):
        rows = torch.cat([x * a for a in (0.25, 0.5, 1.0)])
        with torch.enable_grad():
            rows = rows.detach().requires_grad_(True)
            out = torch.func.functional_call(model, frozen, (rows / scale,))
            g = torch.autograd.grad(out[:, 1].sum(), rows)[0]
        return g.reshape((3,) + x.shape).sum(0)

    x = torch.randn((13,) + shape)
    gm = trace(fn, [x])
    aten = torch.ops.aten
    linear = [n for n in gm.graph.nodes if n.target in (aten.mm.default, aten.convolution.default)]
    assert any(n.args[0].target is aten.sum.dim_IntList for n in linear), gm.graph
    torch.testing.assert_close(gm(x), fn(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape, kwargs", [
    ((2, 3, 5, 7), dict(scale_factor=2, mode="bilinear", align_corners=False)),
    ((2, 3, 5, 7), dict(size=(9, 13), mode="bilinear", align_corners=True)),
    ((2, 3, 5, 7), dict(scale_factor=(1.7, 2.3), mode="bilinear")),
    ((2, 3, 5, 7), dict(size=(11, 8), mode="bilinear", align_corners=False)),
    ((2, 3, 5, 7), dict(scale_factor=3, mode="nearest")),
    ((2, 3, 5, 7), dict(size=(8, 16), mode="nearest")),
    ((2, 3, 6, 6), dict(scale_factor=1.5, mode="nearest", recompute_scale_factor=True)),
])
def test_upsampling_as_matrix_products(shape, kwargs):
    """``F.interpolate`` as traced for compiling: the same values and input gradients as PyTorch's kernels."""
    x = torch.randn(shape, dtype=torch.float64)
    expected, g, y = _input_grad(lambda t: F.interpolate(t, **kwargs), x)
    got, _, out = _input_grad(lambda t: backward_ops._interpolate(t, **kwargs), x)
    torch.testing.assert_close(out, y)
    torch.testing.assert_close(got, expected)
    assert backward_ops._interpolate(x, scale_factor=2, mode="bicubic") is None  # left to PyTorch


def test_embedding_slice_and_activation_translations():
    weight = torch.randn(10, 4, dtype=torch.float64, requires_grad=True)
    ids = torch.tensor([[1, 2, 2, 0], [3, 1, 0, 0]])
    g = torch.randn(2, 4, 4, dtype=torch.float64)
    expected = torch.autograd.grad(F.embedding(ids, weight, padding_idx=0), weight, g)[0]
    torch.testing.assert_close(backward_ops.embedding_dense_backward(g, ids, 10, 0, False), expected)
    x = torch.randn(5, 6, dtype=torch.float64)
    expected, g, _ = _input_grad(lambda t: t[1:4], x)
    torch.testing.assert_close(backward_ops.slice_backward(g, [5, 6], 0, 1, 4, 1), expected)
    expected, g, _ = _input_grad(lambda t: t[:, 2:], x)
    torch.testing.assert_close(backward_ops.slice_backward(g, [5, 6], 1, 2, 2**63 - 1, 1), expected)
    cases = [
        (torch.relu, lambda g, x, y: backward_ops.threshold_backward(g, y, 0)),
        (torch.sigmoid, lambda g, x, y: backward_ops.sigmoid_backward(g, y)),
        (torch.tanh, lambda g, x, y: backward_ops.tanh_backward(g, y)),
        (lambda t: torch.softmax(t, 1), lambda g, x, y: backward_ops.softmax_backward_data(g, y, 1, x.dtype)),
        (lambda t: torch.log_softmax(t, 1), lambda g, x, y: backward_ops.log_softmax_backward_data(g, y, 1, x.dtype)),
        (lambda t: F.leaky_relu(t, 0.1), lambda g, x, y: backward_ops.leaky_relu_backward(g, x, 0.1, False)),
        (lambda t: F.hardtanh(t, -0.5, 0.5), lambda g, x, y: backward_ops.hardtanh_backward(g, x, -0.5, 0.5)),
        (F.gelu, lambda g, x, y: backward_ops.gelu_backward(g, x)),
        (lambda t: F.gelu(t, approximate="tanh"), lambda g, x, y: backward_ops.gelu_backward(g, x, "tanh")),
        (F.silu, lambda g, x, y: backward_ops.silu_backward(g, x)),
    ]
    for fn, rule in cases:
        expected, g, y = _input_grad(fn, x)
        torch.testing.assert_close(rule(g, x, y.detach()), expected)


class Activations(nn.Module):
    """Every activation with a translation, in one model compiled end to end."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(5, 16), nn.Linear(16, 16), nn.Linear(16, 3)
        self.norm = nn.LayerNorm(16)

    def forward(self, x):
        h = F.gelu(self.fc1(x)) + F.silu(self.fc1(x)) + torch.sigmoid(self.fc1(x)) + F.leaky_relu(self.fc1(x), 0.2)
        h = self.norm(F.hardtanh(self.fc2(h), -2, 2))
        return torch.log_softmax(self.fc3(torch.softmax(h, 1) * 4), 1)


def test_activation_model_compiles_and_matches():
    model = Activations().eval()
    x = torch.randn(6, 5)
    compiled = compile_explainer(model, "IntegratedGradients", x[:3], n_steps=10)
    expected = attr.IntegratedGradients(model).attribute(x, target=1, n_steps=10)
    assert rel(compiled.attribute(x, target=1), expected) < RTOL


# -- serving integration (in-process; over TorchServe in tests/serving/test_serve_compiled.py) ----------
class Upsampling(nn.Module):
    """Bicubic upsampling: its forward exports, its backward has no translation (so no compiled graph)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.fc = nn.Linear(2 * 16 * 16, 3)

    def forward(self, x):
        up = F.interpolate(self.conv(x), scale_factor=2, mode="bicubic", align_corners=False)
        return self.fc(up.flatten(1))


def _service(tmp_path, model, cfg, methods):
    """The parts of an ExplainService that ``install`` uses (model_dir, methods, cfg, predictions)."""
    from types import SimpleNamespace

    def probabilities(x):
        with torch.no_grad():
            return torch.softmax(model(x), 1)

    return SimpleNamespace(model_dir=tmp_path, model=model, model_name="m", cfg=cfg, methods=methods,
                           _probabilities=probabilities)


def _cfg(kind, shape, methods, layer=None, n_steps=8):
    return {"kind": kind, "output": "logits", "input": {"shape": shape},
            "explain": {"methods": {m: {} for m in methods}, "layer": layer,
                        "default_params": {"integrated_gradients": {"n_steps": n_steps}}}}


def test_uncompilable_model_is_served_eagerly_with_the_reason_logged(tmp_path, caplog):
    from explain_serve.export.serving import build_archive_files, install

    model = Upsampling().eval()
    cfg = _cfg("image", [1, 8, 8], ["saliency", "integrated_gradients", "occlusion"])
    with caplog.at_level("WARNING"):
        files = build_archive_files(tmp_path, model, cfg)
    names = {p.name for p in files}
    assert names == {"model.onnx", "onnx.json"}  # the model itself still runs on ONNX Runtime
    manifest = json.loads((tmp_path / "onnx.json").read_text())
    assert "could not be compiled" in manifest["not_compiled"]["integrated_gradients"]
    assert "no compiled form" in manifest["not_compiled"]["occlusion"]
    eager = {"integrated_gradients": attr.IntegratedGradients(model)}
    service = _service(tmp_path, model, cfg, dict(eager))
    caplog.clear()
    with caplog.at_level("WARNING"):
        backend = install(service)
    assert service.methods["integrated_gradients"] is eager["integrated_gradients"]  # not wrapped
    assert "integrated_gradients is served by the eager core" in caplog.text and "could not be compiled" in caplog.text
    x = torch.rand(3, 1, 8, 8)
    with torch.no_grad():
        expected = torch.softmax(model(x), 1)
    assert rel(service._probabilities(x), expected) < 1e-5
    assert backend.calls["onnx_predictions"] == 1


def test_installed_method_uses_the_graph_for_compiled_parameters_only(tmp_path, caplog):
    from explain_serve.export.serving import CompiledOrEager, build_archive_files, install

    model, _, x, _ = model_case("cancer")
    cfg = _cfg("tabular", [30], ["integrated_gradients", "saliency"], n_steps=8)
    build_archive_files(tmp_path, model, cfg, reference=np.random.default_rng(0).normal(size=(20, 30)).astype(np.float32))
    ig = attr.IntegratedGradients(model)
    targets = [0, 1, 1, 0, 1, 0]
    ablation = attr.FeatureAblation(model)
    expected_ablation = ablation.attribute(x, target=targets)
    service = _service(tmp_path, model, cfg, {"integrated_gradients": ig, "saliency": attr.Saliency(model),
                                              "feature_ablation": ablation})
    backend = install(service)
    method = service.methods["integrated_gradients"]
    assert isinstance(method, CompiledOrEager) and isinstance(service.methods["saliency"], CompiledOrEager)
    baseline = x.mean(0, keepdim=True)
    kwargs = dict(baselines=baseline, method="gausslegendre", return_convergence_delta=True)
    got, delta = method.attribute(x, target=targets, n_steps=8, **kwargs)
    expected, expected_delta = ig.attribute(x, target=targets, n_steps=8, **kwargs)
    assert backend.calls == {"compiled": 1, "eager": 0, "onnx_predictions": 0}
    assert rel(got, expected) < RTOL and float((delta - expected_delta).abs().max()) < 1e-4
    with caplog.at_level("INFO"):
        got = method.attribute(x, target=targets, n_steps=5, **kwargs)[0]
    assert backend.calls["eager"] == 1
    assert "n_steps=5 differs from the compiled n_steps=8" in caplog.text
    assert rel(got, ig.attribute(x, target=targets, n_steps=5, **kwargs)[0]) == 0.0
    # forward-only methods evaluate their perturbations on ONNX Runtime
    got = service.methods["feature_ablation"].attribute(x, target=targets)
    assert backend.calls["onnx_predictions"] > 0
    assert rel(got, expected_ablation) < RTOL
    # another input width is not sent to the graph (here the eager core rejects it too)
    with caplog.at_level("INFO"), pytest.raises(RuntimeError):
        method.attribute(torch.randn(2, 31), target=[0, 1], n_steps=8, **{**kwargs, "baselines": 0.0})
    assert "input shape (31,) is not the compiled one" in caplog.text
