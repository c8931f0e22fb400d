"""Hugging Face model directories (``save_pretrained``: config, weights, tokenizer) in archives.

``stage`` copies such a directory into an archive's staging folder (flat, as TorchServe unpacks
it); ``load_classifier`` and ``load_causal_lm`` load it back with ``local_files_only``: the hub is
never contacted. ``transformers`` and ``tokenizers`` come with the ``[llm]`` extra.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

from .config import ConfigError

HF_MODEL_KEY = "huggingface"  # model: {huggingface: sequence_classification | causal_lm}
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json", "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "tokenizer.model", "spiece.model")


def require_transformers() -> None:
    try:
        import tokenizers  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as exc:
        raise ConfigError(f"Hugging Face models need the [llm] extra: pip install 'explain-serve[llm]' ({exc})") from exc


def is_hf_dir(path: Path) -> bool:
    return Path(path).is_dir() and (Path(path) / "config.json").is_file()


def stage(src: Path, stage_dir: Path) -> Tuple[str, List[Path]]:
    """Copy the model directory's files into ``stage_dir``; returns (serialized file name, other files).

    Refuses a directory without weights or without tokenizer files, saying what to save.
    """
    src = Path(src)
    if not is_hf_dir(src):
        raise ConfigError(f"{src} is not a Hugging Face model directory (no config.json); save one with "
                          "model.save_pretrained(DIR) and tokenizer.save_pretrained(DIR)")
    names = sorted(p.name for p in src.iterdir() if p.is_file())
    weights = next((w for w in WEIGHT_FILES if w in names), None)
    if weights is None:
        raise ConfigError(f"{src} has no weights ({' or '.join(WEIGHT_FILES[:2])}); save them with model.save_pretrained(DIR)")
    if not any(t in names for t in TOKENIZER_FILES):
        raise ConfigError(f"{src} has no tokenizer files ({', '.join(TOKENIZER_FILES[:3])}, ...); "
                          "save the tokenizer with tokenizer.save_pretrained(DIR)")
    extras = []
    for name in names:
        shutil.copy(src / name, stage_dir / name)
        if name != weights:
            extras.append(stage_dir / name)
    return weights, extras


def _from_pretrained(auto_cls, directory: Path) -> nn.Module:
    require_transformers()
    try:
        model = auto_cls.from_pretrained(str(directory), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"could not load the Hugging Face model in {directory}: {exc}") from exc
    return model.eval()


class SequenceClassifier(nn.Module):
    """``(batch, length)`` token ids -> logits of an ``AutoModelForSequenceClassification``.

    Negative ids mark padding: they are masked out (``attention_mask`` 0) and fed as the
    tokenizer's pad id, so a padded batch answers as its items one by one.
    """

    def __init__(self, hf: nn.Module, pad_id: int) -> None:
        super().__init__()
        self.hf = hf
        self.pad_id = int(pad_id)

    def forward(self, ids: Tensor) -> Tensor:
        mask = (ids >= 0).long()
        return self.hf(input_ids=torch.where(ids >= 0, ids, self.pad_id), attention_mask=mask).logits


def load_classifier(directory: Path) -> SequenceClassifier:
    from transformers import AutoModelForSequenceClassification

    hf = _from_pretrained(AutoModelForSequenceClassification, directory)
    pad = hf.config.pad_token_id
    return SequenceClassifier(hf, 0 if pad is None else pad).eval()


def load_causal_lm(directory: Path) -> nn.Module:
    from transformers import AutoModelForCausalLM

    return _from_pretrained(AutoModelForCausalLM, directory)


def embedding_name(model: nn.Module) -> str:
    """The module name of the input embeddings (the layer token attributions are taken at)."""
    hf = model.hf if isinstance(model, SequenceClassifier) else model
    emb = hf.get_input_embeddings()
    prefix = "hf." if isinstance(model, SequenceClassifier) else ""
    for name, module in hf.named_modules():
        if module is emb:
            return prefix + name
    raise ConfigError("the model's input embeddings are not one of its modules")


def labels(directory: Path) -> Optional[List[str]]:
    """Class names from config.json's id2label, when they are more than transformers' LABEL_i defaults."""
    id2label: Dict[str, str] = json.loads((Path(directory) / "config.json").read_text()).get("id2label") or {}
    names = [id2label[k] for k in sorted(id2label, key=int)]
    return None if all(n == f"LABEL_{i}" for i, n in enumerate(names)) else names
