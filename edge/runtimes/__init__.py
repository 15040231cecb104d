"""Runtimes, one module each. `load_runtime` picks one by name and imports it only then,
so an ONNX-only appliance never imports TensorFlow."""

from __future__ import annotations

import importlib
from pathlib import Path

from edge.artifact import ModelInfo
from edge.errors import ArtifactError
from edge.runtimes.base import Runtime, RuntimeContext

_RUNTIMES = {
    "onnx": ("edge.runtimes.onnx", "OnnxRuntime"),
    "tensorflow": ("edge.runtimes.tensorflow", "TensorflowRuntime"),
    "python": ("edge.runtimes.python_step", "PythonStepRuntime"),
    "byop": ("edge.runtimes.byop", "ByopRuntime"),
}


def load_runtime(info: ModelInfo, path: Path, context: RuntimeContext) -> Runtime:
    """Build and load the runtime for one model file."""
    try:
        module_name, class_name = _RUNTIMES[info.runtime]
    except KeyError:
        raise ArtifactError(
            f"model {info.name!r} asks for runtime {info.runtime!r}; this appliance runs "
            f"{sorted(_RUNTIMES)}"
        ) from None
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ArtifactError(
            f"model {info.name!r} needs runtime {info.runtime!r}, which is not installed in "
            f"this image ({exc}); use the image variant that includes it"
        ) from exc
    runtime: Runtime = getattr(module, class_name)(info, path, context)
    runtime.load()
    return runtime


__all__ = ["Runtime", "RuntimeContext", "load_runtime"]
