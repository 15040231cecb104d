"""Keras models (the seed's SavedModel zip, or an HDF5 `.h5` / native `.keras` file), run
in-process with TensorFlow when publish did not convert them to ONNX. Needs the `tensorflow`
extra (the tensorflow image variant).

Each input schema field feeds one model input, in order; each output schema field takes one
model output, in order (a SavedModel's serving signature outputs by name when the schema uses
its names). `.keras` and `.h5` files load with `safe_mode=True`: Keras refuses the Python
bytecode a `Lambda` layer would carry.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pyarrow as pa
import tensorflow as tf

from edge.errors import ArtifactError, PipelineError
from edge.runtimes.base import (
    Runtime,
    conform,
    extract_zip,
    output_table,
    schema_inputs,
    tensor_feed,
)
from edge.runtimes.tensorflow import SIGNATURE, _input_order, _set_threads


class KerasRuntime(Runtime):
    call: Callable[..., Any]

    def load(self) -> None:
        self.what = f"Keras model {self.info.name!r} (layer {self.info.digest})"
        self.inputs = schema_inputs(self.info.arrow_schema("input"), self.what)
        self.output_schema = self.info.arrow_schema("output")
        if self.output_schema is None or not len(self.output_schema):
            raise ArtifactError(f"{self.what}: the definition carries no output schema")
        _set_threads(self.context.threads)
        # The format is the published file's (the cache names a layer by its digest alone)
        suffix = Path(self.info.filename).suffix.lower()
        self.context.work_dir.mkdir(parents=True, exist_ok=True)
        self.folder: Path | None = Path(
            tempfile.mkdtemp(prefix="keras-", dir=self.context.work_dir)
        )
        try:
            if suffix == ".zip":
                self.call = self._saved_model(extract_zip(self.path, self.folder, self.what))
                return
            # Keras 3 reads a file by its extension: the layer, under the name it was published as
            source = self.folder / f"model{suffix}"
            source.symlink_to(self.path.resolve())
            try:
                model = keras.saving.load_model(str(source), compile=False, safe_mode=True)
            except Exception as exc:  # Keras raises many kinds for a file it cannot read
                raise ArtifactError(f"{self.what}: not a loadable Keras model: {exc}") from exc
        except BaseException:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None
            raise
        self.call = lambda *values: model(list(values) if len(values) > 1 else values[0])

    def _saved_model(self, root: Path) -> Callable[..., Any]:
        found = sorted(root.rglob("saved_model.pb"), key=lambda p: len(p.parts))
        if not found:
            raise ArtifactError(f"{self.what}: the zip holds no saved_model.pb (not a SavedModel)")
        try:
            loaded = tf.saved_model.load(str(found[0].parent))
        except Exception as exc:  # TensorFlow raises many untyped errors
            raise ArtifactError(f"{self.what}: not a loadable SavedModel: {exc}") from exc
        signatures = dict(getattr(loaded, "signatures", {}))
        if SIGNATURE not in signatures:
            raise ArtifactError(f"{self.what}: no {SIGNATURE!r} signature ({sorted(signatures)})")
        function = signatures[SIGNATURE]
        names = _input_order(function, function.structured_input_signature[1])
        self._keep = loaded  # the signature holds only a weak reference to its variables
        return lambda *values: function(**dict(zip(names, values, strict=True)))

    def predict(self, table: pa.Table) -> pa.Table:
        step = self.info.name
        assert self.output_schema is not None
        feed = tensor_feed(table, self.inputs, self.info.tensor_fields, step)
        try:
            result = self.call(*(tf.constant(value) for value in feed.values()))
        except Exception as exc:
            raise PipelineError(
                f"the Keras model raised {type(exc).__name__}: {exc}", step=step
            ) from exc
        names = self.output_schema.names
        if isinstance(result, Mapping):
            # by name, else in the order tf2onnx flattens a dict (sorted keys)
            keys = names if set(names) <= set(result) else sorted(result)
            values = [result[key] for key in keys]
        elif isinstance(result, list | tuple):
            values = list(result)
        else:
            values = [result]
        if len(values) != len(names):
            raise PipelineError(
                f"the model gives {len(values)} output(s) for the output schema's {names}",
                step=step,
            )
        outputs = {name: np.asarray(value) for name, value in zip(names, values, strict=True)}
        return conform(output_table(outputs, table.num_rows, step), self.output_schema, step)

    def close(self) -> None:
        self.call = self._keep = None  # type: ignore[assignment]
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)

    def describe(self) -> dict[str, Any]:
        return {"framework": self.info.framework, "keras": keras.__version__}
