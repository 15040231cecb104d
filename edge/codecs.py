"""Request bodies to Arrow tables, result tables to response bodies. No HTTP in here.

Requests: pandas-records JSON (a list of row objects) or an Arrow IPC file (or stream).
Results: the flat result table (docs/CONTRACTS.md) shaped by `dataset` / `dataset_exclude`,
written as an Arrow IPC file or as pandas-records JSON. JSON records carry the seed's edge
fields (`check_failures`, `elapsed`, `model_name`, `model_version`, `original_data`,
`outputs`, `pipeline_name`, `shadow_data`, `time`) plus `in`/`out`/`anomaly`/`metadata`,
nested, or flat keys joined by `separator` when the client asks (Wallaroo's SDK does).

Two JSON writers produce the same records: a per-row one with orjson for small results
(polars' fixed cost is about a millisecond) and a columnar one with polars for large ones.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
import pyarrow as pa

from edge import result
from edge.errors import BadInput, NotAcceptable, UnsupportedMediaType
from edge.tensors import column_to_ndarray, ndarray_to_column, single_array

JSON_TYPE = "application/json; format=pandas-records"
ARROW_FILE_TYPE = "application/vnd.apache.arrow.file"
ARROW_STREAM_TYPE = "application/vnd.apache.arrow.stream"
SMALL = 64  # rows; below this the per-row JSON writer is faster
DATASETS = result.DATASETS
_STAR = ("time", "in", "out", "anomaly")


@dataclass
class RecordInfo:
    """Per-request facts every JSON record repeats (the seed's edge fields)."""

    pipeline_name: str
    model_name: str
    model_version: str
    elapsed: list[int]
    check_failures: list[Any] = field(default_factory=list)
    shadow_data: dict[str, Any] = field(default_factory=dict)


def decode_records(body: bytes) -> pa.Table:
    """pandas-records JSON (`DataFrame.to_json(orient="records")`) to an Arrow table."""
    head = body.lstrip()[:1]
    if head != b"[":
        raise BadInput(
            "body is not pandas-records JSON: expected a JSON list of row objects, like "
            '[{"tensor": [1.0, 2.0]}]'
        )
    if len(body) < 4096:  # small bodies: orjson and pyarrow beat polars' fixed cost
        try:
            rows = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise BadInput(f"malformed JSON at byte {exc.pos}: {exc.msg}") from exc
        return _rows_to_table(rows)
    import polars as pl  # imported on first large body: it costs ~50 MB resident

    try:
        # every row decides the column types (polars' default looks at the first 100 only)
        table = pl.read_json(io.BytesIO(body), infer_schema_length=None).to_arrow()
    except Exception as exc:  # polars raises ComputeError/SchemaError with a text
        raise BadInput(f"malformed pandas-records JSON: {str(exc).splitlines()[0]}") from exc
    if table.num_rows == 0 or table.num_columns == 0:
        raise BadInput("the request holds no rows (an empty list)")
    return _plain_offsets(table)


def _rows_to_table(rows: Any) -> pa.Table:
    if not isinstance(rows, list) or not rows:
        raise BadInput("the request holds no rows (expected a non-empty JSON list of objects)")
    columns: dict[str, list[Any]] = {}
    for index, row in enumerate(rows):
        if not isinstance(row, dict):
            raise BadInput(f"row {index} is not a JSON object")
        for key in row:
            if key not in columns:
                columns[key] = [None] * index
        for key, values in columns.items():
            values.append(row.get(key))
    return pa.table({name: _column(name, values) for name, values in columns.items()})


def _column(name: str, values: list[Any]) -> pa.Array:
    """One JSON column as Arrow; numeric tensors go through numpy (much faster than
    pyarrow's inference on nested Python lists), everything else through `pa.array`."""
    first = values[0]
    if isinstance(first, list | int | float) and not isinstance(first, bool):
        try:
            tensor = np.asarray(values)
        except ValueError as exc:  # numpy refuses inhomogeneous shapes
            raise BadInput(
                f"column {name!r}: ragged tensor (rows or nested lists differ in length); "
                f"every row must have the same shape"
            ) from exc
        if tensor.dtype.kind in "iuf":
            return ndarray_to_column(tensor)
        if tensor.dtype.kind in "US" and tensor.ndim > 1:
            raise BadInput(f"column {name!r}: mixed element types (numbers and text) in a tensor")
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise BadInput(f"column {name!r}: mixed element types or ragged nesting ({exc})") from exc


def _plain_offsets(table: pa.Table) -> pa.Table:
    """large_list/large_string (what polars writes) to list/string, so every request's
    columns have one type whichever decoder read them."""
    fields = []
    for f in table.schema:
        kind = f.type
        if pa.types.is_large_list(kind) or pa.types.is_large_string(kind):
            fields.append(pa.field(f.name, _plain_type(kind)))
        else:
            fields.append(f)
    schema = pa.schema(fields)
    return table if schema == table.schema else table.cast(schema)


def _plain_type(kind: pa.DataType) -> pa.DataType:
    if pa.types.is_large_list(kind) or pa.types.is_list(kind):
        return pa.list_(_plain_type(kind.value_type))
    if pa.types.is_large_string(kind):
        return pa.string()
    return kind


def decode_arrow(body: bytes) -> pa.Table:
    """An Arrow IPC file (or stream) to a table, checked in full: a damaged body is a 400."""
    buffer = pa.py_buffer(body)
    table = None
    problem: Exception | None = None
    for opener in (pa.ipc.open_file, pa.ipc.open_stream):
        try:
            table = opener(buffer).read_all()
            table.validate(full=True)
            break
        except (pa.ArrowException, OSError, ValueError, UnicodeDecodeError) as exc:
            table, problem = None, exc
    if table is None:
        raise BadInput(f"body is not a valid Arrow IPC file or stream: {problem}")
    names = table.column_names
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise BadInput(f"the Arrow table names column(s) {twice} more than once")
    return table


def encode_arrow(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


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


def encode_records(table: pa.Table, info: RecordInfo | None, separator: str | None) -> bytes:
    """The result table as pandas-records JSON (see module docstring)."""
    if table.num_rows < SMALL:
        return _records_small(table, info, separator)
    return _records_large(table, info, separator)


def _type_name(arrow_type: pa.DataType) -> str:
    while (
        pa.types.is_list(arrow_type)
        or pa.types.is_large_list(arrow_type)
        or (pa.types.is_fixed_size_list(arrow_type))
    ):
        arrow_type = arrow_type.value_type
    if pa.types.is_floating(arrow_type):
        return "Float" if arrow_type.bit_width <= 32 else "Double"
    if pa.types.is_integer(arrow_type):
        return f"{'U' if pa.types.is_unsigned_integer(arrow_type) else ''}Int{arrow_type.bit_width}"
    if pa.types.is_boolean(arrow_type):
        return "Bool"
    return "String"


def _group(column: str, separator: str | None) -> tuple[str, str] | None:
    """'in.tensor' -> ('in', 'tensor') for nesting; None for top-level or flat output."""
    if separator is not None:
        return None
    head, dot, rest = column.partition(".")
    if dot and head in ("in", "out", "anomaly", "metadata"):
        return head, rest
    return None


def _output_columns(table: pa.Table) -> list[str]:
    return result.output_columns(table.column_names)


def _shadow_columns(table: pa.Table, info: RecordInfo) -> dict[str, list[str]]:
    """Shadow challengers' `out_<model>.<output>` columns by model, for `shadow_data` (the
    seed: "in the same format as outputs"); a failed challenger's error is already there."""
    shadow: dict[str, list[str]] = {}
    for name in table.column_names:
        model = result.shadow_model(name)
        if model is not None and model not in info.shadow_data:
            shadow.setdefault(model, []).append(name)
    return shadow


def _records_small(table: pa.Table, info: RecordInfo | None, separator: str | None) -> bytes:
    columns = {name: _row_values(table.column(name)) for name in table.column_names}

    def kinds(names: list[str]) -> list[tuple[str, str]]:
        return [(c, _type_name(table.schema.field(c).type)) for c in names]

    outputs = kinds(_output_columns(table))
    shadow = {m: kinds(c) for m, c in _shadow_columns(table, info).items()} if info else {}
    records = []
    for row in range(table.num_rows):
        record: dict[str, Any] = {}
        if info is not None:
            shadow_data = info.shadow_data
            if shadow:
                shadow_data = {
                    **shadow_data,
                    **{
                        m: [{kind: _tensor_entry(columns[c][row])} for c, kind in cols]
                        for m, cols in shadow.items()
                    },
                }
            record.update(
                check_failures=info.check_failures,
                elapsed=info.elapsed,
                model_name=info.model_name,
                model_version=info.model_version,
                original_data=None,
                outputs=[{kind: _tensor_entry(columns[c][row])} for c, kind in outputs],
                pipeline_name=info.pipeline_name,
                shadow_data=shadow_data,
            )
        for name, values in columns.items():
            value = values[row]
            if separator is not None and separator != "." and "." in name:
                name = name.replace(".", separator, 1)
            group = _group(name, separator)
            if group is None:
                record[name] = value
            else:
                record.setdefault(group[0], {})[group[1]] = value
        records.append(record)
    return orjson.dumps(records, option=orjson.OPT_SERIALIZE_NUMPY)


def _row_values(column: pa.ChunkedArray) -> Any:
    """Per-row values for orjson: numeric tensors as one numpy array (orjson writes them
    natively, in their own precision), timestamps as epoch ms, the rest as Python objects."""
    array = single_array(column)
    kind = array.type
    if pa.types.is_timestamp(kind):
        return array.view(pa.int64()).to_numpy(zero_copy_only=False).tolist()
    inner = kind
    while pa.types.is_list(inner) or pa.types.is_fixed_size_list(inner):
        inner = inner.value_type
    if inner is not kind and (pa.types.is_integer(inner) or pa.types.is_floating(inner)):
        try:
            return column_to_ndarray(array, inner.to_pandas_dtype(), None, "")
        except BadInput:  # ragged or nulls: fall back to Python lists
            pass
    return array.to_pylist()


def _tensor_entry(value: Any) -> dict[str, Any]:
    if isinstance(value, np.ndarray):
        return {"data": value.reshape(-1), "dim": [1, *value.shape], "v": 1}
    if isinstance(value, list):
        dims = [1]
        probe: Any = value
        while isinstance(probe, list):
            dims.append(len(probe))
            probe = probe[0] if probe else None
        data = value
        while data and isinstance(data[0], list):
            data = [x for part in data for x in part]
        return {"data": data, "dim": dims, "v": 1}
    return {"data": [value], "dim": [1], "v": 1}


def _records_large(table: pa.Table, info: RecordInfo | None, separator: str | None) -> bytes:
    import polars as pl

    frame = pl.from_arrow(table)
    assert isinstance(frame, pl.DataFrame)
    pieces: list[pl.Expr] = []

    def key(name: str) -> pl.Expr:
        return pl.lit(orjson.dumps(name).decode() + ":")

    if info is not None:
        fixed = orjson.dumps(
            {
                "check_failures": info.check_failures,
                "elapsed": info.elapsed,
                "model_name": info.model_name,
                "model_version": info.model_version,
                "original_data": None,
            }
        ).decode()[1:-1]
        pieces.append(pl.lit(fixed + ',"outputs":['))

        def entries(names: list[str]) -> list[pl.Expr]:
            encoded = []
            for name in names:
                kind = _type_name(table.schema.field(name).type)
                dtype = frame.schema[name]
                if isinstance(dtype, pl.List):
                    data = pl.col(name)
                    while isinstance(dtype, pl.List) and isinstance(dtype.inner, pl.List):
                        data = data.list.eval(pl.element().explode())  # flatten nested lists
                        dtype = dtype.inner
                    dim = pl.concat_list(
                        pl.lit(1, pl.Int64), pl.col(name).list.len().cast(pl.Int64)
                    )
                else:
                    data = pl.concat_list(pl.col(name))
                    dim = pl.lit([1], dtype=pl.List(pl.Int64))
                entry = pl.struct(data.alias("data"), dim.alias("dim"), pl.lit(1).alias("v"))
                encoded.append(
                    pl.concat_str(
                        [pl.lit('{"' + kind + '":'), entry.struct.json_encode(), pl.lit("}")]
                    )
                )
            return encoded

        outputs = entries(_output_columns(table))
        if outputs:
            pieces.append(pl.concat_str(outputs, separator=","))
        shadow = _shadow_columns(table, info)
        tail = orjson.dumps(
            {"pipeline_name": info.pipeline_name, "shadow_data": info.shadow_data}
        ).decode()[1:-1]
        if not shadow:
            pieces.append(pl.lit("]," + tail))
        else:  # per-row challenger outputs after the recorded errors
            pieces.append(pl.lit("]," + tail[:-1] + ("," if info.shadow_data else "")))
            for i, (model, names) in enumerate(shadow.items()):
                pieces.append(pl.lit(("," if i else "") + orjson.dumps(model).decode() + ":["))
                pieces.append(pl.concat_str(entries(names), separator=","))
                pieces.append(pl.lit("]"))
            pieces.append(pl.lit("}"))
    groups: dict[str, list[tuple[str, str]]] = {}
    order: list[str] = []
    for name in table.column_names:
        shown = name
        if separator is not None and separator != "." and "." in name:
            shown = name.replace(".", separator, 1)
        group = _group(name, separator)
        top, sub = group if group else (shown, "")
        if top not in groups:
            groups[top] = []
            order.append(top)
        groups[top].append((name, sub))
    for top in order:
        sep = "," if pieces else ""
        members = groups[top]
        if len(members) == 1 and members[0][1] == "":
            name = members[0][0]
            value = pl.col(name)
            if name == "time":
                value = value.cast(pl.Int64)
            encoded = pl.struct(value.alias("v")).struct.json_encode().str.slice(5).str.head(-1)
        else:
            encoded = pl.struct([pl.col(n).alias(s) for n, s in members]).struct.json_encode()
        pieces.append(pl.concat_str([pl.lit(sep), key(top), encoded]))
    record = pl.concat_str([pl.lit("{"), *pieces, pl.lit("}")])
    lines = frame.select(record.alias("r")).to_series()
    return b"[" + ",".join(lines.to_list()).encode() + b"]"
