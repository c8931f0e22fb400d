"""LLM attribution: agreement with Captum 0.9 (test-only oracle) and with a teacher-forced
reference written here, batching invariance, hooks, random methods' convergence, results.

Captum's ``use_cached_outputs=True`` path computes wrong log-probabilities with current
transformers (it feeds the whole prefix again with a cache that already holds it); the oracle is
its ``use_cached_outputs=False`` path, which re-runs the prefix once per target token.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")
captum_attr = pytest.importorskip("captum.attr")

from explain_serve import attr as es  # noqa: E402

from tests.llm_models import MODELS, embeddings  # noqa: E402

TARGET = " the cat sat"
PROMPT = "dave lives in palm coast and he is a lawyer"


@pytest.fixture(scope="module", params=sorted(MODELS))
def lm(request, one_thread):
    model, tok = MODELS[request.param]()
    return request.param, model, tok


def hook_state(model):
    """Every hook dict and attribute set of every module (must be unchanged by any call)."""
    state = []
    for m in model.modules():
        state.append((
            len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks),
            len(getattr(m, "_backward_pre_hooks", {})), len(m._forward_hooks_with_kwargs),
            sorted(m.__dict__),
        ))
    state.append(len(torch.nn.modules.module._global_forward_hooks))
    return state


def skip_tokens(kind, tok):
    return [tok.bos_token] if kind == "llama" else None


def token_input(ns, kind, tok, prompt=PROMPT):
    return ns.TextTokenInput(prompt, tok, skip_tokens=skip_tokens(kind, tok))


def template_input(ns):
    return ns.TextTemplateInput(
        "{} lives in {} and he is a {}",
        values=["dave", "palm coast", "lawyer"],
        baselines=["a", "the tree", "cat"],
    )


def masked_template_input(ns):
    return ns.TextTemplateInput(
        "{} {} lives in {} and he is a {}",
        values=["my", "dave", "palm coast", "lawyer"],
        baselines=["", "a", "the tree", "cat"],
        mask=[0, 0, 1, 2],
    )


# --------------------------------------------------------------------------------------------
# teacher-forced reference: the literal definition, one forward per target token, no batching
# --------------------------------------------------------------------------------------------
def reference_log_probs(model, prompt_ids, target_ids):
    out = []
    with torch.no_grad():
        for j in range(len(target_ids)):
            ids = torch.tensor([list(prompt_ids) + list(target_ids[:j])])
            logits = model(input_ids=ids).logits[0, -1]
            out.append(torch.log_softmax(logits, -1)[target_ids[j]].item())
    return out


def reference_ablation(model, tok, inp, target_ids):
    """FeatureAblation by hand: total and per-token log-prob drop when each feature is ablated."""
    def score(row):
        mi = inp.to_model_input(row)
        ids = tok.encode(mi) if isinstance(mi, str) else mi.reshape(-1).tolist()
        lp = reference_log_probs(model, ids, target_ids)
        return torch.tensor([sum(lp)] + lp, dtype=torch.float64)

    full = inp.to_tensor()
    base = score(full)
    cols = []
    for i in range(inp.n_itp_features):
        row = full.clone()
        row[0, i] = 0
        cols.append(base - score(row))
    return torch.stack(cols, 1)  # (1 + T, F)


PERTURBATION_CASES = [
    # (method, input builder, attribute kwargs)
    ("FeatureAblation", "tokens", {}),
    ("FeatureAblation", "template", {}),
    ("FeatureAblation", "masked_template", {}),
    ("ShapleyValues", "template", {}),
    ("ShapleyValues", "masked_template", {}),
]


def build_input(ns, which, kind, tok):
    return {
        "tokens": lambda: token_input(ns, kind, tok),
        "template": lambda: template_input(ns),
        "masked_template": lambda: masked_template_input(ns),
    }[which]()


@pytest.mark.parametrize("method,which,kwargs", PERTURBATION_CASES)
def test_perturbation_matches_captum(lm, method, which, kwargs):
    kind, model, tok = lm
    ours = es.LLMAttribution(getattr(es, method)(model), tok)
    theirs = captum_attr.LLMAttribution(getattr(captum_attr, method)(model), tok)
    before = hook_state(model)
    res = ours.attribute(build_input(es, which, kind, tok), target=TARGET, **kwargs)
    assert hook_state(model) == before
    ref = theirs.attribute(build_input(captum_attr, which, kind, tok), target=TARGET,
                           use_cached_outputs=False, **kwargs)
    assert res.input_tokens == ref.input_tokens
    assert res.output_tokens == ref.output_tokens
    torch.testing.assert_close(res.seq_attr, ref.seq_attr, atol=1e-5, rtol=0)
    torch.testing.assert_close(res.token_attr, ref.token_attr, atol=1e-5, rtol=0)
    assert res.seq_attr.abs().max() > 1e-2  # the model's answer does depend on the prompt


@pytest.mark.parametrize("which", ["tokens", "template"])
def test_ablation_matches_teacher_forced_reference(lm, which):
    kind, model, tok = lm
    inp = build_input(es, which, kind, tok)
    target_ids = tok.encode(TARGET, add_special_tokens=False)
    expected = reference_ablation(model, tok, inp, target_ids)
    for kwargs in ({}, {"use_cached_outputs": False}, {"forward_in_tokens": False}):
        res = es.LLMAttribution(es.FeatureAblation(model), tok).attribute(inp, target=TARGET, **kwargs)
        torch.testing.assert_close(res.seq_attr.double(), expected[0], atol=1e-5, rtol=0)
        torch.testing.assert_close(res.token_attr.double(), expected[1:], atol=1e-5, rtol=0)


def test_log_probs_of_scoring_equal_reference(lm):
    """Padded batch of prompts of different lengths == each prompt alone, token by token."""
    from explain_serve.attr.llm.scoring import target_log_probs

    kind, model, tok = lm
    prompts = [tok.encode(p) for p in ("the cat", "my friend likes green tea and", "a bird sang in the tree and")]
    target = tok.encode(" the dog ate", add_special_tokens=False)
    expected = torch.tensor([reference_log_probs(model, p, target) for p in prompts])
    prompts_t = [torch.tensor(p) for p in prompts]
    for step_by_step in (False, True):
        for batch_size in (None, 1, 2):
            got = target_log_probs(model, prompts_t, torch.tensor(target), tok.pad_token_id,
                                   step_by_step=step_by_step, batch_size=batch_size)
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("which", ["tokens", "template"])
@pytest.mark.parametrize("method", ["FeatureAblation", "ShapleyValues"])
def test_batch_of_perturbations_equals_one_at_a_time(lm, method, which):
    kind, model, tok = lm
    inp = build_input(es, which, kind, tok)
    batched = es.LLMAttribution(getattr(es, method)(model), tok).attribute(inp, target=TARGET)
    single = es.LLMAttribution(getattr(es, method)(model), tok, batch_size=1).attribute(
        inp, target=TARGET, perturbations_per_eval=1)
    torch.testing.assert_close(batched.token_attr, single.token_attr, atol=1e-5, rtol=0)
    torch.testing.assert_close(batched.seq_attr, single.seq_attr, atol=1e-5, rtol=0)


GRADIENT_CASES = [
    # (method, attribute kwargs given the interpretable tensor, target)
    ("LayerIntegratedGradients", lambda x: {"n_steps": 20}, TARGET),
    ("LayerIntegratedGradients", lambda x: {"n_steps": 8, "method": "riemann_trapezoid"}, TARGET),
    ("LayerGradientXActivation", lambda x: {}, TARGET),
    # one target token: Captum's NoiseTunnel repeat-interleaves the target ids passed as a forward
    # argument, so for n_samples > 1 its rows after the first explain the wrong target token
    ("LayerGradientShap", lambda x: {"n_samples": 4, "baselines": torch.cat([x * 0, x * 0])}, " the"),
]


@pytest.mark.parametrize("method,make_kwargs,target", GRADIENT_CASES)
def test_gradient_matches_captum(lm, method, make_kwargs, target):
    kind, model, tok = lm
    kwargs = make_kwargs(token_input(es, kind, tok).to_tensor())
    layer = embeddings(model)
    ours = es.LLMGradientAttribution(getattr(es, method)(model, layer), tok)
    theirs = captum_attr.LLMGradientAttribution(getattr(captum_attr, method)(model, layer), tok)
    before = hook_state(model)
    np.random.seed(0), torch.manual_seed(0)  # LayerGradientShap draws like Captum: same seed, same draws
    res = ours.attribute(token_input(es, kind, tok), target=target, **kwargs)
    assert hook_state(model) == before
    np.random.seed(0), torch.manual_seed(0)
    ref = theirs.attribute(token_input(captum_attr, kind, tok), target=target, **kwargs)
    assert res.input_tokens == ref.input_tokens and res.output_tokens == ref.output_tokens
    torch.testing.assert_close(res.token_attr, ref.token_attr, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(res.seq_attr, ref.seq_attr, atol=1e-5, rtol=1e-5)


def test_layer_integrated_gradients_completeness(lm):
    """Each output token's row sums to log p(token | prompt) - log p(token | baseline prompt)."""
    kind, model, tok = lm
    inp = token_input(es, kind, tok)
    lig = es.LLMGradientAttribution(es.LayerIntegratedGradients(model, embeddings(model)), tok)
    res = lig.attribute(inp, target=TARGET, n_steps=200)
    target_ids = tok.encode(TARGET, add_special_tokens=False)
    base_ids = inp.to_model_input(torch.zeros_like(inp.to_tensor())).reshape(-1).tolist()
    gap = torch.tensor(reference_log_probs(model, inp.inp_tensor[0].tolist(), target_ids)) - torch.tensor(
        reference_log_probs(model, base_ids, target_ids))
    torch.testing.assert_close(res.token_attr.sum(1), gap.to(res.token_attr.dtype), atol=2e-3, rtol=1e-3)


def test_gradient_shap_by_hand(lm):
    """LayerGradientShap on a token-presence input: a sampled point between the baseline (0) and
    the input (1) keeps a token only at presence 1, so every sample is the baseline prompt, and
    each row is grad_emb log p(t_j | baseline prompt, t_<j) . (emb(x) - emb(b)), for any seed."""
    kind, model, tok = lm
    inp = token_input(es, kind, tok)
    layer = embeddings(model)
    target_ids = tok.encode(TARGET, add_special_tokens=False)
    x_ids = inp.inp_tensor[0]
    b_ids = inp.to_model_input(torch.zeros_like(inp.to_tensor()))[0]
    rows = []
    for j in range(len(target_ids)):
        suffix = torch.tensor(target_ids[:j], dtype=torch.long)
        emb_b = layer(torch.cat([b_ids, suffix])).detach().requires_grad_(True)
        logits = model(inputs_embeds=emb_b.unsqueeze(0)).logits[0, -1]
        (grad,) = torch.autograd.grad(torch.log_softmax(logits, -1)[target_ids[j]], emb_b)
        diff = layer(x_ids) - layer(b_ids)
        rows.append((grad[: len(x_ids)] * diff).sum(-1).detach())
    expected = torch.stack(rows)
    if inp.itp_mask is not None:
        expected = expected[:, inp.itp_mask[0]]
    for seed in (0, 1):
        np.random.seed(seed), torch.manual_seed(seed)
        res = es.LLMGradientAttribution(es.LayerGradientShap(model, layer), tok).attribute(
            inp, target=TARGET, baselines=torch.cat([inp.to_tensor() * 0] * 2), n_samples=3)
        torch.testing.assert_close(res.token_attr, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method,n_samples", [("ShapleyValueSampling", 60), ("KernelShap", 600)])
def test_random_methods_converge_to_exact_shapley(lm, method, n_samples):
    kind, model, tok = lm
    inp = template_input(es)
    exact = es.LLMAttribution(es.ShapleyValues(model), tok).attribute(inp, target=TARGET)
    torch.manual_seed(1)
    approx = es.LLMAttribution(getattr(es, method)(model), tok).attribute(inp, target=TARGET, n_samples=n_samples)
    scale = exact.seq_attr.abs().max()
    assert (approx.seq_attr - exact.seq_attr).abs().max() < 0.1 * scale
    if method == "KernelShap":
        assert approx.token_attr is None
    # ShapleyValueSampling's per-token rows are exact Shapley values of each token too (sum = total)
    else:
        torch.testing.assert_close(approx.token_attr.sum(0), approx.seq_attr, atol=1e-4, rtol=0)


def test_lime_runs_and_is_seeded(lm):
    kind, model, tok = lm
    inp = template_input(es)
    runs = []
    for _ in range(2):
        torch.manual_seed(3)
        runs.append(es.LLMAttribution(es.Lime(model), tok).attribute(inp, target=TARGET, n_samples=40).seq_attr)
    torch.testing.assert_close(runs[0], runs[1])
    assert runs[0].shape == (3,) and runs[0].abs().max() > 0


def test_generated_target_and_gen_args(lm):
    """No target: the model's greedy continuation (gen_args) is explained, same as giving its ids."""
    kind, model, tok = lm
    inp = token_input(es, kind, tok)
    la = es.LLMAttribution(es.FeatureAblation(model), tok)
    res = la.attribute(inp, gen_args={"max_new_tokens": 4, "do_sample": False})
    ids = inp.inp_tensor
    greedy = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, do_sample=False,
                            pad_token_id=tok.pad_token_id)[0, ids.shape[1]:]
    given = la.attribute(inp, target=greedy)
    assert len(res.output_tokens) == 4 and res.output_tokens == given.output_tokens
    torch.testing.assert_close(res.token_attr, given.token_attr, atol=1e-6, rtol=0)
    if kind == "llama":  # Captum's readable-token helper fails on the random GPT-2's partial UTF-8 bytes
        ref = captum_attr.LLMAttribution(captum_attr.FeatureAblation(model), tok).attribute(
            token_input(captum_attr, kind, tok), gen_args={"max_new_tokens": 4, "do_sample": False},
            use_cached_outputs=False)
        assert res.output_tokens == ref.output_tokens
        torch.testing.assert_close(res.token_attr, ref.token_attr, atol=1e-5, rtol=0)


def test_prob_target_and_num_trials(lm):
    kind, model, tok = lm
    inp = template_input(es)
    ours = es.LLMAttribution(es.FeatureAblation(model), tok, attr_target="prob").attribute(inp, target=TARGET, num_trials=2)
    ref = captum_attr.LLMAttribution(captum_attr.FeatureAblation(model), tok, attr_target="prob").attribute(
        template_input(captum_attr), target=TARGET, use_cached_outputs=False)
    torch.testing.assert_close(ours.token_attr, ref.token_attr, atol=1e-6, rtol=0)


def test_product_baselines_average_over_choices(lm):
    kind, model, tok = lm
    import random

    pb = es.ProductBaselines({"name": ["a", "the"], ("place", "job"): [("the tree", "cat"), ("the mat", "dog")]})
    inp = es.TextTemplateInput("{name} lives in {place} and he is a {job}",
                               values={"name": "dave", "place": "palm coast", "job": "lawyer"}, baselines=pb)
    random.seed(0)
    res = es.LLMAttribution(es.FeatureAblation(model), tok).attribute(inp, target=TARGET, num_trials=8)
    assert res.seq_attr.shape == (3,) and torch.isfinite(res.token_attr).all()
    # the average lies within the range of the four fixed-baseline answers
    fixed = []
    for name in ("a", "the"):
        for place, job in (("the tree", "cat"), ("the mat", "dog")):
            fixed_inp = es.TextTemplateInput("{name} lives in {place} and he is a {job}",
                                             values={"name": "dave", "place": "palm coast", "job": "lawyer"},
                                             baselines={"name": name, "place": place, "job": job})
            fixed.append(es.LLMAttribution(es.FeatureAblation(model), tok).attribute(fixed_inp, target=TARGET).seq_attr)
    fixed = torch.stack(fixed)
    assert (res.seq_attr >= fixed.min(0).values - 1e-5).all() and (res.seq_attr <= fixed.max(0).values + 1e-5).all()


class LocalProvider:
    """A real RemoteLLMProvider over the local model (what a vLLM server answers, computed here)."""

    def __init__(self, model, tok):
        self.model, self.tok = model, tok

    def generate(self, prompt, **gen_args):
        ids = self.tok(prompt, return_tensors="pt")
        out = self.model.generate(**ids, max_new_tokens=gen_args.get("max_new_tokens", 3), do_sample=False,
                                  pad_token_id=self.tok.pad_token_id)
        return self.tok.decode(out[0, ids["input_ids"].shape[1]:])

    def get_logprobs(self, input_prompt, target_str, tokenizer=None):
        return reference_log_probs(self.model, self.tok.encode(input_prompt),
                                   self.tok.encode(target_str, add_special_tokens=False))


def test_remote_attribution_equals_local(lm):
    kind, model, tok = lm
    provider_cls = type("P", (LocalProvider, es.RemoteLLMProvider), {})
    remote = es.RemoteLLMAttribution(es.FeatureAblation(es.RemoteLLMAttribution.placeholder_model), tok,
                                     provider_cls(model, tok))
    res = remote.attribute(template_input(es), target=TARGET)
    local = es.LLMAttribution(es.FeatureAblation(model), tok).attribute(template_input(es), target=TARGET)
    torch.testing.assert_close(res.token_attr, local.token_attr, atol=1e-5, rtol=0)


def test_vllm_provider_says_what_is_missing():
    try:
        import openai  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pip install"):
            es.VLLMProvider("http://127.0.0.1:9/v1")
    else:
        with pytest.raises(ValueError, match="api_url"):
            es.VLLMProvider("  ")


BAD_CALLS = [
    # (description, call, exception, message)
    ("unsupported method", lambda m, t: es.LLMAttribution(es.Saliency(m), t), TypeError, "wraps one of"),
    ("unsupported input", lambda m, t: es.LLMGradientAttribution(es.LayerGradientXActivation(m, embeddings(m)), t)
        .attribute(template_input(es), target=TARGET), TypeError, "TextTokenInput"),
    ("gen_args with target", lambda m, t: es.LLMAttribution(es.FeatureAblation(m), t)
        .attribute(template_input(es), target=TARGET, gen_args={"max_new_tokens": 2}), ValueError, "gen_args"),
    ("empty target", lambda m, t: es.LLMAttribution(es.FeatureAblation(m), t)
        .attribute(template_input(es), target=""), ValueError, "no tokens"),
    ("bad attr_target", lambda m, t: es.LLMAttribution(es.FeatureAblation(m), t, attr_target="logits"),
        ValueError, "attr_target"),
    ("bad num_trials", lambda m, t: es.LLMAttribution(es.FeatureAblation(m), t)
        .attribute(template_input(es), target=TARGET, num_trials=0), ValueError, "num_trials"),
]


@pytest.mark.parametrize("desc,call,exc,msg", BAD_CALLS, ids=[c[0] for c in BAD_CALLS])
def test_bad_calls_raise_clear_errors_and_leave_no_hooks(lm, desc, call, exc, msg):
    kind, model, tok = lm
    before = hook_state(model)
    with pytest.raises(exc, match=msg):
        call(model, tok)
    assert hook_state(model) == before


def test_empty_perturbed_prompt_is_a_clear_error():
    model, tok = MODELS["gpt2"]()
    inp = es.TextTemplateInput("{}", values=["the cat"])  # ablated: "" and GPT-2 adds no BOS
    with pytest.raises(ValueError, match="no tokens left"):
        es.LLMAttribution(es.FeatureAblation(model), tok).attribute(inp, target=TARGET)


def test_image_mask_input_through_a_processor(lm):
    """A processor output (a mapping with input_ids) is scored row by row; equals ablation by hand."""
    from PIL import Image

    kind, model, tok = lm
    pixels = torch.zeros(2, 4, 3, dtype=torch.uint8)
    pixels[:, :2] = 200  # left half bright, right half dark
    image = Image.fromarray(pixels.numpy())
    mask = torch.zeros(2, 4, dtype=torch.int32)
    mask[:, 2:] = 1

    def processor(img):
        arr = torch.tensor(np.array(img)).float().mean(-1)  # (2, 4) brightness
        words = ["cat" if arr[:, :2].mean() > 150 else "dog", "tree" if arr[:, 2:].mean() > 150 else "mat"]
        return {"input_ids": torch.tensor([tok.encode("the " + " and the ".join(words))])}

    inp = es.ImageMaskInput(image, mask=mask, baseline=(255, 255, 255), processor_fn=processor)
    res = es.LLMAttribution(es.FeatureAblation(model), tok).attribute(inp, target=TARGET)
    target_ids = tok.encode(TARGET, add_special_tokens=False)

    def score(row):
        lp = reference_log_probs(model, inp.to_model_input(torch.tensor([row]))["input_ids"][0].tolist(), target_ids)
        return torch.tensor([sum(lp)] + lp)

    expected = torch.stack([score([1, 1]) - score([0, 1]), score([1, 1]) - score([1, 0])], 1)
    torch.testing.assert_close(res.seq_attr, expected[0].to(res.seq_attr.dtype), atol=1e-5, rtol=0)
    torch.testing.assert_close(res.token_attr, expected[1:].to(res.token_attr.dtype), atol=1e-5, rtol=0)
    assert res.input_tokens == ["image_feature_0", "image_feature_1"]
    pytest.importorskip("matplotlib")
    fig, _ = res.plot_image_heatmap(target_token_pos=(0, 2))
    assert fig is not None
