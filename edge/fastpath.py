"""Small pandas-records requests without Arrow tables: body -> numpy -> models -> numpy -> bytes.

A `FastPath` is compiled once per pipeline at load when every step is a model step whose
runtime works on numpy arrays (`Runtime.arrays`) and the pipeline has no validations. For a
JSON body of a few rows (`decode.ORJSON_BODY` bytes) whose columns are numeric tensors, it
answers byte for byte as the general path (`Pipeline.run`, then `codecs.encode_records`)
does, and hands the journal the rows as numpy columns (`result.ResultRows`), which it joins
with the other requests of the loop turn into one Arrow batch.

It never raises on a client's data: a body it does not take (Arrow, text or null columns,
more rows, a cast or shape the model refuses, a model error) is declined (`None`) and the
general path answers it, errors included. So the two paths cannot disagree on an error.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from edge import result
from edge.artifact import ModelInfo, ModelStep
from edge.codecs.decode import ORJSON_BODY, numeric_tensor
from edge.codecs.records import (
    ENTRY_DATA,
    ORIGINAL_DATA_BYTES,
    RecordInfo,
    _tensor_entry,
    entry_end,
    record_keys,
)
from edge.codecs.shape import Shape, selected
from edge.errors import EdgeError
from edge.runtimes import Runtime

MAX_ROWS = 64


@dataclass(frozen=True)
class _Step:
    info: ModelInfo
    predict: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


@dataclass
class FastInference:
    """One answered small request: its columns as numpy, and what its records repeat."""

    rows: result.ResultRows
    info: RecordInfo


class FastPath:
    """A pipeline compiled for small numeric pandas-records requests (see the module doc)."""

    def __init__(self, pipeline_name: str, steps: list[_Step], builder: result.ResultBuilder):
        self.pipeline_name = pipeline_name
        self.steps = steps
        self.builder = builder

    @classmethod
    def compile(
        cls,
        pipeline_name: str,
        steps: list[Any],
        models: dict[str, ModelInfo],
        runtimes: dict[str, Runtime],
        has_validations: bool,
        builder: result.ResultBuilder,
    ) -> FastPath | None:
        """The fast path of a pipeline, or None when it needs the general path throughout."""
        if has_validations or not steps:
            return None
        compiled = []
        for step in steps:
            if not isinstance(step, ModelStep):
                return None
            runtime = runtimes.get(step.model)
            if runtime is None or not runtime.arrays:
                return None
            compiled.append(_Step(models[step.model], runtime.predict_arrays))
        return cls(pipeline_name, compiled, builder)

    def run(self, body: bytes) -> FastInference | None:
        """The request's inference, or None: the general path answers it."""
        started = time.perf_counter_ns()
        columns = self._parse(body)
        if columns is None:
            return None
        return self.run_columns(columns, time.perf_counter_ns() - started)

    def run_columns(
        self, columns: dict[str, np.ndarray], parse_ns: int, max_rows: int | None = MAX_ROWS
    ) -> FastInference | None:
        """The inference of numeric columns shaped (rows, *dims) (of a decoded pandas-records
        body, or of another protocol's tensors), or None: the general path answers it.
        `max_rows` None: any number of rows (the Open Inference Protocol's tensors, whose
        answer is written from numpy whatever their size)."""
        rows = len(next(iter(columns.values())))
        if rows <= 0 or (max_rows is not None and rows > max_rows):
            return None
        elapsed = [parse_ns]
        current = columns
        last = self.steps[0].info
        for step in self.steps:
            if step.info.batch_config == "single" and rows > 1:
                return None
            began = time.perf_counter_ns()
            try:
                current = step.predict(current)
            except EdgeError:
                return None  # the general path says what was wrong, and where
            elapsed.append(time.perf_counter_ns() - began)
            last = step.info
        now = self.builder.now_ms()
        rows_out = result.ResultRows(
            self.builder, columns, current, now, elapsed, last.name, last.sha256
        )
        info = RecordInfo(self.pipeline_name, last.name, last.version, elapsed)
        return FastInference(rows_out, info)

    @staticmethod
    def _parse(body: bytes) -> dict[str, np.ndarray] | None:
        """Numeric columns as the general path's decoder makes them, or None."""
        if len(body) >= ORJSON_BODY:
            return None
        try:
            rows = orjson.loads(body)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(rows, list) or not 0 < len(rows) <= MAX_ROWS:
            return None
        first = rows[0]
        if not isinstance(first, dict) or not first:
            return None
        keys = list(first)
        for row in rows:
            if (
                not isinstance(row, dict)
                or len(row) != len(keys)
                or any(k not in row for k in keys)
            ):
                return None
        columns = {}
        for key in keys:
            tensor = numeric_tensor([row[key] for row in rows])
            if tensor is None:
                return None
            columns[key] = tensor
        return columns


def encode(inference: FastInference, shape: Shape) -> bytes:
    """The response records, as `codecs.encode_records` writes the general path's table:
    from a template of the record's constant text made once per layout and shape."""
    rows = inference.rows
    key = (rows.key(), shape, inference.info.model_version)
    template = _TEMPLATES.get(key)
    if template is None:
        template = _Template(rows, shape, inference.info)
        if len(_TEMPLATES) < 256:
            _TEMPLATES[key] = template
    return template.render(rows, inference.info)


Part = bytes | tuple[str, str]  # constant text, or (what, name): a value filled per record
_NUMPY = orjson.OPT_SERIALIZE_NUMPY
_TEMPLATES: dict[tuple[Any, ...], _Template] = {}


class _Template:
    """One record's text for a layout of columns and a shape: the constant text between the
    values, in the order `codecs.records.records_of` writes a record's keys."""

    def __init__(self, rows: result.ResultRows, shape: Shape, info: RecordInfo) -> None:
        values, kinds = rows.record_columns()  # the layout's first request
        names = selected(tuple(values), shape)
        self.parts: list[Part] = []
        put = self._put
        # no validations on this path: no record has check failures
        put(b'{"check_failures":[],"elapsed":')
        put(self._request("elapsed"))
        put(b',"model_name":' + orjson.dumps(info.model_name))
        put(b',"model_version":' + orjson.dumps(info.model_version))
        put(b',"original_data":')
        put(("original", ""))
        put(b',"outputs":[')
        for i, name in enumerate(result.output_columns(list(names))):
            put((b"," if i else b"") + b'{"' + kinds[name].encode() + b'":')
            put(self._entry(name))
            put(b"}")
        put(b'],"pipeline_name":' + orjson.dumps(info.pipeline_name))
        put(b',"shadow_data":' + orjson.dumps(info.shadow_data) + b",")
        for i, (top, members) in enumerate(record_keys(list(names), shape.separator).items()):
            put((b"," if i else b"") + orjson.dumps(top) + b":")
            if members[0][1] is None:
                put(self._value(members[0][0], values))
                continue
            put(b"{")
            for j, (name, sub) in enumerate(members):
                put((b"," if j else b"") + orjson.dumps(sub) + b":")
                put(self._value(name, values))
            put(b"}")
        put(b"}")

    def _put(self, part: Part) -> None:
        if isinstance(part, bytes) and self.parts and isinstance(self.parts[-1], bytes):
            self.parts[-1] += part
        else:
            self.parts.append(part)

    @staticmethod
    def _request(field: str) -> Part:
        return ("request", field)

    def _value(self, name: str, values: dict[str, Any]) -> Part:
        if name in _PER_REQUEST:
            return self._request(name)
        if name.startswith((result.IN, result.OUT)):
            return ("column", name)
        return orjson.dumps(values[name][0], option=_NUMPY)  # per pipeline: the same for all

    @staticmethod
    def _entry(name: str) -> Part:
        return ("entry", name)

    def render(self, rows: result.ResultRows, info: RecordInfo) -> bytes:
        elapsed = orjson.dumps(rows.elapsed)  # the fast path's record and row share one list
        request = {
            "elapsed": elapsed if info.elapsed is rows.elapsed else orjson.dumps(info.elapsed),
            result.TIME: orjson.dumps(rows.time_ms),
            result.ELAPSED: elapsed,
        }
        per_row: dict[tuple[str, str], list[bytes]] = {}
        for prefix, columns in ((result.IN, rows.inputs), (result.OUT, rows.outputs)):
            for name, array in columns.items():
                values = array if array.ndim > 1 and array.dtype.kind in "iuf" else array.tolist()
                texts = [orjson.dumps(v, option=_NUMPY) for v in values]
                per_row["column", prefix + name] = texts
                if prefix == result.OUT:
                    per_row["entry", prefix + name] = _entries(array, values, texts)
        per_row["original", ""] = _original_data(rows, per_row)
        records = []
        for row in range(rows.rows):
            pieces = []
            for part in self.parts:
                if isinstance(part, bytes):
                    pieces.append(part)
                elif part[0] == "request":
                    pieces.append(request[part[1]])
                else:
                    pieces.append(per_row[part][row])
            records.append(b"".join(pieces))
        return b"[" + b",".join(records) + b"]"


def _entries(array: np.ndarray, values: Any, texts: list[bytes]) -> list[bytes]:
    """Each row's `_tensor_entry` of an output column, written around the text of its value
    where the entry's data is that value (scalars, and rows of one dimension)."""
    if array.ndim == 1 and array.dtype.kind in "biufU":
        end = entry_end(b"[1]")
        return [ENTRY_DATA + text + end for text in texts]
    if array.ndim == 2 and array.dtype.kind in "iuf":
        end = entry_end(orjson.dumps([1, array.shape[1]]))
        return [ENTRY_DATA + text[1:-1] + end for text in texts]  # the row's list, unbracketed
    return [orjson.dumps(_tensor_entry(v), option=_NUMPY) for v in values]


def _original_data(
    rows: result.ResultRows, per_row: dict[tuple[str, str], list[bytes]]
) -> list[bytes]:
    """Each record's `original_data` from its input values' text, as
    `RecordInfo.original_data` writes it (null past `ORIGINAL_DATA_BYTES`)."""
    keys = [(orjson.dumps(name), per_row["column", result.IN + name]) for name in rows.inputs]
    texts = []
    for row in range(rows.rows):
        text = b"{" + b",".join(key + b":" + values[row] for key, values in keys) + b"}"
        texts.append(text if len(text) <= ORIGINAL_DATA_BYTES else b"null")
    return texts


_PER_REQUEST = {result.TIME, result.ELAPSED}
