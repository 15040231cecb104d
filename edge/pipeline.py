"""Run an Arrow table through a pipeline's steps and build the flat result table.

Steps run in order; a step's output table is the next step's input. The result is the
table `edge.result` describes (and `edge.result.ResultBuilder` builds).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
import pyarrow as pa

from edge.artifact import Definition, ModelInfo, ModelStep, RandomSplitStep, ShadowStep, Step
from edge.codecs.records import RecordInfo
from edge.errors import BadInput, EdgeError, PipelineError
from edge.fastpath import FastPath
from edge.result import (
    ANOMALY,
    ANOMALY_COUNT,
    IN,
    LAST_MODEL,
    MODEL_SPLIT,
    SHADOW,
    ResultBuilder,
    is_input,
    repeated,
    texts,
)
from edge.runtimes import Runtime
from edge.tensors import ndarray_to_column, numbers, single_array

log = logging.getLogger(__name__)


@dataclass
class Inference:
    """One answered request: the result table plus the per-request facts JSON repeats."""

    table: pa.Table
    elapsed: list[int]
    last_model: ModelInfo
    # per row: the validations that flagged it (None: no row was flagged)
    check_failures: list[list[Any]] | None = None
    # failed shadow challengers: {model: {"error": message}}; the JSON writer adds each row's
    # challenger outputs from the `out_<model>.*` columns
    shadow_data: dict[str, Any] = field(default_factory=dict)
    # per row, when the last step was an A/B split that chose per row
    row_models: list[ModelInfo] | None = None

    def record_info(self, pipeline_name: str) -> RecordInfo:
        """What its JSON records carry besides the table's columns."""
        last = self.last_model
        names = [n for n in self.table.column_names if is_input(n)]
        inputs = pa.Table.from_arrays(
            [self.table.column(n) for n in names], names=[n[len(IN) :] for n in names]
        )
        row_models = None
        if self.row_models is not None:
            row_models = [(m.name, m.version) for m in self.row_models]
        return RecordInfo(
            pipeline_name,
            last.name,
            last.version,
            self.elapsed,
            self.check_failures,
            self.shadow_data,
            inputs,
            row_models,
        )


def _split_text(info: ModelInfo) -> str:
    """`out._model_split`'s text: the seed's {"name", "version", "sha"} (clients receive a
    list of this one object: `edge.codecs`)."""
    return orjson.dumps({"name": info.name, "version": info.version, "sha": info.sha256}).decode()


def _keys(table: pa.Table, name: str) -> np.ndarray:
    """The `hash_key` column as numbers in [0.0, 1.0], or a `BadInput` naming the row."""
    if name not in table.column_names:
        raise BadInput(f"random split hash_key column {name!r} is missing")
    column = table.column(name)
    rule = f"random split hash_key column {name!r}: the key must be a number between 0.0 and 1.0"
    if not (pa.types.is_integer(column.type) or pa.types.is_floating(column.type)):
        raise BadInput(f"{rule}, not {column.type} values")
    values = numbers(single_array(column)).astype(np.float64)  # nulls: NaN
    bad = np.flatnonzero(~((values >= 0.0) & (values <= 1.0)))  # NaN and nulls too
    if len(bad):
        raise BadInput(f"{rule}; row {int(bad[0])} holds {column[int(bad[0])].as_py()!r}")
    return values


class Pipeline:
    def __init__(
        self,
        definition: Definition,
        runtimes: dict[str, Runtime],
        partition: str,
        validator: Any = None,
    ) -> None:
        self.definition = definition
        self.runtimes = runtimes
        self.partition = partition
        self.validator = validator
        self._single = {n for n, m in definition.models.items() if m.batch_config == "single"}
        self._builder = ResultBuilder(definition.version, partition)
        # small numeric requests without Arrow tables (None: the pipeline needs this class)
        self.fast = FastPath.compile(
            definition.name,
            definition.steps,
            definition.models,
            runtimes,
            bool(definition.validations),
            self._builder,
        )
        # Small requests may run on the event loop only when every runtime says it may
        # (`Runtime.inline`: ONNX; user code and other frameworks can take any time).
        self.quick = all(runtime.inline for runtime in runtimes.values())
        # where it came from (`edge.appliance.load_pipeline`): its URL and manifest digest
        self.url: str | None = None
        self.digest: str | None = None
        # requests running on it (`enter` / `leave`); once replaced (`retire`) it closes when
        # the last of them leaves
        self._users = 0
        self._retired = False
        self._closed = False
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return self.definition.name

    def enter(self) -> None:
        with self._lock:
            self._users += 1

    def leave(self) -> None:
        with self._lock:
            self._users -= 1
            done = self._retired and self._users == 0
        if done:
            self.close()

    @property
    def alone(self) -> bool:
        """Whether the one request holding it is the caller (no other is in flight)."""
        return self._users == 1

    def retire(self) -> None:
        """Another version serves now: close once no request holds this one."""
        with self._lock:
            self._retired = True
            done = self._users == 0
        if done:
            self.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        for runtime in self.runtimes.values():
            runtime.close()

    def run(self, table: pa.Table, parse_ns: int = 0) -> Inference:
        rows = table.num_rows
        if rows == 0:
            raise BadInput("the request holds no rows")
        elapsed = [parse_ns]
        current = table
        last = self.definition.models[self.definition.step_models(self.definition.steps[0])[0]]
        extra: dict[str, pa.Array] = {}
        shadow_data: dict[str, Any] = {}
        row_models: list[ModelInfo] | None = None
        for step in self.definition.steps:
            started = time.perf_counter_ns()
            current, last, row_models = self._run_step(step, current, rows, extra, shadow_data)
            elapsed.append(time.perf_counter_ns() - started)
        result = self._builder.build(table, current, extra, elapsed, last.name, last.sha256)
        if row_models is not None:  # the last step chose its model per row
            last_models = [self._builder.last_model(m.name, m.sha256) for m in row_models]
            index = result.column_names.index(LAST_MODEL)
            result = result.set_column(index, LAST_MODEL, texts(last_models))
        check_failures = None
        if self.validator is not None:
            result, check_failures = self._validate(result)
        return Inference(result, elapsed, last, check_failures, shadow_data, row_models)

    def _run_step(
        self,
        step: Step,
        table: pa.Table,
        rows: int,
        extra: dict[str, pa.Array],
        shadow_data: dict[str, Any],
    ) -> tuple[pa.Table, ModelInfo, list[ModelInfo] | None]:
        """The step's output, its model, and the model of each row when it chose per row."""
        if isinstance(step, ModelStep):
            output = self._predict(step.model, table, rows)
            return output, self.definition.models[step.model], None
        if isinstance(step, RandomSplitStep):
            return self._split(step, table, rows, extra)
        assert isinstance(step, ShadowStep)
        output = self._predict(step.champion, table, rows)
        for challenger in step.challengers:
            try:
                shadow = self._predict(challenger, table, rows)
            except Exception as exc:  # a failing challenger never fails the request
                message = str(exc)
                if not isinstance(exc, EdgeError):
                    message = f"step {challenger!r}: {type(exc).__name__}: {exc}"
                log.warning("shadow model=%s failed: %s", challenger, message)
                extra[f"{SHADOW}{challenger}.error"] = repeated(message, pa.string(), rows)
                shadow_data[challenger] = {"error": message}
                continue
            # the JSON writer takes each row's shadow_data from these columns
            for name in shadow.column_names:
                extra[f"{SHADOW}{challenger}.{name}"] = shadow.column(name).combine_chunks()
        return output, self.definition.models[step.champion], None

    def _predict(self, model: str, table: pa.Table, rows: int) -> pa.Table:
        if model in self._single and rows > 1:
            raise BadInput(
                f"step {model!r} has batch_config 'single': send one row per request, not {rows}"
            )
        output = self.runtimes[model].predict(table)
        if output.num_rows != rows:
            raise PipelineError(
                f"returned {output.num_rows} rows for {rows} input rows", step=model
            )
        return output

    def _split(
        self, step: RandomSplitStep, table: pa.Table, rows: int, extra: dict[str, pa.Array]
    ) -> tuple[pa.Table, ModelInfo, list[ModelInfo] | None]:
        """The A/B split: each row's model (`_choose`), run on its rows, the outputs put back
        in row order; `out._model_split` names each row's model."""
        infos = [self.definition.models[choice.model] for choice in step.models]
        picks = self._choose(step, table, rows)
        used = np.unique(picks).tolist()
        choices = [_split_text(info) for info in infos]
        extra[MODEL_SPLIT] = texts(choices).take(ndarray_to_column(picks))
        if len(used) == 1:
            info = infos[used[0]]
            return self._predict(info.name, table, rows), info, None
        parts, order = [], []
        for k in used:
            where = np.flatnonzero(picks == k)
            parts.append(
                self._predict(infos[k].name, table.take(ndarray_to_column(where)), len(where))
            )
            order.append(where)
        try:
            joined = pa.concat_tables(parts, promote_options="permissive")
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            names = [infos[k].name for k in used]
            raise PipelineError(
                f"random split models {names} give outputs of different columns or types, so "
                f"their rows cannot make one table: {exc}"
            ) from exc
        back = np.empty(rows, np.int64)
        back[np.concatenate(order)] = np.arange(rows)
        row_models = [infos[k] for k in picks.tolist()]
        return joined.take(ndarray_to_column(back)), row_models[0], row_models

    def _choose(self, step: RandomSplitStep, table: pa.Table, rows: int) -> np.ndarray:
        """Each row's model (an index into `step.models`), as the seed's A/B split routes
        inferences: the weights are mapped onto [0, 1) in order and a point picks one. The
        point is one random number per request, or, with `hash_key`, each row's key (the
        seed: "a key used instead of a random number ... between 0.0 and 1.0"), so rows of
        different keys go to their own models and a key always goes to the same one."""
        weights = np.array([c.weight for c in step.models], np.float64)
        edges = np.cumsum(weights / weights.sum())
        if step.hash_key:
            points = _keys(table, step.hash_key)
        else:
            points = np.full(rows, random.random())
        return np.minimum(np.searchsorted(edges, points, side="right"), len(edges) - 1)

    def _validate(self, result: pa.Table) -> tuple[pa.Table, list[list[Any]] | None]:
        """`anomaly.*` columns, and each row's check failures (the seed's per-record
        `check_failures`: the validations its row triggered; None when no row triggered one)."""
        flags: dict[str, pa.Array] = self.validator.evaluate(result)
        count = np.zeros(result.num_rows, np.uint32)
        flagged: list[tuple[np.ndarray, dict[str, Any]]] = []
        position = result.column_names.index(ANOMALY_COUNT)
        for offset, (name, array) in enumerate(flags.items(), start=1):
            values = numbers(array)  # true / false, nulls filled (`Validator.evaluate`)
            count += values
            result = result.add_column(position + offset, f"{ANOMALY}{name}", array)
            if values.any():
                source = self.definition.validations[name].source
                flagged.append((values, {"True": {"expr": source, "name": name}}))
        result = result.set_column(position, ANOMALY_COUNT, ndarray_to_column(count))
        if not flagged:
            return result, None
        # rows of one pattern share one list (the JSON writer writes each pattern once)
        patterns, which = np.unique(
            np.stack([values for values, _ in flagged], axis=1), axis=0, return_inverse=True
        )
        lists = [[flagged[j][1] for j in np.flatnonzero(p)] for p in patterns]
        return result, [lists[i] for i in which.reshape(-1).tolist()]
