"""Runtimes, one module each. `load_runtime` picks one by name and imports it only then,
so an ONNX-only appliance never imports TensorFlow, PyTorch or scikit-learn."""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from pathlib import Path

from edge.artifact import ModelInfo
from edge.errors import ArtifactError, RuntimeNotInstalled
from edge.runtimes.base import Runtime, RuntimeContext

# runtime -> (module, class, the extra of edge-appliance that installs what it imports)
_RUNTIMES: dict[str, tuple[str, str, str | None]] = {
    "onnx": ("edge.runtimes.onnx", "OnnxRuntime", None),
    "tensorflow": ("edge.runtimes.tensorflow", "TensorflowRuntime", "tensorflow"),
    "python": ("edge.runtimes.python_step", "PythonStepRuntime", None),
    "byop": ("edge.runtimes.byop", "ByopRuntime", None),
    "sklearn": ("edge.runtimes.sklearn_model", "SklearnRuntime", "sklearn"),
    "xgboost": ("edge.runtimes.xgboost_model", "XgboostRuntime", "xgboost"),
    "pytorch": ("edge.runtimes.torchscript", "TorchScriptRuntime", "pytorch"),
    "keras": ("edge.runtimes.keras_model", "KerasRuntime", "tensorflow"),
    "hugging-face": ("edge.runtimes.huggingface", "HuggingFaceRuntime", "huggingface"),
}

# runtime -> the image variant (the Dockerfile's VARIANT) that installs its extra; a runtime
# not named here runs on the default cpu image
_IMAGE_VARIANTS: dict[str, str] = {
    "tensorflow": "tensorflow",
    "keras": "tensorflow",
    "sklearn": "frameworks",
    "xgboost": "frameworks",
    "pytorch": "frameworks",
    "hugging-face": "frameworks",
}


def image_variants(runtimes: Iterable[str]) -> list[str]:
    """The image variants, beyond cpu, that `runtimes` need (sorted; empty: the cpu image runs
    them all). More than one: no single published variant runs the pipeline."""
    return sorted({_IMAGE_VARIANTS[r] for r in runtimes if r in _IMAGE_VARIANTS})


def runtime_extra(runtime: str) -> str | None:
    """The extra to install for `runtime` (`pip install 'edge-appliance[<extra>]'`)."""
    return _RUNTIMES[runtime][2] if runtime in _RUNTIMES else None


def runtime_class(runtime: str, what: str) -> type[Runtime]:
    """The class of `runtime`, importing its module (and its framework) now."""
    try:
        module_name, class_name, extra = _RUNTIMES[runtime]
    except KeyError:
        raise ArtifactError(
            f"{what} asks for runtime {runtime!r}; this appliance runs {sorted(_RUNTIMES)}"
        ) from None
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        install = f"pip install 'edge-appliance[{extra}]', or " if extra else ""
        raise RuntimeNotInstalled(
            f"{what} needs runtime {runtime!r}, which is not installed in this image ({exc}); "
            f"{install}use the image variant that includes it (README: Frameworks)"
        ) from exc
    runtime_type: type[Runtime] = getattr(module, class_name)
    return runtime_type


def load_runtime(info: ModelInfo, path: Path, context: RuntimeContext) -> Runtime:
    """Build and load the runtime for one model file."""
    runtime = runtime_class(info.runtime, f"model {info.name!r}")(info, path, context)
    runtime.load()
    return runtime


__all__ = [
    "Runtime",
    "RuntimeContext",
    "image_variants",
    "load_runtime",
    "runtime_class",
    "runtime_extra",
]
