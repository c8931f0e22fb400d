"""Interpretable inputs, ProductBaselines and LLMAttributionResult: Captum's behaviour (test-only
oracle) for the model inputs, hand-written expectations for the rest."""
from __future__ import annotations

import io
import random

import numpy as np
import pytest
import torch

from explain_serve import attr as es

captum_attr = pytest.importorskip("captum.attr")

TEMPLATE_CASES = [
    # (template, values, baselines, mask, perturbation rows)
    ("{} feels {} right now", ["He", "sad"], ["It", "fine"], None, [[0, 1], [1, 0], [0, 0], [1, 1]]),
    ("{} feels {} right now", ["He", "sad"], None, None, [[0, 1], [1, 0]]),
    ("{a} and {b} or {c}", {"a": "x", "b": "y", "c": "z"}, {"a": "1", "b": "2", "c": "3"}, {"a": 7, "b": 3, "c": 7},
     [[0, 1], [1, 0], [0, 0]]),
    ("{} {} {}", ["p", "q", "r"], ["P", "Q", "R"], [5, 1, 5], [[1, 0], [0, 1]]),
    (lambda *v: "|".join(v), ["p", "q"], ["", "Q"], None, [[0, 1], [1, 0]]),
]


@pytest.mark.parametrize("template,values,baselines,mask,rows", TEMPLATE_CASES)
def test_text_template_input_matches_captum(template, values, baselines, mask, rows):
    ours = es.TextTemplateInput(template, values, baselines=baselines, mask=mask)
    theirs = captum_attr.TextTemplateInput(template, values, baselines=baselines, mask=mask)
    assert ours.n_itp_features == theirs.n_itp_features
    torch.testing.assert_close(ours.to_tensor(), theirs.to_tensor())
    assert ours.to_model_input() == theirs.to_model_input()
    for row in rows:
        t = torch.tensor([row])
        assert ours.to_model_input(t) == theirs.to_model_input(t)
    assert ours.to_model_inputs(torch.tensor(rows)) == [theirs.to_model_input(torch.tensor([r])) for r in rows]
    itp_attr = torch.arange(2 * ours.n_itp_features, dtype=torch.float).reshape(2, -1)
    torch.testing.assert_close(ours.format_attr(itp_attr), theirs.format_attr(itp_attr))


BAD_TEMPLATES = [
    (dict(template=3, values=["a"]), TypeError, "template"),
    (dict(template="{}", values="a"), TypeError, "values"),
    (dict(template="{}", values=["a"], baselines=["b", "c"]), ValueError, "2 entries for 1"),
    (dict(template="{x}", values={"x": "a"}, baselines=["b"]), TypeError, "dict"),
    (dict(template="{x}", values={"x": "a"}, mask={"y": 0}), ValueError, "lacks the keys"),
]


@pytest.mark.parametrize("kwargs,exc,msg", BAD_TEMPLATES)
def test_text_template_input_bad_arguments(kwargs, exc, msg):
    with pytest.raises(exc, match=msg):
        es.TextTemplateInput(**kwargs)


def test_text_token_input_matches_captum():
    pytest.importorskip("transformers")
    from tests.llm_models import word_tokenizer

    tok = word_tokenizer()
    for kwargs in ({}, {"skip_tokens": ["<s>"]}, {"skip_tokens": [tok.bos_token_id], "baselines": "<pad>"}):
        ours = es.TextTokenInput("the cat sat on the mat", tok, **kwargs)
        theirs = captum_attr.TextTokenInput("the cat sat on the mat", tok, **kwargs)
        assert ours.values == theirs.values and ours.n_itp_features == theirs.n_itp_features
        assert ours.baselines == theirs.baselines
        n = ours.n_itp_features
        rows = torch.stack([torch.arange(n) % 2, (torch.arange(n) + 1) % 3 > 0]).long()
        torch.testing.assert_close(ours.to_model_input(rows), theirs.to_model_input(rows))
        torch.testing.assert_close(ours.to_model_input(), theirs.to_model_input())


def test_image_mask_input_matches_captum():
    from PIL import Image

    rng = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 255, (4, 6, 3), generator=rng, dtype=torch.uint8).numpy()
    image = Image.fromarray(pixels)
    mask = torch.zeros(4, 6, dtype=torch.int32)
    mask[:, 3:] = 4
    mask[2:, :2] = 9
    cases = [dict(mask=mask), dict(mask_list=[mask == 4, mask >= 4]), dict()]
    for kw in cases:
        ours, theirs = es.ImageMaskInput(image, **kw), captum_attr.ImageMaskInput(image, **kw)
        assert ours.n_itp_features == theirs.n_itp_features and ours.values == theirs.values
        for row in ([0] * ours.n_itp_features, [1] + [0] * (ours.n_itp_features - 1)):
            t = torch.tensor([row])
            assert (np.asarray(ours.to_model_input(t)) == np.asarray(theirs.to_model_input(t))).all()
        attr = torch.arange(1.0, ours.n_itp_features + 1).unsqueeze(0)
        torch.testing.assert_close(ours.format_pixel_attr(attr), theirs.format_pixel_attr(attr).to(attr.dtype))
    with pytest.raises(ValueError, match="image is"):
        es.ImageMaskInput(image, mask=torch.zeros(3, 3))


def test_product_baselines():
    pb = es.ProductBaselines([["a", "b"], ["c"]])
    random.seed(0)
    draws = {tuple(pb()) for _ in range(50)}
    assert draws == {("a", "c"), ("b", "c")}
    grouped = es.ProductBaselines({"name": ["x"], ("city", "state"): [("SF", "CA"), ("NYC", "NY")]})
    seen = {tuple(sorted(grouped().items())) for _ in range(50)}
    assert seen == {(("city", "SF"), ("name", "x"), ("state", "CA")), (("city", "NYC"), ("name", "x"), ("state", "NY"))}
    # same seed, same draws as Captum's (both use Python's random)
    theirs = captum_attr.ProductBaselines({"name": ["x", "y", "z"], "job": ["a", "b"]})
    ours = es.ProductBaselines({"name": ["x", "y", "z"], "job": ["a", "b"]})
    random.seed(5)
    a = [ours() for _ in range(10)]
    random.seed(5)
    assert a == [theirs() for _ in range(10)]
    with pytest.raises(ValueError, match="no baseline values"):
        es.ProductBaselines([["a"], []])
    with pytest.raises(ValueError, match="tuples of 2"):
        es.ProductBaselines({("a", "b"): ["x"]})


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def test_result_validation_and_plots():
    pytest.importorskip("matplotlib")
    res = es.LLMAttributionResult(
        input_tokens=["a", "b", "c"], output_tokens=["x", "y"],
        seq_attr=[0.5, -1.0, 0.25], token_attr=[[0.1, -0.2, 0.3], [0.4, -0.8, -0.05]],
    )
    assert res.seq_attr_dict == {"a": 0.5, "b": -1.0, "c": 0.25}
    fig, ax = res.plot_token_attr()
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b", "c"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["x", "y"]
    assert sorted(t.get_text() for t in ax.texts) == sorted(f"{v:.4f}" for v in [0.1, -0.2, 0.3, 0.4, -0.8, -0.05])
    assert _png(fig).startswith(b"\x89PNG")
    fig, ax = res.plot_seq_attr()
    heights = [p.get_height() for p in ax.patches]
    assert heights == [0.5, 0.0, 0.25, 0.0, -1.0, 0.0]  # positive bars, then negative bars
    assert _png(fig).startswith(b"\x89PNG")
    no_tokens = es.LLMAttributionResult(input_tokens=["a"], output_tokens=["x"], seq_attr=[1.0])
    with pytest.raises(ValueError, match="plot_seq_attr"):
        no_tokens.plot_token_attr()
    with pytest.raises(ValueError, match="one value per input token"):
        es.LLMAttributionResult(input_tokens=["a", "b"], output_tokens=["x"], seq_attr=[1.0])
    with pytest.raises(ValueError, match=r"\(1, 2\)"):
        es.LLMAttributionResult(input_tokens=["a", "b"], output_tokens=["x"], seq_attr=[1.0, 2.0], token_attr=[[1.0]])


def test_exports_match_captum_names():
    for name in ("LLMAttribution", "LLMGradientAttribution", "LLMAttributionResult", "RemoteLLMAttribution",
                 "RemoteLLMProvider", "VLLMProvider", "InterpretableInput", "TextTemplateInput", "TextTokenInput",
                 "ImageMaskInput", "ProductBaselines"):
        assert hasattr(captum_attr, name) and name in es.__all__ and getattr(es, name).__name__ == name
