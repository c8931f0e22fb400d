"""TorchServe handler for Hugging Face causal language models: /predictions generates,
/explanations attributes a generated (or given) continuation to the prompt's tokens or words.

Thin: the logic is ``explain_serve.serving.causal_lm.CausalLMService``.
"""
from explain_serve.serving.causal_lm import CausalLMService
from explain_serve.serving.handler import ExplainHandlerBase


class CausalLMExplainHandler(ExplainHandlerBase):
    kind = "causal_lm"
    service_class = CausalLMService
