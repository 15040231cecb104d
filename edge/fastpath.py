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
from edge.codecs.records import RecordInfo, records_of
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

    def run_columns(self, columns: dict[str, np.ndarray], parse_ns: int) -> FastInference | None:
        """The inference of numeric columns shaped (rows, *dims) (of a decoded pandas-records
        body, or of another protocol's tensors), or None: the general path answers it."""
        rows = len(next(iter(columns.values())))
        if not 0 < rows <= MAX_ROWS:
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
    """The response records, as `codecs.encode_records` writes the general path's table."""
    rows = inference.rows
    values, kinds = rows.record_columns()
    names = selected(tuple(values), shape)
    return records_of(
        {name: values[name] for name in names}, kinds, rows.rows, inference.info, shape.separator
    )
