"""The ONNX runtime's execution provider choice (GPU when asked for and present, else CPU
with a clear log line), what it reports for `/models`, and its compiled feed (the same
answers and errors as the general one)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from edge.artifact import ModelInfo
from edge.errors import EdgeError
from edge.registry import sha256_file
from edge.runtimes import RuntimeContext, load_runtime
from edge.runtimes.base import array_feed
from edge.runtimes.onnx import choose_providers
from edge.tensors import ndarray_to_column


def _info(model: Path, tensor_fields: list[str] | None = None) -> ModelInfo:
    return ModelInfo(
        name="breast-cancer",
        version="00000000-0000-0000-0000-000000000001",
        sha256=sha256_file(model),
        runtime="onnx",
        filename=model.name,
        size=model.stat().st_size,
        tensor_fields=tensor_fields,
    )


def test_provider_choice() -> None:
    cpu_only = ["CPUExecutionProvider"]
    with_cuda = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert choose_providers(0, with_cuda) == (["CPUExecutionProvider"], None)
    assert choose_providers(1, with_cuda) == (with_cuda, None)
    providers, warning = choose_providers(2, cpu_only)
    assert providers == ["CPUExecutionProvider"]
    assert warning is not None and "2 GPU(s)" in warning and "falling back to CPU" in warning


def test_gpu_deployment_without_a_gpu_falls_back_and_says_so(
    example: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model = example / "models/breast-cancer.onnx"
    info = _info(model)
    with caplog.at_level(logging.WARNING, logger="edge.runtimes.onnx"):
        runtime = load_runtime(info, model, RuntimeContext(threads=1, gpus=1, work_dir=tmp_path))
    assert "falling back to CPU" in caplog.text
    assert runtime.describe() == {"provider": "CPUExecutionProvider"}
    features = np.load(example / "data/10k-rows.npy")[:3]
    out = runtime.predict(pa.table({"tensor": ndarray_to_column(features)}))
    assert out.num_rows == 3 and out.column_names == ["label", "probabilities"]


def _fed(feed: Any) -> dict[str, np.ndarray] | str:
    try:
        fed: dict[str, np.ndarray] = feed()
    except EdgeError as exc:
        return f"{type(exc).__name__}: {exc}"
    return fed


def _answers(runtime: Any, columns: dict[str, np.ndarray]) -> dict[str, np.ndarray] | str:
    try:
        return runtime.predict_arrays(columns)
    except EdgeError as exc:
        return f"{type(exc).__name__}: {exc}"


@pytest.mark.parametrize("tensor_fields", [None, ["tensor"]])
def test_compiled_feed_answers_as_array_feed(
    example: Path, tmp_path: Path, tensor_fields: list[str] | None
) -> None:
    """The model's compiled feed passes a matching column to onnxruntime as it is, and
    every other column through `array_feed`: the same answers and the same errors."""
    model = example / "models/breast-cancer.onnx"
    info = _info(model, tensor_fields)
    runtime = load_runtime(info, model, RuntimeContext(threads=1, gpus=0, work_dir=tmp_path))
    rows = np.load(example / "data/10k-rows.npy")[:4]  # float32 [4, 30], the model's input
    wide = np.zeros((4, 60), np.float32)
    wide[:, ::2] = rows
    cases = {
        "fed as it is": {"tensor": rows},
        "float64, cast": {"tensor": rows.astype(np.float64)},
        "non-contiguous": {"tensor": wide[:, ::2]},
        "one row": {"tensor": rows[:1]},
        "another name": {"x": rows},
        "wrong width": {"tensor": rows[:, :29]},
        "int64, cast": {"tensor": rows.astype(np.int64)},
        "two columns": {"tensor": rows, "other": rows},
        "rank 3": {"tensor": rows.reshape(4, 30, 1)},
    }
    fed = runtime.feed(cases["fed as it is"])
    assert fed["X"] is rows  # no copy, no cast
    refusals = {}
    for name, columns in cases.items():
        general, compiled = (
            _fed(lambda c=columns: array_feed(c, runtime.inputs, tensor_fields, info.name)),
            _fed(lambda c=columns: runtime.feed(c)),
        )
        got = _answers(runtime, columns)  # whole runs, errors included
        if isinstance(general, str):
            assert compiled == general, name
            assert got == general, name
            refusals[name] = general
            continue
        assert isinstance(compiled, dict) and compiled.keys() == general.keys(), name
        for key in general:
            assert compiled[key].dtype == general[key].dtype, name
            np.testing.assert_array_equal(compiled[key], general[key], err_msg=name)
        # against the session's own `run` behind array_feed
        want = dict(
            zip(["label", "probabilities"], runtime.session.run(None, general), strict=True)
        )
        assert isinstance(got, dict), (name, got)
        for key in want:
            np.testing.assert_array_equal(got[key], want[key], err_msg=name)
    assert "30" in refusals["wrong width"]
