"""Modules that make a model's structure visible to LRP.

LRP redistributes relevance per module; an addition written as ``a + b`` in ``forward`` is not a
module, so its relevance is not split between the summands. Written as ``self.add(a, b)`` with
``Addition_Module`` (Captum's name; Captum's own class is recognised too), each summand receives
the share it contributed (the epsilon rule by default).
"""
from __future__ import annotations

from torch import Tensor, nn


class Addition_Module(nn.Module):
    """``x1 + x2`` as a module (for residual connections explained with LRP)."""

    def forward(self, x1: Tensor, x2: Tensor) -> Tensor:
        return x1 + x2
