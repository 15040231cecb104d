"""Memory a large request freed, given back to the system.

glibc keeps the memory a large request freed (its parsed rows, the answer's buffers) in its
heaps rather than returning it: the server's resident size stays at its largest request's
peak. `malloc_trim(0)` hands the free pages back (measured on 10k-row requests: see README's
Performance). It takes ~2.5 ms with the heap of a 10k-row request, on the event loop: so it
runs once, `RELEASE_DELAY` after a large request, however many come meanwhile (a stream of
10k-row Arrow requests, 15-20 ms each, would otherwise pay it on every one). Elsewhere than
glibc it does nothing.

`configure`, once before the server starts, keeps that freed memory where a trim reaches it:
Arrow allocates from the C heap (its default mimalloc pool keeps freed pages to itself), and
glibc makes at most `ARENAS` heaps (rather than one per thread of the pool that runs 10k-row
requests, each keeping its own freed memory). It also keeps a request's large buffers in the
heap (`LARGE_ALLOCATION`): by default glibc maps a buffer above its threshold (128 KiB, rising
with what is freed) on its own and hands the heap's free top back as soon as it passes twice
that, so each 10k-row JSON request page-faulted ~22 MB of fresh memory (~5,600 faults, 6-7 ms
of its ~40); the trim after large requests hands it back instead.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import os
from collections.abc import Callable
from typing import Any

LARGE_BODY = 1 << 20  # bytes; requests from this size are followed by a trim
RELEASE_DELAY = 0.5  # seconds from a large request to the trim
ARENAS = 1  # glibc heaps at most (M_ARENA_MAX): measured, 2 keep ~20 MiB more
LARGE_ALLOCATION = 32 << 20  # bytes: glibc's M_MMAP_THRESHOLD (its largest); trim from twice it
_M_ARENA_MAX, _M_MMAP_THRESHOLD, _M_TRIM_THRESHOLD = -8, -3, -1  # mallopt's parameters (malloc.h)


def _glibc() -> Any:
    """glibc (its `malloc_trim` and `mallopt`), or None elsewhere (musl, macOS)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        libc.malloc_trim.restype = ctypes.c_int
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    except (OSError, AttributeError):  # not glibc: nothing to trim
        return None
    return libc


_LIBC = _glibc()
_TRIM: Callable[[int], int] | None = None if _LIBC is None else _LIBC.malloc_trim


def configure() -> None:
    """At most `ARENAS` glibc heaps, buffers up to `LARGE_ALLOCATION` in them and up to twice
    that of their free memory kept (each unless glibc's MALLOC_ARENA_MAX, MALLOC_MMAP_THRESHOLD_ or
    MALLOC_TRIM_THRESHOLD_ is set), and Arrow's allocations on the C heap (unless
    ARROW_DEFAULT_MEMORY_POOL names a pool), where `release` reaches them. First thing in `edge
    serve`, before numpy's, onnxruntime's and the server's threads start: a thread keeps the
    heap it first allocates from."""
    if _LIBC is not None:
        for variable, parameter, value in (
            ("MALLOC_ARENA_MAX", _M_ARENA_MAX, ARENAS),
            ("MALLOC_MMAP_THRESHOLD_", _M_MMAP_THRESHOLD, LARGE_ALLOCATION),
            ("MALLOC_TRIM_THRESHOLD_", _M_TRIM_THRESHOLD, 2 * LARGE_ALLOCATION),
        ):
            if variable not in os.environ:
                _LIBC.mallopt(parameter, value)
    os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")  # read as Arrow starts


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


_pending: list[asyncio.AbstractEventLoop] = []  # the loop a trim is due on, if any


def release_soon(delay: float = RELEASE_DELAY) -> None:
    """`release` on the running event loop in `delay` seconds, unless one is due on it already
    (a trim due on a loop that has since closed does not count)."""
    loop = asyncio.get_running_loop()
    if _TRIM is None or (_pending and _pending[0] is loop):
        return
    _pending[:] = [loop]
    loop.call_later(delay, _release_due, loop)


def _release_due(loop: asyncio.AbstractEventLoop) -> None:
    if _pending and _pending[0] is loop:
        _pending.clear()
    release()
