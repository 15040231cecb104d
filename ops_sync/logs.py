"""The seed's `pipeline.logs` / `export_logs` semantics over the log store. No HTTP here.

- `limit` (default 100); `start_datetime` and `end_datetime` both or neither; with them rows
  come oldest first, without them newest first; ties in insertion order.
- `dataset` / `dataset_exclude` select columns as the appliance does (`edge.codecs`);
  `partition` keeps one edge's rows (`metadata.partition`).
- `time` goes out as int64 epoch milliseconds; `metadata.dropped` is a list<string>, never null.
- Warnings are the seed's sentences, word for word.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import polars as pl
import pyarrow as pa

from edge import logquery
from edge.codecs import encode_arrow, encode_records, select_datasets
from edge.logquery import MORE_LOGS, log_warnings
from ops_sync.errors import BadRequest
from ops_sync.logstore import LogStore

DEFAULT_LIMIT = 100
MAX_LIMIT = 100_000
DEFAULT_EXPORT_LIMIT = "100MiB"
MORE_EXPORT = (
    "Warning: There are more logs available. Please set a larger limit to export more data."
)
TOO_LARGE = (
    "Log requests are limited to around 100k in size. For requests greater than 100k in size, "
    "use the Pipeline export_logs() method."
)
_UNITS = {"": 1, "B": 1, "KIB": 1 << 10, "MIB": 1 << 20, "GIB": 1 << 30, "TIB": 1 << 40}
_UNITS |= {"KB": 1000, "MB": 1000**2, "GB": 1000**3, "TB": 1000**4}


@dataclass(frozen=True)
class LogQuery:
    pipeline: str
    limit: int = DEFAULT_LIMIT
    start_ms: int | None = None
    end_ms: int | None = None
    dataset: list[str] | None = None
    exclude: list[str] | None = None
    separator: str | None = None
    partition: str | None = None


def parse_query(pipeline: str, params: Mapping[str, Sequence[str]]) -> LogQuery:
    """Read the query parameters (the seed's names, and the SDK's wire names)."""

    def many(*names: str) -> list[str] | None:
        values = [v for name in names for item in params.get(name, []) for v in item.split(",")]
        return [v.strip() for v in values if v.strip()] or None

    def one(*names: str) -> str | None:
        for name in names:
            if params.get(name):
                return params[name][-1]
        return None

    limit_text = one("limit")
    try:
        limit = int(limit_text) if limit_text is not None else DEFAULT_LIMIT
    except ValueError:
        raise BadRequest(f"limit must be a whole number, not {limit_text!r}") from None
    if limit < 1:
        raise BadRequest("limit must be at least 1")
    start, end = one("start_datetime", "start"), one("end_datetime", "end")
    if (start is None) != (end is None):
        raise BadRequest("start_datetime and end_datetime must be given together, or neither")
    start_ms = parse_time(start, "start_datetime") if start is not None else None
    end_ms = parse_time(end, "end_datetime") if end is not None else None
    if start_ms is not None and end_ms is not None and start_ms > end_ms:
        raise BadRequest("start_datetime is after end_datetime")
    return LogQuery(
        pipeline=pipeline,
        limit=limit,
        start_ms=start_ms,
        end_ms=end_ms,
        dataset=many("dataset", "dataset[]"),
        exclude=many("dataset_exclude", "dataset.exclude", "dataset.exclude[]"),
        separator=one("dataset_separator", "dataset.separator"),
        partition=one("partition", "metadata.partition"),
    )


def parse_time(text: str, name: str) -> int:
    """ISO 8601 (naive means UTC) or integer epoch milliseconds, to epoch milliseconds."""
    try:
        return logquery.parse_time(text, name)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None


def parse_size(text: str) -> int:
    """`data_size_limit` as the seed writes it: "10 MiB", "10MiB", "100MB", or bytes."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", text)
    unit = match.group(2).upper() if match else ""
    if match is None or unit not in _UNITS:
        raise BadRequest(f"data_size_limit {text!r} is not like '10 MiB' (KiB, MiB, GiB, TiB)")
    return int(float(match.group(1)) * _UNITS[unit])


def fetch(
    store: LogStore, query: LogQuery, limit_cap: int = MAX_LIMIT
) -> tuple[pa.Table, list[str]]:
    """Rows for `query`, shaped by its datasets, `time` as int64 ms, and the warnings."""
    if query.limit > limit_cap:
        raise BadRequest(TOO_LARGE)
    raw, more = store.read(
        query.pipeline, query.partition, query.start_ms, query.end_ms, query.limit
    )
    warnings = log_warnings(raw, more)
    table = select_datasets(raw, query.dataset, query.exclude)
    if "time" in table.column_names:
        index = table.schema.get_field_index("time")
        table = table.set_column(index, "time", table.column("time").cast(pa.int64()))
    return table, warnings


def to_records(table: pa.Table, separator: str | None) -> bytes:
    return encode_records(table, None, separator)


def to_arrow(table: pa.Table) -> bytes:
    return encode_arrow(table)


def to_ndjson(table: pa.Table) -> bytes:
    """One pandas record per line, flat keys as the logs DataFrame names its columns."""
    frame = pl.from_arrow(table)
    assert isinstance(frame, pl.DataFrame)
    return frame.write_ndjson().encode()


def export(
    store: LogStore, query: LogQuery, arrow: bool, size_limit: int
) -> tuple[bytes, list[str]]:
    """An NDJSON or Arrow file of the query's rows, cut to about `size_limit` bytes."""
    table, warnings = fetch(store, query, limit_cap=1 << 62)
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
