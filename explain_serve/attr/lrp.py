"""Layer-wise Relevance Propagation (Bach et al., 2015) and its layer form.

The relevance of the explained output is propagated backwards layer by layer with each layer's
propagation rule (``lrp_rules``); nonlinearities (ReLU, Tanh, Dropout) pass it on unchanged.
Implemented as gradient overrides through the one hook owner: one forward with the model's own
parameters, one backward in which every rule layer's input gradient is replaced by its relevance
redistribution (a rule with modified parameters re-evaluates only that layer, functionally). The
model's parameters are never modified, and neither rules, activations nor relevances are stored on
modules: all per-call values live in the autograd graph and the session's scratch.

Attributions are the input relevances, which sum to the explained output when no relevance is
absorbed (epsilon -> 0, no biases): ``delta = output - sum(attributions)``.
"""
from __future__ import annotations

from typing import Dict, Optional

from torch import nn

from .._core.gradients import gradients_and_outputs
from .._core.hooks import GradRecord, HookedMethod, HookSession
from .._core.inputs import as_tuple, format_args, format_output, is_tuple
from .._core.layers import format_layers, layer_gradients, tap_around
from ._base import GradientAttribution, LayerAttribution
from .lrp_rules import EpsilonRule, PropagationRule, as_rule

# default rule per layer type (Captum's table, plus the 1-d/3-d variants)
SUPPORTED_LAYERS_WITH_RULES = {
    nn.MaxPool1d: EpsilonRule, nn.MaxPool2d: EpsilonRule, nn.MaxPool3d: EpsilonRule,
    nn.Conv1d: EpsilonRule, nn.Conv2d: EpsilonRule, nn.Conv3d: EpsilonRule,
    nn.AvgPool1d: EpsilonRule, nn.AvgPool2d: EpsilonRule, nn.AvgPool3d: EpsilonRule,
    nn.AdaptiveAvgPool1d: EpsilonRule, nn.AdaptiveAvgPool2d: EpsilonRule, nn.AdaptiveAvgPool3d: EpsilonRule,
    nn.Linear: EpsilonRule, nn.BatchNorm1d: EpsilonRule, nn.BatchNorm2d: EpsilonRule, nn.BatchNorm3d: EpsilonRule,
}
# relevance passes through these unchanged
SUPPORTED_NON_LINEAR_LAYERS = [nn.ReLU, nn.Dropout, nn.Tanh]
_SHAPE_ONLY = (nn.Flatten, nn.Unflatten, nn.Identity)  # their gradient already is the pass-through

_NO_RULE = object()


def _leaves(model: nn.Module):
    return [m for m in model.modules() if m is not model and next(m.children(), None) is None]


def _float_leaves(inputs):
    return tuple(x.detach().requires_grad_(True) if x.is_floating_point() else x for x in inputs)


def _called_once(scratch, module, args):
    """Captum's LRP error for a rule layer called twice in one forward (its relevance would be
    ambiguous: whose output relevance does it redistribute?)."""
    key = ("lrp-called", id(module))
    if key in scratch:
        raise RuntimeError(
            f"Module {module} is being used more than once in the network, which is not supported by LRP. "
            "Please ensure that module is being used only once in the network."
        )
    scratch[key] = True


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
        default = SUPPORTED_LAYERS_WITH_RULES.get(type(module))
        return default() if default is not None else _NO_RULE

    def _relevance(self, rec: GradRecord, grad):
        """Input relevance; ``grad`` is the module's backward of ``_normalised`` output relevance."""
        rule = self._rule_for(rec.module)
        if rule is None or rule is _NO_RULE:
            return rec.grad_output
        if rule.uses_module_backward():
            return rec.inputs * grad
        return rule.propagate(rec.module, rec.inputs, rec.grad_output)

    def _normalised(self, rec: GradRecord, grad_output):
        rule = self._rule_for(rec.module)
        if rule is None or rule is _NO_RULE or not rule.uses_module_backward():
            return grad_output
        return rule.stabilised(rec.outputs, grad_output)

    def _install_hooks(self, session: HookSession) -> None:
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
            if rule is not None:
                session.forward_pre_hook(module, _called_once)
            session.override_gradient(module, self._relevance, self._normalised)

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
        tap_around(session, self.layers, lambda: LRP._install_hooks(self, session))

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
