"""The request side of logging: the small results of one turn of the event loop, journaled as one.

`submit` is `LogBuffer.log` for the event loop. The tables of a few rows submitted during one
turn of the loop are journaled together, as one record, at the start of the next turn: one
encode and one write for all the requests the loop is serving (3-5 at concurrency 8), each
waiting one turn for it. A request alone in flight has no one to share a record with: `now`
journals its rows at once, with no future to make or await. A result may come as an Arrow
table, or as `Rows` (numpy columns of the small requests' path): the rows of one turn are
then written as one record batch message from a template of their layout
(`edge.ipc_template`), or else built into one Arrow table, once, instead of one table per
request. Each caller still gets its own sequence range, and each is answered with the error
when the record cannot be written. Larger results (tables or `Rows`) go to a worker thread
(the caller awaits them while its answer is encoded). With `fsync_interval` 0 every result
also waits for the journal's fsync, one for all the requests in flight.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable, Sequence
from typing import Protocol, TypeAlias

import pyarrow as pa

from edge.ipc_template import EncodedBatch
from edge.logbuffer.journal import SeqRange

# `submit` journals a table of up to this many rows on the event loop, a larger one on a
# worker thread
INLINE_ROWS = 64

Log = Callable[[pa.Table | EncodedBatch, int], SeqRange]  # log(table, requests it answers)


class Rows(Protocol):
    """A result not yet in Arrow (`edge.result.ResultRows`): rows of one `key` join into one
    record batch message, in order, with `encoded`, or else into one table with `table`."""

    rows: int

    def key(self) -> Hashable: ...

    @staticmethod
    def table(group: Sequence[Rows]) -> pa.Table: ...

    @staticmethod
    def encoded(group: Sequence[Rows]) -> EncodedBatch | None: ...


Item: TypeAlias = pa.Table | Rows


class TurnBatcher:
    """Gathers `submit`s during one turn of the loop; journals them at the next."""

    def __init__(self, log: Log, sync: Callable[[], None] | None) -> None:
        """`log`: journal a table (raises when it cannot); `sync`: the journal's fsync, to
        wait for before answering (None: do not wait)."""
        self._log = log
        self._sync = sync
        self._turn: list[tuple[Item, asyncio.Future[SeqRange]]] = []

    def submit(self, item: Item) -> asyncio.Future[SeqRange]:
        """Journal `item` with the other small results of this turn of the loop (a large one
        on a worker thread); the future is its sequence range, or the journal's error."""
        loop = asyncio.get_running_loop()
        if rows_of(item) > INLINE_ROWS:  # built (`Rows`) and journaled off the loop
            done: asyncio.Future[SeqRange] = loop.run_in_executor(None, self._log_single, item)
        else:
            done = loop.create_future()
            if not self._turn:
                loop.call_soon(self._log_turn)
            self._turn.append((item, done))
        if self._sync is None:
            return done
        return asyncio.ensure_future(self._synced(done))

    def now(self, item: Item) -> SeqRange | None:
        """Journal a request's rows at once, on the loop, when no other request is in flight
        (none can share the record): no future, no turn to wait. None when it must be
        `submit`ted: a turn is gathering (it joins it), it is large, or answers wait for the
        fsync. Raises what the journal raises."""
        if self._turn or self._sync is not None or rows_of(item) > INLINE_ROWS:
            return None
        return self._log_single(item)

    def _log_single(self, item: Item) -> SeqRange:
        return self._log(_join([item]), 1)

    def _log_turn(self) -> None:
        """Journal what was gathered in one turn of the loop: each run of one schema (tables)
        or one key (rows) as one table, each caller told its own part of the sequence range."""
        gathered, self._turn = self._turn, []
        start = 0
        while start < len(gathered):
            kind = _kind(gathered[start][0])
            end = start + 1
            while end < len(gathered) and _same(kind, gathered[end][0]):
                end += 1
            group = gathered[start:end]
            start = end
            try:
                joined = _join([item for item, _ in group])
            except Exception:  # cannot be joined: one record each
                for one in group:
                    self._log_one(one)
                continue
            self._log_group(group, joined)

    def _log_one(self, one: tuple[Item, asyncio.Future[SeqRange]]) -> None:
        try:
            table = _join([one[0]])
        except Exception as exc:
            if not one[1].done():
                one[1].set_exception(exc)
            return
        self._log_group([one], table)

    def _log_group(
        self, group: list[tuple[Item, asyncio.Future[SeqRange]]], joined: pa.Table | EncodedBatch
    ) -> None:
        try:
            seqs = self._log(joined, len(group))
        except Exception as exc:  # each caller answers with the error
            for _, fut in group:
                if not fut.done():
                    fut.set_exception(exc)
            return
        first = seqs.first
        for item, fut in group:
            last = first + rows_of(item) - 1
            if not fut.done():  # a caller may be gone
                fut.set_result(SeqRange(seqs.epoch, first, last))
            first = last + 1

    async def _synced(self, logged: asyncio.Future[SeqRange]) -> SeqRange:
        seq_range = await logged
        assert self._sync is not None
        await asyncio.get_running_loop().run_in_executor(None, self._sync)
        return seq_range


def _kind(item: Item) -> object:
    return item.schema if isinstance(item, pa.Table) else item.key()


def _same(kind: object, item: Item) -> bool:
    if isinstance(item, pa.Table):
        return isinstance(kind, pa.Schema) and item.schema.equals(kind)
    return not isinstance(kind, pa.Schema) and item.key() == kind


def rows_of(item: Item) -> int:
    """A result's rows, a table's or `Rows`'."""
    return item.num_rows if isinstance(item, pa.Table) else item.rows


def _join(items: list[Item]) -> pa.Table | EncodedBatch:
    """Tables of one schema as one table of one record batch; rows of one key as one
    message, or one table when their layout has no template."""
    tables = [item for item in items if isinstance(item, pa.Table)]
    if not tables:
        rows: list[Rows] = [item for item in items if not isinstance(item, pa.Table)]
        kind = type(rows[0])
        return kind.encoded(rows) or kind.table(rows)
    return tables[0] if len(tables) == 1 else _joined(tables)


def _joined(tables: list[pa.Table]) -> pa.Table:
    """Tables of one schema as one table of one record batch."""
    batches = [batch for table in tables for batch in table.to_batches()]
    return pa.Table.from_batches([pa.concat_batches(batches)])
