"""Layer activations through the hook owner: capture a layer's output (or inputs) during a forward.

Captured tensors stay in the autograd graph so gradients can be taken with respect to them; they
live in the session's per-call scratch and are dropped when the call ends.
"""
from __future__ import annotations

from typing import Any, Tuple

from torch import Tensor, nn

from .hooks import HookSession


def capture(session: HookSession, layer: nn.Module, to_input: bool = False, key: Any = None) -> Any:
    """Record, per call of ``layer``, its inputs or outputs (as a tuple) in ``scratch[key]``."""
    key = key if key is not None else ("capture", id(layer), to_input)

    if to_input:
        def pre(scratch, module, args):
            scratch.setdefault(key, []).append(tuple(a for a in args if isinstance(a, Tensor)))
        session.forward_pre_hook(layer, pre)
    else:
        def post(scratch, module, args, output):
            scratch.setdefault(key, []).append(output if isinstance(output, tuple) else (output,))
        session.forward_hook(layer, post)
    return key


def captured(scratch: dict, key: Any) -> Tuple[Tensor, ...]:
    """The first captured call of the layer (it must have run in the forward)."""
    calls = scratch.get(key)
    if not calls:
        raise RuntimeError("the layer was not called in the forward pass; is it part of forward_func?")
    return calls[0]
