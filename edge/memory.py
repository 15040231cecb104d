"""Memory a large request freed, given back to the system.

glibc keeps the memory a large request freed (its parsed rows, the answer's buffers) in its
heaps rather than returning it: the server's resident size stays at its largest request's
peak. `malloc_trim(0)` after a large request hands the free pages back (measured on a 10k-row
pandas-records request: see README's Performance). Elsewhere than glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable
from typing import Any

LARGE_BODY = 1 << 20  # bytes; requests from this size are followed by a trim


def _trimmer() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


_TRIM = _trimmer()


def large_request(scope: dict[str, Any]) -> bool:
    """Whether the request declares a body of at least `LARGE_BODY` bytes."""
    for key, value in scope.get("headers", ()):
        if key == b"content-length":
            return value.isdigit() and int(value) >= LARGE_BODY
    return False


def release() -> None:
    """Give the heaps' free memory back to the system (glibc's `malloc_trim`; Arrow's own
    pool's `release_unused` was measured to give nothing back here)."""
    if _TRIM is not None:
        _TRIM(0)
