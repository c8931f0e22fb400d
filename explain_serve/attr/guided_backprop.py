"""Guided Backpropagation (Springenberg et al., 2015) and Deconvolution (Zeiler & Fergus, 2014).

Both are the gradient with a modified ReLU backward: guided backprop keeps only positive
gradients that pass the ReLU (``relu(grad_in)``); deconvolution passes the positive part of the
gradient arriving at the ReLU's output (``relu(grad_out)``), ignoring the forward mask.
Only ``nn.ReLU`` modules are modified (functional relu calls are not visible to hooks).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .._core.gradients import gradients, leaf_inputs
from .._core.hooks import GradRecord, HookedMethod, HookSession
from .._core.inputs import as_tuple, format_args, format_output, is_tuple
from ._base import GradientAttribution


def _positive_part(scratch, grad: torch.Tensor) -> torch.Tensor:
    return F.relu(grad)


def _positive_output_gradient(rec: GradRecord, grad) -> torch.Tensor:
    return F.relu(rec.grad_output)


class ModifiedReluGradientAttribution(GradientAttribution, HookedMethod):
    use_relu_grad_output = False

    def __init__(self, model: nn.Module) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"{type(self).__name__} needs a torch.nn.Module (its ReLU layers are hooked)")
        super().__init__(model)
        self.model = model

    def _install_hooks(self, session: HookSession) -> None:
        for module in self.model.modules():
            if isinstance(module, nn.ReLU):
                if self.use_relu_grad_output:  # the ReLU's own backward (its mask) skipped
                    session.replace_gradient(module, _positive_output_gradient)
                else:  # relu of the output gradient, then the ReLU's own mask: relu(grad_in)
                    session.output_grad_hook(module, _positive_part)

    def attribute(self, inputs, target=None, additional_forward_args=None):
        was_tuple, inputs = is_tuple(inputs), as_tuple(inputs)
        with self._hooks():
            grads = gradients(self.model, leaf_inputs(inputs), target, format_args(additional_forward_args))
        return format_output(was_tuple, grads)


class GuidedBackprop(ModifiedReluGradientAttribution):
    use_relu_grad_output = False


class Deconvolution(ModifiedReluGradientAttribution):
    use_relu_grad_output = True
