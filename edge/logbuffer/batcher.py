"""The request side of logging: the small tables of one turn of the event loop, journaled as one.

`submit` is `LogBuffer.log` for the event loop. The tables of a few rows submitted during one
turn of the loop are journaled together, as one record, at the start of the next turn: one
encode and one write for all the requests the loop is serving (3-5 at concurrency 8), each
waiting one turn for it. Each caller still gets its own sequence range, and each is answered
with the error when the record cannot be written. Larger tables go to a worker thread (the
caller awaits them while its answer is encoded). With `fsync_interval` 0 every result also
waits for the journal's fsync, one for all the requests in flight.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pyarrow as pa

from edge.logbuffer.journal import SeqRange

# `submit` journals a table of up to this many rows on the event loop, a larger one on a
# worker thread
INLINE_ROWS = 64

Log = Callable[[pa.Table, int], SeqRange]  # log(table, requests it answers)


class TurnBatcher:
    """Gathers `submit`s during one turn of the loop; journals them at the next."""

    def __init__(self, log: Log, sync: Callable[[], None] | None) -> None:
        """`log`: journal a table (raises when it cannot); `sync`: the journal's fsync, to
        wait for before answering (None: do not wait)."""
        self._log = log
        self._sync = sync
        self._turn: list[tuple[pa.Table, asyncio.Future[SeqRange]]] = []

    def submit(self, table: pa.Table) -> asyncio.Future[SeqRange]:
        loop = asyncio.get_running_loop()
        if table.num_rows > INLINE_ROWS:
            done: asyncio.Future[SeqRange] = loop.run_in_executor(None, self._log, table, 1)
        else:
            done = loop.create_future()
            if not self._turn:
                loop.call_soon(self._log_turn)
            self._turn.append((table, done))
        if self._sync is None:
            return done
        return asyncio.ensure_future(self._synced(done))

    def _log_turn(self) -> None:
        """Journal the tables gathered in one turn of the loop: each run of one schema as one
        table, each caller told its own part of the sequence range."""
        gathered, self._turn = self._turn, []
        start = 0
        while start < len(gathered):
            schema = gathered[start][0].schema
            end = start + 1
            while end < len(gathered) and gathered[end][0].schema.equals(schema):
                end += 1
            group = gathered[start:end]
            start = end
            tables = [table for table, _ in group]
            try:
                joined = tables[0] if len(tables) == 1 else _joined(tables)
            except Exception:  # cannot be joined: one record each
                for one in group:
                    self._log_group([one], one[0])
                continue
            self._log_group(group, joined)

    def _log_group(
        self, group: list[tuple[pa.Table, asyncio.Future[SeqRange]]], joined: pa.Table
    ) -> None:
        try:
            seqs = self._log(joined, len(group))
        except Exception as exc:  # each caller answers with the error
            for _, fut in group:
                if not fut.done():
                    fut.set_exception(exc)
            return
        first = seqs.first
        for table, fut in group:
            last = first + table.num_rows - 1
            if not fut.done():  # a caller may be gone
                fut.set_result(SeqRange(seqs.epoch, first, last))
            first = last + 1

    async def _synced(self, logged: asyncio.Future[SeqRange]) -> SeqRange:
        seq_range = await logged
        assert self._sync is not None
        await asyncio.get_running_loop().run_in_executor(None, self._sync)
        return seq_range


def _joined(tables: list[pa.Table]) -> pa.Table:
    """Tables of one schema as one table of one record batch."""
    batches = [batch for table in tables for batch in table.to_batches()]
    return pa.Table.from_batches([pa.concat_batches(batches)])
