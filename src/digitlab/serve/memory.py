"""Keep a long-running server's heap from growing with the largest images it has seen.

glibc raises its mmap threshold each time a large block is freed, so after one big decoded image
every later block of that size comes from the heap, whose freed pages fragment and are not given back:
RSS steps up with each new size a client sends. A fixed threshold keeps large blocks in mmap (returned
on free) and a fixed trim threshold gives freed heap top back (measured in
docs/benchmarks.md#malformed-requests-and-slow-clients).

Usage::

    >>> from digitlab.serve.memory import fix_allocator_thresholds
    >>> isinstance(fix_allocator_thresholds(), bool)
    True
"""

import contextlib
import ctypes
import ctypes.util

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
# glibc's own initial values: fixing them only stops the dynamic raise (see the module doc)
MMAP_THRESHOLD_BYTES = 128 * 1024
TRIM_THRESHOLD_BYTES = 128 * 1024


def fix_allocator_thresholds() -> bool:
    """Fix glibc's mmap and trim thresholds for this process; False where the C library is not glibc."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None)
        mallopt = libc.mallopt
        mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        mallopt.restype = ctypes.c_int
        return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(
            mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))
    return False
