"""Hugging Face text models in archives: a BERT classifier (`--kind text`) and the tiny_lm example
(`--kind causal_lm`), in-process through the services and over a real TorchServe.

Oracles: the Hugging Face model itself (probabilities, a textbook greedy loop), the core's
LayerIntegratedGradients / LLMAttribution called directly; bad rows answered 4xx before computing;
no hooks left on the model after any call.
"""
from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Tuple

import pytest
import torch

pytest.importorskip("transformers")

import explain_serve.attr as attr  # noqa: E402
from explain_serve.serving.archive import archive  # noqa: E402
from explain_serve.serving.causal_lm import CausalLMService  # noqa: E402
from explain_serve.serving.config import ConfigError  # noqa: E402
from explain_serve.serving.service import MAX_RESPONSE_ENV, ExplainService  # noqa: E402

RTOL, ATOL = 1e-4, 2e-5
PROMPT = "the capital of france is"


def _unpack(store: Path, name: str, out: Path) -> Tuple[Path, str]:
    """The archive ``name`` unpacked under ``out``: its folder and serialized file name."""
    with zipfile.ZipFile(store / f"{name}.mar") as z:
        z.extractall(out / name)
        manifest = json.loads(z.read("MAR-INF/MANIFEST.json"))
    return out / name, manifest["model"]["serializedFile"]


def _service(store: Path, name: str, cls, tmp_path_factory):
    """The archive ``name`` loaded in-process, as its worker loads it; hooks removed after the module."""
    svc = cls(*_unpack(store, name, tmp_path_factory.mktemp("unpacked")), name)
    yield svc
    svc.close()


@pytest.fixture(scope="module")
def text_service(store, tmp_path_factory):
    yield from _service(store, "hf_text", ExplainService, tmp_path_factory)


@pytest.fixture(scope="module")
def lm_service(store, tmp_path_factory):
    yield from _service(store, "tiny_lm", CausalLMService, tmp_path_factory)


def _hooks(model: torch.nn.Module) -> list:
    """Every hook on the model's modules, by module and kind."""
    return [(name, kind, key) for name, m in model.named_modules()
            for kind in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
            for key in getattr(m, kind)]


def _no_hooks(model: torch.nn.Module) -> bool:
    return not _hooks(model)


def _call(svc, body, explain=True):
    (status, text), = svc.handle([{"body": body}], [explain])
    return status, json.loads(text)


# -- archiving ------------------------------------------------------------------------------------
def test_archive_refuses_directories_that_cannot_serve(tmp_path):
    from tests.hf_models import bert_classifier_dir

    d = bert_classifier_dir(tmp_path / "bert")
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (d / f).unlink(missing_ok=True)
    with pytest.raises(ConfigError, match="no tokenizer files"):
        archive("x", d, "text", tmp_path / "store")
    with pytest.raises(ConfigError, match="Hugging Face model directory"):
        archive("x", tmp_path / "weights.pt", "causal_lm", tmp_path / "store")
    assert not (tmp_path / "store" / "x.mar").exists()


def test_archive_packs_config_weights_and_tokenizer(store):
    with zipfile.ZipFile(store / "tiny_lm.mar") as z:
        names = set(z.namelist())
    assert {"config.json", "model.safetensors", "tokenizer.json", "explain.yaml", "causal_lm_handler.py"} <= names


# -- text classification ----------------------------------------------------------------------------
def test_text_prediction_and_special_tokens(text_service):
    tok, hf = text_service.tokenizer.tok, text_service.model.hf
    text = "the movie was great"
    ids = torch.tensor([tok(text)["input_ids"]])
    with torch.no_grad():
        expected = torch.softmax(hf(input_ids=ids).logits, -1)[0]
    status, body = _call(text_service, {"inputs": text}, explain=False)
    assert status == 200 and body["prediction"]["label"] == ["negative", "neutral", "positive"][int(expected.argmax())]
    torch.testing.assert_close(torch.tensor(body["prediction"]["probabilities"]), expected, rtol=RTOL, atol=ATOL)
    status, body = _call(text_service, {"inputs": text, "target": 2})
    assert status == 200 and body["method"] == "layer_integrated_gradients"
    assert [t["token"] for t in body["tokens"]] == ["[CLS]", "the", "movie", "was", "great", "[SEP]"]
    assert [t.get("special", False) for t in body["tokens"]] == [True, False, False, False, False, True]


def test_text_explanation_equals_the_core_on_the_input_embeddings(text_service):
    model = text_service.model
    tok = text_service.tokenizer.tok
    text = "the plot was awful but the acting was fun"
    ids = torch.tensor([tok(text)["input_ids"]])
    at_load = _hooks(model)  # the service's reusable hooks (inert between requests)
    status, body = _call(text_service, {"inputs": text, "target": 0, "params": {"n_steps": 16}})
    assert status == 200
    baseline = torch.where((ids == 2) | (ids == 3), ids, torch.full_like(ids, -1))  # [CLS]/[SEP] kept, rest pad
    lig = attr.LayerIntegratedGradients(model, model.hf.bert.embeddings.word_embeddings)
    expected, delta = lig.attribute(ids, baselines=baseline, target=0, n_steps=16, method="gausslegendre",
                                    return_convergence_delta=True)
    torch.testing.assert_close(torch.tensor(body["attributions"]), expected.sum(-1)[0], rtol=RTOL, atol=ATOL)
    with torch.no_grad():  # completeness: the scores sum to f(x) - f(baseline)
        gap = model(ids)[0, 0] - model(baseline)[0, 0]
    assert abs(sum(body["attributions"]) - float(gap)) <= abs(float(delta[0])) + 1e-4
    assert _hooks(model) == at_load


def test_text_padded_batch_equals_one_by_one(text_service):
    """A short and a long text in one server-side batch: the padding is masked, answers are unchanged."""
    rows = [{"body": {"inputs": "bad", "target": 1}}, {"body": {"inputs": "the movie was really good and fun", "target": 1}}]
    together = [json.loads(t) for _, t in text_service.handle(rows, [True, True])]
    for row, joint in zip(rows, together):
        (_, alone), = text_service.handle([row], [True])
        alone = json.loads(alone)
        assert joint["prediction"] == alone["prediction"]
        torch.testing.assert_close(torch.tensor(joint["attributions"]), torch.tensor(alone["attributions"]),
                                   rtol=RTOL, atol=ATOL)


# -- causal LM: generation ----------------------------------------------------------------------------
def test_predict_is_the_greedy_continuation(lm_service):
    """Served generation == a textbook greedy loop; the trained example answers the fact."""
    model, tok = lm_service.model, lm_service.tokenizer.tok
    ids = tok(PROMPT)["input_ids"]
    new = []
    with torch.no_grad():
        for _ in range(3):
            nxt = int(model(input_ids=torch.tensor([ids + new])).logits[0, -1].argmax())
            new.append(nxt)
            if nxt == tok.eos_token_id:
                break
    status, body = _call(lm_service, {"inputs": PROMPT, "params": {"max_new_tokens": 3}}, explain=False)
    assert status == 200, body
    assert body["output_tokens"] == [tok.decode([i]) for i in new]
    assert body["generated_text"].split()[0] == "paris"
    assert set(body) == {"model", "version", "generated_text", "output_tokens"}


def test_sampling_is_seeded_per_request(lm_service):
    body = {"inputs": "a", "params": {"max_new_tokens": 6, "do_sample": True, "temperature": 5.0, "seed": 3}}
    first, second = _call(lm_service, body, explain=False), _call(lm_service, body, explain=False)
    assert first == second and first[0] == 200


# -- causal LM: bad rows (in-process and served) --------------------------------------------------------
BAD_ROWS = [
    # (case, explain, body, status, message fragment)
    ("empty prompt", True, {"inputs": "  "}, 400, "prompt is empty"),
    ("prompt not a string", True, {"inputs": [1, 2]}, 400, "prompt as a string"),
    ("prompt over the token limit", True, {"inputs": "the " * 30}, 413, "at most 24"),
    ("target over the token limit", True, {"inputs": PROMPT, "target": "paris " * 20}, 413, "at most 16"),
    ("target not a string", True, {"inputs": PROMPT, "target": 3}, 400, "'target' must be"),
    ("unknown method for this kind", True, {"inputs": PROMPT, "method": "integrated_gradients"}, 400,
     "unknown method 'integrated_gradients' for a causal_lm model"),
    ("max_new_tokens over the limit", True, {"inputs": PROMPT, "params": {"max_new_tokens": 1000}}, 400,
     "over this model's limit 16"),
    ("unknown parameter", True, {"inputs": PROMPT, "params": {"n_stepz": 3}}, 400, "unknown parameter(s) n_stepz"),
    ("words with a gradient method", True,
     {"inputs": PROMPT, "method": "layer_integrated_gradients", "params": {"features": "words"}}, 400, "perturbation method"),
    ("too many forward passes", True,
     {"inputs": PROMPT, "method": "shapley_value_sampling", "params": {"n_samples": 500}}, 400, "forward passes"),
    ("predict with a method", False, {"inputs": PROMPT, "method": "lime"}, 400, "for /explanations"),
    ("predict temperature over the limit", False, {"inputs": PROMPT, "params": {"temperature": 99.0}}, 400, "limit"),
]


@pytest.mark.parametrize("case,explain,body,status,message", BAD_ROWS, ids=[r[0] for r in BAD_ROWS])
def test_bad_rows_in_process(lm_service, case, explain, body, status, message):
    got, answer = _call(lm_service, body, explain)
    assert (got, answer["code"]) == (status, status) and message in answer["message"], answer
    assert _no_hooks(lm_service.model)


def test_token_matrix_over_the_response_limit_is_refused_before_computing(store, tmp_path, monkeypatch):
    monkeypatch.setenv(MAX_RESPONSE_ENV, "2000")
    d, ser = _unpack(store, "tiny_lm", tmp_path)
    svc = CausalLMService(d, ser, "tiny_lm")
    calls = []
    svc.model.register_forward_pre_hook(lambda *a: calls.append(1))  # any forward would show here
    status, answer = _call(svc, {"inputs": "the " * 20, "params": {"max_new_tokens": 16}})
    assert status == 413 and "token matrix" in answer["message"] and not calls


# -- causal LM: explanations == the core in-process -----------------------------------------------------
def _oracle(lm_service, method: str, target_ids, features="tokens", **kw):
    """The core's LLM attribution called directly, as a user would in-process."""
    model, tok = lm_service.model, lm_service.tokenizer.tok
    if method.startswith("layer_"):
        cls = getattr(attr, {"layer_integrated_gradients": "LayerIntegratedGradients",
                             "layer_gradient_x_activation": "LayerGradientXActivation"}[method])
        llm = attr.LLMGradientAttribution(cls(model, model.get_input_embeddings()), tok)
        inp = attr.TextTokenInput(PROMPT, tok)
    else:
        cls = getattr(attr, {"feature_ablation": "FeatureAblation", "shapley_value_sampling": "ShapleyValueSampling",
                             "kernel_shap": "KernelShap", "lime": "Lime"}[method])
        llm = attr.LLMAttribution(cls(model), tok)
        if features == "words":
            inp = attr.TextTemplateInput(" ".join(["{}"] * len(PROMPT.split())), values=PROMPT.split())
        else:
            inp = attr.TextTokenInput(PROMPT, tok)
    seed = kw.pop("seed", None)
    if seed is not None:
        from explain_serve.serving.methods import seeded

        with seeded(seed):
            return llm.attribute(inp, target=torch.tensor(target_ids), **kw)
    return llm.attribute(inp, target=torch.tensor(target_ids), **kw)


EXPLAIN_CASES = [
    # (method, params sent, oracle kwargs)
    ("feature_ablation", {"max_new_tokens": 2}, {}),
    ("feature_ablation", {"max_new_tokens": 2, "features": "words"}, {"features": "words"}),
    ("shapley_value_sampling", {"max_new_tokens": 2, "n_samples": 3, "seed": 5}, {"n_samples": 3, "seed": 5}),
    ("layer_integrated_gradients", {"max_new_tokens": 2, "n_steps": 8}, {"n_steps": 8}),
]


def _check_answer(lm_service, method, params, kw, body):
    assert body["method"] == method and body["generated_text"].startswith("paris")
    target_ids = lm_service.tokenizer.tok(body["generated_text"], add_special_tokens=False)["input_ids"]
    res = _oracle(lm_service, method, target_ids, **kw)
    assert body["input_tokens"] == list(res.input_tokens) and body["output_tokens"] == list(res.output_tokens)
    torch.testing.assert_close(torch.tensor(body["seq_attr"]), res.seq_attr.float(), rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(torch.tensor(body["token_attr"]), res.token_attr.float(), rtol=RTOL, atol=ATOL)
    assert len(body["token_attr"]) == len(body["output_tokens"])
    assert all(len(row) == len(body["input_tokens"]) for row in body["token_attr"])


@pytest.mark.parametrize("method,params,kw", EXPLAIN_CASES, ids=[f"{c[0]}-{c[1].get('features', 'tokens')}" for c in EXPLAIN_CASES])
def test_explanation_equals_the_core_in_process(lm_service, method, params, kw):
    status, body = _call(lm_service, {"inputs": PROMPT, "method": method, "params": params})
    assert status == 200, body
    _check_answer(lm_service, method, params, kw, body)
    assert _no_hooks(lm_service.model)


def test_given_target_is_explained_not_generated(lm_service):
    status, body = _call(lm_service, {"inputs": PROMPT, "target": "rome ."})
    assert status == 200 and "generated_text" not in body and body["target"] == "rome ."
    assert body["output_tokens"] == ["rome", "."]
    # the answer hangs on the country: ablating "france" moves the log-probability of "rome" most
    row = body["token_attr"][0]
    assert max(range(len(row)), key=lambda i: abs(row[i])) == body["input_tokens"].index("france")


# -- over a real TorchServe ----------------------------------------------------------------------------
@pytest.mark.serving
@pytest.mark.parametrize("method,params,kw", EXPLAIN_CASES[:2] + EXPLAIN_CASES[3:], ids=["ablation", "words", "lig"])
def test_served_explanations_equal_in_process(client, lm_service, method, params, kw):
    status, body = client.explain("tiny_lm", {"inputs": PROMPT, "method": method, "params": params})
    assert status == 200, body
    _check_answer(lm_service, method, params, kw, body)


@pytest.mark.serving
def test_served_prediction_and_text_classification(client, lm_service, text_service):
    status, body = client.predict("tiny_lm", {"inputs": PROMPT, "params": {"max_new_tokens": 3}})
    assert status == 200 and body == dict(_call(lm_service, {"inputs": PROMPT, "params": {"max_new_tokens": 3}},
                                                explain=False)[1], model="tiny_lm")
    text = "the acting was awful"
    status, served = client.explain("hf_text", {"inputs": text, "target": 1})
    _, local = _call(text_service, {"inputs": text, "target": 1})
    assert status == 200 and served["tokens"][0] == {"token": "[CLS]", "score": served["tokens"][0]["score"], "special": True}
    torch.testing.assert_close(torch.tensor(served["attributions"]), torch.tensor(local["attributions"]), rtol=RTOL, atol=ATOL)


@pytest.mark.serving
@pytest.mark.parametrize("case,explain,body,status,message", BAD_ROWS, ids=[r[0] for r in BAD_ROWS])
def test_bad_rows_served(client, case, explain, body, status, message):
    got, answer = client.explain("tiny_lm", body) if explain else client.predict("tiny_lm", body)
    assert (got, answer["code"]) == (status, status) and message in answer["message"], answer
    ok, after = client.predict("tiny_lm", {"inputs": PROMPT, "params": {"max_new_tokens": 1}})  # the worker lives on
    assert ok == 200 and after["output_tokens"] == ["paris"]


# -- self-description -------------------------------------------------------------------------------
def test_causal_lm_describes_its_methods_and_limits(lm_service):
    status, desc = _call(lm_service, {"describe": True}, explain=False)
    limits = lm_service.cfg["explain"]["limits"]
    assert status == 200 and desc["kind"] == "causal_lm" and desc["model"] == lm_service.model_name
    assert set(desc["methods"]) == set(lm_service.cfg["explain"]["methods"])
    steps = {p["name"]: p for p in desc["methods"]["layer_integrated_gradients"]["params"]}["n_steps"]
    assert steps["max"] == limits["max_n_steps"] and steps["min"] == 1
    assert desc["input"]["text"]["max_tokens"] == limits["max_prompt_tokens"]
    new = {p["name"]: p for p in desc["input"]["predict_params"]}["max_new_tokens"]
    assert new["max"] == limits["max_new_tokens"]


@pytest.mark.serving
def test_causal_lm_describe_over_both_apis(client, served, lm_service):
    from explain_serve.serving.server import _get

    from tests.serving.conftest import MAX_RESPONSE

    status, desc = client.describe("tiny_lm")
    local = _call(lm_service, {"describe": True}, explain=False)[1]
    limit = min(local["max_response_bytes"], MAX_RESPONSE)  # the server's max_response_size caps the config's
    assert status == 200 and desc == local | {"model": "tiny_lm", "max_response_bytes": limit}
    mgmt = _get(f"{served['endpoints']['management']}/models/tiny_lm?customized=true", served["keys"]["management"])
    meta = mgmt[0]["customizedMetadata"]  # TorchServe parses the handler's JSON string
    assert (json.loads(meta) if isinstance(meta, str) else meta) == desc
