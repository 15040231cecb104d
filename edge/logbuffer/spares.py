"""Large tables' files, made before the request that fills them.

A large table is written to a new file on the request path (`edge.logbuffer.journal`). Two
parts of that can cost more than the rest of its journaling: creating the file (0.35-0.9 ms
of CPU per `open(O_CREAT)` on this machine's ext4, against ~4 µs to open an existing one and
20-100 µs to rename one), and writing into page cache pages the kernel must first find (a
1.5 MB table: ~0.4 ms into new pages, ~0.16 ms over pages already holding the file's zeros).

So once the journal has written a large table, a thread of its own keeps `KEEP` new files
ready in the tables folder, each holding zeros for as many bytes as the last large table
took (at most `PREFILL_MAX`). `claim` renames one to the table's name, cut to the
table's size; with none ready (or a rename that fails) it creates the file as before; on a
nearly full disk spares get no zeros (`ROOM`). A spare's name ends in
`.spare`: no reader or garbage scan takes it for a table, and `clear` deletes what a crash
left.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

log = logging.getLogger(__name__)

SUFFIX = ".spare"
KEEP = 2
PREFILL_MAX = 8 << 20  # a larger table's file gets zeros for this much, the rest as before
ROOM = 256 << 20  # free space below which spares get no zeros (`_room`)
RETRY = 5.0  # seconds after a spare could not be made
_ZEROS = bytes(64 << 10)  # one block, written as many times as the prefill needs
_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC


class Spares:
    """Zero-filled files ready in `folder`, kept by a thread started at the first `claim`."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._ready: list[tuple[int, Path, int]] = []  # descriptor, path, bytes of zeros
        self._want = 0  # the zeros a new spare gets: the last claimed file's size
        self._made = 0
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False

    def clear(self) -> None:
        """Delete the spares a process that stopped without `close` left behind."""
        for path in self.folder.glob(f"*{SUFFIX}"):
            path.unlink(missing_ok=True)

    def claim(self, path: Path, size: int) -> int:
        """A write descriptor of an empty file at `path` (replacing any there), positioned
        at its start, for `size` bytes: a spare renamed when one is ready, else a new file."""
        with self._cond:
            spare = self._ready.pop() if self._ready else None
            self._want = min(size, PREFILL_MAX)
        try:
            if spare is not None:
                fd, spare_path, zeros = spare
                try:
                    if zeros > size:  # the pages up to `size` stay, the rest are let go
                        os.ftruncate(fd, size)
                    os.rename(spare_path, path)
                    return fd
                except OSError:  # the spare is not usable: make the file as without one
                    os.close(fd)
                    spare_path.unlink(missing_ok=True)
            return os.open(path, _FLAGS, 0o600)
        finally:
            # only now: making a file holds the folder's lock, which the rename needs too
            self._wake()

    def _wake(self) -> None:
        with self._cond:
            if self._thread is None and not self._stopping:
                self._thread = threading.Thread(
                    target=self._run, name="logbuffer-spares", daemon=True
                )
                self._thread.start()
            self._cond.notify()

    def close(self) -> None:
        """Stop the thread; close and delete the ready spares."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
            thread = self._thread
        if thread is not None:
            thread.join()
        with self._cond:
            ready, self._ready = self._ready, []
        for fd, path, _ in ready:
            os.close(fd)
            path.unlink(missing_ok=True)

    def _run(self) -> None:
        failing = False  # warned once until a spare is made again
        while True:
            with self._cond:
                while not self._stopping and len(self._ready) >= KEEP:
                    self._cond.wait()
                if self._stopping:
                    return
                want = self._want
                self._made += 1
                path = self.folder / f"{self._made}{SUFFIX}"  # `clear` took older ones
            try:
                spare = _make(path, want if _room(self.folder, want) else 0)
            except OSError as exc:  # a full disk: claims create their files meanwhile
                level = logging.DEBUG if failing else logging.WARNING
                log.log(level, "log buffer: cannot make a spare file in %s: %s", self.folder, exc)
                failing = True
                deadline = time.monotonic() + RETRY
                with self._cond:  # claims' wakes do not end the wait
                    while not self._stopping and time.monotonic() < deadline:
                        self._cond.wait(deadline - time.monotonic())
                continue
            failing = False
            with self._cond:
                self._ready.append(spare)


def _room(folder: Path, zeros: int) -> bool:
    """Whether the disk has room for a spare's zeros with plenty to spare: a nearly full disk
    gets empty spares, so that tables and SQLite, not zeros, take its last blocks."""
    try:
        stat = os.statvfs(folder)
    except OSError:
        return False
    return stat.f_bavail * stat.f_frsize > max(ROOM, 8 * zeros)


def _make(path: Path, zeros: int) -> tuple[int, Path, int]:
    """A new file holding `zeros` bytes of zeros, positioned at its start, and how many it
    holds."""
    fd = os.open(path, _FLAGS, 0o600)
    block = memoryview(_ZEROS)
    try:
        done = 0
        while done < zeros:  # the same block again and again, up to IOV_MAX at a time
            whole, part = divmod(zeros - done, len(block))
            count = min(whole, 1024)
            done += os.writev(fd, [block] * count if count else [block[:part]])
        os.lseek(fd, 0, os.SEEK_SET)
    except OSError:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    return fd, path, done
