"""Text to token ids for the text models served here: a word vocabulary (the bundled toy models) or
a Hugging Face tokenizer packed in the archive (``tokenizer.json`` and its config, loaded offline).

Both answer ``encode(text) -> Encoded`` with the ids, the token strings shown in explanations and
which of them are special tokens (``[CLS]``, ``</s>``, ...), so the handlers never depend on how a
model tokenizes.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

_WORD = re.compile(r"[a-z0-9']+")


def tokenize(text: str) -> List[str]:
    """Lower-case words (letters, digits and apostrophes): the word-vocabulary models' tokenizer."""
    return _WORD.findall(text.lower())


@dataclass
class Encoded:
    ids: List[int]
    tokens: List[str]
    special: List[bool]


class WordTokenizer:
    """Words looked up in a vocabulary list; unknown words map to ``unk_id``."""

    def __init__(self, vocab: Sequence[str], unk_id: int = 1, lowercase: bool = True) -> None:
        self.vocab = list(vocab)
        self.index = {w: i for i, w in enumerate(self.vocab)}
        self.unk_id = int(unk_id)
        self.lowercase = lowercase

    def __len__(self) -> int:
        return len(self.vocab)

    def encode(self, text: str) -> Encoded:
        words = tokenize(text.lower() if self.lowercase else text)
        return Encoded([self.index.get(w, self.unk_id) for w in words], words, [False] * len(words))

    def tokens(self, ids: Sequence[int]) -> List[str]:
        return [self.vocab[i] for i in ids]


class HFTokenizer:
    """A Hugging Face tokenizer from an archive directory (``local_files_only``: never the hub).

    ``add_special_tokens`` as the model was trained: classifiers get their ``[CLS] ... [SEP]``;
    causal LMs encode prompts and continuations without them (the BOS token, when the tokenizer
    defines one, is prepended to prompts by ``encode_prompt``).
    """

    def __init__(self, directory: Path, add_special_tokens: bool = True) -> None:
        from transformers import AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
        self.add_special_tokens = add_special_tokens
        self.special_ids = set(int(i) for i in self.tok.all_special_ids)

    def __len__(self) -> int:
        return len(self.tok)

    @property
    def pad_id(self) -> Optional[int]:
        return self.tok.pad_token_id

    @property
    def eos_id(self) -> Optional[int]:
        return self.tok.eos_token_id

    def encode(self, text: str, add_special_tokens: Optional[bool] = None) -> Encoded:
        special = self.add_special_tokens if add_special_tokens is None else add_special_tokens
        ids = [int(i) for i in self.tok(text, add_special_tokens=special)["input_ids"]]
        return Encoded(ids, self.tokens(ids), [i in self.special_ids for i in ids])

    def tokens(self, ids: Sequence[int]) -> List[str]:
        """One readable string per id (byte-level marks such as GPT-2's leading-space 'Ġ' decoded)."""
        return [self.tok.decode([int(i)]) for i in ids]

    def decode(self, ids: Sequence[int]) -> str:
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=True)
