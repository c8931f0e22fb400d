"""Model export to ONNX and forward-only attribution methods on ONNX Runtime.

Export parity: torch and ONNX Runtime outputs agree (max abs error, argmax agreement) at several
batch sizes (the batch axis is dynamic) and, for token ids, several sequence lengths. Forward-only
parity: each perturbation method of ``explain_serve.attr`` gives the same attributions with the torch
model and with ``OnnxModel`` (same seed, so random methods draw the same perturbations).
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
from explain_serve.export import ExportError, OnnxModel, export_model  # noqa: E402
from explain_serve.export.model import compare_outputs  # noqa: E402


class BNCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn, self.pool = nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.MaxPool2d(2)
        self.fc = nn.Linear(4 * 4 * 4, 5)

    def forward(self, x):
        return self.fc(self.pool(F.relu(self.bn(self.conv(x)))).flatten(1))


def models():
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    cnn = BNCNN().eval()
    with torch.no_grad():
        cnn.bn.running_mean.uniform_(-0.3, 0.3)
        cnn.bn.running_var.uniform_(0.5, 1.5)
    return {
        "cnn": (cnn, torch.randn(12, 1, 8, 8, generator=g)),
        "digits": (examples.DigitsCNN().eval(), torch.rand(12, 1, 8, 8, generator=g)),
        "cancer": (examples.CancerMLP().eval(), torch.randn(12, 30, generator=g)),
        "sentiment": (examples.SentimentClassifier(vocab_size=40).eval(), torch.randint(0, 40, (12, 9), generator=g)),
    }


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = {}
    root = tmp_path_factory.mktemp("onnx")
    for name, (model, x) in models().items():
        report = export_model(model, x[:3], root / f"{name}.onnx", reference_inputs=x)
        out[name] = (model, x, report, OnnxModel(root / f"{name}.onnx"))
    return out


@pytest.mark.parametrize("name", ["cnn", "digits", "cancer", "sentiment"])
def test_export_parity_report(exported, name):
    model, x, report, _ = exported[name]
    assert report.ok
    assert report.n_reference == 12 and report.batch_sizes == [1, 12]
    assert report.max_abs_error < 1e-4 and report.max_rel_error < 1e-5
    assert report.argmax_agreement == 1.0
    assert report.dynamic_axes["input"][0] == "batch"
    text = report.summary()
    assert "argmax agreement 100.00%" in text and "OK" in text
    json.dumps(report.to_dict())  # serialisable for the CLI


@pytest.mark.parametrize("name", ["cnn", "digits", "cancer", "sentiment"])
@pytest.mark.parametrize("batch", [1, 5, 40])
def test_onnx_model_is_a_torch_callable_with_dynamic_batch(exported, name, batch):
    model, x, _, onnx_model = exported[name]
    rows = x[torch.arange(batch) % x.shape[0]]
    with torch.no_grad():
        expected = model(rows)
    got = onnx_model(rows)
    assert isinstance(got, torch.Tensor) and got.shape == expected.shape and got.dtype == torch.float32
    assert float((got - expected).abs().max()) < 1e-4
    assert bool((got.argmax(1) == expected.argmax(1)).all())


def test_token_model_accepts_other_sequence_lengths(exported):
    model, x, report, onnx_model = exported["sentiment"]
    assert report.dynamic_axes["input"] == {0: "batch", 1: "length"}
    for length in (1, 4, 20):
        ids = torch.randint(0, 40, (3, length), generator=torch.Generator().manual_seed(length))
        with torch.no_grad():
            expected = model(ids)
        assert float((onnx_model(ids) - expected).abs().max()) < 1e-5


def test_export_keeps_the_training_flag_and_float64_inputs_are_cast(tmp_path):
    model, x = models()["cnn"]
    model.train()
    report = export_model(model, x[:2], tmp_path / "m.onnx", reference_inputs=x)
    assert model.training  # restored
    model.eval()
    assert report.ok
    onnx_model = OnnxModel(tmp_path / "m.onnx")
    with torch.no_grad():
        expected = model(x)
    assert float((onnx_model(x.double()) - expected).abs().max()) < 1e-4


def test_strict_export_raises_on_disagreement(tmp_path):
    model, x = models()["cancer"]
    with pytest.raises(ExportError, match="FAILED"):
        export_model(model, x[:2], tmp_path / "m.onnx", reference_inputs=x, atol=-1.0)
    report = export_model(model, x[:2], tmp_path / "m.onnx", reference_inputs=x, atol=-1.0, strict=False)
    assert not report.ok


def test_compare_outputs_counts_argmax_disagreement():
    expected = torch.tensor([[0.0, 1.0], [2.0, 0.0], [0.0, 3.0], [1.0, 0.0]])
    actual = expected.clone()
    actual[0] = torch.tensor([1.5, 1.0])
    abs_err, rel_err, agree = compare_outputs(expected, actual)
    assert abs_err == 1.5 and rel_err == pytest.approx(0.5) and agree == 0.75


def test_multi_input_model(tmp_path):
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(5, 3)

        def forward(self, a, b):
            return self.fc(torch.cat([a, b * 2], 1))

    model = Two().eval()
    a, b = torch.randn(6, 2), torch.randn(6, 3)
    report = export_model(model, (a[:2], b[:2]), tmp_path / "two.onnx", reference_inputs=(a, b))
    assert report.ok and report.input_names == ["input_0", "input_1"]
    onnx_model = OnnxModel(tmp_path / "two.onnx")
    with torch.no_grad():
        expected = model(a, b)
    assert float((onnx_model(a, b) - expected).abs().max()) < 1e-5


# -- forward-only methods on ONNX Runtime ---------------------------------------------------------------
PERTURBATION = [
    ("FeatureAblation", {}),
    ("FeaturePermutation", {}),
    ("Occlusion", {"sliding_window_shapes": (3,)}),
    ("ShapleyValueSampling", {"n_samples": 4}),
    ("ShapleyValues", {}),
    ("KernelShap", {"n_samples": 60}),
    ("Lime", {"n_samples": 60}),
]


def _same_seed(fn):
    torch.manual_seed(7)
    np.random.seed(7)
    return fn()


def _close(got, expected, tol=1e-4):
    got, expected = got.double(), expected.double()
    assert got.shape == expected.shape
    assert float((got - expected).abs().max()) <= tol * max(float(expected.abs().max()), 1e-6), (got, expected)


@pytest.mark.parametrize("method, kwargs", PERTURBATION, ids=[m for m, _ in PERTURBATION])
def test_perturbation_methods_on_onnx_runtime_tabular(exported, method, kwargs):
    model, x, _, onnx_model = exported["cancer"]
    x = x[:4]
    t = model(x).argmax(1)
    extra = {}
    if method in ("ShapleyValues", "ShapleyValueSampling", "KernelShap", "Lime", "FeatureAblation"):
        extra["feature_mask"] = (torch.arange(30) // 5).unsqueeze(0)  # 6 groups: 2^6 coalitions
    cls = getattr(attr, method)
    expected = _same_seed(lambda: cls(model).attribute(x, target=t, **kwargs, **extra))
    got = _same_seed(lambda: cls(onnx_model).attribute(x, target=t, **kwargs, **extra))
    assert expected.abs().max() > 0
    _close(got, expected)


@pytest.mark.parametrize("method, kwargs", [
    ("FeatureAblation", {}),
    ("Occlusion", {"sliding_window_shapes": (1, 3, 3), "strides": (1, 2, 2)}),
    ("ShapleyValueSampling", {"n_samples": 2}),
    ("KernelShap", {"n_samples": 40}),
    ("Lime", {"n_samples": 40}),
], ids=["FeatureAblation", "Occlusion", "ShapleyValueSampling", "KernelShap", "Lime"])
def test_perturbation_methods_on_onnx_runtime_image(exported, method, kwargs):
    model, x, _, onnx_model = exported["digits"]
    x = x[:2]
    t = model(x).argmax(1)
    mask = (torch.arange(64).reshape(1, 1, 8, 8) // 4 % 2 + torch.arange(64).reshape(1, 1, 8, 8) // 32 * 2)
    extra = {} if method == "Occlusion" else {"feature_mask": mask}
    cls = getattr(attr, method)
    expected = _same_seed(lambda: cls(model).attribute(x, target=t, **kwargs, **extra))
    got = _same_seed(lambda: cls(onnx_model).attribute(x, target=t, **kwargs, **extra))
    assert expected.abs().max() > 0
    _close(got, expected)


def test_feature_ablation_on_tokens_through_onnx_runtime(exported):
    model, x, _, onnx_model = exported["sentiment"]
    ids = x[:3]
    t = model(ids).argmax(1)
    expected = attr.FeatureAblation(model).attribute(ids, baselines=0, target=t)
    got = attr.FeatureAblation(onnx_model).attribute(ids, baselines=0, target=t)
    _close(got, expected)


def test_cli_export_and_compile(tmp_path, capsys):
    from explain_serve.export import main

    out = tmp_path / "cancer.onnx"
    np.save(tmp_path / "ref.npy", np.random.default_rng(0).normal(size=(20, 30)).astype(np.float32))
    code = main([str(out), "--model", "explain_serve.examples:CancerMLP", "--kwargs", '{"n_features": 30}',
                 "--reference-data", str(tmp_path / "ref.npy"), "--compile", "integrated_gradients",
                 "--compile", "deep_lift", "--n-steps", "8"])
    result = json.loads(capsys.readouterr().out)
    assert code == 1  # DeepLift cannot be compiled: reported, not hidden
    assert result["report"]["ok"] and result["report"]["argmax_agreement"] == 1.0
    assert result["compiled"]["integrated_gradients"]["relative_error"] < 1e-4
    assert "cannot be compiled" in result["compiled"]["deep_lift"]["error"]
    assert out.exists() and (tmp_path / "cancer.integrated_gradients.onnx").exists()
