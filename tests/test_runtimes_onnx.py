"""The ONNX runtime's execution provider choice (GPU when asked for and present, else CPU
with a clear log line) and what it reports for `/models`."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from edge.artifact import ModelInfo
from edge.registry import sha256_file
from edge.runtimes import RuntimeContext, load_runtime
from edge.runtimes.onnx import choose_providers
from edge.tensors import ndarray_to_column


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
    info = ModelInfo(
        name="breast-cancer",
        version="00000000-0000-0000-0000-000000000001",
        sha256=sha256_file(model),
        runtime="onnx",
        filename=model.name,
        size=model.stat().st_size,
    )
    with caplog.at_level(logging.WARNING, logger="edge.runtimes.onnx"):
        runtime = load_runtime(info, model, RuntimeContext(threads=1, gpus=1, work_dir=tmp_path))
    assert "falling back to CPU" in caplog.text
    assert runtime.describe() == {"provider": "CPUExecutionProvider"}
    features = np.load(example / "data/10k-rows.npy")[:3]
    out = runtime.predict(pa.table({"tensor": ndarray_to_column(features)}))
    assert out.num_rows == 3 and out.column_names == ["label", "probabilities"]
