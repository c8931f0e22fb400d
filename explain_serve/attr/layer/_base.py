"""What every layer method shares: its layers' taps in one hook session, Captum's output format."""
from __future__ import annotations

import warnings
from typing import Callable, List, Sequence

from torch import nn

from ..._core.hooks import HookedMethod, HookSession
from ..._core.layers import format_layers, tap_around
from .._base import LayerAttribution


class LayerMethod(LayerAttribution, HookedMethod):
    """A layer attribution method: taps on ``layer`` (a module or a list of modules).

    The taps (and the hooks of any adopted inner method, installed first so that the taps see
    the inner method's view of the layer) live in one ``HookSession``: ``reusable()`` keeps them
    registered between calls, otherwise every call registers and removes them.
    """

    _multiple_layers_allowed = False
    _own_taps = True  # False when an adopted inner layer method already taps the same layers

    def __init__(self, forward_func: Callable, layer, device_ids=None) -> None:
        LayerAttribution.__init__(self, forward_func, layer, device_ids)
        if isinstance(layer, list) and not self._multiple_layers_allowed:
            raise TypeError(f"{type(self).__name__} takes a single layer")
        if isinstance(layer, list) and len(layer) > 1:
            warnings.warn(
                "Multiple layers provided: no layer in the list may depend on another one's output.",
                stacklevel=3,
            )
        self._inner: List[HookedMethod] = []

    @property
    def layers(self) -> List[nn.Module]:
        return list(self.layer) if isinstance(self.layer, list) else [self.layer]

    def _install_hooks(self, session: HookSession) -> None:
        tap_around(session, self.layers if self._own_taps else [], lambda: [inner._install_hooks(session) for inner in self._inner])

    def adopt(self, inner):
        self._inner.append(inner)
        return super().adopt(inner)

    def _format(self, per_layer: Sequence):
        return format_layers(isinstance(self.layer, list), per_layer)
