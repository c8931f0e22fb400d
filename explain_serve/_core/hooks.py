"""The one owner of hook registration.

A ``HookSession`` registers hooks once and keeps them inert until ``active()``; inside ``active()``
they run and may use ``scratch``, a per-call dict that is emptied when the call ends, successful or
not. Nothing is ever stored on user modules or tensors: hook closures hold a weak reference to the
session, and per-call values live in ``scratch`` or in autograd nodes that die with the graph.
Hooks on a call's tensors (``tensor_hook``, registered from a running hook) are removed when the
call ends.

A method that needs hooks describes them once (``install(session)``); a one-off call registers,
activates and removes them; a reusable session (``reusable()``, for servers) keeps them registered
between calls so a request pays no registration cost.

Gradient rules come in two forms: ``override_gradient`` wraps a module between two identity
taps and rewrites its true input gradient (the module's backward still runs); ``replace_gradient``
puts one node after the module whose backward *is* the rule, so the module's own backward is not
in the graph (cheaper; used by DeepLift); ``multiply_gradient``, for elementwise modules, needs no
node of its own. A rule registered with a ``reference`` compares each
call with the same call in a reference forward (DeepLift's baseline) run first inside
``reference_pass(scratch)``: that forward has no backward, and the backward runs on the inputs only.
"""
from __future__ import annotations

import threading
import weakref
from collections import deque
from contextlib import contextmanager
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import torch
from torch import Tensor, nn

from .errors import AttributionArgumentError


class GradRecord:
    """What a gradient rule sees for one call of a module."""

    __slots__ = ("module", "inputs", "outputs", "grad_output", "saved")

    def __init__(self, module: nn.Module, inputs: Optional[Tensor]):
        self.module = module
        self.inputs = inputs
        self.outputs: Optional[Tensor] = None
        self.grad_output: Optional[Tensor] = None
        self.saved: Any = None  # what ``prepare(module, input, output)`` computed in the forward


class _InputTap(torch.autograd.Function):
    """Identity whose backward applies a gradient rule; a fresh copy only for an in-place module
    (which would otherwise modify a view of its caller's tensor)."""

    @staticmethod
    def forward(ctx, x, record, rule, copy):  # type: ignore[override]
        ctx.record, ctx.rule = record, rule
        return x.clone() if copy else x.view_as(x)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        record, rule = ctx.record, ctx.rule
        if record.grad_output is None:  # the module's output did not reach the explained score
            return grad, None, None, None
        return rule(record, grad), None, None, None


class _OutputTap(torch.autograd.Function):
    """Identity whose backward records the gradient arriving at a module's output (and, with an
    ``output_rule``, replaces what the module's own backward receives)."""

    @staticmethod
    def forward(ctx, y, record, output_rule):  # type: ignore[override]
        ctx.record, ctx.output_rule = record, output_rule
        return y.view_as(y)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        ctx.record.grad_output = grad
        if ctx.output_rule is not None:
            grad = ctx.output_rule(ctx.record, grad)
        return grad, None, None


class _Replaced(torch.autograd.Function):
    """A module's output whose backward to the module's input is a rule: the module's own backward
    is not in the graph and never runs. What the rule needs is saved for backward, so autograd
    frees it once the node has run, as it does a module's own saved tensors."""

    @staticmethod
    def forward(ctx, x, y, record, rule, state):  # type: ignore[override]
        ctx.record, ctx.rule = record, rule
        if state is None:  # the rule reads the module's input and output
            ctx.rest = None
            ctx.save_for_backward(x, y)
        else:
            ctx.rest = tuple(_TENSOR if isinstance(t, Tensor) else t for t in state)
            ctx.save_for_backward(*(t for t in state if isinstance(t, Tensor)))
        return y.view_as(y)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        record, saved = ctx.record, ctx.saved_tensors
        if ctx.rest is None:
            record.inputs, record.outputs = saved[0].detach(), saved[1]
        else:
            tensors = iter(saved)
            record.saved = tuple(next(tensors) if t is _TENSOR else t for t in ctx.rest)
        record.grad_output = grad
        try:
            return ctx.rule(record, None), None, None, None, None
        finally:  # the record holds nothing after the rule: the rest of the backward runs in less memory
            record.inputs = record.outputs = record.grad_output = record.saved = None


_TENSOR = object()  # a tensor's slot in a prepared state


def _times_saved(record: GradRecord, grad: Optional[Tensor]) -> Tensor:
    """``multiply_gradient``'s rule on the copying path (in-place modules)."""
    return record.grad_output * record.saved


GradRule = Callable[[GradRecord, Tensor], Tensor]

_REFERENCE_PASS = ("reference pass",)


@contextmanager
def reference_pass(scratch: Dict[Any, Any]) -> Iterator[None]:
    """Make the enclosed forward the reference forward of the rules registered with a ``reference``:
    what ``reference(module, input, output)`` keeps of each of their calls is paired, in call order
    per module, with the calls of the forward that follows. (No backward runs through it; with grad
    enabled, a rule can read what an op saved for its backward, such as max pooling's indices.)"""
    scratch[_REFERENCE_PASS] = True
    try:
        yield
    finally:
        scratch.pop(_REFERENCE_PASS, None)


def check_references_paired(scratch: Dict[Any, Any]) -> None:
    """Raise if the reference forward called a hooked module more often than the forward after it."""
    for key, queue in scratch.items():
        if isinstance(key, tuple) and key[:1] == ("reference",) and queue:
            raise ReferenceMismatch(
                f"{key[2]} was called {len(queue)} more time(s) for the baseline than for the inputs: the model's "
                "calls must not depend on its input values")


class ReferenceMismatch(AttributionArgumentError):
    """The reference forward and the input forward called the hooked modules differently (a model
    whose control flow depends on its input); the calls cannot be paired."""


def _paired_reference(scratch: Dict[Any, Any], key: Any, keep: Callable, module: nn.Module, x: Tensor, y: Tensor):
    """In the reference pass: keep ``keep(module, x, y)`` and return None. Otherwise: what was kept
    of the reference call paired with this one (the module's calls in the same order)."""
    if scratch.get(_REFERENCE_PASS):
        scratch.setdefault(key, deque()).append(keep(module, x, y))
        return None
    queue = scratch.get(key)
    if not queue:
        raise ReferenceMismatch(
            f"{key[2]} was called more often for the inputs than for the baseline: the model's calls must not "
            "depend on its input values")
    return queue.popleft()


def kept_references(scratch: Dict[Any, Any]) -> Dict[Any, tuple]:
    """What the reference forward kept, to hand to ``restore_references`` in a later call."""
    return {key: tuple(queue) for key, queue in scratch.items() if isinstance(key, tuple) and key[:1] == ("reference",)}


def restore_references(scratch: Dict[Any, Any], kept: Dict[Any, tuple]) -> None:
    """Stand in for the reference forward with what an earlier one kept (``kept_references``)."""
    for key, calls in kept.items():
        scratch[key] = deque(calls)


def _reference_key(module: nn.Module) -> Any:
    return ("reference", id(module), type(module).__name__)


class HookSession:
    """Registered hooks plus per-call scratch; see the module docstring."""

    def __init__(self) -> None:
        self._handles: List[Any] = []
        self._call_handles: List[Any] = []  # tensor hooks of the call in progress
        self._active = False
        self._thread: Optional[int] = None
        self._lock = threading.RLock()
        self.scratch: Dict[Any, Any] = {}

    # -- registration ---------------------------------------------------------------------------
    def _guard(self, fn: Callable) -> Callable:
        ref = weakref.ref(self)

        def hook(*args, **kwargs):
            session = ref()
            # only in the thread running the call: a concurrent forward of the same model in
            # another thread (a prediction, another method's call) never sees this call's hooks
            if session is None or not session._active or session._thread != threading.get_ident():
                return None
            return fn(session.scratch, *args, **kwargs)

        return hook

    def forward_hook(self, module: nn.Module, fn: Callable) -> None:
        """``fn(scratch, module, inputs, output)``; a non-None return replaces the output."""
        self._handles.append(module.register_forward_hook(self._guard(fn)))

    def forward_pre_hook(self, module: nn.Module, fn: Callable) -> None:
        """``fn(scratch, module, inputs)``; a non-None return replaces the inputs."""
        self._handles.append(module.register_forward_pre_hook(self._guard(fn)))

    def override_gradient(self, module: nn.Module, rule: GradRule, output_rule: Optional[GradRule] = None,
                          prepare: Optional[Callable[..., Any]] = None, reference: Optional[Callable[..., tuple]] = None) -> None:
        """Replace the gradient from ``module``'s output to its first input by ``rule(record, grad)``.

        ``grad`` is the module's true input gradient; ``record`` holds the detached input and output
        of that call and the gradient at its output. Works for modules called several times per
        forward and for in-place modules. ``output_rule(record, grad_output)``, if given, replaces
        the gradient entering the module's own backward (``grad`` is then the module's backward of
        that), e.g. a normalisation that makes the module's vector-Jacobian product do the rest.
        ``prepare(module, input, output)``, if given, runs in the forward and its result is the record's
        ``saved``: what the rule needs, computed while the forward's tensors are at hand (the input
        comes detached, the output with its graph: detach what is computed from it). With
        ``reference(module, input, output) -> tuple`` (what to keep of a reference call; see
        ``reference_pass``), ``prepare(module, input, output, *kept)`` gets the paired call's too.
        """
        stack_key, ref_key = ("override", id(module)), _reference_key(module)

        def pre(scratch, mod, args):
            if reference is not None and scratch.get(_REFERENCE_PASS):  # keep the input before an in-place module changes it
                first = args[0] if args and isinstance(args[0], Tensor) else None
                scratch.setdefault(stack_key, []).append(first.clone() if first is not None else None)
                return None
            if not args or not isinstance(args[0], Tensor) or not args[0].requires_grad:
                scratch.setdefault(stack_key, []).append(None)
                return None
            record = GradRecord(mod, args[0].detach())
            scratch.setdefault(stack_key, []).append(record)
            return (_InputTap.apply(args[0], record, rule, getattr(mod, "inplace", False)), *args[1:])

        def post(scratch, mod, args, output):
            record = scratch[stack_key].pop()
            if not isinstance(output, Tensor):
                return None
            if reference is not None:
                x = record.inputs if isinstance(record, GradRecord) else record
                paired = _paired_reference(scratch, ref_key, reference, mod, x, output)
                if paired is None:
                    return None
            if record is None:
                return None
            record.outputs = output.detach()
            if prepare is not None:
                extra = paired if reference is not None else ()
                record.saved = prepare(mod, record.inputs, output, *extra)
            return _OutputTap.apply(output, record, output_rule)

        self.forward_pre_hook(module, pre)
        self.forward_hook(module, post)

    def replace_gradient(self, module: nn.Module, rule: GradRule,
                         prepare: Optional[Callable[..., Any]] = None, reference: Optional[Callable[..., tuple]] = None) -> None:
        """Like ``override_gradient`` but cheaper: ``rule(record, None)`` is the whole gradient from
        ``module``'s output to its first input and the module's own backward is skipped. With ``prepare``, which returns a tuple, the
        rule gets only that tuple as ``record.saved``, so the module's input and output need not
        live until the backward; without it, ``record.inputs``/``outputs``. ``reference`` as in
        ``override_gradient``.
        In-place modules overwrite their input, so they go through ``override_gradient`` (then
        ``grad`` is given, and the record has its inputs and outputs too)."""
        if getattr(module, "inplace", False):
            self.override_gradient(module, rule, prepare=prepare, reference=reference)
            return

        def replaced(mod, x, y, paired):
            state = None if prepare is None else prepare(mod, x.detach(), y, *paired)
            return _Replaced.apply(x, y.detach(), GradRecord(mod, None), rule, state)

        self._rewrite_output(module, reference, replaced)

    def multiply_gradient(self, module: nn.Module, multiplier: Callable[..., Tensor],
                          reference: Optional[Callable[..., tuple]] = None) -> None:
        """For an elementwise module: its input gradient is the output gradient times
        ``multiplier(module, input, output, *kept)`` (``kept`` as in ``override_gradient``),
        computed in the forward. The output becomes ``y + (x - x.detach()) * m``: the same values,
        gradient ``m``, and no autograd node of our own (the cheapest form of a rule)."""
        if getattr(module, "inplace", False):
            self.override_gradient(module, _times_saved, prepare=multiplier, reference=reference)
            return

        def multiplied(mod, x, y, paired):
            return torch.addcmul(y.detach(), x - x.detach(), multiplier(mod, x.detach(), y, *paired))

        self._rewrite_output(module, reference, multiplied)

    def _rewrite_output(self, module: nn.Module, reference: Optional[Callable], rewrite: Callable) -> None:
        """A forward hook returning ``rewrite(module, input, output, kept)`` for the calls to rewrite
        (a tensor in and out, gradient needed; not the reference forward's, which are kept)."""
        ref_key = _reference_key(module)

        def post(scratch, mod, args, output):
            if not args or not isinstance(args[0], Tensor) or not isinstance(output, Tensor):
                return None
            paired = ()
            if reference is not None:
                paired = _paired_reference(scratch, ref_key, reference, mod, args[0].detach(), output)
                if paired is None:
                    return None
            return rewrite(mod, args[0], output, paired) if args[0].requires_grad else None

        self.forward_hook(module, post)

    def tensor_hook(self, tensor: Tensor, fn: Callable) -> None:
        """``fn(scratch, grad)`` on the total gradient of ``tensor`` (all its consumers summed) in this
        call's backward; a non-None return replaces it. Call it from a running hook: the handle is
        removed when the call ends, so a tensor that outlives the call keeps no hook."""
        if not self._active:
            raise RuntimeError("tensor hooks are registered during a call (from a module hook)")
        ref = weakref.ref(self)

        def hook(grad):
            session = ref()
            if session is None or not session._active:
                return None
            return fn(session.scratch, grad)

        self._call_handles.append(tensor.register_hook(hook))

    def output_grad_hook(self, module: nn.Module, fn: Callable) -> None:
        """``fn(scratch, grad)`` on the gradient arriving at ``module``'s output (all its consumers
        summed) in this call's backward; a non-None return replaces it and the module's own
        backward runs on that. Cheaper than a gradient rule where one suffices: no autograd node
        of our own, just a tensor hook per call."""
        ref = weakref.ref(self)

        def post(scratch, mod, args, output):
            session = ref()
            if session is not None and isinstance(output, Tensor) and output.requires_grad:
                session.tensor_hook(output, fn)

        self.forward_hook(module, post)

    # -- lifecycle ------------------------------------------------------------------------------
    @property
    def registered(self) -> int:
        return len(self._handles)

    @contextmanager
    def active(self) -> Iterator[Dict[Any, Any]]:
        """Run the hooks for one call; scratch is cleared on the way out, whatever happens."""
        with self._lock:
            self._active, self._thread = True, threading.get_ident()
            try:
                yield self.scratch
            finally:
                self._active, self._thread = False, None
                for handle in self._call_handles:
                    handle.remove()
                self._call_handles.clear()
                self.scratch.clear()

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.scratch.clear()

    def __enter__(self) -> "HookSession":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def __del__(self) -> None:  # a forgotten session must not leave hooks on user modules
        try:
            self.remove()
        except Exception:
            pass


class HookedMethod:
    """Mixin for attribution methods that need hooks.

    Subclasses implement ``_install_hooks(session)``. ``_hooks()`` gives the scratch of an active
    session for one call: the reusable one when ``reusable()`` was called, else a temporary one
    that is removed when the call ends.

    A method that wraps another hooked method (a layer or neuron method around DeepLift, say)
    ``adopt``s it: the owner's ``_install_hooks`` installs the inner method's hooks into the
    owner's session, and the inner method's ``_hooks()`` then shares the owner's active call
    instead of registering its own hooks. One session per outer method, whatever it wraps.
    """

    _hook_session: Optional[HookSession] = None
    _hook_owner: Optional["HookedMethod"] = None
    def _current_scratch(self) -> Optional[Dict[Any, Any]]:
        """The scratch of this method's call in progress in the current thread, if any."""
        calls = self.__dict__.get("_calls")
        return calls.get(threading.get_ident()) if calls else None

    @contextmanager
    def _in_call(self, scratch: Dict[Any, Any]) -> Iterator[Dict[Any, Any]]:
        calls = self.__dict__.setdefault("_calls", {})  # per thread: concurrent one-off calls are independent
        calls[threading.get_ident()] = scratch
        try:
            yield scratch
        finally:
            calls.pop(threading.get_ident(), None)

    def adopt(self, inner: "HookedMethod") -> "HookedMethod":
        """Make ``inner`` run inside this method's hook session (see the class docstring)."""
        inner._hook_owner = self
        return inner

    def _install_hooks(self, session: HookSession) -> None:
        raise NotImplementedError

    def reusable(self) -> "HookedMethod":
        """Register this method's hooks once and keep them (inactive) until ``close()``."""
        if self._hook_session is None:
            session = HookSession()
            try:
                self._install_hooks(session)
            except BaseException:
                session.remove()
                raise
            self._hook_session = session
        return self

    def close(self) -> None:
        """Remove hooks registered by ``reusable()``."""
        if self._hook_session is not None:
            self._hook_session.remove()
            self._hook_session = None

    def __enter__(self):
        return self.reusable()

    def __exit__(self, *exc) -> None:
        self.close()

    @contextmanager
    def _hooks(self) -> Iterator[Dict[Any, Any]]:
        root = self
        while root._hook_owner is not None:
            root = root._hook_owner
        scratch = root._current_scratch()
        if root is not self and scratch is None:
            raise RuntimeError(f"{type(self).__name__} is owned by {type(root).__name__}; call it through its owner")
        if scratch is not None:  # inside the owner's (or our own) call: same hooks, same scratch
            yield scratch
            return
        if self._hook_session is not None:
            with self._hook_session.active() as scratch, self._in_call(scratch):
                yield scratch
            return
        session = HookSession()
        try:
            self._install_hooks(session)
            with session.active() as scratch, self._in_call(scratch):
                yield scratch
        finally:
            session.remove()
