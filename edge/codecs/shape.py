"""What a client asks to see and in which format: the seed's `dataset` / `dataset_exclude`
selection and flat-key separator (`Shape`), and content negotiation (Content-Type, Accept,
the SDK's `format: arrow`). Both servers use these."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import pyarrow as pa

from edge import result
from edge.codecs.decode import decode_arrow, decode_records
from edge.errors import BadInput, NotAcceptable, UnsupportedMediaType

JSON_TYPE = "application/json; format=pandas-records"
ARROW_FILE_TYPE = "application/vnd.apache.arrow.file"
ARROW_STREAM_TYPE = "application/vnd.apache.arrow.stream"
DATASETS = result.DATASETS
_STAR = ("time", "in", "out", "anomaly")


@dataclass(frozen=True)
class Shape:
    """How a result table is shown: the seed's `dataset` / `dataset_exclude` selection (None:
    the default, `*`) and the separator of flat JSON keys (None: nested objects)."""

    dataset: tuple[str, ...] | None = None
    exclude: tuple[str, ...] | None = None
    separator: str | None = None


def parse_shape(params: Mapping[str, Sequence[str]]) -> Shape:
    """The shape from query parameters: the seed's names and the Wallaroo SDK's wire names
    (`dataset[]`, `dataset.exclude[]`, `dataset.separator`); comma-separated lists too.
    Unknown dataset names are refused here, before any model runs."""

    def many(*names: str) -> tuple[str, ...] | None:
        values = [v.strip() for n in names for item in params.get(n, ()) for v in item.split(",")]
        kept = tuple(v for v in values if v)
        for item in kept:
            _check_dataset(item)
        return kept or None

    separator = None
    for name in ("dataset.separator", "dataset_separator"):
        if params.get(name):
            separator = params[name][-1]
    return Shape(
        many("dataset", "dataset[]"),
        many("dataset_exclude", "dataset.exclude", "dataset.exclude[]"),
        separator,
    )


def _check_dataset(item: str) -> None:
    head = item.split(".")[0]
    if item != "*" and head not in (*DATASETS, "meta") and not item.startswith(result.SHADOW):
        raise BadInput(
            f"unknown dataset {item!r}: use *, time, in, out, anomaly, metadata, or a "
            f"column name such as metadata.elapsed"
        )


def select_datasets(
    table: pa.Table, dataset: Sequence[str] | None, exclude: Sequence[str] | None
) -> pa.Table:
    """Keep the columns the seed's `dataset` names (default `*`), minus `dataset_exclude`."""
    names = _selected(tuple(table.column_names), tuple(dataset or ("*",)), tuple(exclude or ()))
    return table if len(names) == table.num_columns else table.select(list(names))


def shape(table: pa.Table, how: Shape) -> pa.Table:
    return select_datasets(table, how.dataset, how.exclude)


def selected(columns: tuple[str, ...], how: Shape) -> tuple[str, ...]:
    """The names `shape` keeps of `columns`, in their order."""
    return _selected(columns, tuple(how.dataset or ("*",)), tuple(how.exclude or ()))


@functools.lru_cache(maxsize=256)
def _selected(
    columns: tuple[str, ...], dataset: tuple[str, ...], exclude: tuple[str, ...]
) -> tuple[str, ...]:
    items: list[str] = []
    for item in dataset:
        items.extend(_STAR if item == "*" else [item])
    for item in (*items, *exclude):
        if item not in columns:
            _check_dataset(item)
    if "meta" in items:
        items.append("metadata")
    keep = [c for c in columns if any(_matches(c, i) for i in items)]
    return tuple(c for c in keep if not any(_matches(c, i) for i in exclude))


def _matches(column: str, item: str) -> bool:
    if column == item or column.startswith(item + "."):
        return True
    return item == "out" and column.startswith(result.SHADOW)  # shadow outputs belong to `out`


# ---------------------------------------------------------------------- content negotiation


def request_decoder(content_type: str) -> Callable[[bytes], pa.Table]:
    """The decoder for a request's Content-Type (none: pandas-records JSON)."""
    kind = content_type.split(";")[0].strip().lower()
    if kind in ("application/json", ""):
        return decode_records
    if kind in (ARROW_FILE_TYPE, ARROW_STREAM_TYPE):
        return decode_arrow
    raise UnsupportedMediaType(
        f"Content-Type {content_type!r} is not supported; send '{JSON_TYPE}' or '{ARROW_FILE_TYPE}'"
    )


def wants_arrow(accept: str, format_header: str = "") -> bool:
    """Whether the client asks for an Arrow file back (`Accept`, or the SDK's `format: arrow`
    header); JSON otherwise. An Accept naming neither is `NotAcceptable`."""
    if format_header.strip().lower() == "arrow":
        return True
    if ARROW_FILE_TYPE in accept or ARROW_STREAM_TYPE in accept:
        return True
    if accept and not any(t in accept for t in ("application/json", "*/*", "application/*")):
        raise NotAcceptable(
            f"Accept {accept!r} is not supported; ask for '{JSON_TYPE}' or '{ARROW_FILE_TYPE}'"
        )
    return False


def media_type(arrow: bool) -> str:
    return ARROW_FILE_TYPE if arrow else JSON_TYPE
