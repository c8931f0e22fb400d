"""What every neuron method shares: the model seen as a function whose output is one neuron.

``NeuronOutput`` is an ``nn.Module`` wrapping ``forward_func`` (registered as a child when it is a
module, so hook-based primary methods such as DeepLift and guided backprop reach its layers);
calling it runs the forward until the tapped layer, selects the neuron (``neuron_selector``: an
int, a tuple of ints and slices, or a callable) and stops: the rest of the model is not run.
A neuron method is then a primary method applied to ``NeuronOutput``, in the neuron method's
single hook session.
"""
from __future__ import annotations

import weakref
from typing import Callable, List

from torch import nn

from ..._core.hooks import HookedMethod, HookSession
from ..._core.layers import StopForward, seen, select_neuron, tap_around, tapped
from .._base import NeuronAttribution

_NEURON = ("neuron",)  # scratch key: (selector, to_input) of the current call


class NeuronOutput(nn.Module):
    def __init__(self, owner: "NeuronMethod", forward_func: Callable, layer: nn.Module) -> None:
        super().__init__()
        if isinstance(forward_func, nn.Module):
            self.model = forward_func
        else:
            self.__dict__["model"] = forward_func
        self.__dict__["_owner"] = weakref.ref(owner)
        self.__dict__["_layer"] = layer

    def forward(self, *inputs):
        owner = self.__dict__["_owner"]()
        scratch = owner._current_scratch() if owner is not None else None
        if scratch is None or _NEURON not in scratch:
            raise RuntimeError("NeuronOutput is called by its neuron method only")
        selector, to_input = scratch[_NEURON]
        layer = self.__dict__["_layer"]
        with tapped(scratch, [layer], to_input, stop=True) as plans:
            try:
                self.model(*inputs)
            except StopForward:
                pass
            tensors = seen(plans[0])
        return select_neuron(tensors, selector)


class NeuronMethod(NeuronAttribution, HookedMethod):
    """A neuron attribution method: one tap on ``layer`` plus the hooks of the wrapped primary method."""

    def __init__(self, forward_func: Callable, layer: nn.Module, device_ids=None) -> None:
        NeuronAttribution.__init__(self, forward_func, layer, device_ids)
        self.neuron_output = NeuronOutput(self, forward_func, layer)
        self._inner: List[HookedMethod] = []

    def adopt(self, inner):
        self._inner.append(inner)
        return super().adopt(inner)

    def _install_hooks(self, session: HookSession) -> None:
        tap_around(session, [self.layer], lambda: [inner._install_hooks(session) for inner in self._inner])

    def _on_neuron(self, neuron_selector, attribute_to_neuron_input: bool, run: Callable):
        """Run ``run()`` (a primary method applied to ``self.neuron_output``) for this neuron."""
        with self._hooks() as scratch:
            scratch[_NEURON] = (neuron_selector, bool(attribute_to_neuron_input))
            try:
                return run()
            finally:
                scratch.pop(_NEURON, None)
