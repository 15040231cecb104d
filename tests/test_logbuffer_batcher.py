"""The request side: the submits of one turn of the event loop, journaled as one record."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pyarrow as pa
import pytest

from edge.errors import LogBufferDiskFull, LogBufferFull
from edge.logbuffer import LogBuffer, SeqRange
from edge.logbuffer.batcher import INLINE_ROWS, TurnBatcher
from tests.logbuffer_support import crash, parked_writer, small_table, stored_x


class FakeLog:
    """`log(table, requests)` numbering tables from 1, or failing with `error`."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []  # (rows, requests)
        self.next = 1
        self.error: Exception | None = None
        self._lock = threading.Lock()  # large tables are logged from a worker thread

    def __call__(self, table: pa.Table, requests: int) -> SeqRange:
        if self.error is not None:
            raise self.error
        with self._lock:
            self.calls.append((table.num_rows, requests))
            first, self.next = self.next, self.next + table.num_rows
        return SeqRange("e", first, first + table.num_rows - 1)


def test_a_turn_is_one_call_per_schema_and_each_caller_gets_its_part() -> None:
    log = FakeLog()
    batcher = TurnBatcher(log, None)
    other = small_table(2, start=10).append_column("in.y", pa.array([1, 2]))
    large = small_table(INLINE_ROWS + 1)

    async def one_turn() -> list[SeqRange]:
        tables = [small_table(1), small_table(2), other, small_table(1), large]
        return await asyncio.gather(*(batcher.submit(t) for t in tables))

    ranges = asyncio.run(one_turn())
    # runs of one schema, in order; the large table on a worker thread, on its own
    assert sorted(log.calls) == sorted([(3, 2), (2, 1), (1, 1), (INLINE_ROWS + 1, 1)])
    spans = [(r.first, r.last) for r in ranges[:4]]
    assert spans[0][1] + 1 == spans[1][0]  # the first two share one call, in submit order
    assert [r.count for r in ranges] == [1, 2, 2, 1, INLINE_ROWS + 1]


class FakeRows:
    """A result not yet in Arrow (`batcher.Rows`) of `rows` rows; records where it is built."""

    built_on: list[str] = []

    def __init__(self, rows: int) -> None:
        self.rows = rows

    def key(self) -> str:
        return "one layout"

    @staticmethod
    def table(group: list[FakeRows]) -> pa.Table:
        FakeRows.built_on.append(threading.current_thread().name)
        return small_table(sum(r.rows for r in group))

    @staticmethod
    def encoded(group: list[FakeRows]) -> None:
        return None  # no template: built with `table`


def test_a_large_result_not_yet_in_arrow_is_built_and_journaled_off_the_loop() -> None:
    """A large compiled-plan result (numpy rows) would stall every connection if its table
    were built and written on the event loop: like a large table, it goes to a thread."""
    log = FakeLog()
    batcher = TurnBatcher(log, None)
    FakeRows.built_on = []

    async def one_turn() -> tuple[str, list[SeqRange]]:
        submits = [batcher.submit(FakeRows(INLINE_ROWS + 1)), batcher.submit(FakeRows(2))]
        return threading.current_thread().name, list(await asyncio.gather(*submits))

    loop_thread, ranges = asyncio.run(one_turn())
    assert [r.count for r in ranges] == [INLINE_ROWS + 1, 2]
    assert sorted(log.calls) == [(2, 1), (INLINE_ROWS + 1, 1)]
    assert len(FakeRows.built_on) == 2
    assert FakeRows.built_on.count(loop_thread) == 1  # the small one, at the loop's next turn


def test_when_the_call_fails_every_caller_of_the_turn_gets_the_error() -> None:
    log = FakeLog()
    log.error = LogBufferDiskFull("disk full")
    batcher = TurnBatcher(log, None)

    async def one_turn() -> list[SeqRange | BaseException]:
        submits = (batcher.submit(small_table(1, start=i)) for i in range(4))
        return await asyncio.gather(*submits, return_exceptions=True)

    assert all(r is log.error for r in asyncio.run(one_turn()))


def test_the_submits_of_one_loop_turn_are_journaled_as_one_record(tmp_path: Path) -> None:
    db = tmp_path / "logbuffer.db"
    buffer = LogBuffer(db)
    buffer.start()
    parked_writer(buffer)
    other = small_table(2, start=10).append_column("in.y", pa.array([1, 2]))  # another schema

    async def one_turn() -> list[SeqRange]:
        tables = [small_table(1, start=0), small_table(1, start=1), other, small_table(1, start=2)]
        return await asyncio.gather(*(buffer.submit(t) for t in tables))

    ranges = asyncio.run(one_turn())
    # each caller gets its own numbers, in submit order
    assert [(r.first, r.last) for r in ranges] == [(1, 1), (2, 2), (3, 4), (5, 5)]
    records = buffer._journal.read(live=True)
    # a run of one schema is one record: one encode and one write for many requests
    assert [(r.first_seq, r.rows) for r in records] == [(1, 2), (3, 2), (5, 1)]
    crash(buffer)
    with LogBuffer(db) as reopened:
        assert stored_x(reopened) == {1: 0.0, 2: 1.0, 3: 10.0, 4: 11.0, 5: 2.0}


def test_a_request_alone_is_journaled_at_once_others_wait_for_the_turn() -> None:
    log = FakeLog()
    batcher = TurnBatcher(log, None)

    async def run() -> None:
        alone = batcher.now(small_table(1))
        assert alone is not None and log.calls == [(1, 1)]  # written before `now` returned
        assert (alone.first, alone.last) == (1, 1)
        first = batcher.submit(small_table(1))
        assert batcher.now(small_table(2)) is None  # a turn is gathering: submit joins it
        late = batcher.submit(small_table(2))
        assert not late.done() and log.calls == [(1, 1)]
        await asyncio.gather(first, late)
        assert log.calls == [(1, 1), (3, 2)]  # one record for the turn's two requests
        assert batcher.now(FakeRows(INLINE_ROWS + 1)) is None  # large: off the loop
        log.error = LogBufferFull("full")
        with pytest.raises(LogBufferFull):
            batcher.now(small_table(1))

    asyncio.run(run())


def test_a_request_alone_still_waits_for_the_fsync_each_answer_waits_for() -> None:
    log, synced = FakeLog(), threading.Event()
    batcher = TurnBatcher(log, synced.set)

    async def run() -> None:
        assert batcher.now(small_table(1)) is None  # the answer must wait: submit
        logged = batcher.submit(small_table(1))
        assert not synced.is_set()
        await logged
        assert synced.is_set() and log.calls == [(1, 1)]

    asyncio.run(run())


def test_a_full_queue_fails_every_submit_of_the_turn_and_journals_none(tmp_path: Path) -> None:
    db = tmp_path / "logbuffer.db"
    buffer = LogBuffer(db, max_queue=1)
    buffer.start()
    parked_writer(buffer)

    async def turn(start: int) -> list[SeqRange | BaseException]:
        tables = [small_table(1, start=start + i) for i in range(3)]
        return await asyncio.gather(*(buffer.submit(t) for t in tables), return_exceptions=True)

    assert all(isinstance(r, SeqRange) for r in asyncio.run(turn(0)))  # an empty queue admits
    refused = asyncio.run(turn(100))
    assert all(isinstance(r, LogBufferFull) for r in refused)
    assert buffer.stats()["rejected"] == 3  # requests refused
    crash(buffer)
    with LogBuffer(db) as reopened:
        assert stored_x(reopened) == {1: 0.0, 2: 1.0, 3: 2.0}  # nothing of the refused turn


def test_tables_of_a_turn_that_cannot_be_joined_are_journaled_one_by_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import edge.logbuffer.batcher as batcher_module

    def unjoinable(tables: list[pa.Table]) -> pa.Table:
        raise pa.ArrowInvalid("cannot concatenate")

    monkeypatch.setattr(batcher_module, "_joined", unjoinable)
    with LogBuffer(tmp_path / "logbuffer.db") as buffer:

        async def one_turn() -> list[SeqRange]:
            return await asyncio.gather(*(buffer.submit(small_table(1, start=i)) for i in range(3)))

        ranges = asyncio.run(one_turn())
        assert [(r.first, r.last) for r in ranges] == [(1, 1), (2, 2), (3, 3)]
        buffer.flush()
        assert stored_x(buffer) == {1: 0.0, 2: 1.0, 3: 2.0}
