"""Keep freed heap memory in the process instead of handing it back to the OS (glibc ``malloc`` only).

At batch 256 an early-exit network's activations are tens of megabytes each. glibc's default malloc serves such
blocks with ``mmap`` and unmaps them when they are freed, so every forward pass maps fresh memory and pays a
page fault on every page it writes: memory-bound layers (the attention module's deconv, sigmoid and product, the
exit heads' 1x1 convs) lose up to 40 % of their time to it, far more than the compute-bound sections. With
``mmap`` off for the heap (``M_MMAP_MAX = 0``) and trimming off (``M_TRIM_THRESHOLD`` at its maximum), freed
blocks stay in the heap and the next batch reuses pages that are already mapped; the process keeps its peak
resident size, as a GPU caching allocator does.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import platform

M_TRIM_THRESHOLD = -1   # glibc <malloc.h>
M_MMAP_MAX = -4
NEVER_TRIM = 2**31 - 1  # mallopt takes a C int

_applied = False


def retain_freed_memory() -> bool:
    """Make glibc malloc keep freed memory for reuse (``mallopt``: no ``mmap``-served blocks, no trimming);
    process-wide, so the plain network timed beside the early-exit one gets it as well.

    Returns whether the setting is in force: ``False`` off Linux / glibc (musl, macOS, Windows), where nothing
    is changed. Only the first successful call does anything.
    """
    global _applied
    if _applied:
        return True
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        _applied = bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, NEVER_TRIM))
    except (OSError, AttributeError):
        return False
    return _applied


__all__ = ["retain_freed_memory"]
