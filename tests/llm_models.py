"""Tiny causal LMs with random weights and tokenizers built locally (never a hub download).

GPT-2: a byte-level BPE tokenizer trained on a few sentences (tokens carry GPT-2's ``Ġ`` space
marks, no BOS). Llama: a word-level tokenizer that prepends ``<s>`` (a BOS token, as Llama's).
"""
from __future__ import annotations

import functools

import torch

CORPUS = [
    "the cat sat on the mat",
    "the dog ate the bone",
    "a bird sang in the tree",
    "my friend likes green tea and warm bread",
    "dave lives in palm coast and he is a lawyer",
    "his personal interests include playing chess",
]
WORDS = sorted({w for line in CORPUS for w in line.split()})
SPECIALS = ["<unk>", "<pad>", "<s>", "</s>"]


@functools.lru_cache(maxsize=None)
def bpe_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>",
                                   bos_token="<s>", eos_token="</s>")


@functools.lru_cache(maxsize=None)
def word_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIALS + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", vocab["<s>"])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>",
                                   bos_token="<s>", eos_token="</s>")


def tiny_gpt2(seed: int = 0):
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = bpe_tokenizer()
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=32, n_layer=2, n_head=2,
                        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    return _widen(GPT2LMHeadModel(config).eval()), tok


def tiny_llama(seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = word_tokenizer()
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    return _widen(LlamaForCausalLM(config).eval()), tok


def _widen(model, factor: float = 8.0):
    """Random init (std 0.02) predicts near-uniformly: widen the weights so attributions are not ~0."""
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(factor)
    return model


MODELS = {"gpt2": tiny_gpt2, "llama": tiny_llama}


def embeddings(model):
    return model.get_input_embeddings()
