#!/usr/bin/env python3
"""Reader benchmark: the logs API's newest 100 rows of one edge over a table of millions.

Starts `python -m ops_sync serve` as a real process (TLS, fresh data dir, free 127.0.0.1
port, compaction off), enrolls `--edges` edges (each joins with its own key), and fills the
pipeline's Delta table through the real upload route: each edge sends `--batches` batches of
`--batch-rows` rows shaped like the breast-cancer example (`bench/sync.py`'s rows). Then it
times `GET /v1/pipelines/ccfraud/logs?partition=EDGE&limit=100` (the newest 100 rows of one
edge, the issue's target: <= 200 ms) and the same without a partition (newest 100 of all),
`--reads` times each over several edges, as the table was ingested (one file per edge per
commit) and again once a restart with compaction on compacted it (measured after another
restart, with no upkeep running beside the reads).
Prints `name value unit` lines and PASS/MISS. Only 127.0.0.1 is contacted.
Run: python bench/logs_read.py [--edges 100] [--batches 50] [--batch-rows 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.sync import bundle_of, join, rows_table  # noqa: E402
from ops_sync.client import AdminClient  # noqa: E402
from ops_sync.protocol import BatchRange, encode_batch  # noqa: E402
from tests.test_ops_support import ADMIN, OpsServer  # noqa: E402

TARGET_MS = 200.0
T0 = 1_790_000_000_000


async def fill(server: OpsServer, contexts: list[object], args: argparse.Namespace) -> int:
    """Every edge sends its batches, one in flight per edge; returns the rows stored."""
    gate = asyncio.Semaphore(args.concurrency)

    async def edge(i: int, ctx: object) -> int:
        stored = 0
        async with httpx.AsyncClient(verify=ctx, timeout=httpx.Timeout(300, connect=30)) as http:  # type: ignore[arg-type]
            for b in range(args.batches):
                first = b * args.batch_rows + 1
                t0 = T0 + i * 7 + b * args.batch_rows * 10
                body = encode_batch(rows_table(args.batch_rows, t0, f"edge-{i:03d}"))
                headers = BatchRange("read-bench", first, first + args.batch_rows - 1).headers()
                async with gate:
                    reply = await http.post(
                        f"{server.url}/v1/edge/logs", content=body, headers=headers
                    )
                reply.raise_for_status()
                stored += reply.json()["stored"]
        return stored

    return sum(await asyncio.gather(*(edge(i, c) for i, c in enumerate(contexts))))


def time_reads(server: OpsServer, args: argparse.Namespace, one_edge: bool) -> list[float]:
    """Milliseconds of each newest-100 call (the first call per edge included)."""
    params = {"limit": "100"}
    took = []
    headers = {"authorization": f"Bearer {ADMIN}"}
    with httpx.Client(verify=str(server.ca), timeout=120, headers=headers) as http:
        for r in range(args.reads):
            if one_edge:
                params["partition"] = f"edge-{(r * 37) % args.edges:03d}"
            started = time.perf_counter()
            reply = http.get(f"{server.url}/v1/pipelines/ccfraud/logs", params=params)
            took.append((time.perf_counter() - started) * 1000)
            reply.raise_for_status()
            assert len(reply.json()) == 100, reply.text[:200]
    return took


def memory(server: OpsServer, when: str) -> None:
    """The ops center's resident memory now and at its peak (VmRSS, VmHWM)."""
    assert server.process is not None
    status = Path(f"/proc/{server.process.pid}/status").read_text().splitlines()
    values = {
        line.split(":")[0]: int(line.split()[1]) >> 10 for line in status if line.startswith("Vm")
    }
    print(f"server_rss_{when} {values['VmRSS']} MiB (peak {values['VmHWM']} MiB)")


def report(name: str, took: list[float]) -> bool:
    p50 = statistics.median(took)
    worst = max(took)
    print(f"{name}_p50 {p50:.1f} ms")
    print(f"{name}_max {worst:.1f} ms (of {len(took)} calls)")
    return p50 <= TARGET_MS


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--edges", type=int, default=100)
    parser.add_argument("--batches", type=int, default=50)
    parser.add_argument("--batch-rows", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--reads", type=int, default=20)
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[attr-defined]
    work = Path(tempfile.mkdtemp(prefix="read-bench-"))
    server = OpsServer(work / "ops", extra=["--upkeep-interval", "100000"])
    server.start()
    try:
        with AdminClient(server.url, ADMIN, server.ca) as admin:
            contexts = [
                join(server, bundle_of(admin, f"edge-{i:03d}"), work / f"edge-{i:03d}")
                for i in range(args.edges)
            ]
        started = time.perf_counter()
        stored = asyncio.run(fill(server, contexts, args))
        seconds = time.perf_counter() - started
        files = len(list((server.data / "tables" / "ccfraud").rglob("*.parquet")))
        print(f"rows_stored {stored} rows ({stored / seconds:,.0f} rows/s ingested)")
        print(f"files_before_compaction {files}")
        memory(server, "after_fill")
        ok = report("newest100_one_edge", time_reads(server, args, True))
        report("newest100_all_edges", time_reads(server, args, False))
        memory(server, "after_reads")
        server.stop()
        server.extra = ["--upkeep-interval", "1"]
        server.start()
        log = server.log_path
        assert log is not None
        deadline = time.monotonic() + 1800
        while "upkeep compacted_files" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(2)
        server.stop()  # measure the compacted table without upkeep rounds running beside
        server.extra = ["--upkeep-interval", "100000"]
        server.start()
        files = len(list((server.data / "tables" / "ccfraud").rglob("*.parquet")))
        print(f"files_after_compaction {files} (still listed: vacuum keeps the old ones a while)")
        ok = report("compacted_newest100_one_edge", time_reads(server, args, True)) and ok
        report("compacted_newest100_all_edges", time_reads(server, args, False))
        memory(server, "after_compaction_and_reads")
        print(f"{'PASS' if ok else 'MISS'} newest 100 rows of one edge <= {TARGET_MS:.0f} ms")
        return 0 if ok else 1
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
