"""Freed memory kept in the process by glibc's malloc, so that each meta-training step reuses its temporaries.

An inner step of a GNN optimizer allocates and frees tens of MB of activations and gradients, in blocks of a few MB.
glibc's malloc serves blocks above its mmap threshold with ``mmap`` and hands freed memory above its trim threshold
back to the kernel, so every step gets those pages again as fresh, zero-filled ones: ~12,700 page faults per PNA
inner step on task 17, about a fifth of its time (``benchmarks/allocator.py``). :func:`keep_freed_memory`
raises both thresholds (``mallopt``), after which the heap keeps that memory and hands it out again; the process's
peak memory is what it was, but it is not returned to the system until exit. The CLI (``python -m lightning_l2o``
and the report) calls it; a script that drives ``Trainer`` itself may too.
"""

from __future__ import annotations

import ctypes
import functools

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # the largest value glibc accepts on 64-bit systems: bigger blocks still use mmap
TRIM_THRESHOLD = 2**31 - 1


@functools.cache
def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process; whether it applied (``False`` without glibc)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the running process's C library
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
