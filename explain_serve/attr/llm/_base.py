"""What the LLM wrappers share: the wrapped method check, the target tokens, readable tokens.

A wrapper takes an attribution method built on a Hugging Face style causal LM (``model(input_ids,
attention_mask)`` returning ``.logits``, ``model.generate`` when no target is given) and a
tokenizer; it never modifies the model or the wrapped method (it works on a shallow copy whose
``forward_func`` is the wrapper's scoring function).
"""
from __future__ import annotations

from collections.abc import Mapping
from copy import copy
from typing import Any, Callable, Dict, List, Optional, Tuple, Type, Union

import torch
from torch import Tensor

from ..._core.errors import AttributionArgumentError
from .._base import Attribution
from ..interpretable_input import InterpretableInput

DEFAULT_GEN_ARGS: Dict[str, Any] = {"max_new_tokens": 25, "do_sample": False, "temperature": None, "top_p": None}


def pretty_tokens(ids: Tensor, tokenizer) -> List[str]:
    """Readable output tokens: the text each id adds to the decoded prefix (no ``Ġ``/``▁`` marks).

    Newlines are shown as ``\\n`` and surrounding spaces stripped, as in Captum's result.
    """
    ids = [int(i) for i in torch.as_tensor(ids).reshape(-1).tolist()]
    out, previous = [], ""
    for k in range(len(ids)):
        text = tokenizer.decode(ids[: k + 1])
        piece = text[len(previous):] if text.startswith(previous) else tokenizer.decode(ids[k : k + 1])
        out.append(piece.replace("\n", "\\n").strip())
        previous = text
    return out


def model_device(model) -> torch.device:
    device = getattr(model, "device", None)
    if isinstance(device, torch.device):
        return device
    try:
        return next(model.parameters()).device
    except (AttributeError, StopIteration):
        return torch.device("cpu")


class BaseLLMAttribution(Attribution):
    """An attribution method over a causal LM, explaining the log-probabilities of a target text."""

    SUPPORTED_METHODS: Tuple[Type[Attribution], ...] = ()
    SUPPORTED_INPUTS: Tuple[Type[InterpretableInput], ...] = ()

    def __init__(self, attr_method: Attribution, tokenizer) -> None:
        if not isinstance(attr_method, self.SUPPORTED_METHODS):
            names = ", ".join(m.__name__ for m in self.SUPPORTED_METHODS)
            raise TypeError(f"{type(self).__name__} wraps one of {names}; got {type(attr_method).__name__}")
        super().__init__(attr_method.forward_func)
        self.model = attr_method.forward_func
        self.tokenizer = tokenizer
        self.device = model_device(self.model)
        self.attr_method = copy(attr_method)

    # inputs -------------------------------------------------------------------------------
    def _check_input(self, inp: Any) -> None:
        if not isinstance(inp, self.SUPPORTED_INPUTS):
            names = ", ".join(t.__name__ for t in self.SUPPORTED_INPUTS)
            raise TypeError(f"{type(self).__name__} explains one of {names}; got {type(inp).__name__}")

    def _format_model_input(self, model_input: Union[str, Tensor, Mapping]) -> Dict[str, Any]:
        """A model input as keyword arguments: text is tokenized, a tensor is ``input_ids``."""
        if isinstance(model_input, str):
            model_input = self.tokenizer.encode(model_input, return_tensors="pt")
        if isinstance(model_input, Tensor):
            return {"input_ids": model_input.reshape(1, -1).to(self.device)}
        if isinstance(model_input, Mapping):
            return dict(model_input)
        raise TypeError(f"cannot feed a {type(model_input).__name__} to the model: expected text, token ids or a mapping")

    @property
    def _pad_id(self) -> int:
        for name in ("pad_token_id", "eos_token_id", "unk_token_id"):
            value = getattr(self.tokenizer, name, None)
            if isinstance(value, int):
                return value
        return 0

    # target -------------------------------------------------------------------------------
    def _generate(self, inp: InterpretableInput, gen_args: Optional[Dict[str, Any]]) -> Tensor:
        generate = getattr(self.model, "generate", None)
        if not callable(generate):
            raise AttributionArgumentError("the model has no generate(): give the target text to explain")
        model_inp = self._format_model_input(inp.to_model_input())
        if "attention_mask" not in model_inp:
            model_inp["attention_mask"] = torch.ones_like(model_inp["input_ids"])
        args = dict(gen_args or DEFAULT_GEN_ARGS)
        if "pad_token_id" not in args and getattr(self.tokenizer, "pad_token_id", None) is None:
            args["pad_token_id"] = self._pad_id
        with torch.no_grad():
            out = generate(**model_inp, **args)
        return out[0, model_inp["input_ids"].shape[1]:]

    def _get_target_tokens(self, inp: InterpretableInput, target: Union[str, Tensor, None] = None,
                           gen_args: Optional[Dict[str, Any]] = None) -> Tensor:
        """The target token ids: encoded ``target`` (no special tokens), or the model's continuation."""
        self._check_input(inp)
        if target is None:
            tokens = self._generate(inp, gen_args)
        else:
            if gen_args is not None:
                raise AttributionArgumentError("gen_args is only used to generate the target; pass gen_args=None with a target")
            if isinstance(target, str):
                tokens = torch.tensor(self.tokenizer.encode(target, add_special_tokens=False), dtype=torch.long)
            elif isinstance(target, Tensor):
                tokens = target.reshape(-1).long()
            else:
                raise TypeError(f"target must be a str or a tensor of token ids, got {type(target).__name__}")
        if tokens.numel() == 0:
            raise ValueError("the target has no tokens: give a non-empty target (or let the model generate one)")
        return tokens.to(self.device)

    def _result_tokens(self, target_tokens: Tensor) -> List[str]:
        return pretty_tokens(target_tokens, self.tokenizer)

    def attribute_future(self) -> Callable:
        raise NotImplementedError(f"attribute_future is not implemented for {type(self).__name__}")
