"""Keep freed host memory in the process's heap, so that large tensors reuse warm pages.

glibc serves an allocation above its mmap threshold (128 KiB at start, raised as large
blocks are freed, never above 32 MiB) with fresh pages from the kernel, and gives a heap's
free top back to the kernel once it exceeds the trim threshold. A decode step or a
re-prefill that allocates and frees megabytes of activations then takes a page fault, and
the kernel zeroes a page, for every 4 KiB it touches, every time; how many of its
allocations do so depends on what the process freed before. Measured on the 2-core dev VM
(`python -m benchmarks.heap`, fresh processes), a 512-token re-prefill of the demo model
took 434 ms median (p10-p90 407-454 ms, 45 k page faults each) with glibc's defaults and
356 ms (352-362 ms, no page faults) with the heap retained: an instance ran up to 20% slower
or faster depending on its history, which validation then read as drift since calibration.

`retain()` sets the mmap threshold to its 32 MiB ceiling and the trim threshold to 2 GiB,
as an inference server wants: its resident memory stays at its peak (as PyTorch's CUDA
caching allocator does on a GPU). The launcher calls it in every instance
(`ClusterSpec.retain_heap`). Without glibc (musl, macOS) it does nothing and says so.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_TRIM_THRESHOLD = -1  # glibc's malloc.h
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_MAX = 32 << 20  # glibc's documented ceiling on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX)
TRIM_THRESHOLD = (1 << 31) - 1  # mallopt takes an int


def _mallopt():
    """glibc's `mallopt`, or None where the C library has none."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        fn = libc.mallopt
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return fn


def retain(mmap_threshold: int = MMAP_THRESHOLD_MAX, trim_threshold: int = TRIM_THRESHOLD) -> bool:
    """Serve allocations up to `mmap_threshold` bytes from the heap and keep up to `trim_threshold` free bytes in it.

    True if the C library took both settings; False without glibc's `mallopt` (nothing changed).
    """
    mallopt = _mallopt()
    if mallopt is None:
        return False
    _STATE["retained"] = bool(mallopt(M_MMAP_THRESHOLD, mmap_threshold)) and bool(mallopt(M_TRIM_THRESHOLD, trim_threshold))
    return _STATE["retained"]


def retained() -> bool:
    """Whether this process's heap was retained (`retain` succeeded here)."""
    return _STATE["retained"]


_STATE = {"retained": False}
