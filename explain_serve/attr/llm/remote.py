"""Attribution of a remotely hosted LLM that reports prompt log-probabilities (e.g. vLLM).

``RemoteLLMProvider`` is the interface: ``generate(prompt, **gen_args) -> text`` and
``get_logprobs(input_prompt, target_str, tokenizer) -> one log-prob per target token``.
``RemoteLLMAttribution`` is ``LLMAttribution`` whose scoring asks the provider, one prompt per
perturbation (the provider decides how requests are batched). ``VLLMProvider`` talks to vLLM's
OpenAI-compatible completions API and needs the optional ``openai`` client
(``pip install explain-serve[remote]``).
"""
from __future__ import annotations

import logging
import os
from abc import ABC, abstractmethod
from typing import Any, Dict, List, Optional, Union

import torch
from torch import Tensor

from ..interpretable_input import InterpretableInput
from ._base import DEFAULT_GEN_ARGS
from .perturbation import LLMAttribution, _Query

logger = logging.getLogger(__name__)


class RemoteLLMProvider(ABC):
    """A remote LLM that generates text and scores a continuation token by token."""

    api_url: str

    @abstractmethod
    def generate(self, prompt: str, **gen_args: Any) -> str:
        """The generated continuation of ``prompt``."""

    @abstractmethod
    def get_logprobs(self, input_prompt: str, target_str: str, tokenizer: Any = None) -> List[float]:
        """``log p(t_j | input_prompt, t_<j)`` for each token ``t_j`` of ``target_str``."""


class _NoModel:
    """Stands in for the model: the remote wrapper never runs a local forward."""

    device = torch.device("cpu")

    def __call__(self, *args: Any, **kwargs: Any) -> int:
        return 0


class RemoteLLMAttribution(LLMAttribution):
    """``LLMAttribution`` scoring perturbed prompts with a ``RemoteLLMProvider``.

    ``attr_method`` is built on any placeholder forward (``RemoteLLMAttribution.placeholder_model``
    is provided), since the provider does the scoring.
    """

    placeholder_model = _NoModel()

    def __init__(self, attr_method, tokenizer, provider: RemoteLLMProvider, attr_target: str = "log_prob") -> None:
        if not isinstance(provider, RemoteLLMProvider):
            raise TypeError(f"provider must implement RemoteLLMProvider, got {type(provider).__name__}")
        super().__init__(attr_method, tokenizer, attr_target=attr_target)
        self.provider = provider

    def _prompt_text(self, model_input: Union[str, Tensor]) -> str:
        if isinstance(model_input, Tensor):
            return self.tokenizer.decode(model_input.reshape(-1))
        if isinstance(model_input, str):
            return model_input
        raise TypeError(f"a remote LLM takes text or token ids, got {type(model_input).__name__}")

    def _generate(self, inp: InterpretableInput, gen_args: Optional[Dict[str, Any]]) -> Tensor:
        text = self.provider.generate(self._prompt_text(inp.to_model_input()), **dict(gen_args or DEFAULT_GEN_ARGS))
        return torch.tensor(self.tokenizer.encode(text, add_special_tokens=False), dtype=torch.long)

    def _token_log_probs(self, perturbed: Tensor, query: _Query) -> Tensor:
        target_str = self.tokenizer.decode(query.target)
        rows = []
        for model_input in query.inp.to_model_inputs(perturbed.reshape(-1, perturbed.shape[-1])):
            values = self.provider.get_logprobs(
                input_prompt=self._prompt_text(model_input), target_str=target_str, tokenizer=self.tokenizer
            )
            if len(values) != query.target.numel():
                raise ValueError(
                    f"the provider returned {len(values)} log-probabilities for a target of {query.target.numel()} tokens"
                )
            rows.append(torch.tensor(values, dtype=torch.float32))
        return torch.stack(rows)


class VLLMProvider(RemoteLLMProvider):
    """A vLLM server's OpenAI-compatible API (``api_url`` like ``http://host:8000/v1``).

    ``model_name`` None uses the server's first model. The API key comes from ``OPENAI_API_KEY``
    (vLLM accepts ``"EMPTY"``, the default).
    """

    def __init__(self, api_url: str, model_name: Optional[str] = None) -> None:
        try:
            from openai import OpenAI
        except ImportError as e:
            raise ImportError(
                "VLLMProvider needs the 'openai' client: pip install 'explain-serve[remote]' (or pip install openai)"
            ) from e
        if not isinstance(api_url, str) or not api_url.strip():
            raise ValueError("VLLMProvider needs the server's api_url, e.g. http://localhost:8000/v1")
        self.api_url = api_url
        self.client = OpenAI(base_url=api_url, api_key=os.getenv("OPENAI_API_KEY", "EMPTY"))
        if model_name is None:
            models = self.client.models.list().data
            if not models:
                raise ValueError(f"the vLLM server at {api_url} lists no models")
            model_name = models[0].id
            logger.info("VLLMProvider: no model_name given, using the server's first model %s", model_name)
        self.model_name = model_name

    def generate(self, prompt: str, **gen_args: Any) -> str:
        """Completion text; ``max_new_tokens`` is accepted for ``max_tokens``, ``do_sample`` dropped."""
        args = {k: v for k, v in gen_args.items() if k != "do_sample" and v is not None}
        if "max_tokens" not in args:
            args["max_tokens"] = args.pop("max_new_tokens", 25)
        args.pop("max_new_tokens", None)
        response = self.client.completions.create(model=self.model_name, prompt=prompt, **args)
        if not getattr(response, "choices", None):
            raise ValueError("the vLLM response has no choices")
        return response.choices[0].text

    def get_logprobs(self, input_prompt: str, target_str: str, tokenizer: Any = None) -> List[float]:
        """Prompt log-probs of the target's tokens (vLLM's ``prompt_logprobs`` on prompt + target)."""
        if tokenizer is None:
            raise ValueError("VLLMProvider.get_logprobs needs the model's tokenizer to count the target tokens")
        if not target_str:
            raise ValueError("the target text is empty")
        n = len(tokenizer.encode(target_str, add_special_tokens=False))
        response = self.client.completions.create(
            model=self.model_name, prompt=input_prompt + target_str, temperature=0.0, max_tokens=1,
            extra_body={"prompt_logprobs": 0},
        )
        choices = getattr(response, "choices", None)
        per_token = getattr(choices[0], "prompt_logprobs", None) if choices else None
        if not per_token:
            raise ValueError("the vLLM response has no prompt_logprobs (is the server vLLM?)")
        out = []
        for entry in per_token[-n:]:
            if not entry:
                raise ValueError("the vLLM response has an empty prompt_logprobs entry")
            first = next(iter(entry.values()))
            out.append(float(first["logprob"] if isinstance(first, dict) else first.logprob))
        if len(out) != n:
            raise ValueError(f"vLLM returned {len(out)} prompt log-probabilities for {n} target tokens")
        return out
