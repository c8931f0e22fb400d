"""Bad arguments that Captum signals with an AssertionError raise the project's error class (both
a ValueError and an AssertionError) with a message saying what to fix: LLM attribution, its
result, and image inputs. One table; Captum is the oracle where its check is cheap to reach."""
from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from explain_serve import attr as es
from explain_serve._core.errors import AttributionArgumentError

captum_attr = pytest.importorskip("captum.attr")
Image = pytest.importorskip("PIL.Image")


class _NoGenerate(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(1, 1)  # a parameter: Captum reads the device from it

    def forward(self, input_ids, attention_mask=None):
        return torch.zeros(input_ids.shape[0], input_ids.shape[1], 5)


def _template(ns):
    return ns.TextTemplateInput("{} lives in {}", values=["dave", "palm coast"], baselines=["a", "the tree"])


def _result(ns, **bad):
    fields = dict(input_tokens=["a", "b"], output_tokens=["c"], seq_attr=torch.zeros(2), token_attr=torch.zeros(1, 2),
                  output_probs=torch.ones(1))
    return ns.LLMAttributionResult(**{**fields, **bad})


def _image():
    return Image.new("RGB", (4, 3))


# (case, call(ns) that must fail, message fragment ours gives, whether Captum's check is reached here)
CASES = [
    ("attr_target", lambda ns: ns.LLMAttribution(ns.FeatureAblation(_NoGenerate()), None, attr_target="logit"),
     "attr_target must be", True),
    ("seq_attr_shape", lambda ns: _result(ns, seq_attr=torch.zeros(3)), "seq_attr must be", True),
    ("token_attr_shape", lambda ns: _result(ns, token_attr=torch.zeros(2, 2)).token_attr, "token_attr must have shape", True),
    ("output_probs_shape", lambda ns: _result(ns, output_probs=torch.ones(2)), "output_probs must be", True),
    ("image_mask_shape", lambda ns: ns.ImageMaskInput(_image(), mask=torch.zeros(4, 3, dtype=torch.int64)),
     "mask has shape", True),
    ("image_mask_list_shape", lambda ns: ns.ImageMaskInput(_image(), mask_list=[torch.zeros(4, 3, dtype=torch.bool)]),
     "mask_list[0] has shape", True),
    ("no_generate", lambda ns: ns.LLMAttribution(ns.FeatureAblation(_NoGenerate()), None).attribute(_template(ns)),
     "no generate()", False),
    ("gen_args_with_target", lambda ns: ns.LLMAttribution(ns.FeatureAblation(_NoGenerate()), None).attribute(
        _template(ns), target="x", gen_args={"max_new_tokens": 2}), "gen_args is only used", False),
]


@pytest.mark.parametrize("name,call,message,captum_too", CASES, ids=[c[0] for c in CASES])
def test_argument_errors_are_assertion_and_value_errors(name, call, message, captum_too):
    with pytest.raises(AttributionArgumentError, match=re.escape(message)) as info:
        call(es)
    assert isinstance(info.value, AssertionError) and isinstance(info.value, ValueError)
    if captum_too:  # Captum's own check is an AssertionError: code catching it keeps working
        with pytest.raises(AssertionError):
            call(captum_attr)
