"""The seed's `pipeline.logs` vocabulary both servers share: time parameters, warnings, and
the `/logs` query parser.

Reading the edge's buffer back is `edge.logbuffer.reader`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pyarrow.compute as pc

from edge.codecs import Shape, parse_shape
from edge.errors import BadInput
from edge.result import ANOMALY_COUNT, PIPELINE_VERSION, scalar

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
    # the seed's anomaly filter: False keeps rows with an anomaly (`anomaly.count` > 0), True
    # rows without one; None keeps both
    valid: bool | None = None
    pipeline_version: str | None = None  # one version's rows (default: see `version_filter`)

    @property
    def per_version(self) -> bool:
        """Without a time range or a version, logs are the current pipeline version's (the
        seed: "Pipeline logs are segmented by pipeline versions")."""
        return self.start_ms is None and self.pipeline_version is None

    def row_filter(self, version: str | None) -> RowFilter | None:
        """What rows of a stored table this query keeps (`version`: the current pipeline
        version, used when `per_version`), or None when it keeps them all."""
        version = self.pipeline_version or (version if self.per_version else None)
        valid = self.valid
        if version is None and valid is None:
            return None

        def keep(table: pa.Table) -> pa.Table:
            if version is not None:
                if PIPELINE_VERSION not in table.column_names:
                    return table.slice(0, 0)
                wanted = scalar(version, pa.string())  # a Python value would import pandas
                table = table.filter(pc.equal(table.column(PIPELINE_VERSION), wanted))
            if valid is not None:
                if ANOMALY_COUNT in table.column_names:
                    count = table.column(ANOMALY_COUNT)
                    zero = scalar(0, count.type)
                    flagged = pc.and_kleene(pc.greater(count, zero), pc.is_valid(count))
                    table = table.filter(pc.invert(flagged) if valid else flagged)
                elif not valid:  # no validations: no anomalies
                    table = table.slice(0, 0)
            return table

        return keep


RowFilter = Callable[[pa.Table], pa.Table]


def parse_log_query(
    params: Mapping[str, Sequence[str]], max_limit: int | None = MAX_LIMIT
) -> LogQuery:
    """Read `/logs` query parameters (the seed's names and the SDK's wire names): `limit`
    (default 100, 1 to `max_limit`), `start_datetime` and `end_datetime` (both or neither;
    ISO 8601 or epoch ms), the dataset shape, `partition`, `valid` (true / false: the seed's
    anomaly filter) and `pipeline_version`. Raises `BadInput` naming the parameter."""

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
    valid_text, valid = one("valid"), None
    if valid_text is not None:
        if valid_text.strip().lower() not in ("true", "false", "1", "0"):
            raise BadInput(f"valid must be true or false, not {valid_text!r}")
        valid = valid_text.strip().lower() in ("true", "1")
    version = one("pipeline_version", "metadata.pipeline_version")
    if version is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", version):
        raise BadInput(f"pipeline_version {version[:80]!r} is not a pipeline version")
    return LogQuery(
        limit,
        start_ms,
        end_ms,
        parse_shape(params),
        one("partition", "metadata.partition"),
        valid,
        version,
    )
