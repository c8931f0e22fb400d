"""LLM attribution: explain-serve vs Captum 0.9 on the same small causal LMs, side by side.

One prompt (TextTokenInput, ~20 tokens) and a fixed target continuation (~8 tokens), on a
random-weight GPT-2 and Llama built from a config (tokenizers built locally, no hub). For each
method: median wall time of Captum with ``use_cached_outputs=False`` (its correct path: one
forward per perturbation and target token), of Captum's default ``use_cached_outputs=True``
(faster, but its log-probabilities are wrong with current transformers), and of explain-serve
(perturbations as padded batches, one teacher-forced forward per batch); the largest absolute
difference of explain-serve's ``token_attr`` from Captum's correct path is printed next to it.

    python benchmarks/compare_llm.py [--repeats 5] [--threads N] [--only gpt2|llama]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings

import torch

warnings.filterwarnings("ignore")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import captum.attr as ca  # noqa: E402  (benchmark-only oracle)

import explain_serve.attr as ea  # noqa: E402
from tests.llm_models import bpe_tokenizer, word_tokenizer  # noqa: E402

PROMPT = "dave lives in palm coast and he is a lawyer . his personal interests include playing chess and green tea"
TARGET = " the cat sat on the mat and the dog"


def gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = bpe_tokenizer()
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=len(tok), n_positions=1024, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, n_embd=128, n_layer=4, n_head=4)
    return GPT2LMHeadModel(cfg).eval(), tok, None


def llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = word_tokenizer()
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=128, intermediate_size=256, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    return LlamaForCausalLM(cfg).eval(), tok, [tok.bos_token]


CASES = {
    # name -> (constructor(lib, model), attribute kwargs, gradient?)
    "FeatureAblation": (lambda lib, m: lib.FeatureAblation(m), {}, False),
    "ShapleyValueSampling(n=3)": (lambda lib, m: lib.ShapleyValueSampling(m), {"n_samples": 3}, False),
    "KernelShap(n=50)": (lambda lib, m: lib.KernelShap(m), {"n_samples": 50}, False),
    "LayerIntegratedGradients(n=20)": (
        lambda lib, m: lib.LayerIntegratedGradients(m, m.get_input_embeddings()), {"n_steps": 20}, True),
}


def timed(fn, repeats):
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def run(name, build, repeats):
    model, tok, skip = build()
    print(f"\n{name}: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, "
          f"prompt {len(ea.TextTokenInput(PROMPT, tok, skip_tokens=skip).values)} tokens, "
          f"target {len(tok.encode(TARGET, add_special_tokens=False))} tokens")
    print(f"{'method':32s} {'captum (correct)':>17s} {'captum (cached)':>16s} {'explain-serve':>14s} "
          f"{'speed-up':>9s} {'|ours-correct|':>15s} {'|cached-correct|':>17s}")
    print(f"Captum's cached vs uncached log-probs of the target tokens (unperturbed prompt): "
          f"max |diff| = {captum_cache_error(model, tok, skip):.3f} nats")
    for method, (make, kwargs, gradient) in CASES.items():
        def call(lib, **extra):
            wrapper = lib.LLMGradientAttribution if gradient else lib.LLMAttribution
            inp = lib.TextTokenInput(PROMPT, tok, skip_tokens=skip)
            torch.manual_seed(0)
            return wrapper(make(lib, model), tok).attribute(inp, target=TARGET, **kwargs, **extra)

        if gradient:
            t_correct, ref = timed(lambda: call(ca), repeats)
            t_cached, cached = float("nan"), None
        else:
            t_correct, ref = timed(lambda: call(ca, use_cached_outputs=False), repeats)
            t_cached, cached = timed(lambda: call(ca, use_cached_outputs=True), repeats)
        t_ours, ours = timed(lambda: call(ea), repeats)
        diff = max_diff(ours, ref)
        cached_diff = max_diff(cached, ref) if cached is not None else float("nan")
        note = " (seeded; sampler differs from Captum's)" if method.startswith(("KernelShap", "Lime")) else ""
        print(f"{method:32s} {t_correct * 1e3:15.1f}ms {t_cached * 1e3:14.1f}ms {t_ours * 1e3:12.1f}ms "
              f"{t_correct / t_ours:8.1f}x {diff:15.2e} {cached_diff:17.2e}{note}")


def captum_cache_error(model, tok, skip) -> float:
    """How far Captum's use_cached_outputs=True log-probs are from its own use_cached_outputs=False."""
    wrapper = ca.LLMAttribution(ca.FeatureAblation(model), tok)
    inp = ca.TextTokenInput(PROMPT, tok, skip_tokens=skip)
    target = torch.tensor(tok.encode(TARGET, add_special_tokens=False))
    with torch.no_grad():
        cached = wrapper._forward_func(inp.to_tensor(), inp, target, use_cached_outputs=True)
        uncached = wrapper._forward_func(inp.to_tensor(), inp, target, use_cached_outputs=False)
    return (cached - uncached)[0, 1:].abs().max().item()


def max_diff(a, b) -> float:
    if a.token_attr is not None and b.token_attr is not None:
        return (a.token_attr - b.token_attr).abs().max().item()
    return (a.seq_attr - b.seq_attr).abs().max().item()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--only", choices=["gpt2", "llama"], default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; median of {args.repeats} runs")
    for name, build in (("gpt2", gpt2), ("llama", llama)):
        if args.only in (None, name):
            run(name, build, args.repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
