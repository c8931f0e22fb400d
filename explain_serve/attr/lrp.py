"""Layer-wise Relevance Propagation (Bach et al., 2015) and its layer form.

The relevance of the explained output is propagated backwards layer by layer with each layer's
propagation rule (``lrp_rules``); nonlinearities (ReLU, Tanh, Dropout) pass it on unchanged.
Captum 0.9's scheme, in one backward pass through the one hook owner:

- at a rule layer's output, the relevance ``R`` arriving there is divided by the stabilised output
  ``z'`` of the layer under its rule, and the backward of ``z'`` carries it to the layer's inputs
  (a rule with modified parameters re-evaluates only that layer, functionally);
- at a rule layer's input tensor, the total gradient arriving there (from every consumer of the
  tensor, a skip connection included) is multiplied by the tensor, which makes it relevance again.
  Each tensor is multiplied once, by the first rule layer that consumes it; an ``IdentityRule``
  layer hands its output relevance to the inputs it is first to consume instead.

With an ``Addition_Module`` for a residual sum this conserves relevance; a functional ``a + b``
is not a layer, so the relevance reaching the skip branch is not divided by the sum and is
multiplied by the tensor again where the branches meet (Captum's numbers; relevance is then not
conserved). The model's parameters are never modified, and neither rules, activations nor
relevances are stored on modules: per-call values live in the autograd graph and the session's
scratch, and tensor hooks are removed when the call ends.

Attributions are the input relevances, which sum to the explained output when no relevance is
absorbed (epsilon -> 0, no biases): ``delta = output - sum(attributions)``.
"""
from __future__ import annotations

import weakref
from typing import Dict, Optional

import torch
from torch import Tensor, nn

from .._core.gradients import gradients_and_outputs
from .._core.hooks import HookedMethod, HookSession
from .._core.inputs import as_tuple, format_args, format_output, is_tuple
from .._core.layers import format_layers, layer_gradients, tap_around
from ._base import GradientAttribution, LayerAttribution
from .custom_modules import Addition_Module
from .lrp_rules import EpsilonRule, PropagationRule, as_rule

# default rule per layer type (Captum's table, plus the 1-d/3-d variants)
SUPPORTED_LAYERS_WITH_RULES = {
    nn.MaxPool1d: EpsilonRule, nn.MaxPool2d: EpsilonRule, nn.MaxPool3d: EpsilonRule,
    nn.Conv1d: EpsilonRule, nn.Conv2d: EpsilonRule, nn.Conv3d: EpsilonRule,
    nn.AvgPool1d: EpsilonRule, nn.AvgPool2d: EpsilonRule, nn.AvgPool3d: EpsilonRule,
    nn.AdaptiveAvgPool1d: EpsilonRule, nn.AdaptiveAvgPool2d: EpsilonRule, nn.AdaptiveAvgPool3d: EpsilonRule,
    nn.Linear: EpsilonRule, nn.BatchNorm1d: EpsilonRule, nn.BatchNorm2d: EpsilonRule, nn.BatchNorm3d: EpsilonRule,
    Addition_Module: EpsilonRule,
}
# relevance passes through these unchanged
SUPPORTED_NON_LINEAR_LAYERS = [nn.ReLU, nn.Dropout, nn.Tanh]
_SHAPE_ONLY = (nn.Flatten, nn.Unflatten, nn.Identity)  # their gradient already is the pass-through

_NO_RULE = object()


def _default_rule(module: nn.Module):
    kind = type(module)
    if kind.__name__ == "Addition_Module" and kind.__module__.startswith("captum."):
        kind = Addition_Module  # Captum's own addition module: its default rule, without importing Captum
    return SUPPORTED_LAYERS_WITH_RULES.get(kind)


def _leaves(model: nn.Module):
    return [m for m in model.modules() if m is not model and next(m.children(), None) is None]


def _float_leaves(inputs):
    return tuple(x.detach().requires_grad_(True) if x.is_floating_point() else x for x in inputs)


def _called_once(scratch, module):
    """Captum's LRP error for a rule layer called twice in one forward (its relevance would be
    ambiguous: whose output relevance does it redistribute?)."""
    key = ("lrp-called", id(module))
    if key in scratch:
        raise RuntimeError(
            f"Module {module} is being used more than once in the network, which is not supported by LRP. "
            "Please ensure that module is being used only once in the network."
        )
    scratch[key] = True


class _Relevance(torch.autograd.Function):
    """A rule layer's output in value. Backward: records the relevance ``R`` arriving there in
    ``cell`` and sends ``R / (z' + eps sign z')`` into ``through`` (``z'``, the layer under its rule)."""

    @staticmethod
    def forward(ctx, through, value, rule, cell):  # type: ignore[override]
        ctx.rule, ctx.cell = rule, cell
        ctx.save_for_backward(through)
        return value.clone()

    @staticmethod
    def backward(ctx, relevance):  # type: ignore[override]
        (z,) = ctx.saved_tensors
        ctx.cell["relevance"] = relevance
        return ctx.rule.stabilised(z.detach(), relevance), None, None, None


def _input_relevance(value: Tensor, rule: PropagationRule, cell: dict):
    """Tensor hook turning the total gradient at a rule layer's input into relevance."""
    if rule.passes_relevance_through:
        return lambda scratch, grad: cell.get("relevance", grad)
    value = value.detach()

    def hook(scratch, grad):
        relevance = grad * value
        # a nonlinearity whose recorded output gradient is this very tensor passes this relevance
        # on (see _nonlinear_input); a weak reference, so that autograd may still accumulate into
        # ``grad`` in place, as it does under Captum (which tags the gradient tensor itself)
        scratch.setdefault("lrp-replace", {})[id(grad)] = (weakref.ref(grad), relevance)
        return relevance

    return hook


def _nonlinear_input(cell: dict):
    """Tensor hook on a nonlinearity's input: Captum's pass-through. The total gradient there is
    replaced by the gradient recorded at the nonlinearity's output (before later hooks on that
    tensor), or by the relevance a rule layer made of that very gradient."""

    def hook(scratch, grad):
        out = cell.get("grad_output")
        if out is None:
            return None
        replaced = scratch.get("lrp-replace", {}).pop(id(out), None)
        return replaced[1] if replaced is not None and replaced[0]() is out else out

    return hook


class LRP(GradientAttribution, HookedMethod):
    """LRP with per-module rules: ``module.rule`` (Captum's convention), ``rules={module: rule}``
    (takes precedence), else the default rule of the module's type."""

    _multiply_by_inputs = True
    _has_convergence_delta = True

    def __init__(self, model: nn.Module, *, rules: Optional[Dict[nn.Module, PropagationRule]] = None) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError("LRP needs a torch.nn.Module")
        GradientAttribution.__init__(self, model)
        self.model = model
        self.rules = dict(rules or {})
        self.verbose = False
        for module in model.modules():
            rule = self.rules.get(module, getattr(module, "rule", None))
            if rule is not None:
                try:
                    as_rule(rule)
                except TypeError:
                    raise TypeError(
                        f"Please select propagation rules inherited from PropagationRule for module: {module}"
                    ) from None

    def _rule_for(self, module: nn.Module):
        """The module's rule now (None: pass relevance through); read per call, never stored."""
        if module in self.rules:
            return as_rule(self.rules[module])
        rule = getattr(module, "rule", _NO_RULE)
        if rule is not _NO_RULE:
            return None if rule is None else as_rule(rule)
        if type(module) in SUPPORTED_NON_LINEAR_LAYERS:
            return None
        default = _default_rule(module)
        return default() if default is not None else _NO_RULE

    def _enter(self, session: HookSession, scratch, module, args):
        """Forward pre-hook: a rule layer hooks the input tensors it is first to consume; a
        nonlinearity hooks its input for the pass-through and runs on a copy."""
        rule = self._rule_for(module)
        if rule is _NO_RULE or not args or not isinstance(args[0], Tensor):
            return None
        if rule is None:
            if not args[0].requires_grad:
                return None
            cell = scratch[("lrp-cell", id(module))] = {}
            session.tensor_hook(args[0], _nonlinear_input(cell))
            return (args[0].clone(), *args[1:])
        _called_once(scratch, module)
        cell = scratch[("lrp-cell", id(module))] = {}
        hooked = scratch.setdefault("lrp-hooked", {})  # id -> tensor (kept alive for the call)
        for t in args:
            if isinstance(t, Tensor) and t.requires_grad and id(t) not in hooked:
                hooked[id(t)] = t
                session.tensor_hook(t, _input_relevance(t, rule, cell))
        return None

    def _exit(self, session: HookSession, scratch, module, args, output):
        """Forward hook: a rule layer's output through which relevance is normalised; a
        nonlinearity records the gradient arriving at its output."""
        rule = self._rule_for(module)
        cell = scratch.get(("lrp-cell", id(module)))
        if rule is _NO_RULE or cell is None or not isinstance(output, Tensor) or not output.requires_grad:
            return None
        if rule is None:
            session.tensor_hook(output, lambda scratch, grad: cell.__setitem__("grad_output", grad))
            return None
        through = output
        if rule._modifies() and getattr(module, "weight", None) is not None:
            with torch.enable_grad():
                through = rule.layer_output(module, args[0])
        return _Relevance.apply(through, output.detach(), rule, cell)

    def _install_entries(self, session: HookSession) -> None:
        session_ref = weakref.ref(session)  # hooks must not keep the session alive
        for module in _leaves(self.model):
            rule = self._rule_for(module)
            if rule is _NO_RULE:
                if isinstance(module, _SHAPE_ONLY):
                    continue
                raise TypeError(
                    f"Module of type {type(module).__name__} has no rule defined and no default rule exists "
                    "for this module type. Please set a rule explicitly for this module and make sure it is "
                    "appropriate for this type of layer."
                )
            if self.verbose:
                print(f"Applied {rule} on layer {module}")
            session.forward_pre_hook(module, lambda scratch, mod, args: self._enter(session_ref(), scratch, mod, args))

    def _install_exits(self, session: HookSession) -> None:
        session_ref = weakref.ref(session)
        for module in _leaves(self.model):
            if not (isinstance(module, _SHAPE_ONLY) and self._rule_for(module) is _NO_RULE):
                session.forward_hook(module, lambda scratch, mod, args, out: self._exit(session_ref(), scratch, mod, args, out))

    def _install_hooks(self, session: HookSession) -> None:
        self._install_entries(session)
        self._install_exits(session)

    def attribute(self, inputs, target=None, additional_forward_args=None, return_convergence_delta: bool = False, verbose: bool = False):
        self.verbose = verbose
        was_tuple, inputs = is_tuple(inputs), as_tuple(inputs)
        with self._hooks():
            grads, output = gradients_and_outputs(self.model, _float_leaves(inputs), target, format_args(additional_forward_args))
        relevances = tuple(g * output.reshape((-1,) + (1,) * (g.dim() - 1)) for g in grads)
        result = format_output(was_tuple, relevances)
        if not return_convergence_delta:
            return result
        return result, self.compute_convergence_delta(relevances, output)

    def compute_convergence_delta(self, attributions, output):
        """``output - sum of attributions`` per example (relevance conservation)."""
        attributions = as_tuple(attributions)
        total = sum(a.reshape(a.shape[0], -1).sum(1) for a in attributions)
        return output.flatten() - total.flatten()


class LayerLRP(LRP, LayerAttribution):
    """Relevance arriving at a layer's output (or leaving to its input), per neuron."""

    def __init__(self, model: nn.Module, layer, *, rules: Optional[Dict[nn.Module, PropagationRule]] = None) -> None:
        LRP.__init__(self, model, rules=rules)
        LayerAttribution.__init__(self, model, layer)

    @property
    def layers(self):
        return list(self.layer) if isinstance(self.layer, list) else [self.layer]

    def _install_hooks(self, session: HookSession) -> None:
        # entries first: a layer's own input tensors get their relevance hook before the input
        # taps hand the layer copies
        self._install_entries(session)
        tap_around(session, self.layers, lambda: self._install_exits(session))

    def attribute(
        self,
        inputs,
        target=None,
        additional_forward_args=None,
        return_convergence_delta: bool = False,
        attribute_to_layer_input: bool = False,
        verbose: bool = False,
    ):
        self.verbose = verbose
        inputs = as_tuple(inputs)
        outputs: list = []
        with self._hooks() as scratch:
            grads, _ = layer_gradients(
                scratch, self.layers, attribute_to_layer_input, self.model, _float_leaves(inputs),
                target, format_args(additional_forward_args), outputs=outputs,
            )
        output = outputs[0]
        per_layer = [tuple(g * output.reshape((-1,) + (1,) * (g.dim() - 1)) for g in gs) for gs in grads]
        result = format_layers(isinstance(self.layer, list), per_layer)
        if not return_convergence_delta:
            return result
        deltas = [self.compute_convergence_delta(r, output) for r in per_layer]
        return result, (deltas if isinstance(self.layer, list) else deltas[0])
