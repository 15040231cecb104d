"""The result table: what a pipeline returns, the log buffer keeps and the sync ships.

One row per input row; the columns, in this order:

    time                     TIME_TYPE, when the request was answered (one value per request)
    in.<col>                 every input column as received
    out.<name>               the last step's outputs (lists for tensors)
    out_<model>.<name>       shadow challengers' outputs (only with a shadow step)
    out._model_split         the A/B split's chosen model (only with a split)
    anomaly.count            how many validations flagged the row
    anomaly.<validation>     bool, one per validation
    metadata.last_model      JSON {"model_name", "model_sha"}
    metadata.pipeline_version
    metadata.elapsed         list<int64> nanoseconds [input parse, step 1, ...]
    metadata.dropped         list<string>, never null: columns the log buffer dropped
    metadata.partition       the edge's name

Every module that needs a column's name, kind or type asks this one: the pipeline (which
builds the table), the codecs (which shape it for clients), the log buffer (which trims it at
its cap), the log queries, and the ops center (which stores it per edge).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from edge.ipc_template import BatchTemplate, EncodedBatch
from edge.tensors import ndarray_to_column, numbers

TIME = "time"
TIME_TYPE = pa.timestamp("ms", tz="UTC")
IN = "in."
OUT = "out."
SHADOW = "out_"  # out_<model>.<output>
ANOMALY = "anomaly."
METADATA = "metadata."

ANOMALY_COUNT = "anomaly.count"
ANOMALY_COUNT_TYPE = pa.uint32()
MAX_VALIDATIONS = 127  # clients receive anomaly.count as the seed's int8 (edge.codecs.arrow)
MODEL_SPLIT = "out._model_split"
LAST_MODEL = "metadata.last_model"
PIPELINE_VERSION = "metadata.pipeline_version"
ELAPSED = "metadata.elapsed"
ELAPSED_TYPE = pa.list_(pa.int64())
DROPPED = "metadata.dropped"
DROPPED_TYPE = pa.list_(pa.string())
PARTITION = "metadata.partition"

# a loop turn's rows up to this many are journaled from a template (`ResultRows.encoded`)
TEMPLATE_ROWS = 256
TEMPLATES_KEPT = 256  # templates (layout, row count) a builder keeps

# the seed's `dataset` names, in column order
DATASETS = ("time", "in", "out", "anomaly", "metadata")


def dataset_of(name: str) -> str | None:
    """Which of `DATASETS` a column belongs to (shadow outputs belong to `out`)."""
    if name == TIME:
        return "time"
    if name.startswith(SHADOW):
        return "out"
    head, dot, _ = name.partition(".")
    return head if dot and head in DATASETS else None


def is_input(name: str) -> bool:
    return name.startswith(IN)


def is_output(name: str) -> bool:
    """`out.*` and shadow `out_<model>.*` columns."""
    return name.startswith((OUT, SHADOW))


def is_per_request(name: str) -> bool:
    """Columns that usually hold one value for all the rows of a request."""
    return name == TIME or name.startswith((ANOMALY, METADATA))


def output_columns(names: list[str]) -> list[str]:
    """The last step's outputs, as the seed's `outputs` field lists them."""
    return [n for n in names if n.startswith(OUT) and n != MODEL_SPLIT]


def shadow_model(name: str) -> str | None:
    """The challenger an `out_<model>.<output>` column belongs to."""
    if name.startswith(SHADOW) and "." in name:
        return name[len(SHADOW) :].split(".", 1)[0]
    return None


# ---------------------------------------------------------------------- the builder


class ResultBuilder:
    """Builds one pipeline version's result tables; the per-pipeline constant columns and
    the schemas are cached (building them afresh per request costs more than the model run
    on small inputs)."""

    def __init__(self, pipeline_version: str, partition: str) -> None:
        self.pipeline_version = pipeline_version
        self.partition = partition
        self._constants: dict[tuple[str, int], pa.Array] = {}
        self._schemas: dict[tuple[Any, ...], pa.Schema] = {}
        self._last_models: dict[tuple[str, str], str] = {}
        self._templates: dict[Any, BatchTemplate | None] = {}

    @staticmethod
    def now_ms() -> int:
        return time.time_ns() // 1_000_000

    def build(
        self,
        request: pa.Table,
        output: pa.Table,
        extra: dict[str, pa.Array],
        elapsed: list[int],
        last_model: str,
        last_sha: str,
    ) -> pa.Table:
        """`time`, `in.*` (the request), `out.*` (the last step's output), `extra` (shadow
        outputs, the split), `anomaly.count` (0: the validations fill it) and `metadata.*`."""
        rows = request.num_rows
        now = np.full(rows, self.now_ms(), dtype=np.int64)
        names = [TIME]
        columns: list[pa.Array | pa.ChunkedArray] = [_times(now)]
        for name in request.column_names:
            names.append(IN + name)
            columns.append(request.column(name))
        for name in output.column_names:
            names.append(OUT + name)
            columns.append(output.column(name))
        for name, array in extra.items():
            names.append(name)
            columns.append(array)
        names += _TAIL
        columns += self._tail(last_model, last_sha, _elapsed(elapsed, rows), rows)
        return self._table(names, columns)

    def last_model(self, model: str, sha: str) -> str:
        """`metadata.last_model`'s JSON text."""
        last = self._last_models.get((model, sha))
        if last is None:
            last = self._last_models[model, sha] = json.dumps(
                {"model_name": model, "model_sha": sha}
            )
        return last

    def template(self, key: Any, make: Callable[[], BatchTemplate | None]) -> BatchTemplate | None:
        """The journal's message template for `key` (a layout and row count), made once by
        `make` (None: that layout has none, also remembered); the first `TEMPLATES_KEPT` are
        kept."""
        if key in self._templates:
            return self._templates[key]
        template = make()
        if len(self._templates) < TEMPLATES_KEPT:
            self._templates[key] = template
        return template

    def _tail(self, model: str, sha: str, elapsed: pa.Array, rows: int) -> list[pa.Array]:
        """`anomaly.count` and the `metadata.*` columns."""
        last = self.last_model(model, sha)
        return [
            self._constant("count", 0, ANOMALY_COUNT_TYPE, rows),
            self._constant(last, last, pa.string(), rows),
            self._constant("version", self.pipeline_version, pa.string(), rows),
            elapsed,
            self._constant("dropped", [], DROPPED_TYPE, rows),
            self._constant("partition", self.partition, pa.string(), rows),
        ]

    def _table(self, names: list[str], columns: list[Any], layout: Any = None) -> pa.Table:
        return pa.Table.from_arrays(columns, schema=self._schema(names, columns, layout))

    def _schema(self, names: list[str], columns: list[Any], layout: Any = None) -> pa.Schema:
        """The result schema, cached (naming columns costs more than building them) by the
        columns' names and types, or by a layout that fixes them."""
        key = layout if layout is not None else (tuple(names), tuple(c.type for c in columns))
        schema = self._schemas.get(key)
        if schema is None:
            schema = pa.schema(list(zip(names, [c.type for c in columns], strict=True)))
            if len(self._schemas) < 64:
                self._schemas[key] = schema
        return schema

    def _constant(self, key: str, value: Any, kind: pa.DataType, rows: int) -> pa.Array:
        """`rows` copies of a per-pipeline constant, cached: one array per row count up to 64
        (a slice would carry the whole buffer: the log buffer's queue counts bytes), slices
        of one cached array above."""
        exact = rows <= 64
        cache_key = (key, rows) if exact else (key, 0)
        cached = self._constants.get(cache_key)
        if cached is None or len(cached) < rows:
            cached = repeated(value, kind, rows if exact else max(rows, 256))
            if rows > CONSTANT_ROWS:
                return cached
            self._constants[cache_key] = cached
        return cached if exact else cached.slice(0, rows)


_TAIL = [ANOMALY_COUNT, LAST_MODEL, PIPELINE_VERSION, ELAPSED, DROPPED, PARTITION]
# the columns `ResultBuilder._tail` fills from its cache (time and elapsed are per request),
# for up to this many rows
CACHED_CONSTANTS = frozenset(_TAIL) - {ELAPSED}
CONSTANT_ROWS = 65536


class ResultRows:
    """One request's result as numpy columns (small requests, `edge.fastpath`): what its
    JSON records are written from, and what the journal joins with the other requests of its
    loop turn into one Arrow table (`table`), equal to what `ResultBuilder.build` makes."""

    __slots__ = (
        "builder",
        "inputs",
        "outputs",
        "time_ms",
        "elapsed",
        "model",
        "sha",
        "rows",
        "_key",
    )

    def __init__(
        self,
        builder: ResultBuilder,
        inputs: dict[str, np.ndarray],
        outputs: dict[str, np.ndarray],
        time_ms: int,
        elapsed: list[int],
        model: str,
        sha: str,
    ) -> None:
        self.builder, self.inputs, self.outputs = builder, inputs, outputs
        self.time_ms, self.elapsed, self.model, self.sha = time_ms, elapsed, model, sha
        self.rows = len(next(iter(inputs.values())))
        self._key: tuple[Any, ...] | None = None

    def key(self) -> tuple[Any, ...]:
        """Requests of one key join into one table: same builder, columns, types, shapes."""
        if self._key is None:
            layout = tuple(
                (name, a.dtype.str, a.shape[1:])
                for part in (self.inputs, self.outputs)
                for name, a in part.items()
            )
            self._key = (id(self.builder), self.model, self.sha, len(self.elapsed), layout)
        return self._key

    def record_columns(self) -> tuple[dict[str, Any], dict[str, str]]:
        """Per-row values of every result column, as the records writer reads a table's
        (numeric tensors as arrays, the rest as Python values), and the outputs' type names."""
        rows = self.rows
        values: dict[str, Any] = {TIME: [self.time_ms] * rows}
        kinds: dict[str, str] = {}
        for prefix, part in ((IN, self.inputs), (OUT, self.outputs)):
            for name, array in part.items():
                shown = array if array.ndim > 1 and array.dtype.kind in "iuf" else array.tolist()
                values[prefix + name] = shown
                kinds[prefix + name] = type_name(array.dtype)
        builder = self.builder
        last = builder.last_model(self.model, self.sha)
        values[ANOMALY_COUNT] = [0] * rows
        values[LAST_MODEL] = [last] * rows
        values[PIPELINE_VERSION] = [builder.pipeline_version] * rows
        values[ELAPSED] = [self.elapsed] * rows
        values[DROPPED] = [[] for _ in range(rows)]
        values[PARTITION] = [builder.partition] * rows
        return values, kinds

    @staticmethod
    def table(group: list[ResultRows]) -> pa.Table:
        """The rows of `group` (one `key`) as one result table, in order."""
        return group[0]._build(ResultRows._arrays(group))

    @staticmethod
    def encoded(group: list[ResultRows]) -> EncodedBatch | None:
        """The rows of `group` (one `key`) as the journal takes them: `table`'s record batch
        message, written from the builder's template for this layout and row count
        (`edge.ipc_template`). None when the layout has no template: use `table`."""
        first = group[0]
        arrays = ResultRows._arrays(group)
        rows = len(arrays[0])
        if rows > TEMPLATE_ROWS:
            return None
        layout = [(a.dtype, a.shape) for a in arrays]
        template = first.builder.template(
            (first.key(), rows), lambda: BatchTemplate.make(first._build, layout)
        )
        if template is None:
            return None
        times = [r.time_ms for r in group]  # numpy's min and max cost more on a few rows
        bounds = (min(times), max(times))
        return EncodedBatch(template.schema, template.fill(arrays), rows, bounds)

    @staticmethod
    def _arrays(group: list[ResultRows]) -> list[np.ndarray]:
        """What varies between requests of one key, joined in order: the times, the inputs,
        the outputs and the step timings, one row per result row."""
        first = group[0]
        # each request's time and step timings once per row, from lists (numpy's full,
        # tile and repeat cost more than the lists on the few rows of a turn)
        times = np.array([r.time_ms for r in group for _ in range(r.rows)], np.int64)
        elapsed = np.array([r.elapsed for r in group for _ in range(r.rows)], np.int64)
        if len(group) == 1:  # most turns at low concurrency: nothing to join
            return [times, *first.inputs.values(), *first.outputs.values(), elapsed]
        joined = [
            np.concatenate([getattr(r, part)[name] for r in group])
            for part in ("inputs", "outputs")
            for name in getattr(first, part)
        ]
        return [times, *joined, elapsed]

    def _build(self, arrays: list[np.ndarray]) -> pa.Table:
        """The result table of `_arrays`' arrays (for rows of this one's key)."""
        builder = self.builder
        names = [TIME]
        columns: list[Any] = [_times(arrays[0])]
        values = iter(arrays[1:-1])
        for prefix, part in ((IN, self.inputs), (OUT, self.outputs)):
            for name in part:
                names.append(prefix + name)
                columns.append(ndarray_to_column(next(values)))
        names += _TAIL
        rows = len(arrays[0])
        columns += builder._tail(self.model, self.sha, _elapsed_rows(arrays[-1]), rows)
        return builder._table(names, columns, ("rows", self.key()))


def type_name(dtype: np.dtype) -> str:
    """The seed's type name of a tensor's elements (the records' `outputs` keys)."""
    if dtype.kind == "f":
        return "Float" if dtype.itemsize <= 4 else "Double"
    if dtype.kind in "iu":
        return f"{'U' if dtype.kind == 'u' else ''}Int{dtype.itemsize * 8}"
    return "Bool" if dtype.kind == "b" else "String"


def _times(millis: np.ndarray) -> pa.Array:
    return pa.Array.from_buffers(TIME_TYPE, len(millis), [None, pa.py_buffer(millis)])


def _elapsed_rows(elapsed: np.ndarray) -> pa.Array:
    """An (rows, steps) int64 array as `metadata.elapsed`."""
    return ndarray_to_column(elapsed)


def _elapsed(elapsed: list[int], rows: int) -> pa.Array:
    return ndarray_to_column(np.tile(np.asarray(elapsed, np.int64), (rows, 1)))


def scalar(value: Any, kind: pa.DataType) -> pa.Scalar:
    """`pa.scalar(value, kind)` for text and numbers, from buffers: `pa.scalar`, and a compute
    function given a Python value, import pandas (~48 MiB resident, ~0.35 s)."""
    if pa.types.is_string(kind):
        return repeated(str(value), kind, 1)[0]
    return ndarray_to_column(np.array([value], kind.to_pandas_dtype()))[0]


def texts(values: Sequence[str | None]) -> pa.Array:
    """`pa.array(values, pa.string())` from buffers (`pa.array` imports pandas)."""
    encoded = [b"" if value is None else value.encode() for value in values]
    offsets = np.zeros(len(encoded) + 1, np.int32)
    np.cumsum([len(e) for e in encoded], out=offsets[1:])
    buffers = [validity(values), pa.py_buffer(offsets), pa.py_buffer(b"".join(encoded))]
    return pa.Array.from_buffers(pa.string(), len(encoded), buffers)


def validity(values: Sequence[object]) -> pa.Buffer | None:
    """An Arrow validity bitmap for `values` (None: null), or None when none is null."""
    present = np.fromiter((value is not None for value in values), bool, len(values))
    return None if present.all() else pa.py_buffer(np.packbits(present, bitorder="little"))


def repeated(value: Any, kind: pa.DataType, rows: int) -> pa.Array:
    """`rows` copies of `value`, built from buffers for the result table's constant kinds
    (text, empty lists, integers): `pa.array` would import pandas on the first request."""
    if pa.types.is_string(kind) and isinstance(value, str):
        data = value.encode()
        offsets = np.arange(rows + 1, dtype=np.int32) * np.int32(len(data))
        return pa.Array.from_buffers(
            kind, rows, [None, pa.py_buffer(offsets), pa.py_buffer(data * rows)]
        )
    if pa.types.is_list(kind) and value == []:
        empty = repeated("", kind.value_type, 0) if pa.types.is_string(kind.value_type) else None
        if empty is not None:
            offsets = pa.py_buffer(np.zeros(rows + 1, np.int32))
            return pa.Array.from_buffers(kind, rows, [None, offsets], children=[empty])
    if pa.types.is_integer(kind) and isinstance(value, int):
        return ndarray_to_column(np.full(rows, value, kind.to_pandas_dtype()))
    return pa.array([value] * rows, kind)


# ---------------------------------------------------------------------- time


def time_ms(table: pa.Table) -> pa.ChunkedArray | None:
    """The `time` column as int64 epoch milliseconds, or None when there is none."""
    if TIME not in table.column_names:
        return None
    column = table.column(TIME)
    if pa.types.is_dictionary(column.type):  # packed (`edge.logbuffer.codec.pack_constants`)
        column = column.cast(column.type.value_type)
    if pa.types.is_timestamp(column.type):
        if column.type.unit != "ms":
            column = column.cast(pa.timestamp("ms", tz=column.type.tz), safe=False)
        return column.cast(pa.int64())
    if pa.types.is_integer(column.type):
        return column.cast(pa.int64())
    return None


def time_bounds(rows: pa.RecordBatch | pa.Table) -> tuple[int | None, int | None]:
    """Earliest and latest `time` in epoch ms; (None, None) without one."""
    index = rows.schema.get_field_index(TIME)
    if index < 0:
        return None, None
    column = rows.column(index)
    if column.null_count == 0 and column.type.equals(TIME_TYPE) and len(column):
        # the common case, straight from a pipeline: a compute kernel call costs more
        chunk = column if isinstance(column, pa.Array) else _single(column)
        v = np.frombuffer(chunk.buffers()[1], np.int64, count=len(chunk), offset=chunk.offset * 8)
        return int(v.min()), int(v.max())
    times = time_ms(pa.table(rows) if isinstance(rows, pa.RecordBatch) else rows)
    if times is None or times.null_count == len(times):
        return None, None
    bounds = pc.min_max(times)
    return bounds["min"].as_py(), bounds["max"].as_py()


# ---------------------------------------------------------------------- nulls in logs


def without_nulls(table: pa.Table) -> pa.Table:
    """`table` as the log keeps it: the seed's pipeline logs write "undefined data ... in the
    place of the null value, typically zeroes" and "null list values ... an empty list". So
    nulls in `in.*` / `out.*` columns become 0, false, "" or [] (inside lists too); a column
    of nulls only (no type to fill) stays as it is. Types do not change."""
    for i, name in enumerate(table.column_names):
        column = table.column(i)
        if is_input(name) or is_output(name):
            chunks = [_filled(chunk) for chunk in column.chunks]
            if any(new is not old for new, old in zip(chunks, column.chunks, strict=True)):
                table = table.set_column(
                    i, table.field(i), pa.chunked_array(chunks, type=column.type)
                )
    return table


def _filled(array: pa.Array) -> pa.Array:
    kind = array.type
    if pa.types.is_list(kind):
        values = _filled(array.values)
        if array.null_count == 0 and values is array.values:
            return array
        return pa.ListArray.from_arrays(array.offsets, values, type=kind)
    if not array.null_count:
        return array
    if pa.types.is_integer(kind) or pa.types.is_floating(kind):
        return pc.fill_null(array, scalar(0, kind))
    if pa.types.is_boolean(kind):
        return pc.fill_null(array, scalar(False, kind))
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return pc.fill_null(array, scalar("", pa.string()).cast(kind))
    return array


# ---------------------------------------------------------------------- metadata.dropped


def repeated_list(names: list[str], rows: int) -> pa.Array:
    """`rows` copies of the list `names`, as list<string>, from buffers (`pa.array` would
    import pandas, ~48 MiB resident, on the log buffer's first trim)."""
    width = len(names)
    values = texts(names).take(ndarray_to_column(np.tile(np.arange(width, dtype=np.int32), rows)))
    offsets = pa.py_buffer(np.arange(rows + 1, dtype=np.int32) * np.int32(width))
    return pa.Array.from_buffers(DROPPED_TYPE, rows, [None, offsets], children=[values])


def drop_columns(table: pa.Table, names: list[str]) -> pa.Table:
    """`table` without `names`, each row's `metadata.dropped` extended by them."""
    kept = table.drop_columns(names)
    rows = kept.num_rows
    if DROPPED not in kept.column_names:
        return kept.append_column(pa.field(DROPPED, DROPPED_TYPE), repeated_list(names, rows))
    index = kept.column_names.index(DROPPED)
    old = kept.column(index).combine_chunks()
    if isinstance(old, pa.DictionaryArray):  # packed (`edge.logbuffer.codec.pack_constants`)
        old = old.dictionary.take(old.indices)
    # The rows of a stored table were all trimmed alike: one list for all, built in bulk
    # (a per-row Python loop holds the GIL for milliseconds on large tables, stalling requests).
    first = (old[0].as_py() or []) if rows else []
    if rows and _all_equal_to(old, first):
        values = repeated_list(first + names, rows)
    else:
        values = pa.array([(row or []) + names for row in old.to_pylist()], DROPPED_TYPE)
    return kept.set_column(index, pa.field(DROPPED, DROPPED_TYPE), values)


def dropped_names(table: pa.Table) -> list[str]:
    """Every column name any row's `metadata.dropped` lists, sorted."""
    if DROPPED not in table.column_names or not table.num_rows:
        return []
    column = table.column(DROPPED).combine_chunks()
    return sorted({name for names in column.to_pylist() if names for name in names})


def _all_equal_to(lists: pa.Array, first: list[str]) -> bool:
    """Whether every row of a list<string> array is `first` (a null row counts as [])."""
    # off the buffers (`numbers`): `to_numpy` and a compute call given a Python 0 import pandas
    lengths = np.diff(numbers(lists.offsets))
    if lists.null_count:  # a null row counts as []
        lengths[numbers(lists.is_null())] = 0
    if not (lengths == len(first)).all():
        return False
    if not first:
        return True
    flat = lists.flatten()
    return bool(pc.all(pc.equal(flat, repeated_list(first, len(lists)).flatten())).as_py())


def _single(column: pa.ChunkedArray) -> pa.Array:
    return column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()
