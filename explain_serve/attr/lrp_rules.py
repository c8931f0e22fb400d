"""Propagation rules of Layer-wise Relevance Propagation (Bach et al., 2015; Montavon et al., 2019).

A rule says how the relevance ``R_out`` arriving at a layer's output is redistributed onto its
input ``a``: ``R_in = a * J'^T (R_out / (z' + eps * sign(z')))`` where ``z' = layer'(a)`` is the
layer evaluated with the rule's modified parameters and ``J'`` its Jacobian (for a linear layer
``R_in_i = a_i * sum_j w'_ij R_j / z'_j``). A rule supplies ``layer_output`` (``z'``) and
``stabilised`` (the division); ``lrp.LRP`` does the rest in the backward pass, and ``propagate`` is
the same formula written out for one layer. ``IdentityRule`` hands ``R_out`` to the layer's input
unchanged. Rules are plain, stateless objects: assign one per module (``module.rule = GammaRule()``,
as in Captum, or ``LRP(model, rules={module: rule})``); nothing is ever written on the module by
the attribution.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd


class PropagationRule:
    """Base rule: epsilon-stabilised redistribution with (optionally) modified parameters."""

    STABILITY_FACTOR = 1e-9

    def modify_weight(self, weight: Tensor) -> Tensor:
        return weight

    def modify_bias(self, bias: Optional[Tensor]) -> Optional[Tensor]:
        return bias

    def _modifies(self) -> bool:
        return type(self).modify_weight is not PropagationRule.modify_weight or type(self).modify_bias is not PropagationRule.modify_bias

    def layer_output(self, module: nn.Module, a: Tensor) -> Tensor:
        """``z' = layer'(a)``, the module with the rule's parameters; the module is not modified."""
        if not self._modifies() or getattr(module, "weight", None) is None:
            return module.forward(a)  # direct call: no hooks, no state
        weight = self.modify_weight(module.weight)
        bias = self.modify_bias(module.bias) if getattr(module, "bias", None) is not None else None
        if isinstance(module, nn.Linear):
            return F.linear(a, weight, bias)
        if isinstance(module, _ConvNd):
            return module._conv_forward(a, weight, bias)
        if isinstance(module, _BatchNorm):
            return F.batch_norm(a, module.running_mean, module.running_var, weight, bias, False, 0.0, module.eps)
        raise TypeError(f"{type(self).__name__} cannot modify the parameters of {type(module).__name__}")

    def stabilised(self, z: Tensor, relevance: Tensor) -> Tensor:
        """``relevance / (z + eps * sign(z))`` (sign 0 counted as +)."""
        sign = torch.where(z == 0, torch.ones_like(z), torch.sign(z))
        return relevance / (z + sign * self.STABILITY_FACTOR)

    #: True for rules that hand the relevance at the layer's output to its input unchanged
    passes_relevance_through = False

    def propagate(self, module: nn.Module, a: Tensor, relevance: Tensor) -> Tensor:
        """Relevance at the input from the (normalised) relevance at the output."""
        with torch.enable_grad():
            a_ = a.detach().requires_grad_(True)
            z = self.layer_output(module, a_)
            (c,) = torch.autograd.grad(z, a_, self.stabilised(z.detach(), relevance))
        return a * c


class EpsilonRule(PropagationRule):
    """LRP-epsilon: unmodified layer, ``eps`` absorbs weak or contradictory relevance."""

    def __init__(self, epsilon: float = 1e-9) -> None:
        self.STABILITY_FACTOR = epsilon


class GammaRule(PropagationRule):
    """LRP-gamma: favours positive contributions, ``w' = w + gamma * max(w, 0)``."""

    def __init__(self, gamma: float = 0.25, set_bias_to_zero: bool = False) -> None:
        self.gamma = gamma
        self.set_bias_to_zero = set_bias_to_zero

    def modify_weight(self, weight: Tensor) -> Tensor:
        return weight + self.gamma * weight.clamp(min=0)

    def modify_bias(self, bias):
        return torch.zeros_like(bias) if self.set_bias_to_zero and bias is not None else bias


class Alpha1_Beta0_Rule(PropagationRule):
    """LRP-alpha1-beta0 (z+): only positive weights, ``w' = max(w, 0)``."""

    def __init__(self, set_bias_to_zero: bool = False) -> None:
        self.set_bias_to_zero = set_bias_to_zero

    def modify_weight(self, weight: Tensor) -> Tensor:
        return weight.clamp(min=0)

    def modify_bias(self, bias):
        return torch.zeros_like(bias) if self.set_bias_to_zero and bias is not None else bias


class IdentityRule(EpsilonRule):
    """Passes the relevance through unchanged (input and output have the same shape)."""

    passes_relevance_through = True

    def propagate(self, module: nn.Module, a: Tensor, relevance: Tensor) -> Tensor:
        return relevance


class CaptumStyleRule(PropagationRule):
    """Adapter for a rule object with Captum's interface (``STABILITY_FACTOR``,
    ``_manipulate_weights(module, inputs, outputs)`` that edits ``module.weight.data`` in place,
    and for the identity rule ``_create_backward_hook_input``): the parameter edit is applied to
    a private copy of the layer, never to the model's own module."""

    def __init__(self, rule: object) -> None:
        self.rule = rule
        self.STABILITY_FACTOR = getattr(rule, "STABILITY_FACTOR", PropagationRule.STABILITY_FACTOR)
        self._identity = any(c.__name__ == "IdentityRule" for c in type(rule).__mro__)
        self.passes_relevance_through = self._identity

    def _modifies(self) -> bool:
        return not self._identity and any(
            c.__name__ not in ("EpsilonRule", "PropagationRule") and "_manipulate_weights" in vars(c)
            for c in type(self.rule).__mro__
        )

    def layer_output(self, module: nn.Module, a: Tensor) -> Tensor:
        if not self._modifies():
            return module.forward(a)
        import copy

        private = copy.deepcopy(module)
        with torch.no_grad():
            self.rule._manipulate_weights(private, (a,), None)
        return private.forward(a)

    def propagate(self, module: nn.Module, a: Tensor, relevance: Tensor) -> Tensor:
        if self._identity:
            return relevance
        return super().propagate(module, a, relevance)


def as_rule(rule: object) -> PropagationRule:
    """``rule`` as one of ours: our rules as they are, Captum-style rule objects adapted."""
    if isinstance(rule, PropagationRule):
        return rule
    if callable(getattr(rule, "_manipulate_weights", None)):
        return CaptumStyleRule(rule)
    raise TypeError(f"Please select propagation rules inherited from PropagationRule, got {type(rule).__name__}")
