"""Keep freed heap memory in the process instead of handing it back to the OS (glibc ``malloc`` only).

At batch 256 an early-exit network's activations are tens of megabytes each. glibc's default malloc serves such
blocks with ``mmap`` and unmaps them when they are freed, so every forward pass maps fresh memory and pays a
page fault on every page it writes. The parts with the largest maps lose the most: on the SCAN ResNet18 at batch
256 the first exit (attention module and bottleneck head at 32x32) runs 1.51x slower with glibc's default, the
first section 1.41x, the plain network 1.21x (``experiments/bench/memory_retention.py``), so the early exits paid
more than their share. With ``mmap`` off for the heap (``M_MMAP_MAX = 0``) and trimming
off (``M_TRIM_THRESHOLD`` at its maximum), freed blocks stay in the heap and the next batch reuses pages that are
already mapped; the process keeps its peak resident size, as a GPU caching allocator does.

The setting is process-wide. A serving process keeps it (:func:`retain_freed_memory`); code that times a
deployment form inside a longer-lived process (the post-fit pipeline of a training run) wraps the timing in
:func:`retained_memory`, which restores glibc's defaults afterwards. A preloaded jemalloc / tcmalloc ignores it.
"""
from __future__ import annotations

import ctypes
import platform
from collections.abc import Iterator
from contextlib import contextmanager

M_TRIM_THRESHOLD = -1           # glibc <malloc.h>
M_MMAP_MAX = -4
MAX_TRIM_THRESHOLD = 2**31 - 1  # mallopt takes a C int: trim only above 2 GiB of free memory at the heap's top
DEFAULTS = {M_MMAP_MAX: 65536, M_TRIM_THRESHOLD: 128 * 1024}

_applied = False


def _mallopt():
    """glibc's ``mallopt``, or ``None`` off Linux / glibc (musl, macOS, Windows)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        fn = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return fn


def retain_freed_memory() -> bool:
    """Make glibc malloc keep freed memory for reuse (no ``mmap``-served blocks, no trimming), process-wide, so
    the plain network timed beside the early-exit one gets it as well. Returns whether the setting is in force
    (``False`` where there is no glibc: nothing is changed). Only the first successful call does anything."""
    global _applied
    if _applied:
        return True
    mallopt = _mallopt()
    if mallopt is None:
        return False
    _applied = bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, MAX_TRIM_THRESHOLD))
    return _applied


def release_freed_memory() -> None:
    """Undo :func:`retain_freed_memory`: glibc's default ``mmap`` count and trim threshold again (the freed heap
    is trimmed at the next ``free``)."""
    global _applied
    mallopt = _mallopt()
    if _applied and mallopt is not None:
        for option, value in DEFAULTS.items():
            mallopt(option, value)
    _applied = False


@contextmanager
def retained_memory() -> Iterator[None]:
    """Inside the block, whatever turns memory retention on (a deployment form built with ``retain_memory``) is
    undone on leaving, unless it was already on before."""
    before = _applied
    try:
        yield
    finally:
        if not before:
            release_freed_memory()


__all__ = ["release_freed_memory", "retain_freed_memory", "retained_memory"]
