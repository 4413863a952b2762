"""Keep the process's memory flat over a long task sequence (glibc's allocator, Linux).

PyTorch on the CPU allocates every activation, gradient and attack iterate with ``malloc``.
glibc serves large blocks with ``mmap`` only above a threshold that it *raises* each time such a
block is freed (up to 32 MiB on 64-bit), so after the first few steps VGG16's tensors come from
the heap, and the heap fragments: freed memory stays resident and the peak grows with every
task. Measured on the 20-task VGG16 rehearsal (``scripts/bench_cost.py --only rehearsal``):
resident memory after task 1 was 2.7 GB with the default and 1.7 GB with a fixed threshold, and
the peak kept growing by ~0.1-0.2 GB per task with the default.

:func:`fix_mmap_threshold` pins the threshold (``mallopt(M_MMAP_THRESHOLD, 1 MiB)``; pinning it
also turns off the dynamic adjustment), so blocks of 1 MiB and more go back to the system when
freed. ``CMAT_MALLOC_TUNING=0`` leaves the allocator alone (e.g. when jemalloc/tcmalloc is
preloaded, which solves the same problem).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_MMAP_THRESHOLD = -3  # glibc <malloc.h>
THRESHOLD_BYTES = 1 << 20


def fix_mmap_threshold(threshold: int = THRESHOLD_BYTES) -> bool:
    """Pin glibc's mmap threshold; True when it was set (Linux with glibc, not disabled)."""
    if os.environ.get("CMAT_MALLOC_TUNING", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        return bool(libc.mallopt(ctypes.c_int(M_MMAP_THRESHOLD), ctypes.c_int(threshold)))
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
