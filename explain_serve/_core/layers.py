"""Layers through the hook owner: capture a layer's output (or inputs), or substitute values for them.

Taps (``tap_around``, ``tapped``) are the one mechanism of the layer and neuron methods (and
Grad-CAM): per call, a tap captures the layer's
tensors as graph nodes (``layer_eval``, ``layer_gradients``), substitutes given values so the layer
acts as the input of the rest of the model (``LayerAsInput``), or stops the forward right after the
layer (neuron methods). Everything lives in the session's per-call scratch, dropped when the
call ends.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from .gradients import check_scalar_per_example
from .hooks import HookSession
from .inputs import run_forward
from .targets import TargetType
from .errors import AttributionArgumentError, check_index


class StopForward(BaseException):
    """Raised by a tap armed with ``stop=True`` once it has captured the layer: nothing after the
    layer is needed (neuron methods), so the rest of the forward is skipped. A BaseException, so
    that a model's own ``except Exception`` blocks do not swallow it."""


class Tap:
    """Per-call plan of one tap: ``values`` to substitute (None: capture), what the layer produced."""

    __slots__ = ("values", "clone", "stop", "seen")

    def __init__(self, values: Optional[Tuple[Tensor, ...]] = None, clone: bool = False, stop: bool = False) -> None:
        self.values = values
        self.clone = clone
        self.stop = stop
        self.seen: List[Tuple[Tensor, ...]] = []


def _tap_key(layer: nn.Module, to_input: bool) -> Any:
    return ("tap", id(layer), bool(to_input))


def tap(session: HookSession, layer: nn.Module, to_input: bool) -> Any:
    """Register a tap on ``layer``'s output (or tensor inputs); returns its scratch key."""
    key = _tap_key(layer, to_input)

    def exchange(scratch, current: Tuple[Tensor, ...]) -> Optional[Tuple[Tensor, ...]]:
        plan = scratch.get(key)
        if plan is None:
            return None
        if plan.values is not None:
            if len(plan.values) != len(current):
                raise AttributionArgumentError(f"layer has {len(current)} tensors, got {len(plan.values)} values to substitute")
            plan.seen.append(plan.values)
            return plan.values
        if plan.stop:
            plan.seen.append(current)
            raise StopForward
        if not plan.clone:
            # the forward goes on with copies: an in-place module after the layer
            # (ReLU(inplace=True)) must not change what was captured
            plan.seen.append(current)
            return tuple(t.clone() for t in current)
        # gradients will be taken w.r.t. these tensors: make sure they are graph nodes (a frozen
        # model gives tensors that do not require grad), and let the forward go on with clones
        current = tuple(
            t if t.requires_grad or not t.is_floating_point() else t.detach().requires_grad_(True) for t in current
        )
        plan.seen.append(current)
        return tuple(t.clone() for t in current)

    if to_input:
        def pre(scratch, module, args):
            new = exchange(scratch, tuple(a for a in args if isinstance(a, Tensor)))
            if new is None:
                return None
            it = iter(new)
            return tuple(next(it) if isinstance(a, Tensor) else a for a in args)
        session.forward_pre_hook(layer, pre)
    else:
        def post(scratch, module, args, output):
            new = exchange(scratch, output if isinstance(output, tuple) else (output,))
            if new is None:
                return None
            return tuple(new) if isinstance(output, tuple) else new[0]
        session.forward_hook(layer, post)
    return key


def tap_around(session: HookSession, layers: Sequence[nn.Module], install_inner: Callable[[], Any] = lambda: None) -> None:
    """Taps on the inputs and outputs of every layer (the side is chosen per call), around the
    hooks that ``install_inner`` registers (a wrapped method's gradient overrides).

    Input taps go first and output taps last, so that a tapped layer's input and output are seen
    as the rest of the model sees them: the gradient w.r.t. a tapped input is what the (possibly
    overridden) layer passes back, the gradient w.r.t. a tapped output is what reaches it.
    """
    for layer in layers:
        tap(session, layer, True)
    install_inner()
    for layer in layers:
        tap(session, layer, False)


@contextmanager
def tapped(scratch: dict, layers: Sequence[nn.Module], to_input: bool, values=None, clone: bool = False, stop: bool = False):
    """Arm the taps of ``layers`` for the enclosed forward(s); yields the plans (one per layer).

    ``values``: one tuple of tensors per layer to substitute, or None to capture.
    """
    keys = [_tap_key(layer, to_input) for layer in layers]
    plans = [Tap(None if v is None else tuple(v), clone, stop) for v in (values or [None] * len(keys))]
    for key, plan in zip(keys, plans):
        scratch[key] = plan
    try:
        yield plans
    finally:
        for key in keys:
            scratch.pop(key, None)


def seen(plan: Tap) -> Tuple[Tensor, ...]:
    """The layer's tensors in the last call of the forward (as Captum keeps the last call)."""
    if not plan.seen:
        raise RuntimeError("the layer was not called in the forward pass; is it part of forward_func?")
    return plan.seen[-1]


def layer_eval(
    scratch: dict,
    layers: Sequence[nn.Module],
    to_input: bool,
    forward_func: Callable,
    inputs: Sequence[Any],
    target: TargetType = None,
    args: Optional[Tuple[Any, ...]] = None,
    with_grad: bool = False,
) -> Tuple[Tensor, List[Tuple[Tensor, ...]]]:
    """Run the forward and return (selected output, each layer's tensors).

    With ``with_grad`` the layer tensors are graph nodes (gradients can be taken w.r.t. them).
    """
    with torch.set_grad_enabled(with_grad or torch.is_grad_enabled()):
        with tapped(scratch, layers, to_input, clone=with_grad) as plans:
            out = run_forward(forward_func, inputs, target, args)
            acts = [seen(p) for p in plans]
    return out, acts


def layer_gradients(
    scratch: dict,
    layers: Sequence[nn.Module],
    to_input: bool,
    forward_func: Callable,
    inputs: Sequence[Any],
    target: TargetType = None,
    args: Optional[Tuple[Any, ...]] = None,
    grad_kwargs: Optional[dict] = None,
    outputs: Optional[list] = None,
) -> Tuple[List[Tuple[Tensor, ...]], List[Tuple[Tensor, ...]]]:
    """Gradients of the selected output (summed over examples) w.r.t. each layer's tensors, and the tensors.

    The one "gradient w.r.t. a layer" helper of the layer and neuron methods. The selected output
    (detached) is appended to ``outputs`` when a list is given.
    """
    with torch.enable_grad():
        out, acts = layer_eval(scratch, layers, to_input, forward_func, inputs, target, args, with_grad=True)
        check_scalar_per_example(out)
        if outputs is not None:
            outputs.append(out.detach())
        flat = [t for a in acts for t in a]
        grads = torch.autograd.grad(out.sum(), flat, **{"allow_unused": True, **(grad_kwargs or {})})
    grads = [torch.zeros_like(t) if g is None else g for g, t in zip(grads, flat)]
    return _unflatten(grads, acts), [tuple(t.detach() for t in a) for a in acts]


def _unflatten(flat: Sequence[Tensor], like: Sequence[Tuple[Tensor, ...]]) -> List[Tuple[Tensor, ...]]:
    out, i = [], 0
    for a in like:
        out.append(tuple(flat[i:i + len(a)]))
        i += len(a)
    return out


class LayerAsInput:
    """``forward_func`` with the given layers' tensors as its leading arguments.

    ``f(*layer_tensors, *inputs, *args)`` runs ``forward_func(*inputs, *args)`` with each layer's
    output (or input) replaced by the given tensors: the primary methods then attribute to the
    layer exactly as they attribute to inputs (layer integrated gradients, layer ablation).
    ``sizes`` gives the number of tensors of each layer; the taps must be registered and active.
    """

    def __init__(self, scratch: dict, forward_func: Callable, layers: Sequence[nn.Module], to_input: bool, sizes: Sequence[int]):
        self.scratch, self.forward_func, self.layers = scratch, forward_func, list(layers)
        self.to_input, self.sizes = to_input, list(sizes)

    def __call__(self, *xs):
        n = sum(self.sizes)
        values = _unflatten(list(xs[:n]), [(None,) * k for k in self.sizes])
        # clones: the rest of the model may modify the layer's output in place
        values = [tuple(v.clone() for v in vs) for vs in values]
        with tapped(self.scratch, self.layers, self.to_input, values=values):
            return self.forward_func(*xs[n:])


def flatten_layers(per_layer: Sequence[Tuple[Tensor, ...]]) -> Tuple[Tuple[Tensor, ...], List[int]]:
    """All layers' tensors in one tuple, and how many belong to each layer."""
    return tuple(t for a in per_layer for t in a), [len(a) for a in per_layer]


def unflatten_layers(flat: Sequence[Tensor], sizes: Sequence[int]) -> List[Tuple[Tensor, ...]]:
    return _unflatten(list(flat), [(None,) * k for k in sizes])


def select_neuron(tensors: Tuple[Tensor, ...], selector) -> Tensor:
    """One value per example from a layer's tensors (Captum's ``neuron_selector``).

    An int or a tuple indexes the (single) tensor after the batch axis; with slices in the tuple
    the selected block is summed per example; a callable gets the tensor (or the tuple when the
    layer has several) and returns the values.
    """
    if callable(selector):
        return selector(tensors if len(tensors) > 1 else tensors[0])
    if len(tensors) != 1:
        raise AttributionArgumentError("cannot index a neuron in a layer with several tensors; pass a callable neuron_selector")
    index = (selector,) if isinstance(selector, int) else tuple(selector)
    t = tensors[0]
    if len(index) > t.dim() - 1:
        raise AttributionArgumentError(f"neuron_selector {selector} has more indices than the layer's shape {tuple(t.shape[1:])}")
    check_index(index, t.shape[1:], "neuron_selector")
    out = t[(slice(None), *index)]
    if any(isinstance(i, slice) for i in index):
        out = out.reshape(out.shape[0], -1).sum(1)
    return out


def format_layers(multiple_layers: bool, per_layer: Sequence[Tuple[Tensor, ...]]):
    """Captum's layer output convention: per layer a tensor (one) or a tuple (several); a list for several layers."""
    shaped = [a[0] if len(a) == 1 else tuple(a) for a in per_layer]
    return list(shaped) if multiple_layers else shaped[0]
