#!/usr/bin/env python3
"""Sync benchmark: log rows/s shipped from one edge, and ingested from 50 edges at once.

In one run this starts `python -m ops_sync serve` as a real process (TLS, fresh data dir, free
127.0.0.1 port) and measures:
  (a) one edge: a real `edge.logbuffer.LogBuffer` pre-filled with `--edge-rows` result rows
      (tables of `--table-rows`, shaped like the breast-cancer example: 30 float inputs, one
      output, anomaly and metadata columns) drained by a real `SyncAgent` over mutual TLS
      (join, compressed Arrow IPC batches of `--batch-rows`, ack after each reply);
      rows/s = rows / time until the buffer has nothing unsynced;
  (b) fifty edges: `--edges` edges enrolled and joined (each its own key and certificate),
      each sending `--batches` pre-encoded batches of `--batch-rows` rows concurrently (one
      connection per edge, one batch in flight per edge, as the agent does); rows/s = rows
      stored / wall time; then checks with DuckDB that every row is in the Delta table
      exactly once.
Prints `name value unit` lines and PASS/MISS against the 100,000 rows/s ingest target.
Only 127.0.0.1 is contacted; the server is stopped by its PID.
Run: /work/venv/bin/python bench/sync.py [--edges 50] [--batches 20] [--batch-rows 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import pyarrow as pa

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from edge.logbuffer import LogBuffer  # noqa: E402
from ops_sync import protocol as bundle  # noqa: E402
from ops_sync.agent import SyncAgent  # noqa: E402
from ops_sync.client import AdminClient  # noqa: E402
from ops_sync.identity import build_ssl_context, key_pem, make_csr, new_key  # noqa: E402
from ops_sync.protocol import BatchRange, encode_batch  # noqa: E402
from tests.test_ops_support import ADMIN, PIPELINE_URL, OpsServer, table_rows  # noqa: E402

TARGET = 100_000


def rows_table(n: int, t0_ms: int, edge: str) -> pa.Table:
    rng = np.random.default_rng(t0_ms)
    features = rng.random((n, 30), dtype=np.float32)
    tensor = pa.FixedSizeListArray.from_arrays(pa.array(features.ravel()), 30)
    out = pa.FixedSizeListArray.from_arrays(pa.array(features[:, 0]), 1)
    time_ms = pa.array(np.arange(t0_ms, t0_ms + n), pa.int64())
    return pa.table(
        {
            "time": time_ms.cast(pa.timestamp("ms", tz="UTC")),
            "in.tensor": tensor.cast(pa.list_(pa.float32())),
            "out.output": out.cast(pa.list_(pa.float32())),
            "anomaly.count": pa.array(np.zeros(n, np.uint32)),
            "metadata.last_model": pa.array(['{"model_name":"bc","model_sha":"ab12"}'] * n),
            "metadata.pipeline_version": pa.array(["3b49fba8-94d8-4fca-aecc-c75257fd16c6"] * n),
            "metadata.elapsed": pa.array([[41000, 23000]] * n, pa.list_(pa.int64())),
            "metadata.dropped": pa.array([[]] * n, pa.list_(pa.string())),
            "metadata.partition": pa.array([edge] * n),
        }
    )


def bundle_of(admin: AdminClient, name: str) -> dict[str, str]:
    record = admin.add_edge(name, PIPELINE_URL)
    return bundle.decode(record["docker_run_variables"]["EDGE_BUNDLE"])


async def one_edge(
    server: OpsServer, admin: AdminClient, work: Path, args: argparse.Namespace
) -> float:
    values = bundle_of(admin, "bench-one")
    buffer = LogBuffer(work / "edge" / "logbuffer.db", max_bytes=4 << 30)
    buffer.start()
    try:
        for i in range(0, args.edge_rows, args.table_rows):
            buffer.log(rows_table(args.table_rows, 1_790_000_000_000 + i, "bench-one"))
            buffer.flush()  # stored in SQLite before the sync starts
        agent = SyncAgent(values, work / "edge", buffer, dict, ship_interval=0.01)
        await agent.start()
        started = time.perf_counter()
        while buffer.stats()["unsynced_rows"]:
            await asyncio.sleep(0.01)
        elapsed = time.perf_counter() - started
        await agent.stop()
    finally:
        buffer.close()
    return args.edge_rows / elapsed


def join(server: OpsServer, values: dict[str, str], directory: Path) -> object:
    key = new_key()
    trust = build_ssl_context("client", ca_pem=server.ca.read_bytes())
    body = {"token": values["JOIN_TOKEN"], "csr": make_csr(key, "bench").decode()}
    reply = httpx.post(f"{server.url}/v1/edge/join", json=body, verify=trust, timeout=30)
    reply.raise_for_status()
    directory.mkdir(parents=True)
    (directory / "edge.crt").write_text(reply.json()["certificate"])
    (directory / "edge.key").write_bytes(key_pem(key))
    return build_ssl_context(
        "client",
        ca_pem=server.ca.read_bytes(),
        cert_file=directory / "edge.crt",
        key_file=directory / "edge.key",
    )


async def fifty_edges(
    server: OpsServer, admin: AdminClient, work: Path, args: argparse.Namespace
) -> tuple[float, int]:
    contexts = [
        join(server, bundle_of(admin, f"bench-{i:02d}"), work / f"edge-{i:02d}")
        for i in range(args.edges)
    ]
    bodies = [
        encode_batch(rows_table(args.batch_rows, 1_790_000_000_000 + b * args.batch_rows, "x"))
        for b in range(args.batches)
    ]

    async def edge(ctx: object) -> int:
        async with httpx.AsyncClient(verify=ctx, timeout=httpx.Timeout(120, connect=10)) as http:  # type: ignore[arg-type]
            stored = 0
            for b, body in enumerate(bodies):
                first = b * args.batch_rows + 1
                headers = BatchRange("bench", first, first + args.batch_rows - 1).headers()
                reply = await http.post(f"{server.url}/v1/edge/logs", content=body, headers=headers)
                reply.raise_for_status()
                stored += reply.json()["stored"]
            return stored

    started = time.perf_counter()
    stored = sum(await asyncio.gather(*(edge(ctx) for ctx in contexts)))
    return stored / (time.perf_counter() - started), stored


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--edges", type=int, default=50)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--batch-rows", type=int, default=2000)
    parser.add_argument("--edge-rows", type=int, default=200_000)
    parser.add_argument("--table-rows", type=int, default=100)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="sync-bench-"))
    server = OpsServer(work / "ops")
    server.start()
    try:
        with AdminClient(server.url, ADMIN, server.ca) as admin:
            shipped = asyncio.run(one_edge(server, admin, work, args))
            print(
                f"one_edge_shipped {shipped:,.0f} rows/s ({args.edge_rows} rows in tables of "
                f"{args.table_rows}, the agent's default batches of 10,000 rows, TLS)"
            )
            ingest, stored = asyncio.run(fifty_edges(server, admin, work, args))
        rows = table_rows(f"{server.data}/tables/ccfraud", "partition <> 'bench-one'")
        count, distinct = len(rows), len(set(rows))
        shape = f"{args.edges} edges x {args.batches} batches x {args.batch_rows} rows"
        print(f"edges_ingest {ingest:,.0f} rows/s ({shape}, TLS)")
        expected = args.edges * args.batches * args.batch_rows
        print(f"stored_exactly_once rows={count} distinct={distinct} expected={expected}")
        print(f"cpu_count {os.cpu_count()}")
        verdict = "PASS" if ingest >= TARGET and count == distinct == stored else "MISS"
        print(f"{verdict} ingest target {TARGET:,} rows/s")
        return 0 if verdict == "PASS" else 1
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
