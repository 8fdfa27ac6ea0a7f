"""Keep freed heap memory in the process instead of handing it back to the OS (glibc ``malloc`` only).

At batch 256 an early-exit network's activations are tens of megabytes each. glibc's default malloc returns such
blocks to the OS when they are freed and maps them again on the next allocation, so every forward pays page
faults on fresh memory: memory-bound layers (the attention module's deconv, sigmoid and product, the exit
heads' 1x1 convs) lose up to 40 % of their time to it, far more than the compute-bound sections. Asking malloc
for a large ``M_TOP_PAD`` makes it grow the heap in big steps and keep that much free memory at its top, so
the activations of one batch reuse the pages of the last.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import platform

M_TOP_PAD = -2                          # glibc <malloc.h>
DEFAULT_PAD_BYTES = 1 << 30             # 1 GiB: above the working set of a batch-256 pass of the paper networks

_pad_applied: int | None = None


def retain_freed_memory(pad_bytes: int = DEFAULT_PAD_BYTES) -> bool:
    """Ask glibc malloc to keep ``pad_bytes`` of free memory at the top of the heap (``mallopt(M_TOP_PAD)``);
    process-wide, so the plain network timed beside the early-exit one gets it as well.

    Returns whether the setting is in force: ``False`` off Linux / glibc (musl, macOS, Windows), where nothing
    is changed. Calling it again with the same size does nothing; the largest size asked for wins.
    """
    global _pad_applied
    if _pad_applied is not None and _pad_applied >= pad_bytes:
        return True
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        applied = bool(libc.mallopt(M_TOP_PAD, int(pad_bytes)))
    except (OSError, AttributeError):
        return False
    if applied:
        _pad_applied = pad_bytes
    return applied


__all__ = ["DEFAULT_PAD_BYTES", "retain_freed_memory"]
