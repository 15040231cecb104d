"""edge.logquery: the `/logs` query both servers read (the appliance's `GET /logs` and the ops
center's pipeline logs) and the seed's `pipeline.logs` warnings, word for word."""

from __future__ import annotations

import pyarrow as pa
import pytest

from edge.codecs import Shape
from edge.errors import BadInput
from edge.logquery import LogQuery, log_warnings, parse_log_query, parse_time

JAN_1_2024 = 1_704_067_200_000  # 2024-01-01T00:00:00Z in epoch ms

# the seed's words (shared/SPEC.md and the SDK guide's pipeline logs section)
SEED_MORE_LOGS = (
    "Warning: There are more logs available. Please set a larger limit or request a file "
    "using export_logs."
)
SEED_TOO_LARGE = (
    "Log requests are limited to around 100k in size. For requests greater than 100k in size, "
    "use the Pipeline export_logs() method."
)
SEED_DROPPED = (
    "The inference log is above the allowable limit and the following columns may have been "
    "suppressed for various rows in the logs: {columns}. To review the dropped columns for an "
    'individual inferences suppressed data, include dataset=["metadata"] in the log request.'
)


def query(*, max_limit: int | None = 100_000, **params: str | list[str]) -> LogQuery:
    return parse_log_query(
        {k: [v] if isinstance(v, str) else v for k, v in params.items()}, max_limit
    )


def refused(*, max_limit: int | None = 100_000, **params: str | list[str]) -> str:
    with pytest.raises(BadInput) as error:
        query(max_limit=max_limit, **params)
    return str(error.value)


def test_no_parameters_mean_the_newest_hundred_rows_of_the_default_datasets() -> None:
    assert parse_log_query({}) == LogQuery(100, None, None, Shape(), None)


# ---------------------------------------------------------------------------- limit


@pytest.mark.parametrize("text,limit", [("1", 1), ("250", 250), (" 42 ", 42), ("100000", 100_000)])
def test_limit(text: str, limit: int) -> None:
    assert query(limit=text).limit == limit


def test_the_last_of_repeated_values_counts() -> None:
    assert query(limit=["5", "7"]).limit == 7


def test_a_limit_above_100k_gets_the_seeds_words() -> None:
    assert refused(limit="100001") == SEED_TOO_LARGE
    assert refused(limit="999999999999") == SEED_TOO_LARGE


def test_without_a_ceiling_any_limit_is_taken() -> None:
    assert query(max_limit=None, limit="5000000").limit == 5_000_000  # the ops center's export


@pytest.mark.parametrize("text", ["abc", "1e3", "-1", "2.5", "", "0x10"])
def test_a_limit_that_is_not_a_whole_number_is_refused(text: str) -> None:
    assert refused(limit=text) == f"limit must be a whole number, not {text!r}"


def test_a_limit_of_zero_is_refused() -> None:
    assert refused(limit="0") == "limit must be at least 1"


# ---------------------------------------------------------------------------- times


def test_start_and_end_go_together() -> None:
    message = "start_datetime and end_datetime go together: give both, or neither"
    assert refused(start_datetime="2024-01-01T00:00:00") == message
    assert refused(end_datetime="2024-01-01T00:00:00") == message


@pytest.mark.parametrize(
    "text,ms",
    [
        ("2024-01-01T00:00:00", JAN_1_2024),  # naive means UTC
        ("2024-01-01T00:00:00Z", JAN_1_2024),
        ("2024-01-01T01:00:00+01:00", JAN_1_2024),
        ("2024-01-01T00:00:00.250", JAN_1_2024 + 250),
        ("2024-01-01", JAN_1_2024),
        (str(JAN_1_2024), JAN_1_2024),  # epoch milliseconds
        ("0", 0),
        ("-1000", -1000),
        (" 2024-01-01T00:00:00Z ", JAN_1_2024),
    ],
)
def test_iso_8601_and_epoch_milliseconds(text: str, ms: int) -> None:
    assert parse_time(text, "start_datetime") == ms
    ranged = query(start_datetime=text, end_datetime=str(JAN_1_2024 + 1000))
    assert (ranged.start_ms, ranged.end_ms) == (ms, JAN_1_2024 + 1000)


def test_the_short_names_start_and_end_are_read_too() -> None:
    ranged = query(start="2024-01-01T00:00:00Z", end=str(JAN_1_2024 + 5))
    assert (ranged.start_ms, ranged.end_ms) == (JAN_1_2024, JAN_1_2024 + 5)


@pytest.mark.parametrize("text", ["yesterday", "2024-13-01T00:00:00", "1" * 16, "12:00"])
def test_a_time_that_is_neither_is_refused_naming_the_parameter(text: str) -> None:
    message = refused(start_datetime=text, end_datetime="0")
    assert message == f"start_datetime {text!r} is not an ISO 8601 date-time or epoch ms"
    message = refused(start_datetime="0", end_datetime=text)
    assert message.startswith(f"end_datetime {text!r}")


def test_a_start_after_the_end_is_refused() -> None:
    message = refused(start_datetime="2024-01-02T00:00:00", end_datetime="2024-01-01T00:00:00")
    assert message == "start_datetime is after end_datetime"
    same = query(start_datetime=str(JAN_1_2024), end_datetime=str(JAN_1_2024))
    assert same.start_ms == same.end_ms == JAN_1_2024  # one instant is a range


# ---------------------------------------------------------------------------- datasets


def test_the_seeds_and_the_sdks_dataset_names() -> None:
    seed = query(dataset=["*", "metadata"], dataset_exclude="in", dataset_separator=".")
    assert seed.shape == Shape(("*", "metadata"), ("in",), ".")
    sdk = parse_log_query(
        {"dataset[]": ["*", "metadata"], "dataset.exclude[]": ["in"], "dataset.separator": ["."]}
    )
    assert sdk.shape == seed.shape
    assert query(dataset="out,anomaly").shape.dataset == ("out", "anomaly")
    assert query(dataset="metadata.elapsed").shape.dataset == ("metadata.elapsed",)


@pytest.mark.parametrize(
    "params",
    [
        {"dataset": "bogus"},
        {"dataset": "../../x"},
        {"dataset[]": "input"},
        {"dataset_exclude": "nope"},
        {"dataset.exclude[]": "outputs"},
        {"dataset": "*", "dataset_exclude": "in,bogus"},
    ],
)
def test_an_unknown_dataset_is_refused_by_the_parser(params: dict[str, str]) -> None:
    """Refused while the query is read, so nothing is read from a log store for it."""
    with pytest.raises(BadInput) as error:
        parse_log_query({name: [value] for name, value in params.items()})
    message = str(error.value)
    assert message.startswith("unknown dataset ")
    assert "use *, time, in, out, anomaly, metadata" in message


def test_the_partition() -> None:
    assert query(partition="store-17").partition == "store-17"
    assert parse_log_query({"metadata.partition": ["store-17"]}).partition == "store-17"


# ---------------------------------------------------------------------------- warnings


def rows(dropped: list[list[str] | None]) -> pa.Table:
    return pa.table(
        {
            "time": pa.array(range(len(dropped)), pa.timestamp("ms", tz="UTC")),
            "metadata.dropped": pa.array(dropped, pa.list_(pa.string())),
        }
    )


def test_more_logs_than_the_limit_get_the_seeds_warning() -> None:
    assert log_warnings(rows([[]]), more=True) == [SEED_MORE_LOGS]
    assert log_warnings(rows([[]]), more=False) == []


def test_dropped_columns_are_named_once_each_in_order() -> None:
    table = rows([["in.tensor"], [], None, ["out.probabilities", "in.tensor"]])
    expected = SEED_DROPPED.format(columns="in.tensor, out.probabilities")
    assert log_warnings(table, more=False) == [expected]
    assert log_warnings(table, more=True) == [SEED_MORE_LOGS, expected]


def test_nothing_dropped_or_nothing_read_means_no_warning() -> None:
    assert log_warnings(rows([[], None]), more=False) == []
    assert log_warnings(rows([]), more=False) == []
    assert log_warnings(pa.table({"time": pa.array([1])}), more=False) == []
