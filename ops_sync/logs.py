"""The seed's `pipeline.logs` / `export_logs` semantics over the log store. No HTTP here.

- The parameters are read by the appliance's own parser (`edge.logquery.parse_log_query`):
  `limit` (default 100); `start_datetime` and `end_datetime` both or neither; with them rows
  come oldest first, without them newest first; ties in insertion order; `dataset` /
  `dataset_exclude` as the appliance's; `partition` keeps one edge's rows; `valid` the seed's
  anomaly filter (false: rows with an anomaly); without a time range, the current pipeline
  version's rows only (the newest row's version), or `pipeline_version`'s.
- `time` goes out as int64 epoch milliseconds; `metadata.dropped` is a list<string>, never null.
- Warnings are the seed's sentences, word for word.
"""

from __future__ import annotations

import datetime as dt
import re

import polars as pl
import pyarrow as pa

from edge.codecs import encode_arrow, encode_records, shape
from edge.codecs.arrow import split_lists
from edge.logquery import MAX_LIMIT, MORE_LOGS, LogQuery, log_warnings
from edge.result import MODEL_SPLIT, PIPELINE_VERSION
from ops_sync.errors import BadRequest
from ops_sync.logstore import LogStore

__all__ = ["MAX_LIMIT", "LogQuery", "export", "fetch", "parse_size", "to_arrow", "to_records"]
DEFAULT_EXPORT_LIMIT = "100MiB"
MORE_EXPORT = (
    "Warning: There are more logs available. Please set a larger limit to export more data."
)
_UNITS = {"": 1, "B": 1, "KIB": 1 << 10, "MIB": 1 << 20, "GIB": 1 << 30, "TIB": 1 << 40}
_UNITS |= {"KB": 1000, "MB": 1000**2, "GB": 1000**3, "TB": 1000**4}


def parse_size(text: str) -> int:
    """`data_size_limit` as the seed writes it: "10 MiB", "10MiB", "100MB", or bytes."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", text)
    unit = match.group(2).upper() if match else ""
    if match is None or unit not in _UNITS:
        raise BadRequest(f"data_size_limit {text!r} is not like '10 MiB' (KiB, MiB, GiB, TiB)")
    return int(float(match.group(1)) * _UNITS[unit])


def current_version(store: LogStore, pipeline: str, partition: str | None) -> str | None:
    """The pipeline version of the newest row (of `partition`, when given)."""
    newest, _, _ = store.read(pipeline, partition, None, None, 1)
    if newest.num_rows == 0 or PIPELINE_VERSION not in newest.column_names:
        return None
    version = newest.column(PIPELINE_VERSION)[0].as_py()
    return str(version) if version is not None else None


def fetch(store: LogStore, pipeline: str, query: LogQuery) -> tuple[pa.Table, list[str]]:
    """Rows for `query`, shaped by its datasets, `time` as int64 ms, and the warnings.
    Without a time range or `pipeline_version`, the newest row's version's rows only (the
    seed's logs are segmented by pipeline version)."""
    version = current_version(store, pipeline, query.partition) if query.per_version else None
    raw, more, notes = store.read(
        pipeline,
        query.partition,
        query.start_ms,
        query.end_ms,
        query.limit,
        query.row_filter(version),
    )
    warnings = log_warnings(raw, more) + notes
    table = shape(raw, query.shape)
    if "time" in table.column_names:
        index = table.schema.get_field_index("time")
        table = table.set_column(index, "time", table.column("time").cast(pa.int64()))
    return table, warnings


def to_records(table: pa.Table, separator: str | None) -> bytes:
    return encode_records(table, None, separator)


def to_arrow(table: pa.Table) -> bytes:
    return encode_arrow(table)


def to_ndjson(table: pa.Table) -> bytes:
    """One pandas record per line, flat keys as the logs DataFrame names its columns;
    `out._model_split` as the seed's list holding one object (stored as JSON text)."""
    if MODEL_SPLIT in table.column_names and pa.types.is_string(
        table.schema.field(MODEL_SPLIT).type
    ):
        index = table.schema.get_field_index(MODEL_SPLIT)
        table = table.set_column(index, MODEL_SPLIT, split_lists(table.column(index)))
    frame = pl.from_arrow(table)
    assert isinstance(frame, pl.DataFrame)
    return frame.write_ndjson().encode()


def export(
    store: LogStore, pipeline: str, query: LogQuery, arrow: bool, size_limit: int
) -> tuple[bytes, list[str]]:
    """An NDJSON or Arrow file of the query's rows, cut to about `size_limit` bytes."""
    table, warnings = fetch(store, pipeline, query)
    warnings = [MORE_EXPORT if w == MORE_LOGS else w for w in warnings]
    encode = to_arrow if arrow else to_ndjson
    body = encode(table)
    rows = table.num_rows
    while len(body) > size_limit and rows > 0:
        rows = min(rows - 1, int(rows * size_limit / len(body) * 0.95))
        body = encode(table.slice(0, max(rows, 0)))
    if rows < table.num_rows:
        end = "(no rows)"
        if rows > 0 and "time" in table.column_names:
            last_ms = table.column("time")[rows - 1].as_py()
            end = dt.datetime.fromtimestamp(last_ms / 1000, dt.UTC).isoformat()
        warnings.append(
            f"Warning: The log data is larger than data_size_limit ({size_limit} bytes); the "
            f"exported file ends at {end}. Narrow start_datetime and end_datetime to export "
            "the rest."
        )
    return body, warnings
