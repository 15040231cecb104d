"""Compaction of one Delta log table: the small files of each partition (pipeline, edge, day)
merged into larger ones, size-tiered, so that no row is rewritten more than a few times.

An upload is one small file per edge per commit. delta-rs's own `optimize.compact` bins every
file under its target size, so each pass also rewrote the previous pass's output: a pass's work
grew with the day's bytes (at 1,000 edges an hour in, more than the machine has). Here a pass
takes, per partition, its files below half the target: every upload file (oldest first), then
compacted files, fewest rows first, while the next holds at most `GROWTH` times the rows taken
so far (bytes past the target start another merge, so a pass may write several files). A
compacted file is rewritten only beside at least half its rows of others, so the file holding
a row grows by half at least at each rewrite, and a row is rewritten a few times, not once a
pass. Rows are written in time order.

One commit holds up to `MERGES_PER_COMMIT` merges: their new files added, their old files
removed (`dataChange: false`, as optimize writes them), and the advance of the application id
`COMPACTION_APP`. delta-rs does not refuse two commits that remove the same file with
`dataChange: false`; two compactors (a replica whose upkeep lease ran out, say) would then both
add a copy of those rows. Each commit advancing that one application id makes the second a
concurrent transaction, refused; its new files are deleted. A commit that deleted files a merge
read (retention) is refused by delta-rs itself. Each later commit of a pass is checked against
the snapshot after the one before: the pass stops if another compactor committed in between,
and leaves out merges whose files went meanwhile. Appends commit beside a compaction: it
removes only the files it read, and a reader's snapshot keeps the old files until vacuum.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
import urllib.parse
import uuid
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from deltalake import CommitProperties, DeltaTable, Transaction
from deltalake.exceptions import CommitFailedError, TableNotFoundError
from deltalake.transaction import AddAction, RemoveAction

from ops_sync.deltatable import file_list, filesystem
from ops_sync.logschema import PARTITION_COLUMNS

log = logging.getLogger("ops_sync.compaction")
GROWTH = 2  # a compacted file joins a merge only if its rows are at most this times those taken
MERGES_PER_COMMIT = 200
COMPACTION_APP = "ops-sync/compaction"
ROW_GROUP_ROWS = 16_384  # a read of the newest rows of a compacted file opens the last ones


@dataclass
class Merge:
    """The files of one partition to be rewritten as one."""

    partition: dict[str, str | None]
    paths: list[str]  # as stored on the table's file system (not URL-encoded)
    sizes: list[int]


def compact(uri: str, options: dict[str, str], target_bytes: int, min_files: int) -> int:
    """Merge the small files of each partition with at least `min_files` of them to merge;
    files removed."""
    try:
        handle = DeltaTable(uri, storage_options=options)
    except TableNotFoundError:
        return 0
    merges = plan(handle, target_bytes, min_files)
    if not merges:
        return 0
    fs = filesystem(uri, options)
    schema = pa.schema(handle.schema().to_arrow())
    stored = pa.schema([f for f in schema if f.name not in PARTITION_COLUMNS])
    removed = 0
    version = (handle.transaction_version(COMPACTION_APP) or 0) + 1
    while merges:
        chunk, merges = merges[:MERGES_PER_COMMIT], merges[MERGES_PER_COMMIT:]
        written: list[str] = []
        try:
            actions = _actions(fs, chunk, stored, written)
            handle.create_write_transaction(
                actions,
                mode="append",
                schema=handle.schema(),
                partition_by=list(PARTITION_COLUMNS),
                commit_properties=CommitProperties(
                    app_transactions=[Transaction(COMPACTION_APP, version)]
                ),
            )
        except (CommitFailedError, FileNotFoundError) as exc:
            # another compactor, or a retention delete (or vacuum) took files we read
            log.info("compaction conflict table=%s: %s", uri, str(exc).splitlines()[0][:200])
            _delete(fs, written)
            return removed
        except BaseException:
            if not _landed(handle, version):  # an error after the commit keeps its files
                _delete(fs, written)
            raise
        removed += sum(len(m.paths) for m in chunk)
        # The next commit is checked against the snapshot after ours: stop if another
        # compactor committed since, and drop merges whose files went meanwhile (retention).
        handle.update_incremental()
        if handle.transaction_version(COMPACTION_APP) != version:
            return removed
        version += 1
        active = {urllib.parse.unquote(p) for p in file_list(handle).column("path").to_pylist()}
        merges = [m for m in merges if active.issuperset(m.paths)]
    return removed


def _actions(
    fs: pafs.FileSystem, chunk: list[Merge], stored: pa.Schema, written: list[str]
) -> list[AddAction | RemoveAction]:
    """Each merge's new file written (its path put in `written` first), its add action and
    the remove actions of the files it merges."""
    actions: list[AddAction | RemoveAction] = []
    now = int(time.time() * 1000)
    for merge in chunk:
        path = f"{merge.paths[0].rsplit('/', 1)[0]}/part-00000-{uuid.uuid4()}-c000.zstd.parquet"
        written.append(path)
        actions.append(_rewrite(fs, merge, stored, path, now))
        actions.extend(
            RemoveAction(
                path=old,
                data_change=False,
                deletion_timestamp=now,
                partition_values=merge.partition,
                size=size,
            )
            for old, size in zip(merge.paths, merge.sizes, strict=True)
        )
    return actions


def _landed(handle: DeltaTable, version: int) -> bool:
    """Whether our commit of `version` is in the table (unknown counts as yes)."""
    try:
        handle.update_incremental()
        return (handle.transaction_version(COMPACTION_APP) or 0) >= version
    except Exception:
        return True


def plan(handle: DeltaTable, target_bytes: int, min_files: int) -> list[Merge]:
    """The merges of one pass (see the module docstring), partition by partition."""
    files = file_list(handle)
    small = files.filter(pc.less(files.column("bytes"), target_bytes // 2))
    if small.num_rows < min_files:
        return []
    groups: dict[tuple[str | None, ...], list[dict[str, Any]]] = {}
    for file in small.to_pylist():
        groups.setdefault(tuple(file[c] for c in PARTITION_COLUMNS), []).append(file)
    merges = []
    for key, members in groups.items():
        if len(members) < min_files:
            continue
        members.sort(key=_order)
        for run in _runs(members, target_bytes):
            if len(run) >= min_files:
                merges.append(
                    Merge(
                        partition=dict(zip(PARTITION_COLUMNS, key, strict=True)),
                        paths=[urllib.parse.unquote(f["path"]) for f in run],
                        sizes=[int(f["bytes"]) for f in run],
                    )
                )
    return merges


def _runs(ordered: list[dict[str, Any]], target_bytes: int) -> list[list[dict[str, Any]]]:
    """A partition's files (in `_order`) cut into merges: every upload, then each compacted
    file while it holds at most `GROWTH` times the rows taken (else it and the larger ones
    stay as they are); bytes past the target start a new merge."""
    runs: list[list[dict[str, Any]]] = [[]]
    rows = size = 0
    for file in ordered:
        more, bigger = int(file["rows"] or 0), int(file["bytes"])
        if _compacted(file["path"]) and runs[-1] and more > GROWTH * rows:
            break
        if runs[-1] and size + bigger > target_bytes:
            runs.append([])
            rows = size = 0
        runs[-1].append(file)
        rows, size = rows + more, size + bigger
    return runs


def _order(file: dict[str, Any]) -> tuple[bool, int, str]:
    """Uploads first (each is merged the first pass it can be), oldest first, then compacted
    files, fewest rows first."""
    if _compacted(file["path"]):
        return True, int(file["rows"] or 0), file["path"]
    return False, int(file["min_time"] or 0), file["path"]


def _compacted(path: str) -> bool:
    """Whether a file is a compaction's output (ours, or delta-rs optimize's before them,
    zstd too), not an upload's (Snappy, `deltatable.SMALL_WRITES`)."""
    return path.endswith(".zstd.parquet")


def _rewrite(
    fs: pafs.FileSystem, merge: Merge, stored: pa.Schema, path: str, now: int
) -> AddAction:
    """The merge's files as one Parquet file at `path`, in the table's storage types, its
    rows in time order (so each row group holds a short span: a read of the newest rows
    opens the last); its add action."""
    parts = [_read(fs, path) for path in merge.paths]
    rows = pa.concat_tables(parts, promote_options="permissive")
    columns = []
    for field in stored:
        if field.name in rows.column_names:
            columns.append(rows.column(field.name).cast(field.type))
        else:
            columns.append(pa.nulls(rows.num_rows, field.type))
    rows = pa.Table.from_arrays(columns, schema=stored)
    if "time" in rows.column_names:
        rows = rows.take(pc.sort_indices(rows, [("time", "ascending")]))
    pq.write_table(
        rows,
        path,
        filesystem=fs,
        compression="zstd",
        compression_level=3,
        row_group_size=ROW_GROUP_ROWS,
    )
    size = fs.get_file_info(path).size
    return AddAction(path, int(size or 0), merge.partition, now, False, _stats(rows))


def _read(fs: pafs.FileSystem, path: str) -> pa.Table:
    """A small file, read whole in one call (a tenth of its cost through `pq.read_table`'s
    dataset machinery on the table's file system, half of it in all)."""
    with fs.open_input_stream(path) as source:
        data = source.read()
    return pq.ParquetFile(pa.BufferReader(data)).read()


def _stats(rows: pa.Table) -> str:
    """The Delta log's statistics of a file: its row count and the range of `time` (what the
    logs API and outside readers prune by)."""
    stats: dict[str, object] = {"numRecords": rows.num_rows}
    if "time" in rows.column_names and rows.num_rows:
        micros = rows.column("time").cast(pa.int64())
        low, high = pc.min(micros).as_py(), pc.max(micros).as_py()
        if low is not None and high is not None:
            stats["minValues"] = {"time": _iso(low)}
            stats["maxValues"] = {"time": _iso(high)}
        stats["nullCount"] = {"time": micros.null_count}
    return json.dumps(stats)


def _iso(micros: int) -> str:
    moment = dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=micros)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _delete(fs: pafs.FileSystem, paths: list[str]) -> None:
    for path in paths:
        try:
            fs.delete_file(path)
        except OSError:
            pass  # left untracked: no reader sees it (a full vacuum deletes it)
