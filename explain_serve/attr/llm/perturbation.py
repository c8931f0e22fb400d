"""``LLMAttribution``: perturbation methods explaining a causal LM's log-probability of a target text.

The wrapped method (FeatureAblation, ShapleyValueSampling, ShapleyValues, Lime, KernelShap)
perturbs the interpretable input's presence vector; the scoring function turns every perturbation
row of a batch into a prompt and returns, per row, the target's total log-probability followed by
each target token's (methods without per-token results get the total only). The rows a method
evaluates together go through the model as one right-padded batch, and the target log-probs come
from one teacher-forced forward (``scoring.target_log_probs``) instead of one forward per row and
per target token.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Union

import torch
from torch import Tensor

from ..._core.errors import AttributionArgumentError
from ..feature_ablation import FeatureAblation
from ..interpretable_input import ImageMaskInput, InterpretableInput, TextTemplateInput, TextTokenInput
from ..kernel_shap import KernelShap
from ..lime import Lime
from ..shapley import ShapleyValues, ShapleyValueSampling
from ._base import BaseLLMAttribution
from .result import LLMAttributionResult
from .scoring import logits_of, target_log_probs


@dataclass(frozen=True)
class _Query:
    """One call's fixed data, passed to the scoring function as a non-tensor forward argument."""

    inp: InterpretableInput
    target: Tensor
    step_by_step: bool
    inspect: Optional[Callable[[str, str, List[float]], None]]


class LLMAttribution(BaseLLMAttribution):
    """Perturbation attribution of generated text (Captum's ``LLMAttribution``).

    ``attr_target``: ``"log_prob"`` (default) or ``"prob"``. ``batch_size`` bounds the sequences
    per model forward (default: as many as keep the logits within 256 MiB); the wrapped method's
    ``perturbations_per_eval`` decides how many perturbations reach the scoring function together
    (default: all of a chunk).
    """

    SUPPORTED_METHODS = (FeatureAblation, ShapleyValueSampling, ShapleyValues, Lime, KernelShap)
    SUPPORTED_PER_TOKEN_ATTR_METHODS = (FeatureAblation, ShapleyValueSampling, ShapleyValues)
    SUPPORTED_INPUTS = (TextTemplateInput, TextTokenInput, ImageMaskInput)

    def __init__(self, attr_method, tokenizer, attr_target: str = "log_prob", batch_size: Optional[int] = None) -> None:
        super().__init__(attr_method, tokenizer)
        if attr_target not in ("log_prob", "prob"):
            raise AttributionArgumentError(f"attr_target must be 'log_prob' or 'prob', got {attr_target!r}")
        if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
            raise ValueError(f"batch_size must be None or an integer >= 1, got {batch_size!r}")
        self.attr_target = attr_target
        self.batch_size = batch_size
        self.include_per_token_attr = isinstance(attr_method, self.SUPPORTED_PER_TOKEN_ATTR_METHODS)
        self.attr_method.forward_func = self._forward_func

    # scoring ------------------------------------------------------------------------------
    def _prompt_ids(self, model_input: Any) -> Tensor:
        return self._format_model_input(model_input)["input_ids"].reshape(-1)

    def _token_log_probs(self, perturbed: Tensor, query: _Query) -> Tensor:
        """``(n, T)`` target log-probs, one row per perturbation row."""
        model_inputs = query.inp.to_model_inputs(perturbed.reshape(-1, perturbed.shape[-1]))
        if all(isinstance(m, (str, Tensor)) for m in model_inputs):
            prompts = [self._prompt_ids(m) for m in model_inputs]
            return target_log_probs(self.model, prompts, query.target, self._pad_id,
                                    step_by_step=query.step_by_step, batch_size=self.batch_size)
        # processor outputs (e.g. pixel values next to the ids): one teacher-forced forward per row
        rows = []
        target = query.target
        with torch.no_grad():
            for m in model_inputs:
                kw = self._format_model_input(m)
                ids = kw["input_ids"]
                full = torch.cat([ids, target.view(1, -1).to(ids.device)], 1)
                kw.update(input_ids=full, attention_mask=torch.ones_like(full))
                logits = logits_of(self.model(**kw))
                lp = torch.log_softmax(logits[0, ids.shape[1] - 1 : full.shape[1] - 1].float(), -1)
                rows.append(lp.gather(-1, target.view(-1, 1).to(lp.device)).squeeze(-1))
        return torch.stack(rows)

    def _forward_func(self, perturbed: Tensor, query: _Query) -> Tensor:
        token_lp = self._token_log_probs(perturbed, query)  # (n, T)
        total = token_lp.sum(1, keepdim=True)
        out = torch.cat([total, token_lp], 1) if self.include_per_token_attr else total.squeeze(1)
        if self.attr_target == "prob":
            out = out.exp()
        if query.inspect is not None:
            response = self.tokenizer.decode(query.target)
            rows = perturbed.reshape(-1, perturbed.shape[-1])
            for row, values in zip(rows, out.reshape(rows.shape[0], -1)):
                model_input = query.inp.to_model_input(row.unsqueeze(0))
                prompt = model_input if isinstance(model_input, str) else self.tokenizer.decode(self._prompt_ids(model_input))
                query.inspect(prompt, response, values.exp().tolist() if self.attr_target == "log_prob" else values.tolist())
        return out

    # public -------------------------------------------------------------------------------
    def attribute(
        self,
        inp: InterpretableInput,
        target: Union[str, Tensor, None] = None,
        num_trials: int = 1,
        gen_args: Optional[Dict[str, Any]] = None,
        use_cached_outputs: bool = True,
        _inspect_forward: Optional[Callable[[str, str, List[float]], None]] = None,
        forward_in_tokens: bool = True,
        **kwargs: Any,
    ) -> LLMAttributionResult:
        """Attribute the target's log-probability (total and per token) to ``inp``'s features.

        ``target``: text or token ids; None generates it with ``gen_args`` (default greedy, 25
        new tokens). ``num_trials`` averages repeated runs (for sampled methods and
        ``ProductBaselines``). ``use_cached_outputs=True`` (default) or
        ``forward_in_tokens=False`` scores with one teacher-forced forward per batch;
        ``use_cached_outputs=False`` with ``forward_in_tokens=True`` re-runs the growing prefix
        once per target token (same numbers, slower). Other keyword arguments go to the wrapped
        method's ``attribute`` (``n_samples``, ``perturbations_per_eval``, ...).
        """
        if not isinstance(num_trials, int) or num_trials < 1:
            raise ValueError(f"num_trials must be an integer >= 1, got {num_trials!r}")
        target_tokens = self._get_target_tokens(inp, target, gen_args)
        query = _Query(inp, target_tokens, bool(forward_in_tokens and not use_cached_outputs), _inspect_forward)
        rows = 1 + target_tokens.numel() if self.include_per_token_attr else 1
        total = None
        for _ in range(num_trials):
            cur = self.attr_method.attribute(
                inp.to_tensor().to(self.device), additional_forward_args=(query,), **kwargs
            )
            cur = cur.reshape(rows, inp.n_itp_features)
            total = cur if total is None else total + cur
        attr = inp.format_attr(total / num_trials)
        return LLMAttributionResult(
            seq_attr=attr[0],
            token_attr=attr[1:] if self.include_per_token_attr else None,
            input_tokens=inp.values,
            output_tokens=self._result_tokens(target_tokens),
            inp=inp,
        )
