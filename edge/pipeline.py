"""Run an Arrow table through a pipeline's steps and build the flat result table.

Steps run in order; a step's output table is the next step's input. The result is the
table `edge.result` describes (and `edge.result.ResultBuilder` builds).
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from edge.artifact import Definition, ModelInfo, ModelStep, RandomSplitStep, ShadowStep, Step
from edge.codecs.records import RecordInfo
from edge.errors import BadInput, EdgeError, PipelineError
from edge.fastpath import FastPath
from edge.result import ANOMALY, ANOMALY_COUNT, IN, MODEL_SPLIT, SHADOW, ResultBuilder, is_input
from edge.runtimes import Runtime

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

    @property
    def name(self) -> str:
        return self.definition.name

    def close(self) -> None:
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
        for step in self.definition.steps:
            started = time.perf_counter_ns()
            current, last = self._run_step(step, current, rows, extra, shadow_data)
            elapsed.append(time.perf_counter_ns() - started)
        result = self._builder.build(table, current, extra, elapsed, last.name, last.sha256)
        check_failures = None
        if self.validator is not None:
            result, check_failures = self._validate(result)
        return Inference(result, elapsed, last, check_failures, shadow_data)

    def _run_step(
        self,
        step: Step,
        table: pa.Table,
        rows: int,
        extra: dict[str, pa.Array],
        shadow_data: dict[str, Any],
    ) -> tuple[pa.Table, ModelInfo]:
        if isinstance(step, ModelStep):
            return self._predict(step.model, table, rows), self.definition.models[step.model]
        if isinstance(step, RandomSplitStep):
            chosen = self._choose(step, table)
            info = self.definition.models[chosen]
            output = self._predict(chosen, table, rows)
            split = json.dumps({"name": info.name, "version": info.version, "sha": info.sha256})
            extra[MODEL_SPLIT] = pa.array([split] * rows, pa.string())
            return output, info
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
                extra[f"{SHADOW}{challenger}.error"] = pa.array([message] * rows, pa.string())
                shadow_data[challenger] = {"error": message}
                continue
            # the JSON writer takes each row's shadow_data from these columns
            for name in shadow.column_names:
                extra[f"{SHADOW}{challenger}.{name}"] = shadow.column(name).combine_chunks()
        return output, self.definition.models[step.champion]

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

    def _choose(self, step: RandomSplitStep, table: pa.Table) -> str:
        """One model per request (as the seed's A/B split routes inferences): by weight at
        random, or, with `hash_key`, by a hash of the first row's key, so a key always goes
        to the same model. Send rows of different keys as separate requests."""
        total = sum(c.weight for c in step.models)
        if step.hash_key:
            if step.hash_key not in table.column_names:
                raise BadInput(f"random split hash_key column {step.hash_key!r} is missing")
            key = str(table.column(step.hash_key)[0].as_py()).encode()
            point = int.from_bytes(hashlib.sha256(key).digest()[:8], "big") / 2**64
        else:
            point = random.random()
        edge = 0.0
        for choice in step.models:
            edge += choice.weight / total
            if point < edge:
                return choice.model
        return step.models[-1].model

    def _validate(self, result: pa.Table) -> tuple[pa.Table, list[list[Any]] | None]:
        """`anomaly.*` columns, and each row's check failures (the seed's per-record
        `check_failures`: the validations its row triggered; None when no row triggered one)."""
        flags: dict[str, pa.Array] = self.validator.evaluate(result)
        count = np.zeros(result.num_rows, np.uint32)
        flagged: list[tuple[np.ndarray, dict[str, Any]]] = []
        position = result.column_names.index(ANOMALY_COUNT)
        for offset, (name, array) in enumerate(flags.items(), start=1):
            values = array.to_numpy(zero_copy_only=False).astype(bool)
            count += values
            result = result.add_column(position + offset, f"{ANOMALY}{name}", array)
            if values.any():
                source = self.definition.validations[name].source
                flagged.append((values, {"True": {"expr": source, "name": name}}))
        result = result.set_column(position, ANOMALY_COUNT, pa.array(count))
        if not flagged:
            return result, None
        # rows of one pattern share one list (the JSON writer writes each pattern once)
        patterns, which = np.unique(
            np.stack([values for values, _ in flagged], axis=1), axis=0, return_inverse=True
        )
        lists = [[flagged[j][1] for j in np.flatnonzero(p)] for p in patterns]
        return result, [lists[i] for i in which.reshape(-1).tolist()]
