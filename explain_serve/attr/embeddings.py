"""Embedding helpers for text models (Captum's ``configure_interpretable_embedding_layer`` API).

Explaining a text model means attributing to its embeddings, since token ids are not a continuous
input. Two equivalent routes:

* ``LayerIntegratedGradients(model, model.embedding)`` (preferred for serving: the model is not
  touched, the embedding layer's output is substituted per call by hooks);
* Captum's route, kept for compatibility: ``configure_interpretable_embedding_layer`` swaps the
  embedding module for an ``InterpretableEmbeddingBase`` that passes precomputed embeddings
  through, so any input-attribution method can take embeddings as inputs;
  ``remove_interpretable_embedding_layer`` swaps the original back. This route *does* modify the
  model between the two calls; ``interpretable_embedding(model, name)`` is the same as a context
  manager that always restores the model.
"""
from __future__ import annotations

import warnings
from contextlib import contextmanager
from functools import reduce
from typing import Iterator

import torch
from torch import nn

from .._core.errors import AttributionArgumentError


class InterpretableEmbeddingBase(nn.Module):
    """Stands in for an embedding layer: ``forward`` returns the embeddings it is given;
    ``indices_to_embeddings`` runs the wrapped layer on token ids."""

    def __init__(self, embedding: nn.Module, full_name: str) -> None:
        super().__init__()
        self.num_embeddings = getattr(embedding, "num_embeddings", None)
        self.embedding_dim = getattr(embedding, "embedding_dim", None)
        self.embedding = embedding
        self.full_name = full_name

    def forward(self, *inputs, **kwargs):
        if not inputs and not kwargs:
            raise AttributionArgumentError("InterpretableEmbeddingBase needs the embedding tensor as its first argument")
        return inputs[0] if inputs else next(iter(kwargs.values()))

    def indices_to_embeddings(self, *inputs, **kwargs):
        return self.embedding(*inputs, **kwargs)


class TokenReferenceBase:
    """Reference (baseline) token sequences made of one token id, e.g. the padding token."""

    def __init__(self, reference_token_idx: int = 0) -> None:
        self.reference_token_idx = reference_token_idx

    def generate_reference(self, sequence_length: int, device: torch.device) -> torch.Tensor:
        return torch.tensor([self.reference_token_idx] * sequence_length, device=device)


def _get(model: nn.Module, name: str) -> nn.Module:
    return reduce(getattr, name.split("."), model)


def _set(model: nn.Module, name: str, value: nn.Module) -> None:
    parts = name.split(".")
    setattr(reduce(getattr, parts[:-1], model), parts[-1], value)


def configure_interpretable_embedding_layer(model: nn.Module, embedding_layer_name: str = "embedding") -> InterpretableEmbeddingBase:
    """Replace ``model.<embedding_layer_name>`` by a pass-through taking embeddings; returns it."""
    layer = _get(model, embedding_layer_name)
    if isinstance(layer, InterpretableEmbeddingBase):
        raise AttributionArgumentError(f"InterpretableEmbeddingBase has already been configured for layer {embedding_layer_name}")
    warnings.warn(
        "The embedding layer is replaced by an interpretable embedding layer that takes embedding "
        "vectors as inputs; call remove_interpretable_embedding_layer to restore the model "
        "(or use LayerIntegratedGradients on the embedding layer, which leaves the model untouched).",
        stacklevel=2,
    )
    wrapper = InterpretableEmbeddingBase(layer, embedding_layer_name)
    _set(model, embedding_layer_name, wrapper)
    return wrapper


def remove_interpretable_embedding_layer(model: nn.Module, interpretable_emb: InterpretableEmbeddingBase) -> None:
    """Put the original embedding layer back."""
    _set(model, interpretable_emb.full_name, interpretable_emb.embedding)


@contextmanager
def interpretable_embedding(model: nn.Module, embedding_layer_name: str = "embedding") -> Iterator[InterpretableEmbeddingBase]:
    """``configure_interpretable_embedding_layer`` for the ``with`` block, restored whatever happens."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wrapper = configure_interpretable_embedding_layer(model, embedding_layer_name)
    try:
        yield wrapper
    finally:
        remove_interpretable_embedding_layer(model, wrapper)
