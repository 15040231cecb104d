"""ONNX models through onnxruntime: CPU, or CUDA when the deployment asks for GPUs."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import onnxruntime as ort
import pyarrow as pa

from edge.errors import ArtifactError, PipelineError
from edge.runtimes.base import (
    ArrayFeed,
    Runtime,
    Signature,
    check_outputs,
    conform,
    output_table,
    tensor_feed,
)

log = logging.getLogger(__name__)

_DTYPES: dict[str, np.dtype] = {
    "tensor(float)": np.dtype(np.float32),
    "tensor(double)": np.dtype(np.float64),
    "tensor(float16)": np.dtype(np.float16),
    "tensor(int64)": np.dtype(np.int64),
    "tensor(int32)": np.dtype(np.int32),
    "tensor(int16)": np.dtype(np.int16),
    "tensor(int8)": np.dtype(np.int8),
    "tensor(uint8)": np.dtype(np.uint8),
    "tensor(bool)": np.dtype(np.bool_),
    "tensor(string)": np.dtype(object),
}


def choose_providers(gpus: int, available: list[str]) -> tuple[list[str], str | None]:
    """Execution providers to ask for, and a warning when GPUs were asked for but absent."""
    if gpus <= 0:
        return ["CPUExecutionProvider"], None
    if "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"], None
    return ["CPUExecutionProvider"], (
        f"deployment asks for {gpus} GPU(s) but onnxruntime has no CUDAExecutionProvider "
        f"(available: {', '.join(available)}); falling back to CPU"
    )


class OnnxRuntime(Runtime):
    session: ort.InferenceSession
    inline = True  # microseconds on small inputs, no user code: may run on the event loop

    def load(self) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, self.context.threads)
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.enable_cpu_mem_arena = False  # its arena keeps a 10k-row run's peak (~8 MiB)
        providers, warning = choose_providers(self.context.gpus, ort.get_available_providers())
        if warning:
            log.warning("model=%s %s", self.info.name, warning)
        try:
            self.session = ort.InferenceSession(
                str(self.path), sess_options=options, providers=providers
            )
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise ArtifactError(
                f"model {self.info.name!r} (layer {self.info.digest}) is not a loadable ONNX "
                f"model: {exc}"
            ) from exc
        self.inputs = [(i.name, _dtype(i.type), i.shape) for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.provider = self.session.get_providers()[0]
        self.feed = ArrayFeed(self.inputs, self.info.tensor_fields, self.info.name)
        self._session_run = _binding_run(self.session)
        self.output_schema = self.info.arrow_schema("output")
        # outputs cast to an output schema (a converted model's) exist only as Arrow columns:
        # such a model takes the general path, whose answers and logged tables are Arrow's
        self.arrays = self.output_schema is None

    arrays = True

    def predict(self, table: pa.Table) -> pa.Table:
        feed = tensor_feed(table, self.inputs, self.info.tensor_fields, self.info.name)
        outputs = output_table(self._run(feed), table.num_rows, self.info.name)
        return conform(outputs, self.output_schema, self.info.name)

    def predict_arrays(self, columns: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feed = self.feed(columns)
        rows = len(next(iter(columns.values()))) if columns else 0
        return check_outputs(self._run(feed), rows, self.info.name)

    def _run(self, feed: dict[str, np.ndarray]) -> dict[str, Any]:
        try:
            results = self._session_run(self.output_names, feed, None)
        except Exception as exc:
            raise PipelineError(f"onnxruntime failed: {exc}", step=self.info.name) from exc
        return dict(zip(self.output_names, results, strict=True))

    def describe(self) -> dict[str, Any]:
        facts: dict[str, Any] = {"provider": self.provider}
        if self.info.framework:  # converted at publish
            facts.update(framework=self.info.framework, conversion=self.info.conversion)
        return facts

    def signature(self) -> Signature:
        # outputs that are not tensors (sequences, maps) have no protocol datatype
        outputs = [
            (o.name, _DTYPES[o.type], o.shape)
            for o in self.session.get_outputs()
            if o.type in _DTYPES
        ]
        return list(self.inputs), outputs


def _binding_run(session: ort.InferenceSession) -> Any:
    """The session's `run`: on CPU alone, its binding's own, without the wrapper's checks in
    Python per call (~2.5 us of a one-row run's ~13: the feed names every input, as the
    binding checks too; no OrtValues, no graph capture, no provider to fall back to)."""
    binding: Any = getattr(session, "_sess", None)
    if session.get_providers() == ["CPUExecutionProvider"] and callable(
        getattr(binding, "run", None)
    ):
        return binding.run
    return session.run


def _dtype(onnx_type: str) -> np.dtype:
    try:
        return _DTYPES[onnx_type]
    except KeyError:
        raise ArtifactError(f"ONNX input type {onnx_type} is not supported") from None
