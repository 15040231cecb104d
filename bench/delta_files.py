#!/usr/bin/env python3
"""What an upload's file costs the ops center's Delta table, in process: group commits like
the committer's (EDGES uploads of 55 rows, one file per edge per commit) with the upload
files' writer properties (`deltatable.SMALL_WRITES`) against plain Snappy files, CPU per
commit as the table grows; then one compaction of the small files (`compaction.compact`), CPU
per file removed. Run: python bench/delta_files.py [--commits 300] [--edges 114]"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
from deltalake import CommitProperties, DeltaTable, Transaction, WriterProperties, write_deltalake

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.sync import rows_table  # noqa: E402
from ops_sync import compaction, deltatable, logschema  # noqa: E402
from ops_sync.protocol import check_rows  # noqa: E402

ROWS = 55  # an upload's rows (an edge at ~55 rows/s shipping every second)
T0 = 1_790_000_000_000
BLOCK = 50  # commits per printed figure


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)  # every thread: delta-rs writes on its own
    return usage.ru_utime + usage.ru_stime


def upload(template: pa.Table, edge: int, commit: int) -> pa.Table:
    """One edge's batch as the committer stores it (normalized, partitioned, storage types)."""
    start = T0 + commit * 1000
    times = pa.array(np.arange(start, start + ROWS, dtype=np.int64)).cast(
        pa.timestamp("ms", tz="UTC")
    )
    seqs = np.arange(commit * ROWS + 1, (commit + 1) * ROWS + 1, dtype=np.int64)
    name = f"edge-{edge:04d}"
    table = check_rows(template.set_column(0, "time", times))
    table = logschema.normalize(table, name, f"epoch-{edge}", seqs)
    return logschema.to_storage(logschema.with_partitions(table, "ccfraud", name))


def commits(name: str, props: WriterProperties, args: argparse.Namespace) -> str:
    template = rows_table(ROWS, 0, "fleet")
    groups = [
        pa.concat_tables([upload(template, e, c) for e in range(args.edges)])
        for c in range(args.commits)
    ]
    uri = tempfile.mkdtemp(prefix="delta-files-") + "/t"
    partitions = list(logschema.PARTITION_COLUMNS)
    DeltaTable.create(uri, schema=groups[0].schema, partition_by=partitions)
    handle = DeltaTable(uri)
    blocks, began, wall = [], cpu(), time.perf_counter()
    for index, data in enumerate(groups):
        handle.update_incremental()
        marks = [Transaction(f"edge-{e}", (index + 1) * ROWS) for e in range(args.edges)]
        write_deltalake(
            handle,
            data,
            mode="append",
            partition_by=partitions,
            writer_properties=props,
            commit_properties=CommitProperties(app_transactions=marks),
        )
        if (index + 1) % BLOCK == 0:
            blocks.append(round((cpu() - began) / BLOCK * 1e3))
            began = cpu()
    total = time.perf_counter() - wall
    print(
        f"{name}: {args.commits} commits of {args.edges} files, CPU ms per commit by "
        f"{BLOCK}-commit block: {blocks} (wall {total / args.commits * 1e3:.0f} ms per commit)",
        flush=True,
    )
    return uri


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--commits", type=int, default=300)
    ap.add_argument("--edges", type=int, default=114, help="uploads (files) per commit")
    args = ap.parse_args()
    commits("plain snappy", WriterProperties(compression="SNAPPY"), args)
    uri = commits("SMALL_WRITES", deltatable.SMALL_WRITES, args)
    began, wall = cpu(), time.perf_counter()
    removed = compaction.compact(uri, {}, 16 << 20, 8)
    spent = cpu() - began
    per_file = spent / max(removed, 1) * 1e3
    print(
        f"compaction: {removed} files removed, CPU {spent:.1f} s ({per_file:.2f} ms a file), "
        f"wall {time.perf_counter() - wall:.1f} s",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
