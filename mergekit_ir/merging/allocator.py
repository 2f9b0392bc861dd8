"""Keep freed row-block buffers in the process, so the next block does not page-fault.

A merge allocates and frees the same few MB-sized buffers thousands of times. glibc serves
allocations above its (adaptive) mmap threshold with fresh mappings and hands freed memory at
the top of its heaps back to the kernel, so each block's buffers keep coming back as new pages:
a page fault and a zeroed page every 4 KB (600–700 k faults for the 1 GB synthetic Llama merge,
about a second of work on 2 CPUs; docs/performance.md). Raising both thresholds keeps the
buffers for reuse; peak memory is the same, since the same few buffers are live at once.
"""

from __future__ import annotations

import ctypes
import functools
import sys

_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 2**20  # glibc's own upper bound for its adaptive threshold
TRIM_THRESHOLD = 512 * 2**20


@functools.cache
def keep_freed_buffers() -> bool:
    """Tune glibc's malloc for block merges, once per process; False where it does not apply
    (not Linux, or a libc without ``mallopt``, e.g. musl, whose allocator differs anyway)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
