"""Helpers for the log buffer's tests: result tables, a parked writer, a simulated crash."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa

from edge.logbuffer import LogBuffer, SeqRange
from edge.logbuffer.inbox import Call

TIME = pa.timestamp("ms", tz="UTC")
T0 = 1_700_000_000_000


def result_table(
    rows: int = 1,
    time_ms: int = T0,
    big: int = 0,
    version: str = "v1",
    out_width: int = 1,
) -> pa.Table:
    """A result table shaped like the pipeline's (docs/CONTRACTS.md)."""
    rng = np.random.default_rng(rows + time_ms + big)
    columns: dict[str, pa.Array] = {
        "time": pa.array([time_ms] * rows, TIME),
        "in.tensor": pa.array([[1.0, 2.0, 3.0]] * rows, pa.list_(pa.float64())),
    }
    if big:
        columns["in.image"] = pa.array(list(rng.random((rows, big))), pa.list_(pa.float64()))
    columns["out.dense_1"] = pa.array(list(rng.random((rows, out_width))), pa.list_(pa.float32()))
    columns["anomaly.count"] = pa.array([0] * rows, pa.uint32())
    columns["metadata.last_model"] = pa.array(['{"model_name":"m","model_sha":"abc"}'] * rows)
    columns["metadata.pipeline_version"] = pa.array([version] * rows)
    columns["metadata.elapsed"] = pa.array([[10, 20]] * rows, pa.list_(pa.int64()))
    columns["metadata.dropped"] = pa.array([[]] * rows, pa.list_(pa.string()))
    columns["metadata.partition"] = pa.array(["edge-1"] * rows)
    return pa.table(columns)


def small_table(rows: int, start: int = 0) -> pa.Table:
    """`rows` rows, `in.x` numbering them from `start`."""
    return pa.table(
        {
            "time": pa.array([T0 + start + i for i in range(rows)], TIME),
            "in.x": pa.array([float(start + i) for i in range(rows)]),
        }
    )


def stored(buffer: LogBuffer, table: pa.Table) -> SeqRange:
    """Log `table` and wait until SQLite holds it."""
    seqs = buffer.log(table)
    buffer.flush()
    return seqs


def stored_seqs(buffer: LogBuffer) -> list[int]:
    seqs: list[int] = []
    for batch in buffer.pending(10**9):
        assert batch.table.num_rows == batch.last_seq - batch.first_seq + 1
        seqs.extend(range(batch.first_seq, batch.last_seq + 1))
    return seqs


def stored_x(buffer: LogBuffer) -> dict[int, float]:
    """seq -> in.x of every row SQLite holds."""
    rows: dict[int, float] = {}
    for batch in buffer.pending(10**9):
        for offset, x in enumerate(batch.table.column("in.x").to_pylist()):
            rows[batch.first_seq + offset] = x
    return rows


def eventually(check: Callable[[], bool], seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def parked_writer(buffer: LogBuffer) -> threading.Event:
    """Keep the writer thread waiting until the returned event is set: SQLite gets nothing."""
    inside, release = threading.Event(), threading.Event()

    def stuck() -> None:
        inside.set()
        release.wait()

    buffer._inbox.put(Call(stuck, concurrent.futures.Future()))
    assert inside.wait(10)
    return release


def crash(buffer: LogBuffer) -> None:
    """Let go of the buffer's files as a killed process would: no commit, no clean close."""
    buffer._writer._thread = None
    buffer._journal.close()
    buffer._reads.close()
    buffer._store.close()


def journal_files(db: Path) -> list[Path]:
    return sorted(Path(f"{db}.journal").glob("*.journal"))


def table_files(db: Path) -> set[str]:
    return {p.name for p in Path(f"{db}.tables").glob("*.table")}


def kill_after_lines(source: str, db: Path, lines: int) -> list[list[bytes]]:
    """Run `source` (a script taking the buffer path) until it printed `lines` lines, SIGKILL
    it, and return every whole line it printed, split into fields."""
    script = db.parent / "child.py"
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text(source)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    process = subprocess.Popen(
        [sys.executable, str(script), str(db)], stdout=subprocess.PIPE, env=env
    )
    assert process.stdout is not None
    printed: list[bytes] = []
    deadline = time.monotonic() + 30
    while len(printed) < lines and time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        printed.append(line)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    printed += process.stdout.read().splitlines(keepends=True)
    return [line.split() for line in printed if line.endswith(b"\n")]
