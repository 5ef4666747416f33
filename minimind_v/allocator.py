"""Keep an inference process's memory bounded: hand freed memory back to the operating system.

Loading a model in bf16 or int8 frees many large temporaries (a tensor read from the file, its float32 form
while it is quantised). glibc serves a large request from the heap once a block of that size has been freed
before (its mmap threshold grows with the largest block freed, up to 32 MiB), and a heap keeps freed memory
until its top is free. So the same load peaks at 460 MiB in most fresh processes and at 760 MiB in some,
depending on the order in which blocks happened to be freed. A fixed threshold of 128 KiB (what
`MALLOC_MMAP_THRESHOLD_=131072` does) serves every large block with its own mapping, returned to the system when
freed; `malloc_trim` then gives back what the heap still holds after loading.

Both are glibc calls, made through ctypes; elsewhere (macOS, Windows, musl) the functions do nothing and say so.
MINIMIND_V_MALLOC=keep leaves the allocator as it is (to compare, or to use one's own MALLOC_* settings).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_MMAP_THRESHOLD = -3  # mallopt's parameter number (glibc malloc.h)
MMAP_THRESHOLD_BYTES = 128 * 1024  # glibc's initial value, kept fixed instead of growing


ENV = "MINIMIND_V_MALLOC"


def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux") or os.environ.get(ENV) == "keep":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


def fix_mmap_threshold(nbytes: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Serve every block of at least `nbytes` with its own mapping from now on; True if glibc took it."""
    libc = _glibc()
    return bool(libc and libc.mallopt(M_MMAP_THRESHOLD, nbytes) == 1)


def trim() -> bool:
    """Return the heap's free memory to the system; True if glibc released any."""
    libc = _glibc()
    return bool(libc and libc.malloc_trim(0))
