"""Progress bars for perturbation methods (``show_progress=True``), drawn with tqdm on stderr.

``attribution_progress(show, desc)`` opens one bar for the duration of an ``attribute`` call; it
is the current bar of that call's context (a ``ContextVar``: concurrent calls in other threads
each have their own or none). The perturbation engine counts on it: ``evaluate_chunks`` adds its
forwards to the total, every forward ticks it. A nested call (a layer method running
FeatureAblation inside) reuses the outer bar, so one call draws one bar.
"""
from __future__ import annotations

import functools
import inspect
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Callable, Iterator, Optional

_CURRENT: ContextVar[Optional[object]] = ContextVar("explain_serve_progress", default=None)


@contextmanager
def attribution_progress(show: bool, desc: str) -> Iterator[None]:
    """Draw a bar titled ``desc`` (Captum's "<Method Name> attribution") while the block runs."""
    if not show or _CURRENT.get() is not None:
        yield
        return
    from tqdm.auto import tqdm

    bar = tqdm(desc=desc, total=0)
    token = _CURRENT.set(bar)
    try:
        yield
    finally:
        _CURRENT.reset(token)
        bar.close()


def expect_forwards(n: int) -> None:
    """Announce ``n`` more forwards to the current bar (if any)."""
    bar = _CURRENT.get()
    if bar is not None and n:
        bar.total += n
        bar.refresh()


def forward_done() -> None:
    """Count one forward (an unannounced forward also extends the total, so the bar ends at 100%)."""
    bar = _CURRENT.get()
    if bar is not None:
        if bar.n >= bar.total:
            bar.total = bar.n + 1
        bar.update(1)


def shows_progress(attribute: Callable) -> Callable:
    """Decorate an ``attribute`` method with a ``show_progress`` argument: one bar per call,
    titled ``"<Method Name> attribution"`` as in Captum."""
    params = list(inspect.signature(attribute).parameters.values())
    position = next(i for i, p in enumerate(params) if p.name == "show_progress") - 1  # after self
    positional = params[position + 1].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD

    @functools.wraps(attribute)
    def wrapper(self, *args, **kwargs):
        show = kwargs.get("show_progress", args[position] if positional and len(args) > position else False)
        if not show:
            return attribute(self, *args, **kwargs)
        with attribution_progress(True, f"{self.get_name()} attribution"):
            return attribute(self, *args, **kwargs)

    return wrapper
