"""Tiny Hugging Face models built offline for the tests: a config with random (seeded) weights and a
word-level tokenizer made with the ``tokenizers`` library, saved with ``save_pretrained``."""
from __future__ import annotations

from pathlib import Path

import torch

WORDS = "the movie was great good bad awful plot acting and but really fun boring".split()


def word_tokenizer(words=WORDS, classifier: bool = True):
    """[PAD] [UNK] [CLS] [SEP] + words; a classifier's tokenizer wraps every text in [CLS] ... [SEP]."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
    vocab = {w: i for i, w in enumerate(specials + list(words))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    if classifier:
        tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                   sep_token="[SEP]", eos_token="[SEP]")


def bert_classifier_dir(out: Path, seed: int = 0) -> Path:
    """A 1-layer BERT sequence classifier (3 labels) with random weights, saved to ``out``."""
    from transformers import BertConfig, BertForSequenceClassification

    tok = word_tokenizer()
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64, num_labels=3, pad_token_id=0,
                        id2label={0: "negative", 1: "neutral", 2: "positive"},
                        label2id={"negative": 0, "neutral": 1, "positive": 2})
    model = BertForSequenceClassification(config).eval()
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return Path(out)
