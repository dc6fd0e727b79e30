"""Giving the memory a finished window freed back to the operating system.

Each batch allocates activations of a new size (its longest sequence sets them), and glibc's allocator keeps
freed heap pages for reuse instead of returning them; over a long run that retained free memory, not live data,
made most of the process's resident size (measured on 10^4 sequences: 1.64 GB resident, 0.76 GB after
`malloc_trim`). Calling `malloc_trim(0)` once per window bounds it at what one window needs, for about the cost
of a system call. Other C libraries (musl, macOS) have no malloc_trim: there this does nothing.
"""

from __future__ import annotations

import ctypes
import sys


def _find_malloc_trim():
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


_MALLOC_TRIM = _find_malloc_trim()


def release_free_memory() -> bool:
    """Return the allocator's free pages to the OS; True when glibc's malloc_trim ran."""
    if _MALLOC_TRIM is None:
        return False
    _MALLOC_TRIM(0)
    return True


__all__ = ["release_free_memory"]
