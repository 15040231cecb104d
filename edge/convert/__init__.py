"""What publish makes of a model of another framework (`edge.frameworks`): ONNX when it can,
else the original file for the framework's own runtime. One converter module per framework,
imported only when a spec names that framework, so publishing an ONNX pipeline needs none.

`pack` decides for one model:
- converted: the converter's ONNX model, when the converter works and the check (`check.py`)
  finds its answers equal to the original's on rows generated from the input schema (floats
  within the framework's `TOLERANCE`); published as runtime `onnx` with the framework and what
  was done recorded on its layer.
- native: otherwise, or with `runtime: <native>` in the spec or `edge publish --no-convert`,
  the original file for the framework's runtime (`runtime: sklearn`, ...), after running it on
  the same rows. A Hugging Face model folder is packed as a zip for its runtime.
"""

from __future__ import annotations

import importlib
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from edge.artifact import ModelInfo
from edge.convert.check import SAMPLE_ROWS, compare, model_info, run, sample_table
from edge.errors import EdgeError, SpecError
from edge.frameworks import HUGGING_FACE, find_framework
from edge.runtimes import runtime_class, runtime_extra
from edge.spec import ModelEntry

CONVERTERS = {
    "sklearn_onnx": "skl2onnx",
    "xgboost_onnx": "onnxmltools",
    "pytorch_onnx": "torch.onnx",
    "keras_onnx": "tf2onnx",
}


@dataclass(frozen=True)
class Packed:
    file: Path  # what the layer holds
    runtime: str
    conversion: str | None  # what publish did, recorded on the layer
    message: str  # the line publish prints


class Unconverted(Exception):
    """The model could not be converted, or the ONNX model does not answer as it does."""


def pack(entry: ModelEntry, scratch: Path, convert: bool = True) -> Packed:
    """The file and runtime to publish for `entry` (a step naming a framework)."""
    assert entry.framework is not None
    framework = find_framework(entry.framework, f"model {entry.name!r}")
    source = entry.file
    if source.is_dir():
        source = zip_folder(source, scratch / f"{entry.name}.zip")
    reason = None
    if framework.converter:
        if entry.convert == "no":
            reason = f"the spec says runtime: {entry.runtime}"
        elif not convert:
            if entry.convert == "required":
                raise SpecError(
                    f"model {entry.name!r}: the spec says runtime: onnx (no --no-convert)"
                )
            reason = "edge publish --no-convert"
        else:
            try:
                return _converted(entry, framework.converter, source, scratch)
            except Unconverted as exc:
                reason = str(exc)
            if entry.convert == "required":
                raise SpecError(f"model {entry.name!r}: runtime: onnx, but {reason}")
    ran = _run_native(entry, source)
    extra = runtime_extra(entry.runtime)
    conversion = f"not converted: {reason}" if reason else None
    message = (
        f"model {entry.name!r} ({framework.name}): published for the {entry.runtime} runtime "
        f"(a device needs edge-appliance[{extra}] or an image with it)"
        + (f"; {conversion}" if conversion else "")
        + f"; {ran}"
    )
    return Packed(source, entry.runtime, conversion, message)


def _converted(entry: ModelEntry, converter: str, source: Path, scratch: Path) -> Packed:
    assert entry.input_schema is not None and entry.output_schema is not None
    tool = CONVERTERS[converter]
    target = scratch / f"{entry.name}.onnx"
    try:
        module = importlib.import_module(f"edge.convert.{converter}")
        done = module.convert(source, entry.input_schema, entry.output_schema, target)
    except Exception as exc:  # any converter's failure: import, unsupported model, ...
        raise Unconverted(f"{tool} failed: {type(exc).__name__}: {_line(exc)}") from exc
    sample = sample_table(entry.input_schema)
    original = _run(entry, source, entry.runtime, sample, "the original model")
    try:
        onnx = run(_info(entry, target, "onnx"), target, sample)
    except EdgeError as exc:
        raise Unconverted(f"the ONNX model fails on generated rows: {_line(exc)}") from exc
    agree, how = compare(original, onnx, module.TOLERANCE)
    if not agree:
        raise Unconverted(
            f"the ONNX model's answers differ from the original's on {SAMPLE_ROWS} generated "
            f"rows ({how}; tolerance {module.TOLERANCE})"
        )
    conversion = f"{done}; checked on {SAMPLE_ROWS} generated rows: {how} ({module.TOLERANCE})"
    message = f"model {entry.name!r} ({entry.framework}): converted to ONNX with {conversion}"
    return Packed(target, "onnx", conversion, message)


def _run_native(entry: ModelEntry, source: Path) -> str:
    """Run the original on generated rows, as a device would: a model that cannot answer its
    own schema fails the publish. Without the framework here, say so and go on."""
    assert entry.input_schema is not None
    try:
        runtime_class(entry.runtime, f"model {entry.name!r}")
    except EdgeError as exc:
        return f"not run here: {exc}"
    schema = entry.input_schema
    if entry.framework and entry.framework.startswith(HUGGING_FACE):
        schema = pa.schema([schema.field("inputs")])  # the options have defaults
    _run(entry, source, entry.runtime, sample_table(schema, rows=8), "the model")
    return "ran on generated rows of its input schema"


def _run(entry: ModelEntry, path: Path, runtime: str, table: pa.Table, what: str) -> pa.Table:
    try:
        return run(_info(entry, path, runtime), path, table)
    except EdgeError as exc:
        raise SpecError(
            f"model {entry.name!r}: {what} fails on rows generated from its input schema: "
            f"{_line(exc)}"
        ) from exc


def _info(entry: ModelEntry, path: Path, runtime: str) -> ModelInfo:
    return model_info(
        entry.name, path, runtime, entry.input_schema, entry.output_schema, entry.framework
    )


def _line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def zip_folder(folder: Path, target: Path) -> Path:
    """`folder` as a zip whose entries start with its name (`zip -r name.zip name/`), the same
    bytes for the same files: sorted entries, fixed times and modes."""
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                entry = zipfile.ZipInfo(
                    f"{folder.name}/{path.relative_to(folder).as_posix()}", (1980, 1, 1, 0, 0, 0)
                )
                entry.external_attr = 0o644 << 16
                entry.compress_type = zipfile.ZIP_DEFLATED
                archive.writestr(entry, path.read_bytes())
    return target


__all__ = ["Packed", "pack", "zip_folder"]
