"""Models for the layer/neuron/LRP tests: the shared table (CNN, MLP, embedding text model)."""
from __future__ import annotations

import torch
from torch import nn

from tests.models import make


class TextModel(nn.Module):
    """Embedding -> tanh -> mean over tokens -> linear; ids plus a per-example scale argument."""

    def __init__(self, vocab: int = 30, dim: int = 8, n_out: int = 3):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.tanh = nn.Tanh()
        self.fc = nn.Linear(dim, n_out)

    def forward(self, ids, scale=None):
        h = self.tanh(self.emb(ids)).mean(1)
        out = self.fc(h)
        return out if scale is None else out * scale


def make_text(dtype=torch.float64, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = TextModel().to(dtype).eval()
    ids = torch.randint(1, 30, (3, 5), generator=g)
    scale = (torch.rand(3, 1, generator=g) + 0.5).to(dtype)
    return model, (ids,), (scale,)


def table(name: str):
    """(model, inputs, args, layer, neuron selector, target) for the models of the shared table."""
    if name == "text":
        model, inputs, args = make_text()
        return model, inputs, args, model.emb, (2, 1), 1
    model, inputs, args = make(name)
    if name == "mlp":
        return model, inputs, args, model.fc2, 3, 1
    if name == "cnn":
        return model, inputs, args, model.conv2, (1, 2, 2), [0, 2, 1]
    raise KeyError(name)


MODELS = ("mlp", "cnn", "text")
