"""The writer thread's inbox: journaled tables to store, and calls to run, in one order.

Tables are bounded (backpressure): at most `max_items` of them and `max_bytes` of Arrow data
wait (one table is always admitted to an empty inbox); past that `LogBuffer.log` raises
`LogBufferFull` at once, nothing journaled, and the caller answers with the error. Calls
(acks, `flush`) and the stop always get in. The journal adds tables under its lock, so the
inbox holds them in sequence order.
"""

from __future__ import annotations

import collections
import concurrent.futures
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from edge.errors import LogBufferError
from edge.result import time_bounds


@dataclass
class Append:
    """A journaled table for SQLite: the table itself, or only the record batch messages
    the journal wrote (`messages`), which SQLite stores as they are."""

    table: pa.Table | None  # None: `messages` alone (a turn's rows written from a template)
    schema: pa.Schema
    rows: int
    nbytes: int
    first_seq: int
    file: str | None = None  # a large table's own file, which the row will name
    file_bytes: int = 0
    # the journal's record batch messages, which SQLite stores as they are (None: encode)
    messages: list[bytes | pa.Buffer] | None = None
    # earliest and latest `time` in epoch ms, when known without the table
    bounds: tuple[int | None, int | None] | None = None

    @classmethod
    def of(
        cls,
        table: pa.Table,
        nbytes: int,
        first_seq: int,
        file: str | None = None,
        file_bytes: int = 0,
        messages: list[bytes | pa.Buffer] | None = None,
    ) -> Append:
        return cls(
            table, table.schema, table.num_rows, nbytes, first_seq, file, file_bytes, messages
        )

    def time_bounds(self) -> tuple[int | None, int | None]:
        if self.bounds is None:
            assert self.table is not None
            self.bounds = time_bounds(self.table)
        return self.bounds

    @property
    def last_seq(self) -> int:
        return self.first_seq + self.rows - 1


@dataclass
class Call:
    """A function for the writer thread to run, in queue order."""

    fn: Callable[[], Any]
    future: concurrent.futures.Future[Any]


class Stop:
    pass


Item = Append | Call | Stop


class Inbox:
    """Appends are bounded, control calls always get in."""

    def __init__(self, max_items: int, max_bytes: int) -> None:
        self._items: collections.deque[Item] = collections.deque()
        self._cond = threading.Condition()
        self._max_items = max_items
        self._max_bytes = max_bytes
        self._appends = 0
        self._bytes = 0
        self.closed = False

    def has_room(self, nbytes: int) -> bool:
        with self._cond:
            if self.closed:
                raise LogBufferError("log buffer is closed")
            return not self._appends or (
                self._appends < self._max_items and self._bytes + nbytes <= self._max_bytes
            )

    def add(self, item: Append) -> None:
        """Queue an append (the journal checked `has_room` under its lock). The writer is
        woken by the first append and again only when a quarter of the inbox is used: it
        lingers to store many appends in one transaction."""
        with self._cond:
            self._appends += 1
            self._bytes += item.nbytes
            self._items.append(item)
            if (
                self._appends == 1
                or self._appends * 4 >= self._max_items
                or self._bytes * 4 >= self._max_bytes
            ):
                self._cond.notify()

    def put(self, item: Call | Stop) -> None:
        with self._cond:
            if self.closed:
                raise LogBufferError("log buffer is closed")
            if isinstance(item, Stop):
                self.closed = True
            self._items.append(item)
            self._cond.notify()

    def take(self, timeout: float, limit: int, linger: float = 0.0) -> list[Item]:
        """Wait up to `timeout` for work; when it is only appends, linger up to `linger`
        seconds for more (one transaction for all of them), unless the inbox fills."""
        with self._cond:
            if not self._items:
                self._cond.wait(timeout)
            if self._items and len(self._items) == self._appends and not self.closed:
                self._cond.wait(linger)
            taken: list[Item] = []
            while self._items and len(taken) < limit:
                item = self._items.popleft()
                if isinstance(item, Append):
                    self._appends -= 1
                    self._bytes -= item.nbytes
                taken.append(item)
            return taken

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)
