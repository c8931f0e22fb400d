"""Fixed glibc malloc thresholds for the benchmarks, so that page faults do not decide a row.

glibc moves its mmap and trim thresholds as a process runs (up to the largest block it has freed),
so whether a call's megabytes of activations come back as fresh pages, a fault per 4 KiB, depends
on the process's history rather than on the call: here the same ShapleyValueSampling call took 1.3
or 2.7 ms, with 0 or 758 page faults, from one process to the next. Fixed thresholds keep freed
memory in the heap, as jemalloc and TCMalloc (the allocators PyTorch's CPU tuning guide and
TorchServe's CPU launcher use) do by design, for Captum, explain-serve and the floor alike.
"""
from __future__ import annotations

import ctypes
import ctypes.util

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def pin_malloc_thresholds(mmap_bytes: int = 32 << 20, trim_bytes: int = 256 << 20) -> bool:
    """Blocks under ``mmap_bytes`` from the heap, at most ``trim_bytes`` of free heap kept.
    False where the C library is not glibc (nothing changed)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, mmap_bytes)) and bool(mallopt(_M_TRIM_THRESHOLD, trim_bytes))
