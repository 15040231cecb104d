"""Hugging Face pipelines (`framework: hugging-face-<task>`): a model folder (config, weights,
tokenizer) that publish packs as a zip, run in-process with `transformers.pipeline` on the CPU.
Needs the `huggingface` extra.

A device never reaches a hub: HF_HUB_OFFLINE=1 is set before transformers is imported, the
pipeline reads only the unzipped folder, and no remote code runs (`trust_remote_code=False`).
Weights load from safetensors (or, for a `.bin`, through torch's `weights_only` loader).

Tasks and their schemas are the seed's (`edge.frameworks.HUGGING_FACE_TASKS`):
- text-classification: `inputs` (string), optional `top_k`, `function_to_apply` and any extra
  schema field, passed to the pipeline per row; gives `label` and `score` lists, best first.
- feature-extraction: `inputs` (string); gives `output`, one vector per token.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa

from edge.errors import ArtifactError, BadInput, PipelineError
from edge.frameworks import hugging_face_task
from edge.runtimes.base import Runtime, conform, extract_zip
from edge.tensors import single_array

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402 - after HF_HUB_OFFLINE: the hub client reads it at import
import transformers  # noqa: E402

FUNCTIONS = ("sigmoid", "softmax", "none")
_ARROW_ERRORS = (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError)


class HuggingFaceRuntime(Runtime):
    pipe: Any

    def load(self) -> None:
        self.what = f"Hugging Face model {self.info.name!r} (layer {self.info.digest})"
        self.task = hugging_face_task(self.info.framework or "")
        if self.task not in TASKS:
            raise ArtifactError(f"{self.what}: task {self.task!r} is not one of {sorted(TASKS)}")
        self.input_schema = self.info.arrow_schema("input")
        self.output_schema = self.info.arrow_schema("output")
        if self.input_schema is None or self.output_schema is None:
            raise ArtifactError(f"{self.what}: the definition carries no input/output schema")
        if torch.get_num_threads() != max(1, self.context.threads):
            torch.set_num_threads(max(1, self.context.threads))
        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
        self.context.work_dir.mkdir(parents=True, exist_ok=True)
        self.folder = Path(tempfile.mkdtemp(prefix="hugging-face-", dir=self.context.work_dir))
        try:
            root = extract_zip(self.path, self.folder, self.what)
            self.pipe = transformers.pipeline(  # type: ignore[call-overload]
                self.task, model=str(root), tokenizer=str(root), device="cpu",
                trust_remote_code=False,
            )  # fmt: skip
        except ArtifactError:
            shutil.rmtree(self.folder, ignore_errors=True)
            raise
        except Exception as exc:  # transformers raises many kinds for a folder it cannot use
            shutil.rmtree(self.folder, ignore_errors=True)
            raise ArtifactError(
                f"{self.what}: transformers cannot make a {self.task} pipeline of it: "
                f"{type(exc).__name__}: {exc}"
            ) from exc

    def predict(self, table: pa.Table) -> pa.Table:
        step = self.info.name
        assert self.input_schema is not None
        texts = self._texts(table)
        options = self._options(table)
        rows: list[Any] = [None] * len(texts)
        groups: dict[tuple[tuple[str, Any], ...], list[int]] = {}
        for i, row_options in enumerate(options):
            groups.setdefault(tuple(sorted(row_options.items())), []).append(i)
        for key, indices in groups.items():
            try:
                answers = self.pipe([texts[i] for i in indices], **dict(key))
            except Exception as exc:  # the model's or the tokenizer's own errors
                raise PipelineError(
                    f"the {self.task} pipeline raised {type(exc).__name__}: {exc}", step=step
                ) from exc
            for i, answer in zip(indices, answers, strict=True):
                rows[i] = answer
        columns = TASKS[self.task](rows)
        return conform(pa.table(columns), self.output_schema, step)

    def _texts(self, table: pa.Table) -> list[str]:
        step = self.info.name
        if "inputs" in table.column_names:
            name = "inputs"
        elif table.num_columns == 1:
            name = table.column_names[0]  # a lone column feeds the lone text input
        else:
            raise BadInput(
                f"step {step!r}: the {self.info.framework} model takes a text column 'inputs'; "
                f"the input has columns {table.column_names}"
            )
        column = single_array(table.column(name))
        where = f"column {name!r} (step {step!r} input field 'inputs')"
        if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
            raise BadInput(f"{where}: holds {column.type}; the model takes text (strings)")
        if column.null_count:
            first = column.is_null().to_numpy(zero_copy_only=False).argmax()
            raise BadInput(f"{where}: missing value (null) in row {first}")
        return column.to_pylist()

    def _options(self, table: pa.Table) -> list[dict[str, Any]]:
        """Each row's keyword arguments for the pipeline, from the schema's other fields."""
        step = self.info.name
        assert self.input_schema is not None and self.output_schema is not None
        rows: list[dict[str, Any]] = [{} for _ in range(table.num_rows)]
        if self.task == "text-classification":
            size = _list_size(self.output_schema.field("label").type)
            for row in rows:
                row["top_k"] = size  # None: every label
        for field in self.input_schema:
            if field.name == "inputs" or field.name not in table.column_names:
                continue
            where = f"column {field.name!r} (step {step!r} input field {field.name!r})"
            column = table.column(field.name)
            try:
                values = column.cast(field.type, safe=True).to_pylist()
            except _ARROW_ERRORS:
                raise BadInput(f"{where}: type {column.type} does not fit {field.type}") from None
            for i, value in enumerate(values):
                if value is None:
                    continue
                _check_option(field.name, value, rows[i].get("top_k"), f"{where} row {i}")
                rows[i][field.name] = value
        return rows

    def close(self) -> None:
        self.pipe = None
        shutil.rmtree(self.folder, ignore_errors=True)

    def describe(self) -> dict[str, Any]:
        return {
            "framework": self.info.framework,
            "task": self.task,
            "transformers": transformers.__version__,
        }


def _check_option(name: str, value: Any, fixed_top_k: int | None, where: str) -> None:
    if name == "top_k" and value < 1:
        raise BadInput(f"{where}: top_k must be 1 or more, not {value}")
    if name == "top_k" and fixed_top_k is not None and value != fixed_top_k:
        raise BadInput(
            f"{where}: top_k {value} does not fit the output schema's {fixed_top_k} labels a row"
        )
    if name == "function_to_apply" and value not in FUNCTIONS:
        raise BadInput(f"{where}: function_to_apply must be one of {FUNCTIONS}, not {value!r}")


def _list_size(kind: pa.DataType) -> int | None:
    return kind.list_size if isinstance(kind, pa.FixedSizeListType) else None


def _text_classification(rows: list[Any]) -> dict[str, pa.Array]:
    answers = [row if isinstance(row, list) else [row] for row in rows]
    return {
        "label": pa.array(
            [[a["label"] for a in answer] for answer in answers], pa.list_(pa.string())
        ),
        "score": pa.array(
            [[float(a["score"]) for a in answer] for answer in answers], pa.list_(pa.float64())
        ),
    }


def _feature_extraction(rows: list[Any]) -> dict[str, pa.Array]:
    # one answer per text: [1, tokens, hidden] (the pipeline keeps a batch axis of one)
    vectors = [row[0] if len(row) == 1 and isinstance(row[0][0], list) else row for row in rows]
    return {"output": pa.array(vectors, pa.list_(pa.list_(pa.float64())))}


TASKS: dict[str, Callable[[list[Any]], dict[str, pa.Array]]] = {
    "text-classification": _text_classification,
    "feature-extraction": _feature_extraction,
}
