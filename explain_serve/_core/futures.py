"""``attribute_future``: attribution with a forward function that returns ``torch.futures.Future``
(an asynchronous or remote model), answered as a Future.

The method runs unchanged on a copy whose forward waits for each Future as it is returned, so the
perturbations are still evaluated in vectorized chunks; the attributions (or the forward's own
error) are delivered through the returned Future. Bad arguments raise at the call, as in Captum.
"""
from __future__ import annotations

import copy
from typing import Any, Callable

from torch.futures import Future

from .errors import AttributionArgumentError


class _ForwardFailed(Exception):
    """Carries an error raised by the user's Future out of the attribution code."""


def _awaiting(forward_func: Callable) -> Callable:
    def forward(*args: Any) -> Any:
        out = forward_func(*args)
        if not isinstance(out, Future):
            raise AttributionArgumentError(
                "when using attribute_future, forward_func should return a torch.futures.Future, "
                f"got {type(out).__name__}; call attribute(...) for a forward that returns tensors"
            )
        try:
            return out.wait()
        except Exception as e:  # noqa: BLE001 - handed to the caller through the returned Future
            raise _ForwardFailed() from e

    return forward


def attribute_as_future(method: Any, *args: Any, **kwargs: Any) -> Future:
    """Run ``method.attribute(*args, **kwargs)`` on a forward returning Futures; return a Future."""
    awaiting = copy.copy(method)  # the user's method object is not modified (concurrent calls stay safe)
    awaiting.forward_func = _awaiting(method.forward_func)
    result: Future = Future()
    try:
        result.set_result(awaiting.attribute(*args, **kwargs))
    except _ForwardFailed as e:
        result.set_exception(e.__cause__)
    return result
