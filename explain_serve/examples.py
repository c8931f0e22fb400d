"""The bundled example models, trained deterministically in seconds on CPU.

- ``digits`` (image): a small CNN on scikit-learn's 8x8 digit images (grey levels scaled to [0, 1]);
  fully convolutional up to an adaptive pool, so it also runs on larger images.
- ``cancer`` (tabular): an MLP on scikit-learn's breast-cancer table; the standardisation lives in
  the model (buffers), so it takes the raw feature values.
- ``sentiment`` (text): a mean-of-embeddings classifier on a small generated corpus; token ids in,
  padding id 0 ignored, so token attributions come from ``LayerIntegratedGradients`` on ``embedding``.
- ``tiny_lm`` (causal_lm): a small GPT-2 trained on a corpus of facts (``explain_serve.llm_example``).

``build_example(name, out_dir)`` trains one and writes what ``explain-serve archive`` packs:
weights, explain config, reference data (and the vocabulary for text).
"""
from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from .serving.tokenization import tokenize

EXAMPLES = ("digits", "cancer", "sentiment")
LLM_EXAMPLES = ("tiny_lm",)  # Hugging Face causal LM (explain_serve.llm_example); needs the [llm] extra


def available_examples() -> Tuple[str, ...]:
    """Every example this installation can build (the LLM ones need transformers)."""
    import importlib.util

    return EXAMPLES + (LLM_EXAMPLES if importlib.util.find_spec("transformers") else ())


# ---------------------------------------------------------------------------------------------
# models
# ---------------------------------------------------------------------------------------------
class DigitsCNN(nn.Module):
    """(batch, 1, H, W) grey levels in [0, 1] -> 10 logits."""

    def __init__(self, n_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d((4, 4))
        self.fc = nn.Linear(32 * 16, n_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu2(self.conv2(self.relu1(self.conv1(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


class CancerMLP(nn.Module):
    """(batch, 30) raw feature values -> 2 logits; standardisation is part of the model."""

    def __init__(self, n_features: int = 30, n_classes: int = 2, hidden: int = 32) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_features))
        self.register_buffer("std", torch.ones(n_features))
        self.fc1 = nn.Linear(n_features, hidden)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(hidden, n_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.relu(self.fc1((x - self.mean) / self.std)))


class SentimentClassifier(nn.Module):
    """(batch, length) token ids (0 = padding) -> 2 logits, from the mean of the token embeddings."""

    def __init__(self, vocab_size: int = 64, dim: int = 16, n_classes: int = 2) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, dim, padding_idx=0)
        self.fc = nn.Linear(dim, n_classes)

    def forward(self, ids: Tensor) -> Tensor:
        mask = (ids != 0).unsqueeze(-1).to(torch.float32)
        pooled = (self.embedding(ids) * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return self.fc(pooled)


# ---------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------
_POSITIVE = ["good", "great", "excellent", "wonderful", "fun", "brilliant", "lovely", "enjoyable", "superb"]
_NEGATIVE = ["bad", "awful", "boring", "terrible", "dull", "poor", "horrible", "weak", "tedious"]
_SUBJECTS = ["the movie", "this film", "the plot", "the acting", "the ending", "the music", "the story"]
_LINKS = ["was", "is", "felt", "seemed", "looked"]
_FILLERS = ["really", "quite", "very", "so", "rather", "truly", "a bit", "and", "overall", "honestly"]
PAD, UNK = "<pad>", "<unk>"


def sentiment_corpus(n: int = 1200, seed: int = 0) -> Tuple[List[str], List[int]]:
    """Generated sentences labelled 1 (positive) or 0 (negative) by their sentiment words."""
    rng = random.Random(seed)
    texts, labels = [], []
    for i in range(n):
        label = i % 2
        words = _POSITIVE if label else _NEGATIVE
        parts = [rng.choice(_SUBJECTS), rng.choice(_LINKS)]
        for _ in range(rng.randint(1, 3)):
            if rng.random() < 0.5:
                parts.append(rng.choice(_FILLERS))
            parts.append(rng.choice(words))
        if rng.random() < 0.3:  # a weaker opposite word: the label follows the majority
            parts += ["but", "a little", rng.choice(_NEGATIVE if label else _POSITIVE)]
            parts += ["and", rng.choice(words)]
        texts.append(" ".join(parts))
        labels.append(label)
    return texts, labels


def build_vocab(texts: Sequence[str]) -> List[str]:
    words = sorted({w for t in texts for w in tokenize(t)})
    return [PAD, UNK] + words


def encode_texts(texts: Sequence[str], vocab: Sequence[str]) -> Tensor:
    index = {w: i for i, w in enumerate(vocab)}
    rows = [[index.get(w, 1) for w in tokenize(t)] for t in texts]
    width = max(len(r) for r in rows)
    return torch.tensor([r + [0] * (width - len(r)) for r in rows], dtype=torch.long)


def digits_data() -> Tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.images / 16.0).astype(np.float32)[:, None], d.target.astype(np.int64)


def cancer_data() -> Tuple[np.ndarray, np.ndarray, List[str], List[str]]:
    from sklearn.datasets import load_breast_cancer

    d = load_breast_cancer()
    return d.data.astype(np.float32), d.target.astype(np.int64), [str(f) for f in d.feature_names], [str(t) for t in d.target_names]


# ---------------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------------
def _fit(model: nn.Module, x: Tensor, y: Tensor, epochs: int, lr: float, batch: int, seed: int) -> float:
    """Adam on shuffled mini-batches with a fixed generator; returns training accuracy."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for _ in range(epochs):
        order = torch.randperm(x.shape[0], generator=gen)
        for start in range(0, x.shape[0], batch):
            idx = order[start : start + batch]
            opt.zero_grad()
            loss_fn(model(x[idx]), y[idx]).backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def train(name: str, seed: int = 0) -> Dict:
    """Train one example; returns its model, reference data and the facts its config needs.

    Runs on one intra-op thread: the same arithmetic on every machine (deterministic weights), and
    no oversubscription on small shared machines, where two threads were several times slower.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train(name, seed)
    finally:
        torch.set_num_threads(threads)


def _train(name: str, seed: int) -> Dict:
    torch.manual_seed(seed)
    if name == "digits":
        x, y = digits_data()
        model = DigitsCNN()
        acc = _fit(model, torch.from_numpy(x), torch.from_numpy(y), epochs=12, lr=3e-3, batch=64, seed=seed)
        rng = np.random.default_rng(seed)
        reference = x[rng.choice(len(x), 200, replace=False)]
        return {"model": model, "accuracy": acc, "reference": reference, "labels": [str(i) for i in range(10)],
                "sample": x[0], "sample_label": int(y[0])}
    if name == "cancer":
        x, y, features, labels = cancer_data()
        model = CancerMLP(n_features=x.shape[1])
        model.mean.copy_(torch.from_numpy(x.mean(0)))
        model.std.copy_(torch.from_numpy(x.std(0) + 1e-6))
        acc = _fit(model, torch.from_numpy(x), torch.from_numpy(y), epochs=60, lr=3e-3, batch=64, seed=seed)
        return {"model": model, "accuracy": acc, "reference": x, "labels": labels, "features": features,
                "sample": x[0], "sample_label": int(y[0])}
    if name == "sentiment":
        texts, labels = sentiment_corpus(seed=seed)
        vocab = build_vocab(texts)
        ids = encode_texts(texts, vocab)
        model = SentimentClassifier(vocab_size=len(vocab))
        acc = _fit(model, ids, torch.tensor(labels), epochs=15, lr=1e-2, batch=64, seed=seed)
        return {"model": model, "accuracy": acc, "reference": None, "labels": ["negative", "positive"],
                "vocab": vocab, "sample": "the movie was really great and fun", "sample_label": 1}
    raise ValueError(f"unknown example {name!r}; choose from {', '.join(EXAMPLES)}")


def explain_config(name: str, trained: Dict) -> Dict:
    """The explain config shipped in the example's archive (see ``explain_serve.serving.config``)."""
    if name == "digits":
        return {
            "kind": "image",
            "model": {"class": "explain_serve.examples:DigitsCNN"},
            "labels": trained["labels"],
            "input": {"shape": [1, 8, 8], "variable_size": True, "min_size": 4, "max_numel": 65536,
                      "image": {"mode": "L", "size": [8, 8], "scale": 1 / 255}},
            "explain": {
                "default_method": "integrated_gradients",
                "default_params": {"integrated_gradients": {"n_steps": 32}},
                "layer": "conv2",
                "baseline": "zeros",
                "baselines": {"zeros": {"type": "zeros"}, "mean": {"type": "mean"},
                              "kmeans": {"type": "kmeans", "k": 8}, "blur": {"type": "blur", "sigma": 1.0},
                              "noise": {"type": "uniform", "low": 0.0, "high": 1.0}},
            },
        }
    if name == "cancer":
        return {
            "kind": "tabular",
            "model": {"class": "explain_serve.examples:CancerMLP", "kwargs": {"n_features": 30}},
            "labels": trained["labels"],
            "input": {"features": trained["features"]},
            "explain": {
                "default_method": "integrated_gradients",
                "default_params": {"integrated_gradients": {"n_steps": 32}},
                "baseline": "mean",
                "baselines": {"zeros": {"type": "zeros"}, "mean": {"type": "mean"},
                              "kmeans": {"type": "kmeans", "k": 8}},
            },
        }
    if name == "sentiment":
        return {
            "kind": "text",
            "model": {"class": "explain_serve.examples:SentimentClassifier",
                      "kwargs": {"vocab_size": len(trained["vocab"])}},
            "labels": trained["labels"],
            "input": {"text": {"vocab": "vocab.json", "max_tokens": 64, "pad_id": 0, "unk_id": 1}},
            "explain": {
                "default_method": "layer_integrated_gradients",
                "default_params": {"layer_integrated_gradients": {"n_steps": 32}},
                "layer": "embedding",
                "baseline": "pad",
            },
        }
    raise ValueError(name)


def build_example(name: str, out_dir: Path, seed: int = 0) -> Dict:
    """Train ``name`` and write weights.pt, explain.yaml, reference.npy / vocab.json under out_dir."""
    import yaml

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    trained = train(name, seed=seed)
    torch.save(trained["model"].state_dict(), out_dir / "weights.pt")
    config = explain_config(name, trained)
    (out_dir / "explain.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    files = {"weights": out_dir / "weights.pt", "config": out_dir / "explain.yaml"}
    if trained["reference"] is not None:
        np.save(out_dir / "reference.npy", trained["reference"])
        files["reference"] = out_dir / "reference.npy"
    if "vocab" in trained:
        (out_dir / "vocab.json").write_text(json.dumps(trained["vocab"]))
        files["extra"] = [out_dir / "vocab.json"]
    trained["files"] = files
    trained["config"] = config
    return trained


def load_example_model(name: str, build_dir: Path) -> nn.Module:
    """The trained example from ``build_example``'s output, in eval mode (for in-process checks)."""
    cls = {"digits": DigitsCNN, "cancer": CancerMLP, "sentiment": SentimentClassifier}[name]
    state = torch.load(Path(build_dir) / "weights.pt", map_location="cpu", weights_only=True)
    kwargs = {"vocab_size": state["embedding.weight"].shape[0]} if name == "sentiment" else {}
    model = cls(**kwargs)
    model.load_state_dict(state)
    return model.eval()


def build_examples(model_store: Path, names: Sequence[str] = EXAMPLES, seed: int = 0, runtime: str = "torch") -> Dict[str, Path]:
    """Train and archive the examples into ``model_store`` (NAME.mar; sources under model_store/build/).

    ``runtime="onnx"`` packs each with its ONNX export and compiled explainers (see ``archive``).
    """
    from .serving.archive import archive

    model_store = Path(model_store)
    out = {}
    for name in names:
        build_dir = model_store / "build" / name
        if name in LLM_EXAMPLES:
            from . import llm_example

            files = llm_example.build(build_dir, seed=seed)["files"]
            out[name] = archive(name, files["model"], "causal_lm", model_store, config=files["config"])
            continue
        trained = build_example(name, build_dir, seed=seed)
        files = trained["files"]
        out[name] = archive(name, files["weights"], trained["config"]["kind"], model_store, config=files["config"],
                            reference_data=files.get("reference"), extra_files=files.get("extra", ()), runtime=runtime)
    return out
