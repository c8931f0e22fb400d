"""Bounded caches of the small index and mask tensors that hot paths would rebuild on every call.

They depend only on sizes (and dtype/device), never on user tensors; each cache holds at most
``maxsize`` entries, and arguments whose tensor would exceed ``limit`` elements are built per call
instead of cached, so a cache never pins large memory.
"""
from __future__ import annotations

import functools
from typing import Callable, TypeVar

A = TypeVar("A")


def small_tensor_cache(entries: Callable[..., int], limit: int = 1 << 16, maxsize: int = 32) -> Callable:
    """Decorate a builder of positional, hashable arguments: its result is cached (LRU, ``maxsize``)
    where ``entries(*args) <= limit``, else built anew. Callers must not modify the result."""

    def decorate(build: Callable) -> Callable:
        cached = functools.lru_cache(maxsize=maxsize)(build)

        @functools.wraps(build)
        def get(*args):
            return cached(*args) if entries(*args) <= limit else build(*args)

        get.cache_clear = cached.cache_clear  # type: ignore[attr-defined]
        return get

    return decorate


def read_only(a: A) -> A:
    """A cached NumPy array marked read-only (returned as it is), so that no caller modifies it."""
    a.flags.writeable = False
    return a
