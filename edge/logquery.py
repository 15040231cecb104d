"""The seed's `pipeline.logs` vocabulary both servers share: time parameters, warnings, and
the `/logs` query parser.

Reading the edge's buffer back is `edge.logbuffer.reader`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pyarrow as pa

from edge.codecs import Shape, parse_shape
from edge.errors import BadInput

_EPOCH_START = datetime(1970, 1, 1, tzinfo=UTC)


def parse_time(text: str, name: str) -> int:
    """A query's ISO 8601 date-time (naive means UTC) or epoch milliseconds, as epoch ms;
    `BadInput` naming the parameter otherwise."""
    text = text.strip()
    if re.fullmatch(r"-?\d{1,15}", text):  # epoch ms, up to the year 33658
        return int(text)
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
        return to_ms(when)
    except (ValueError, OverflowError):
        raise BadInput(f"{name} {text!r} is not an ISO 8601 date-time or epoch ms") from None


def to_ms(value: datetime | int) -> int:
    """A datetime (naive means UTC) or epoch ms, as epoch ms."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return (value - _EPOCH_START) // timedelta(milliseconds=1)
    return int(value)


MORE_LOGS = (
    "Warning: There are more logs available. "
    "Please set a larger limit or request a file using export_logs."
)
DROPPED_COLUMNS = (
    "The inference log is above the allowable limit and the following columns may have been "
    "suppressed for various rows in the logs: {columns}. To review the dropped columns for an "
    'individual inferences suppressed data, include dataset=["metadata"] in the log request.'
)


def log_warnings(rows: pa.Table, more: bool) -> list[str]:
    """The seed's `pipeline.logs` warnings for these rows (before dataset selection)."""
    warnings = [MORE_LOGS] if more else []
    if "metadata.dropped" in rows.column_names and rows.num_rows:
        column = rows.column("metadata.dropped").combine_chunks()
        dropped = sorted({name for names in column.to_pylist() if names for name in names})
        if dropped:
            warnings.append(DROPPED_COLUMNS.format(columns=", ".join(dropped)))
    return warnings


# ---------------------------------------------------------------------- the query


DEFAULT_LIMIT = 100
MAX_LIMIT = 100_000
TOO_LARGE = (
    "Log requests are limited to around 100k in size. For requests greater than 100k in size, "
    "use the Pipeline export_logs() method."
)


@dataclass(frozen=True)
class LogQuery:
    """The seed's `pipeline.logs` parameters, as both servers read them."""

    limit: int = DEFAULT_LIMIT
    start_ms: int | None = None
    end_ms: int | None = None
    shape: Shape = Shape()
    partition: str | None = None


def parse_log_query(
    params: Mapping[str, Sequence[str]], max_limit: int | None = MAX_LIMIT
) -> LogQuery:
    """Read `/logs` query parameters (the seed's names and the SDK's wire names): `limit`
    (default 100, 1 to `max_limit`), `start_datetime` and `end_datetime` (both or neither;
    ISO 8601 or epoch ms), the dataset shape, `partition`. Raises `BadInput` naming the
    parameter."""

    def one(*names: str) -> str | None:
        for name in names:
            if params.get(name):
                return params[name][-1]
        return None

    text = one("limit")
    limit = DEFAULT_LIMIT
    if text is not None:
        if not re.fullmatch(r"\s*\d{1,12}\s*", text):
            raise BadInput(f"limit must be a whole number, not {text!r}")
        limit = int(text)
    if limit < 1:
        raise BadInput("limit must be at least 1")
    if max_limit is not None and limit > max_limit:
        raise BadInput(TOO_LARGE)
    start, end = one("start_datetime", "start"), one("end_datetime", "end")
    if (start is None) != (end is None):
        raise BadInput("start_datetime and end_datetime go together: give both, or neither")
    start_ms = parse_time(start, "start_datetime") if start is not None else None
    end_ms = parse_time(end, "end_datetime") if end is not None else None
    if start_ms is not None and end_ms is not None and start_ms > end_ms:
        raise BadInput("start_datetime is after end_datetime")
    return LogQuery(
        limit, start_ms, end_ms, parse_shape(params), one("partition", "metadata.partition")
    )
