"""Keep freed memory in the process on glibc Linux, so CPU training does not pay page faults every step.

PyTorch's CPU tensors come from the C allocator. With glibc's defaults, a freed activation of a few MB is either
returned to the kernel at once (blocks above the mmap threshold) or trimmed off the heap top, and the next step maps
it back in, page by page: on a 2-core CPU, a U-Net step on 64x64 canvases spent a quarter of its time in the kernel
(5.2 s of 26 s in `sys`, 1.05 M minor page faults for 60 steps). Raising the mmap threshold to its 32 MiB maximum
and never trimming the heap cut that to 1.0 s and 0.14 M faults, and the step ran 1.2x faster
(`benchmarks/step_speed.py`; docs/BENCHMARKS.md). The cost: the process keeps its peak heap until it exits, which is
what a training process wants anyway. Intel's and others' CPU guides reach the same end with jemalloc or tcmalloc;
this needs no extra library.

`keep_freed_memory()` applies it once per process (the engine calls it for CPU runs); set ``CNNLAB_MALLOC_TUNING=0``
to leave the allocator alone. It does nothing off glibc (macOS, Windows, musl).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

__all__ = ["keep_freed_memory"]

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3  # mallopt parameters (malloc.h)
_MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's maximum on 64-bit
_TRIM_THRESHOLD = 2**31 - 1  # never trim (an int)
_TOP_PAD = 64 * 1024 * 1024  # grow the heap in 64 MiB steps
_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Tune glibc malloc for training (see the module docstring); True when the settings are in force."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if not sys.platform.startswith("linux") or os.environ.get("CNNLAB_MALLOC_TUNING", "1") == "0":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _applied = all(
        mallopt(parameter, value) == 1
        for parameter, value in (
            (_M_MMAP_THRESHOLD, _MMAP_THRESHOLD),
            (_M_TRIM_THRESHOLD, _TRIM_THRESHOLD),
            (_M_TOP_PAD, _TOP_PAD),
        )
    )
    return _applied
