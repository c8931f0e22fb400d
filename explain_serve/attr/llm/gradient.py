"""``LLMGradientAttribution``: gradient methods on the embedding layer explaining each target token.

The quantity explained for target token ``j`` is ``log p(t_j | prompt, t_<j)``; the wrapped layer
method (LayerIntegratedGradients, LayerGradientXActivation, LayerGradientShap on the input
embeddings) attributes it to the embedding of every prompt position, summed over the embedding
dimension. Rows of ``token_attr`` are the output tokens, ``seq_attr`` their sum (the attribution of
the sequence's log-probability, by linearity of these methods in the output's gradient).

Captum makes one attribution call per target token. Here the ``T`` target tokens are ``T`` examples
of one call: every example is the prompt followed by the target (teacher forcing; a causal model's
output for token ``j`` does not see the later tokens), the forward returns all ``T`` log-probs per
row, and example ``j`` selects column ``j``. The examples do not interact, so the numbers are
Captum's, with ``T`` times fewer, larger forwards.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional, Union

import torch
from torch import Tensor

from ..interpretable_input import InterpretableInput, TextTokenInput
from ..layer.activation import LayerGradientXActivation
from ..layer.gradient_shap import LayerGradientShap
from ..layer.integrated_gradients import LayerIntegratedGradients
from ._base import BaseLLMAttribution
from .result import LLMAttributionResult
from .scoring import logits_of


@dataclass(frozen=True)
class _Forced:
    """The input and the target of one call, passed as a non-tensor forward argument."""

    inp: InterpretableInput
    target: Tensor


class LLMGradientAttribution(BaseLLMAttribution):
    """Gradient attribution of generated text on the embedding layer (Captum's ``LLMGradientAttribution``)."""

    SUPPORTED_METHODS = (LayerGradientShap, LayerGradientXActivation, LayerIntegratedGradients)
    SUPPORTED_INPUTS = (TextTokenInput,)

    def __init__(self, attr_method, tokenizer) -> None:
        super().__init__(attr_method, tokenizer)
        # rebuilt, not copied: a layer method may hold inner methods built on the original forward
        self.attr_method = type(attr_method)(self._forward_func, attr_method.layer, attr_method.device_ids,
                                             multiply_by_inputs=attr_method.multiplies_by_inputs)

    def _forward_func(self, perturbed: Tensor, query: _Forced) -> Tensor:
        """``(rows, T)``: ``log p(t_j | prompt row, t_<j)`` for every target position ``j``."""
        ids = query.inp.to_model_input(perturbed).to(self.device)
        n_prompt, target = ids.shape[1], query.target.to(self.device)
        full = torch.cat([ids, target[:-1].unsqueeze(0).expand(ids.shape[0], -1)], 1)
        logits = logits_of(self.model(input_ids=full, attention_mask=torch.ones_like(full)))
        log_probs = torch.log_softmax(logits[:, n_prompt - 1 :], dim=-1)  # (rows, T, vocab)
        return log_probs.gather(-1, target.view(1, -1, 1).expand(full.shape[0], -1, 1)).squeeze(-1)

    def attribute(
        self,
        inp: InterpretableInput,
        target: Union[str, Tensor, None] = None,
        gen_args: Optional[Dict[str, Any]] = None,
        **kwargs: Any,
    ) -> LLMAttributionResult:
        """Attribute each target token's log-probability to the prompt tokens.

        ``target``: text or token ids; None generates it with ``gen_args``. Other keyword
        arguments go to the wrapped method (``baselines``, ``n_steps``, ``n_samples``, ...).
        """
        target_tokens = self._get_target_tokens(inp, target, gen_args)
        n_target = target_tokens.numel()
        attr_inp = inp.to_tensor().to(self.device)
        n_prompt = attr_inp.shape[1] if inp.itp_mask is None else inp.inp_tensor.shape[1]
        attr = self.attr_method.attribute(
            attr_inp.expand(n_target, -1).contiguous(),  # one example per target token
            target=list(range(n_target)),
            additional_forward_args=(_Forced(inp, target_tokens),),
            **kwargs,
        )
        attr = attr.detach()[:, :n_prompt].sum(-1)  # (T, prompt length): the target positions dropped
        if inp.itp_mask is not None:
            keep = inp.itp_mask.to(attr.device).reshape(-1)
            attr = attr[:, keep]
        return LLMAttributionResult(
            seq_attr=attr.sum(0),
            token_attr=attr,
            input_tokens=inp.values,
            output_tokens=self._result_tokens(target_tokens),
            inp=inp,
        )
