"""What REST and gRPC front ends of the Open Inference Protocol share: the served model
looked up by name and version, readiness, server metadata, and one inference from request
to answer, journaled as every inference is (answered only once its rows are in the log
journal, `edge.logbuffer`).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from importlib.metadata import PackageNotFoundError, version
from typing import Any, TypeVar

import anyio
import anyio.to_thread
import pyarrow as pa

from edge import result
from edge.appliance import Appliance
from edge.errors import NotFound
from edge.logbuffer import LogBuffer
from edge.pipeline import Pipeline
from edge.v2.model import Outcome, V2Model
from edge.v2.request import InferRequest
from edge.v2.small import SMALL_BODY, Small, SmallPath

INLINE_BYTES = 64 << 10  # smaller requests run on the event loop: a thread hop costs more
EXTENSIONS = ["binary_tensor_data"]
SERVER_NAME = "edge-appliance"
Answer = TypeVar("Answer")


def _version() -> str:
    try:
        return version("edge-appliance")
    except PackageNotFoundError:
        return "0"


def journal(
    buffer: LogBuffer | None, logged: result.ResultRows | pa.Table
) -> Awaitable[Any] | None:
    """Hand the inference's rows to the log buffer, as the seed's route does (the fast
    path's numpy rows as they are: one table per loop turn); the answer waits for the
    result. (The one call of `LogBuffer.submit` in the protocol's routes.)"""
    if buffer is None:
        return None
    return buffer.submit(logged)


class V2Service:
    def __init__(self, appliance: Appliance) -> None:
        self.appliance = appliance
        self._model: V2Model | None = None
        self._small: SmallPath | None = None  # the model's small requests' path
        self.server_metadata: dict[str, Any] = {
            "name": SERVER_NAME,
            "version": _version(),
            "extensions": EXTENSIONS,
        }

    def model(self, name: str, model_version: str | None = None) -> V2Model:
        """The served model named `name` (at `model_version`, when given), else NotFound;
        NotReady while the pipeline loads."""
        appliance = self.appliance
        pipeline = appliance.pipeline
        if pipeline is None:
            appliance.serving()  # raises NotReady with the reason
        assert pipeline is not None
        return self._model_of(pipeline, name, model_version)

    def _model_of(self, pipeline: Pipeline, name: str, model_version: str | None) -> V2Model:
        if name != pipeline.name:
            raise NotFound(f"no model named {name!r}; this appliance serves {pipeline.name!r}")
        model = self._model
        if model is None or model.pipeline is not pipeline:
            model = self._model = V2Model(pipeline)
            self._small = SmallPath.compile(model)
        if model_version and model_version != model.version:
            raise NotFound(
                f"model {name!r} has no version {model_version!r}; it serves {model.version!r}"
            )
        return model

    def ready(self) -> bool:
        return self.appliance.pipeline is not None

    def model_ready(self, name: str, model_version: str | None = None) -> None:
        """Nothing when ready; NotFound / NotReady say why not."""
        self.model(name, model_version)

    def known(self, name: str) -> str:
        """`name` for a metrics label when it is the served pipeline, else 'unknown'."""
        pipeline = self.appliance.pipeline
        return name if pipeline is not None and name == pipeline.name else "unknown"

    async def infer(
        self,
        name: str,
        model_version: str | None,
        read: Callable[[], InferRequest],
        size: int,
        encode: Callable[[InferRequest, Outcome], Answer],
        small: Callable[[SmallPath], Small | None] | None = None,
    ) -> Answer:
        """Read the request (`read`: parse and decode), run it, journal its rows and encode
        the answer (`encode`) while they are written; small requests on the event loop, the
        rest on a worker thread within the appliance's model budget. A request the small
        path takes (`small`, see `edge.v2.small`) is answered by it instead."""
        with self.appliance.hold() as pipeline:  # a swap meanwhile: this one answers
            model = self._model_of(pipeline, name, model_version)
            path = self._small
            if small is not None and path is not None and size <= SMALL_BODY:
                done = small(path)
                if done is not None:
                    logged = journal(self.appliance.buffer, done.rows)
                    if logged is not None:
                        await logged
                    self.appliance.metrics.count_rows(model.name, done.rows.rows)
                    answer: Answer = done.answer
                    return answer
            return await self._infer(model, read, size, encode)

    async def _infer(
        self,
        model: V2Model,
        read: Callable[[], InferRequest],
        size: int,
        encode: Callable[[InferRequest, Outcome], Answer],
    ) -> Answer:
        inline = size <= INLINE_BYTES and model.pipeline.quick

        def work() -> tuple[InferRequest, Outcome]:
            started = time.perf_counter_ns()
            request = read()
            return request, model.run(request, time.perf_counter_ns() - started)

        if inline:
            request, outcome = work()
        else:
            request, outcome = await anyio.to_thread.run_sync(work, limiter=self.appliance.limiter)
        logged = journal(self.appliance.buffer, outcome.logged)
        if inline:
            answer = encode(request, outcome)
        else:
            answer = await anyio.to_thread.run_sync(encode, request, outcome)
        if logged is not None:
            await logged
        self.appliance.metrics.count_rows(model.name, outcome.rows)
        return answer
