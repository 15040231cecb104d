"""TensorFlow SavedModels: a zip of the SavedModel folder, run through its `serving_default`
signature. The only module that imports TensorFlow (4-7 s, about 500 MB), so only pipelines
with a TensorFlow step pay for it."""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import tensorflow as tf

from edge.errors import ArtifactError, PipelineError
from edge.runtimes.base import (
    Runtime,
    Signature,
    TensorInput,
    extract_zip,
    output_table,
    tensor_feed,
)

log = logging.getLogger(__name__)
SIGNATURE = "serving_default"


class TensorflowRuntime(Runtime):
    def load(self) -> None:
        what = f"TensorFlow model {self.info.name!r} (layer {self.info.digest})"
        _set_threads(self.context.threads)
        if self.context.gpus > 0 and not tf.config.list_physical_devices("GPU"):
            log.warning(
                "model=%s asks for GPUs; TensorFlow sees none, running on CPU", self.info.name
            )
        self.context.work_dir.mkdir(parents=True, exist_ok=True)
        self.folder = Path(tempfile.mkdtemp(prefix="tensorflow-", dir=self.context.work_dir))
        try:
            root = extract_zip(self.path, self.folder, what)
            found = sorted(root.rglob("saved_model.pb"), key=lambda p: len(p.parts))
            if not found:
                raise ArtifactError(f"{what}: the zip holds no saved_model.pb (not a SavedModel)")
            try:
                self.model = tf.saved_model.load(str(found[0].parent))
            except Exception as exc:  # TensorFlow raises many untyped errors
                raise ArtifactError(f"{what}: not a loadable SavedModel: {exc}") from exc
            signatures = dict(getattr(self.model, "signatures", {}))
            if SIGNATURE not in signatures:
                raise ArtifactError(
                    f"{what}: no {SIGNATURE!r} signature (it has {sorted(signatures)}); export "
                    f"the model with a serving signature"
                )
        except BaseException:
            shutil.rmtree(self.folder, ignore_errors=True)
            raise
        self.function = signatures[SIGNATURE]
        _, specs = self.function.structured_input_signature
        self.inputs = [
            (name, np.dtype(specs[name].dtype.as_numpy_dtype), _shape(specs[name]))
            for name in _input_order(self.function, specs)
        ]
        self.output_names = list(self.function.structured_outputs)

    def predict(self, table: pa.Table) -> pa.Table:
        step = self.info.name
        feed = tensor_feed(table, self.inputs, self.info.tensor_fields, step)
        try:
            results = self.function(**{name: tf.constant(value) for name, value in feed.items()})
        except Exception as exc:
            raise PipelineError(f"tensorflow failed: {exc}", step=step) from exc
        outputs = {name: results[name] for name in self.output_names}
        return output_table(outputs, table.num_rows, step)

    def close(self) -> None:
        self.function = self.model = None
        shutil.rmtree(self.folder, ignore_errors=True)

    def describe(self) -> dict[str, Any]:
        return {"signature": SIGNATURE, "tensorflow": tf.__version__}

    def signature(self) -> Signature:
        specs = self.function.structured_outputs
        outputs: list[TensorInput] = [
            (name, np.dtype(specs[name].dtype.as_numpy_dtype), _shape(specs[name]))
            for name in self.output_names
        ]
        return list(self.inputs), outputs


def _input_order(function: Any, specs: dict[str, Any]) -> list[str]:
    """The signature's own argument order (`tensor_fields` maps to it in order): the dict
    in `structured_input_signature` does not keep it."""
    try:
        declared = [n for n in function.function_type.parameters if n in specs]
    except AttributeError:  # older TensorFlow
        declared = []
    return declared + [n for n in specs if n not in declared]


def _shape(spec: Any) -> list[int | None] | None:
    return None if spec.shape.rank is None else list(spec.shape.as_list())


def _set_threads(threads: int) -> None:
    """TensorFlow takes thread counts only before its runtime starts (the first model)."""
    try:
        tf.config.threading.set_intra_op_parallelism_threads(max(1, threads))
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:
        pass  # already initialised by an earlier model: the first one's setting holds
