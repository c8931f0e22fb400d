"""Tiny model versions archived as real .mar files (random weights, built in seconds) and their data.

- ``lin`` (tabular): logits = W x + c, 12 features; version 2.0 swaps the first layer's columns for
  features 2 and 7, so only those features' attributions move; ``lin_few`` allows only two methods;
  ``lin13`` takes 13 features.
- ``digits`` (image) and ``sentiment`` (text): the bundled example architectures, two seeds each.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from explain_serve.examples import build_vocab, sentiment_corpus
from explain_serve.serving.archive import archive

from tests.audit.versions import N_FEATURES, SWAP
LIN_SOURCE = '''
from torch import nn


class Lin(nn.Module):
    def __init__(self, n_features=12, n_classes=3):
        super().__init__()
        self.fc = nn.Linear(n_features, n_classes)

    def forward(self, x):
        return self.fc(x)
'''


def _pack(store: Path, work: Path, name: str, version: str, kind: str, model_file: Path, state: dict, config: dict,
          extra=()) -> Path:
    work.mkdir(parents=True, exist_ok=True)
    weights = work / f"{name}-{version}.pt"
    torch.save(state, weights)
    cfg = work / f"{name}-{version}.yaml"
    cfg.write_text(yaml.safe_dump(config))
    out = store / f"v{version}"
    mar = archive(name, model_file, kind, out, config=cfg, weights=weights, version=version, extra_files=extra)
    final = store / f"{name}_v{version}.mar"
    mar.replace(final)
    return final


def _lin_config(n_features: int, methods=None) -> dict:
    explain = {"default_method": "integrated_gradients", "default_params": {"integrated_gradients": {"n_steps": 8}},
               "baseline": "zeros"}
    if methods:
        explain["methods"] = methods
    return {"kind": "tabular", "input": {"features": [f"f{i}" for i in range(n_features)]}, "explain": explain}


@pytest.fixture(scope="session")
def lin(tmp_path_factory):
    """Archives: a (v1.0), a_copy (v1.0 again), swapped (v2.0), few_methods, wider; plus data files."""
    root = tmp_path_factory.mktemp("audit_lin")
    src = root / "lin.py"
    src.write_text(LIN_SOURCE)
    torch.manual_seed(1)
    fc = torch.nn.Linear(N_FEATURES, 3)
    state = {"fc.weight": fc.weight.detach().clone(), "fc.bias": fc.bias.detach().clone()}
    swapped = {k: v.clone() for k, v in state.items()}
    i, j = SWAP
    swapped["fc.weight"][:, [i, j]] = state["fc.weight"][:, [j, i]]
    wide = torch.nn.Linear(N_FEATURES + 1, 3)
    out = {
        "a": _pack(root, root / "w", "lin", "1.0", "tabular", src, state, _lin_config(N_FEATURES)),
        "swapped": _pack(root, root / "w", "lin", "2.0", "tabular", src, swapped, _lin_config(N_FEATURES)),
        "few_methods": _pack(root, root / "w", "linfew", "1.0", "tabular", src, state,
                             _lin_config(N_FEATURES, ["integrated_gradients", "saliency"])),
        "wider": _pack(root, root / "w", "lin13", "1.0", "tabular", src,
                       {"fc.weight": wide.weight.detach().clone(), "fc.bias": wide.bias.detach().clone()},
                       dict(_lin_config(N_FEATURES + 1), model={"kwargs": {"n_features": N_FEATURES + 1}})),
        "state": state,
        "source": src,
    }
    x = np.random.default_rng(0).normal(size=(40, N_FEATURES)).astype(np.float32)
    np.save(root / "data.npy", x)
    with open(root / "data.csv", "w") as f:
        f.write(",".join(f"f{i}" for i in range(N_FEATURES)) + "\n")
        for row in x:
            f.write(",".join(repr(float(v)) for v in row) + "\n")
    out["npy"], out["csv"], out["x"] = root / "data.npy", root / "data.csv", x
    return out


@pytest.fixture(scope="session")
def digits(tmp_path_factory):
    """Two random DigitsCNN versions; data as .npy and as a folder of PNGs."""
    from PIL import Image

    from explain_serve.examples import DigitsCNN

    root = tmp_path_factory.mktemp("audit_digits")
    src = root / "digits_model.py"
    src.write_text("from explain_serve.examples import DigitsCNN\n\n\nclass Digits(DigitsCNN):\n    pass\n")
    config = {"kind": "image",
              "input": {"shape": [1, 8, 8], "image": {"mode": "L", "size": [8, 8], "scale": 1 / 255}},
              "explain": {"default_method": "integrated_gradients", "default_params": {"integrated_gradients": {"n_steps": 8}},
                          "layer": "conv2", "baseline": "zeros"}}
    mars = {}
    for seed, version in ((0, "1.0"), (1, "2.0")):
        torch.manual_seed(seed)
        mars[version] = _pack(root, root / "w", "digits", version, "image", src, DigitsCNN().state_dict(), config)
    rng = np.random.default_rng(0)
    x = (rng.integers(0, 256, size=(12, 1, 8, 8)) / 255).astype(np.float32)
    np.save(root / "digits.npy", x)
    folder = root / "images"
    folder.mkdir()
    for k, img in enumerate(x):
        Image.fromarray((img[0] * 255).round().astype(np.uint8), "L").save(folder / f"{k:03d}.png")
    return {"a": mars["1.0"], "b": mars["2.0"], "npy": root / "digits.npy", "folder": folder}


@pytest.fixture(scope="session")
def sentiment(tmp_path_factory):
    """Two random SentimentClassifier versions over one vocabulary; data as .jsonl strings."""
    from explain_serve.examples import SentimentClassifier

    root = tmp_path_factory.mktemp("audit_sentiment")
    texts, _ = sentiment_corpus(n=40, seed=0)
    vocab = build_vocab(texts)
    (root / "vocab.json").write_text(json.dumps(vocab))
    src = root / "sentiment_model.py"
    src.write_text("from explain_serve.examples import SentimentClassifier\n\n\nclass Sentiment(SentimentClassifier):\n    pass\n")
    config = {"kind": "text", "model": {"kwargs": {"vocab_size": len(vocab)}},
              "input": {"text": {"vocab": "vocab.json", "max_tokens": 64}},
              "explain": {"default_method": "layer_integrated_gradients",
                          "default_params": {"layer_integrated_gradients": {"n_steps": 8}}, "layer": "embedding"}}
    mars = {}
    for seed, version in ((0, "1.0"), (1, "2.0")):
        torch.manual_seed(seed)
        mars[version] = _pack(root, root / "w", "sentiment", version, "text", src,
                              SentimentClassifier(vocab_size=len(vocab)).state_dict(), config, extra=[root / "vocab.json"])
    with open(root / "texts.jsonl", "w") as f:
        for t in texts[:10]:
            f.write(json.dumps({"inputs": t}) + "\n")
    return {"a": mars["1.0"], "b": mars["2.0"], "jsonl": root / "texts.jsonl"}
