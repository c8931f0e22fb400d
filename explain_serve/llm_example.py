"""``tiny_lm``: a small GPT-2 trained in seconds on a bundled corpus of facts, so its answers mean
something ("the capital of france is" -> "paris") and an explanation of a generated answer can be
checked by eye (the answer should hang on "france").

``build(out_dir)`` trains it (one thread, fixed seed: the same weights on every machine) and writes a
Hugging Face ``save_pretrained`` directory (config, weights, a word-level tokenizer built here with
the ``tokenizers`` library) plus the explain config; ``explain-serve archive --kind causal_lm``
packs it. Needs the ``[llm]`` extra.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Dict, List, Tuple

import torch

NAME = "tiny_lm"
PAD, UNK, EOS = "<pad>", "<unk>", "</s>"
CAPITALS = {"france": "paris", "italy": "rome", "germany": "berlin", "spain": "madrid", "japan": "tokyo",
            "portugal": "lisbon", "egypt": "cairo", "greece": "athens", "peru": "lima", "norway": "oslo",
            "kenya": "nairobi", "canada": "ottawa"}
COLOURS = {"the sky": "blue", "grass": "green", "snow": "white", "coal": "black", "a banana": "yellow",
           "a tomato": "red", "an orange": "orange", "a plum": "purple"}
SOUNDS = {"cat": "meow", "dog": "woof", "cow": "moo", "duck": "quack", "sheep": "baa", "owl": "hoot"}
SAMPLE_PROMPT = "the capital of france is"


def facts() -> List[Tuple[str, str]]:
    """(prompt, answer) pairs: the corpus's questions and what a trained model should answer."""
    out = []
    for country, city in CAPITALS.items():
        out += [(f"the capital of {country} is", city), (f"{city} is the capital of", country)]
    for thing, colour in COLOURS.items():
        out += [(f"the colour of {thing} is", colour), (f"{thing} is", colour)]
    for animal, sound in SOUNDS.items():
        out += [(f"a {animal} says", sound), (f"{sound} is what a {animal}", "says")]
    return out


def corpus() -> List[str]:
    return [f"{prompt} {answer} ." for prompt, answer in facts()]


def build_tokenizer(lines: List[str]):
    """A word-level tokenizer over the corpus (whitespace split, EOS appended), as a transformers tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = sorted({w for line in lines for w in line.split()})
    vocab = {tok: i for i, tok in enumerate([PAD, UNK, EOS] + words)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with spaces
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, unk_token=UNK, eos_token=EOS)


def train(seed: int = 0, steps: int = 200, lr: float = 5e-3) -> Dict:
    """Train on the corpus (one thread, fixed seed); returns the model, tokenizer and greedy answer accuracy."""
    from transformers import GPT2Config, GPT2LMHeadModel

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(seed)
        lines = corpus()
        tokenizer = build_tokenizer(lines)
        config = GPT2Config(vocab_size=len(tokenizer), n_positions=32, n_embd=64, n_layer=2, n_head=4,
                            bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
                            pad_token_id=tokenizer.pad_token_id, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
        model = GPT2LMHeadModel(config)
        rows = [tokenizer(line)["input_ids"] + [tokenizer.eos_token_id] for line in lines]
        width = max(len(r) for r in rows)
        ids = torch.tensor([r + [tokenizer.pad_token_id] * (width - len(r)) for r in rows])
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
        labels = ids.masked_fill(mask == 0, -100)
        opt = torch.optim.Adam(model.parameters(), lr=float(lr))
        gen = random.Random(seed)
        model.train()
        for _ in range(steps):
            batch = gen.sample(range(len(rows)), min(32, len(rows)))
            opt.zero_grad()
            model(input_ids=ids[batch], attention_mask=mask[batch], labels=labels[batch]).loss.backward()
            opt.step()
        model.eval()
        return {"model": model, "tokenizer": tokenizer, "accuracy": answer_accuracy(model, tokenizer)}
    finally:
        torch.set_num_threads(threads)


def answer_accuracy(model, tokenizer) -> float:
    """Share of the corpus's prompts whose greedy next word is the right answer."""
    right = 0
    for prompt, answer in facts():
        ids = torch.tensor([tokenizer(prompt)["input_ids"]])
        with torch.no_grad():
            nxt = int(model(input_ids=ids).logits[0, -1].argmax())
        right += tokenizer.convert_ids_to_tokens(nxt) == answer
    return right / len(facts())


def explain_config() -> Dict:
    return {
        "kind": "causal_lm",
        "explain": {
            "default_method": "feature_ablation",
            "default_params": {"feature_ablation": {"max_new_tokens": 4}},
            "limits": {"max_new_tokens": 16, "max_prompt_tokens": 24, "max_target_tokens": 16},
        },
    }


def build(out_dir: Path, seed: int = 0) -> Dict:
    """Train and write ``out_dir/model`` (save_pretrained: weights, config, tokenizer) and ``out_dir/explain.yaml``."""
    import yaml

    out_dir = Path(out_dir)
    trained = train(seed)
    model_dir = out_dir / "model"
    trained["model"].save_pretrained(model_dir)
    trained["tokenizer"].save_pretrained(model_dir)
    (out_dir / "explain.yaml").write_text(yaml.safe_dump(explain_config(), sort_keys=False))
    trained["files"] = {"model": model_dir, "config": out_dir / "explain.yaml"}
    return trained
