"""glibc's allocator, told to give memory back: a daemon that runs for months must not keep the
high-water mark of every large buffer it ever held.

By default glibc raises its mmap threshold each time a large block is freed, so after the first
piece's arrays the next ones come from the heap, whose freed holes are rarely returned; and each
thread that allocates gets an arena of its own. Fixing the threshold at 256 KiB (every PCM or
upload buffer is mmapped and unmapped when freed) and allowing two arenas took the daemon's own
peak PSS on a 20-minute recording from 89 to 72 MiB (bench/openai_throughput.py's process tree
sampling, same run otherwise). Elsewhere than glibc nothing is changed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable
from typing import Any

_M_ARENA_MAX = -8
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 256 * 1024
ARENA_MAX = 2


def _libc_function(name: str) -> Callable[..., Any] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return getattr(libc, name, None)


_MALLOPT = _libc_function("mallopt")
_MALLOC_TRIM = _libc_function("malloc_trim")


def tune_malloc() -> bool:
    """At start, before the work: a fixed mmap threshold and few arenas. True if applied."""
    if _MALLOPT is None:
        return False
    return bool(_MALLOPT(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        _MALLOPT(_M_ARENA_MAX, ARENA_MAX)
    )


def trim() -> None:
    """Hand freed heap pages back to the system (after a burst of transient allocations)."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)
