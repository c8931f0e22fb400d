"""``LLMGradientAttribution``: gradient methods on the embedding layer explaining each target token.

For target token ``j`` the forward is the prompt followed by the first ``j`` target tokens and its
output the log-probability of token ``j`` at the last position; the wrapped layer method
(LayerIntegratedGradients, LayerGradientXActivation, LayerGradientShap on the input embeddings)
attributes it to the embedding of every position, summed over the embedding dimension. Rows of
``token_attr`` are the output tokens, ``seq_attr`` their sum (the attribution of the sequence's
log-probability, by linearity of these methods in the output's gradient).
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
class _Step:
    """The input and the target position explained by one call of the wrapped method."""

    inp: InterpretableInput
    target: Tensor
    index: int


class LLMGradientAttribution(BaseLLMAttribution):
    """Gradient attribution of generated text on the embedding layer (Captum's ``LLMGradientAttribution``)."""

    SUPPORTED_METHODS = (LayerGradientShap, LayerGradientXActivation, LayerIntegratedGradients)
    SUPPORTED_INPUTS = (TextTokenInput,)

    def __init__(self, attr_method, tokenizer) -> None:
        super().__init__(attr_method, tokenizer)
        # rebuilt, not copied: a layer method may hold inner methods built on the original forward
        self.attr_method = type(attr_method)(self._forward_func, attr_method.layer, attr_method.device_ids,
                                             multiply_by_inputs=attr_method.multiplies_by_inputs)

    def _forward_func(self, perturbed: Tensor, step: _Step) -> Tensor:
        ids = step.inp.to_model_input(perturbed).to(self.device)
        if step.index:
            prefix = step.target[: step.index].to(self.device).unsqueeze(0).expand(ids.shape[0], -1)
            ids = torch.cat([ids, prefix], 1)
        logits = logits_of(self.model(input_ids=ids, attention_mask=torch.ones_like(ids)))
        return torch.log_softmax(logits[:, -1], dim=-1)[:, step.target[step.index]]

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
        attr_inp = inp.to_tensor().to(self.device)
        n_prompt = attr_inp.shape[1] if inp.itp_mask is None else inp.inp_tensor.shape[1]
        rows = []
        for j in range(target_tokens.numel()):
            attr = self.attr_method.attribute(attr_inp, additional_forward_args=(_Step(inp, target_tokens, j),), **kwargs)
            rows.append(attr.detach()[:, :n_prompt].sum(-1))  # (1, prompt length): drop the target prefix
        attr = torch.cat(rows, 0)
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
