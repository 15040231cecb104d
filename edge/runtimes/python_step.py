"""Python steps: a `.py` file defining `wallaroo_json(data)`, for pre- and post-processing.

`data` is the previous step's output as a pandas DataFrame. The function returns a DataFrame
(or an Arrow table), a dict of columns, or a list of row dicts; a dict may name the columns
to pass on in `tensor_fields` (the seed's pre-processing example). The result must have one
row per input row.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import re
import sys
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from edge.errors import ArtifactError, PipelineError
from edge.runtimes.base import Runtime
from edge.tensors import ndarray_to_column

_ARROW_ERRORS = (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, TypeError)


class PythonStepRuntime(Runtime):
    function: Callable[[pd.DataFrame], Any]

    def load(self) -> None:
        what = f"Python step {self.info.name!r} (layer {self.info.digest})"
        safe = re.sub(r"\W", "_", self.info.name)
        self.module_name = f"edge_python_step_{safe}_{uuid.uuid4().hex[:8]}"
        # An explicit loader: the cached layer file is named by its digest, without `.py`.
        loader = importlib.machinery.SourceFileLoader(self.module_name, str(self.path))
        spec = importlib.util.spec_from_file_location(self.module_name, self.path, loader=loader)
        if spec is None or spec.loader is None:
            raise ArtifactError(f"{what}: {self.path.name} cannot be loaded as a Python module")
        module = importlib.util.module_from_spec(spec)
        sys.modules[self.module_name] = module  # dataclasses and pickle look modules up here
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            del sys.modules[self.module_name]
            raise ArtifactError(
                f"{what}: running the file failed: {type(exc).__name__}: {exc}"
            ) from exc
        function = getattr(module, "wallaroo_json", None)
        if not callable(function):
            del sys.modules[self.module_name]
            raise ArtifactError(f"{what}: the file defines no function wallaroo_json(data)")
        self.function = function

    def predict(self, table: pa.Table) -> pa.Table:
        step = self.info.name
        try:
            result = self.function(table.to_pandas())
        except Exception as exc:  # the user's code: report the message, keep the traceback in logs
            raise PipelineError(
                f"wallaroo_json raised {type(exc).__name__}: {exc}", step=step
            ) from exc
        output = _plain(_to_table(result, step))
        if output.num_rows != table.num_rows:
            raise PipelineError(
                f"wallaroo_json returned {output.num_rows} rows for {table.num_rows} input rows",
                step=step,
            )
        return output

    def close(self) -> None:
        sys.modules.pop(self.module_name, None)


def _to_table(result: Any, step: str) -> pa.Table:
    if isinstance(result, pa.Table):
        return result
    try:
        if isinstance(result, pd.DataFrame):
            return pa.Table.from_pandas(result, preserve_index=False)
        if isinstance(result, list) and all(isinstance(row, Mapping) for row in result):
            return pa.Table.from_pylist(result)
    except _ARROW_ERRORS as exc:
        raise PipelineError(
            f"wallaroo_json's result does not convert to columns: {exc}", step=step
        ) from exc
    if not isinstance(result, Mapping):
        raise PipelineError(
            f"wallaroo_json returned {type(result).__name__}; expected a DataFrame, a dict of "
            f"columns or a list of row dicts",
            step=step,
        )
    names = result.get("tensor_fields") or [k for k in result if k != "tensor_fields"]
    columns = {}
    for name in names:
        if name not in result:
            raise PipelineError(f"tensor_fields names {name!r}, which the result lacks", step=step)
        try:
            columns[str(name)] = _to_column(result[name])
        except _ARROW_ERRORS as exc:
            raise PipelineError(
                f"column {name!r} does not convert to Arrow: {exc}", step=step
            ) from exc
    try:
        return pa.table(columns)
    except pa.ArrowInvalid as exc:  # columns of different lengths
        raise PipelineError(f"wallaroo_json's columns differ in length: {exc}", step=step) from exc


def _plain(table: pa.Table) -> pa.Table:
    """Drop pandas' schema metadata; pandas 3 strings arrive as large_string: make them string."""
    for i, field in enumerate(table.schema):
        if pa.types.is_large_string(field.type):
            table = table.set_column(
                i, field.with_type(pa.string()), table.column(i).cast(pa.string())
            )
    return table.replace_schema_metadata(None)


def _to_column(value: Any) -> pa.Array:
    if isinstance(value, pd.Series):
        return pa.Array.from_pandas(value)
    if isinstance(value, np.ndarray) and value.dtype != object:
        return ndarray_to_column(value)
    return pa.array(list(value))
