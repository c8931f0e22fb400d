"""Interpretable inputs: what a perturbation method switches on and off, and how to build the model input.

An interpretable input ``x'`` is a binary presence vector over human-sized features (words, tokens,
image segments); ``to_model_input(x')`` maps it back to what the model consumes (the mapping
``x = h_x(x')`` of LIME, Ribeiro et al. 2016, and SHAP, Lundberg & Lee 2017). Captum's names and
conventions: ``to_tensor()`` is the all-present vector of shape ``(1, n_itp_features)``,
``values`` names the features, ``format_attr`` maps feature attributions back to raw elements.

``to_model_inputs`` (plural) maps a stack of perturbation rows at once, so the LLM wrappers can
evaluate them as one padded batch.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from .._core.errors import AttributionArgumentError


def _ordered_ids(ids: Sequence[Any]) -> List[Any]:
    """Distinct mask ids in a stable order: sorted when comparable, else first appearance."""
    unique = list(dict.fromkeys(ids))
    try:
        return sorted(unique)
    except TypeError:
        return unique


class InterpretableInput(ABC):
    """A model input together with its binary interpretable representation."""

    n_itp_features: int
    values: List[str]

    @abstractmethod
    def to_tensor(self) -> Tensor:
        """The unperturbed interpretable representation, shape ``(1, n_itp_features)``."""

    @abstractmethod
    def to_model_input(self, perturbed_tensor: Optional[Tensor] = None) -> Any:
        """The model input for one perturbation row (``None``: the original input)."""

    def to_model_inputs(self, perturbed: Tensor) -> List[Any]:
        """The model inputs of each row of ``perturbed`` (shape ``(n, n_itp_features)``)."""
        return [self.to_model_input(row.unsqueeze(0)) for row in perturbed]

    def format_attr(self, itp_attr: Tensor) -> Tensor:
        """Attributions of the interpretable features, mapped to raw features where they differ."""
        return itp_attr


class TextTemplateInput(InterpretableInput):
    """Text whose features are the values filled into a template (words, phrases, fields).

    ``template`` is a ``str.format`` string or a callable taking the values; ``values`` a list
    (positional) or a dict (named fields). An absent feature is replaced by its baseline:
    ``baselines`` is a list/dict of the same form, a callable returning one (e.g.
    ``ProductBaselines``, drawn once per perturbation), or None for the empty string. ``mask``
    groups values into one feature (same id = perturbed together).

    >>> inp = TextTemplateInput("{} feels {} right now", ["He", "sad"], baselines=["It", "fine"])
    >>> inp.to_model_input(torch.tensor([[0, 1]]))
    'It feels sad right now'
    """

    def __init__(
        self,
        template: Union[str, Callable[..., str]],
        values: Union[List[str], Dict[str, str]],
        baselines: Union[List[str], Dict[str, str], Callable[[], Any], None] = None,
        mask: Union[List[Any], Dict[str, Any], None] = None,
    ) -> None:
        if isinstance(values, dict):
            self.dict_keys: List[str] = list(values)
            values = [values[k] for k in self.dict_keys]
        elif isinstance(values, (list, tuple)):
            self.dict_keys = []
            values = list(values)
        else:
            raise TypeError(f"TextTemplateInput: values must be a list or a dict, got {type(values).__name__}")
        self.values = values
        self.n_features = len(values)
        if baselines is None:
            baselines = [""] * self.n_features
        elif not callable(baselines):
            baselines = self._as_list(baselines, "baselines")
        self.baselines = baselines
        self.mask = mask
        if mask is None:
            self.formatted_mask: Optional[List[int]] = None
            self.n_itp_features = self.n_features
        else:
            mask_list = self._as_list(mask, "mask")
            index = {mid: i for i, mid in enumerate(_ordered_ids(mask_list))}
            self.formatted_mask = [index[mid] for mid in mask_list]
            self.n_itp_features = len(index)
        self.template = template
        if isinstance(template, str):
            self.format_fn: Callable[..., str] = template.format
        elif callable(template):
            self.format_fn = template
        else:
            raise TypeError(f"TextTemplateInput: template must be a str or a callable, got {type(template).__name__}")

    def _as_list(self, obj: Any, name: str) -> List[Any]:
        if self.dict_keys:
            if not isinstance(obj, dict):
                raise TypeError(f"TextTemplateInput: values is a dict, so {name} must be a dict too, got {type(obj).__name__}")
            missing = [k for k in self.dict_keys if k not in obj]
            if missing:
                raise ValueError(f"TextTemplateInput: {name} lacks the keys {missing}")
            return [obj[k] for k in self.dict_keys]
        if not isinstance(obj, (list, tuple)):
            raise TypeError(f"TextTemplateInput: values is a list, so {name} must be a list too, got {type(obj).__name__}")
        if len(obj) != self.n_features:
            raise ValueError(f"TextTemplateInput: {name} has {len(obj)} entries for {self.n_features} values")
        return list(obj)

    def to_tensor(self) -> Tensor:
        return torch.ones(1, self.n_itp_features)

    def _current_baselines(self) -> List[str]:
        if callable(self.baselines):
            return self._as_list(self.baselines(), "the baselines callable's result")
        return self.baselines

    def to_model_input(self, perturbed_tensor: Optional[Tensor] = None) -> str:
        values = list(self.values)
        if perturbed_tensor is not None:
            row = perturbed_tensor.reshape(-1, perturbed_tensor.shape[-1])[0]
            baselines = self._current_baselines()
            for i in range(self.n_features):
                itp = self.formatted_mask[i] if self.formatted_mask is not None else i
                if not row[itp]:
                    values[i] = baselines[i]
        if self.dict_keys:
            return self.format_fn(**dict(zip(self.dict_keys, values)))
        return self.format_fn(*values)

    def format_attr(self, itp_attr: Tensor) -> Tensor:
        if self.formatted_mask is None:
            return itp_attr
        index = torch.tensor(self.formatted_mask, device=itp_attr.device)
        return itp_attr.index_select(-1, index)


class TextTokenInput(InterpretableInput):
    """Text whose features are its tokens; an absent token is replaced by the baseline token.

    ``baselines`` is a token id or a token string (default 0, commonly the unknown token);
    ``skip_tokens`` (ids or strings, e.g. the BOS token) stay in the model input but are not
    features.
    """

    def __init__(
        self,
        text: str,
        tokenizer: Any,
        baselines: Union[int, str] = 0,
        skip_tokens: Union[List[int], List[str], None] = None,
    ) -> None:
        self.inp_tensor: Tensor = tokenizer.encode(text, return_tensors="pt")
        self.itp_tensor: Tensor = self.inp_tensor
        self.itp_mask: Optional[Tensor] = None
        if skip_tokens:
            if isinstance(skip_tokens[0], str):
                skip_tokens = list(tokenizer.convert_tokens_to_ids(list(skip_tokens)))
            skip = torch.tensor(sorted(set(int(t) for t in skip_tokens)), dtype=self.inp_tensor.dtype)
            self.itp_mask = ~torch.isin(self.inp_tensor, skip)
            self.itp_tensor = self.inp_tensor[self.itp_mask].unsqueeze(0)
        self.skip_tokens = skip_tokens
        self.tokenizer = tokenizer
        self.values: List[str] = tokenizer.convert_ids_to_tokens(self.itp_tensor[0].tolist())
        self.n_itp_features = len(self.values)
        if isinstance(baselines, bool) or not isinstance(baselines, (int, str)):
            raise TypeError(f"TextTokenInput: baselines must be a token id or a token string, got {baselines!r}")
        self.baselines: int = baselines if isinstance(baselines, int) else tokenizer.convert_tokens_to_ids([baselines])[0]

    def to_tensor(self) -> Tensor:
        return torch.ones_like(self.itp_tensor)

    def to_model_input(self, perturbed_tensor: Optional[Tensor] = None) -> Tensor:
        """Token ids, shape ``(n, length)``: one row per perturbation row (batches are native)."""
        if perturbed_tensor is None:
            return self.inp_tensor
        device = perturbed_tensor.device
        n = perturbed_tensor.shape[0]
        itp = self.itp_tensor.to(device).expand(n, -1)
        itp = torch.where(perturbed_tensor != 1, torch.as_tensor(self.baselines, device=device), itp)
        if self.itp_mask is None:
            return itp
        out = self.inp_tensor.to(device).expand(n, -1).clone()
        out[self.itp_mask.to(device).expand(n, -1)] = itp.reshape(-1)
        return out

    def to_model_inputs(self, perturbed: Tensor) -> List[Any]:
        return list(self.to_model_input(perturbed).unsqueeze(1))


class ImageMaskInput(InterpretableInput):
    """An image whose features are segments; an absent segment is painted with ``baseline`` (RGB).

    ``mask`` (height x width ids) partitions the pixels, or ``mask_list`` gives one boolean mask
    per feature (segments may overlap); neither: the whole image is one feature.
    ``processor_fn`` turns the (perturbed) PIL image into the model input, e.g. a multimodal
    processor producing token ids and pixel values.
    """

    def __init__(
        self,
        image: Any,
        mask: Optional[Tensor] = None,
        mask_list: Optional[List[Tensor]] = None,
        baseline: Tuple[int, int, int] = (255, 255, 255),
        processor_fn: Callable[[Any], Any] = lambda x: x,
    ) -> None:
        self.image = image
        self.baseline = baseline
        self.processor_fn = processor_fn
        shape = (image.size[1], image.size[0])
        if mask_list is not None:
            for i, m in enumerate(mask_list):
                if tuple(m.shape) != shape:
                    raise AttributionArgumentError(f"ImageMaskInput: mask_list[{i}] has shape {tuple(m.shape)}, the image is {shape}")
            ids: List[int] = list(range(len(mask_list)))
            mask = torch.empty(0)
        else:
            if mask is None:
                mask = torch.zeros(shape, dtype=torch.int32)
            elif tuple(mask.shape) != shape:
                raise AttributionArgumentError(f"ImageMaskInput: mask has shape {tuple(mask.shape)}, the image is {shape}")
            ids = [int(i) for i in torch.unique(mask).tolist()]
            mask_list = []
        self.mask = mask
        self.mask_list = mask_list
        self.mask_id_to_idx: Dict[int, int] = {mid: i for i, mid in enumerate(ids)}
        self.n_itp_features = len(ids)
        self.values = [f"image_feature_{mid}" for mid in ids]
        self.original_model_inputs = processor_fn(image)

    def get_mask_list(self) -> List[Tensor]:
        """One boolean mask per feature."""
        return self.mask_list or [self.mask == mid for mid in self.mask_id_to_idx]

    def to_tensor(self) -> Tensor:
        return torch.ones(1, self.n_itp_features)

    def to_model_input(self, perturbed_tensor: Optional[Tensor] = None) -> Any:
        if perturbed_tensor is None:
            return self.original_model_inputs
        import numpy as np
        from PIL import Image

        row = perturbed_tensor.reshape(-1, perturbed_tensor.shape[-1])[0]
        pixels = np.array(self.image)
        for idx, m in enumerate(self.get_mask_list()):
            if row[idx] == 0:
                pixels[m.bool().numpy()] = self.baseline
        return self.processor_fn(Image.fromarray(pixels.astype("uint8")))

    def format_pixel_attr(self, itp_attr: Tensor) -> Tensor:
        """Per-pixel attributions ``(*output_dims, height, width)``; overlapping segments add up."""
        masks = torch.stack([m.bool() for m in self.get_mask_list()]).to(itp_attr.device, itp_attr.dtype)
        return torch.einsum("...f,fhw->...hw", itp_attr, masks)
