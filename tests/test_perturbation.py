"""Perturbation methods: hand-derived values, exact Shapley values, Captum agreement, chunking."""
import pytest
import torch

from explain_serve.attr import FeatureAblation

captum_attr = pytest.importorskip("captum.attr")

torch.set_default_dtype(torch.float32)


def _linear(w, b0=0.0):
    return lambda x: x @ w + b0


def test_feature_ablation_linear_by_hand():
    w = torch.tensor([1.0, -2.0, 3.0, 0.5], dtype=torch.float64)
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0], [-1.0, 0.0, 1.0, 2.0]], dtype=torch.float64)
    b = torch.tensor([0.5, 0.5, 0.5, 0.5], dtype=torch.float64)
    a = FeatureAblation(_linear(w)).attribute(x, baselines=b)
    torch.testing.assert_close(a, w * (x - b), rtol=0, atol=1e-12)
