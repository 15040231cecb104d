"""BYOP ("bring your own predict"): a zip of Python modules, `artifacts/` and a
`requirements.txt`. Its one concrete `mac.inference.creation.InferenceBuilder` subclass builds
an `Inference` that maps a dict of numpy arrays (one per input column) to a dict of numpy
arrays (one per output column). Optional Arrow schemas fix both sides' fields and types.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import logging
import shutil
import sys
import tempfile
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pyarrow as pa
from packaging.requirements import InvalidRequirement, Requirement

from edge.errors import ArtifactError, BadInput, PipelineError
from edge.runtimes.base import Runtime, extract_zip, map_inputs
from edge.tensors import column_to_ndarray, ndarray_to_column
from mac.config.inference import CustomInferenceConfig
from mac.exceptions import InferenceDataValidationError
from mac.inference.creation import InferenceBuilder

log = logging.getLogger(__name__)
_IMPORT_LOCK = threading.Lock()  # sys.path and sys.modules are shared by the whole process
# Distributions that provide the same import package under another name.
_SAME_PACKAGE = {"tensorflow": ("tensorflow-cpu",), "onnxruntime": ("onnxruntime-gpu",)}
_ARROW_ERRORS = (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError, TypeError)


class ByopRuntime(Runtime):
    inference: Any  # what the zip's builder made: an Inference, or anything with predict

    def load(self) -> None:
        self.what = f"BYOP model {self.info.name!r} (layer {self.info.digest})"
        self.input_schema = self.info.arrow_schema("input")
        self.output_schema = self.info.arrow_schema("output")
        self.context.work_dir.mkdir(parents=True, exist_ok=True)
        self.folder = Path(tempfile.mkdtemp(prefix="byop-", dir=self.context.work_dir))
        try:
            self._load(extract_zip(self.path, self.folder, self.what))
        except BaseException:
            shutil.rmtree(self.folder, ignore_errors=True)
            raise

    def _load(self, root: Path) -> None:
        check_requirements(root / "requirements.txt", self.what)
        names = sorted(
            p.stem if p.is_file() else p.name
            for p in root.iterdir()
            if p.name != "artifacts"
            and p.stem.isidentifier()
            and p.stem != "setup"
            and ((p.is_file() and p.suffix == ".py") or (p / "__init__.py").is_file())
        )
        with _imported(root, names, self.what) as modules:
            builders = {
                cls
                for module in modules
                for _, cls in inspect.getmembers(module, inspect.isclass)
                if issubclass(cls, InferenceBuilder)
                and not inspect.isabstract(cls)
                and cls.__module__.split(".")[0] in names
            }
            if len(builders) != 1:
                found = sorted(f"{c.__module__}.{c.__qualname__}" for c in builders) or "none"
                raise ArtifactError(
                    f"{self.what}: needs exactly one InferenceBuilder subclass; found {found}"
                )
            builder = builders.pop()
            self.builder_name = f"{builder.__module__}.{builder.__qualname__}"
            try:
                self.inference = builder().create(CustomInferenceConfig(model_path=root))
            except Exception as exc:
                raise ArtifactError(
                    f"{self.what}: {self.builder_name}.create failed: {type(exc).__name__}: {exc}"
                ) from exc

    def predict(self, table: pa.Table) -> pa.Table:
        step = self.info.name
        try:
            result = self.inference.predict(self._inputs(table))
        except InferenceDataValidationError as exc:
            raise BadInput(f"step {step!r}: the model refused its input: {exc}") from exc
        except (BadInput, PipelineError):
            raise
        except Exception as exc:
            raise PipelineError(f"predict raised {type(exc).__name__}: {exc}", step=step) from exc
        if not isinstance(result, Mapping) or not result:
            raise PipelineError(
                f"predict returned {type(result).__name__}, not a dict of numpy arrays", step=step
            )
        names = self.output_schema.names if self.output_schema else [str(k) for k in result]
        columns = {}
        for name in names:
            if name not in result:
                raise PipelineError(
                    f"output field {name!r} of the output schema is missing from predict's "
                    f"result (it has {sorted(map(str, result))})",
                    step=step,
                )
            columns[name] = self._column(name, result[name], table.num_rows)
        return pa.table(columns)

    def close(self) -> None:
        self.inference = None
        shutil.rmtree(self.folder, ignore_errors=True)

    def describe(self) -> dict[str, Any]:
        return {"builder": self.builder_name}

    def _inputs(self, table: pa.Table) -> dict[str, np.ndarray]:
        step = self.info.name
        if self.input_schema is None:
            names = self.info.tensor_fields or table.column_names
            missing = [n for n in names if n not in table.column_names]
            if missing:
                raise BadInput(f"step {step!r}: tensor_fields column(s) {missing} not in the input")
            return {n: _to_numpy(table.column(n), f"column {n!r} of step {step!r}") for n in names}
        mapping = map_inputs(
            table.column_names, self.input_schema.names, self.info.tensor_fields, step
        )
        data = {}
        for field in self.input_schema:
            column = table.column(mapping[field.name])
            where = f"column {mapping[field.name]!r} (step {step!r} input field {field.name!r})"
            try:
                column = column.cast(field.type, safe=True)
            except _ARROW_ERRORS as exc:
                raise BadInput(
                    f"{where}: type {column.type} does not fit the input schema's {field.type}"
                ) from exc
            data[field.name] = _to_numpy(column, where)
        return data

    def _column(self, name: str, value: Any, rows: int) -> pa.Array:
        step = self.info.name
        try:
            array = value if isinstance(value, np.ndarray) else np.asarray(value)
        except ValueError:  # ragged rows
            array = np.empty(len(value), dtype=object)
            for i, row in enumerate(value):
                array[i] = row
        if array.ndim == 0 or len(array) != rows:
            got = len(array) if array.ndim else "a scalar"
            raise PipelineError(f"output {name!r} has {got} rows for {rows} input rows", step=step)
        try:
            if array.dtype != object:
                column = ndarray_to_column(array)
            else:
                column = pa.array([v.tolist() if isinstance(v, np.ndarray) else v for v in array])
            if self.output_schema is not None:
                column = column.cast(self.output_schema.field(name).type, safe=True)
        except _ARROW_ERRORS as exc:
            want = self.output_schema.field(name).type if self.output_schema else "an Arrow type"
            raise PipelineError(
                f"output {name!r} ({array.dtype}, shape {array.shape}) does not convert to {want}: "
                f"{exc}",
                step=step,
            ) from exc
        return column


def check_requirements(requirements: Path, what: str) -> None:
    """Refuse a model whose requirements.txt names distributions this image lacks (devices are
    offline: nothing can be pip-installed); log versions that differ from the pins."""
    if not requirements.is_file():
        return
    missing = []
    for line in requirements.read_text().splitlines():
        line = line.split(" #")[0].strip()
        if not line or line.startswith(("#", "-")):
            continue
        try:
            req = Requirement(line)
        except InvalidRequirement as exc:
            raise ArtifactError(
                f"{what}: requirements.txt line {line!r} is invalid: {exc}"
            ) from exc
        if req.marker is not None and not req.marker.evaluate():
            continue
        installed = None
        for name in (req.name, *_SAME_PACKAGE.get(req.name.lower(), ())):
            try:
                installed = importlib.metadata.version(name)
                break
            except importlib.metadata.PackageNotFoundError:
                continue
        if installed is None:
            missing.append(str(req))
        elif req.specifier and not req.specifier.contains(installed, prereleases=True):
            log.warning("%s requirement=%s installed=%s (version differs)", what, req, installed)
    if missing:
        raise ArtifactError(
            f"{what}: requirements.txt needs {', '.join(missing)}, not installed in this image; "
            f"devices are offline and cannot pip install: use an image that includes them"
        )


@contextmanager
def _imported(root: Path, names: list[str], what: str) -> Iterator[list[ModuleType]]:
    """Import the zip's top-level modules with its folder first on sys.path. Afterwards they
    leave sys.modules again, so two zips that both ship `custom_inference.py` stay apart."""

    def ours(module: str) -> bool:
        return module.split(".")[0] in names

    with _IMPORT_LOCK:
        saved = {n: sys.modules.pop(n) for n in [n for n in sys.modules if ours(n)]}
        sys.path.insert(0, str(root))
        importlib.invalidate_caches()
        try:
            modules = []
            for name in names:
                try:
                    modules.append(importlib.import_module(name))
                except Exception as exc:
                    raise ArtifactError(
                        f"{what}: importing {name!r} failed: {type(exc).__name__}: {exc}"
                    ) from exc
            yield modules
        finally:
            sys.path.remove(str(root))
            for n in [n for n in sys.modules if ours(n)]:
                del sys.modules[n]
            sys.modules.update(saved)


def _to_numpy(column: pa.ChunkedArray, where: str) -> np.ndarray:
    """A regular tensor column as one (rows, *dims) array; ragged or null-holding list
    columns as an object array of per-row arrays (BYOP models may take any shape)."""
    leaf = column.type
    while (
        pa.types.is_list(leaf) or pa.types.is_large_list(leaf) or pa.types.is_fixed_size_list(leaf)
    ):
        leaf = leaf.value_type
    if pa.types.is_string(leaf) or pa.types.is_large_string(leaf):
        dtype = np.dtype(object)
    elif pa.types.is_integer(leaf) or pa.types.is_floating(leaf) or pa.types.is_boolean(leaf):
        dtype = np.dtype(leaf.to_pandas_dtype())
    else:
        dtype = None
    if dtype is not None:
        try:
            return column_to_ndarray(column, dtype, None, where)
        except BadInput:
            pass  # ragged rows or nulls: hand the rows over as they are
    if leaf == column.type:
        return column.to_numpy()
    rows = np.empty(len(column), dtype=object)
    for i, row in enumerate(column.to_pylist()):
        rows[i] = None if row is None else np.asarray(row)
    return rows
