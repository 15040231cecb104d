"""What REST and gRPC front ends of the Open Inference Protocol share: the served model
looked up by name and version, readiness, server metadata, and one inference from request
to answer, journaled as every inference is (answered only once its rows are in the log
journal, `edge.logbuffer`).
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable
from importlib.metadata import PackageNotFoundError, version
from typing import Any, TypeAlias, TypeVar

import pyarrow as pa

from edge import result
from edge.appliance import Appliance
from edge.errors import NotFound
from edge.logbuffer.batcher import rows_of
from edge.pipeline import Pipeline
from edge.v2.model import Outcome, V2Model
from edge.v2.request import InferRequest
from edge.v2.small import SMALL_BODY, Small, SmallPath

GATHER_ROWS = 64  # results of up to this many rows are gathered (`Journal`)
IDLE_TURNS = 8  # loop turns in which no call began that end a gathering (`Journal`)
INLINE_BYTES = 64 << 10  # smaller requests run on the event loop: a thread hop costs more
EXTENSIONS = ["binary_tensor_data"]
SERVER_NAME = "edge-appliance"
Answer = TypeVar("Answer")


def _version() -> str:
    try:
        return version("edge-appliance")
    except PackageNotFoundError:
        return "0"


Logged: TypeAlias = result.ResultRows | pa.Table


class Journal:
    """Hands an inference's rows to the log buffer, as the seed's route does (the small
    path's numpy rows as they are: one table per loop turn); the answer waits for the
    result. (The one caller of `LogBuffer.submit` in the protocol's routes.)

    With `turns`, small results are held while other calls keep coming, for up to that
    many more turns of the event loop, and handed over together, in one turn: grpc.aio
    takes one new call per turn of the loop (its server loop re-arms one request at a
    time, and a call takes a few turns to reach its handler), so its calls hardly ever
    share a turn and each would be a journal record of its own (one encode and one write
    per call: at 8 calls in flight, 1.1-1.3 records per call against REST's 0.15). After
    `IDLE_TURNS` turns in which no call began, they are handed over at once.
    """

    def __init__(self, appliance: Appliance, turns: int = 0) -> None:
        self.appliance = appliance
        self.turns = turns
        self.started = 0  # calls begun (`V2Service.infer`): are others coming?
        self._seen = 0
        self._held: list[tuple[Logged, asyncio.Future[Any]]] = []

    def submit(self, logged: Logged) -> Awaitable[Any] | None:
        buffer = self.appliance.buffer
        if buffer is None:
            return None
        if not self.turns or rows_of(logged) > GATHER_ROWS:
            return buffer.submit(logged)
        loop = asyncio.get_running_loop()
        done: asyncio.Future[Any] = loop.create_future()
        if not self._held:
            self._seen = self.started
            loop.call_soon(self._hand_over, loop, self.turns)
        self._held.append((logged, done))
        return done

    def _hand_over(self, loop: asyncio.AbstractEventLoop, turns: int, idle: int = 0) -> None:
        idle = 0 if self.started != self._seen else idle + 1
        self._seen = self.started
        if turns and idle < IDLE_TURNS:  # others may come: wait a turn more
            loop.call_soon(self._hand_over, loop, turns - 1, idle)
            return
        buffer = self.appliance.buffer
        assert buffer is not None
        held, self._held = self._held, []
        for logged, done in held:
            try:
                submitted = asyncio.ensure_future(buffer.submit(logged))
            except Exception as exc:
                done.set_exception(exc)
                continue
            submitted.add_done_callback(functools.partial(_relay, done))


def _relay(done: asyncio.Future[Any], submitted: asyncio.Future[Any]) -> None:
    if done.cancelled():
        return
    if submitted.cancelled():
        done.cancel()
    elif submitted.exception() is not None:
        done.set_exception(submitted.exception())  # type: ignore[arg-type]
    else:
        done.set_result(submitted.result())


class V2Service:
    def __init__(self, appliance: Appliance, gather_turns: int = 0) -> None:
        """`gather_turns`: see `Journal` (the gRPC front end's)."""
        self.appliance = appliance
        self.journal = Journal(appliance, gather_turns)
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
        self.journal.started += 1
        with self.appliance.hold() as pipeline:  # a swap meanwhile: this one answers
            model = self._model_of(pipeline, name, model_version)
            path = self._small
            if small is not None and path is not None and size <= SMALL_BODY:
                done = small(path)
                if done is not None:
                    logged = self.journal.submit(done.rows)
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

        if not inline:
            # One thread hop (none for a lone request, `runs_alone`): read, run, and for a
            # large result its journal (answered only once its rows are written:
            # LogBufferFull / LogBufferDiskFull become 503 / 507) and its answer; a small one
            # is journaled from the loop below, gathered with others (`Journal`), and
            # answered there, as an inline request is.
            buffer = self.appliance.buffer

            def run() -> tuple[InferRequest, Outcome, tuple[Answer] | None]:
                request, outcome = work()
                logged = outcome.logged
                if rows_of(logged) <= GATHER_ROWS:
                    return request, outcome, None
                if buffer is not None:
                    if isinstance(logged, result.ResultRows):
                        logged = result.ResultRows.table([logged])
                    buffer.log_answered(logged)
                return request, outcome, (encode(request, outcome),)

            request, outcome, done = await self.appliance.run_large(model.pipeline, size, run)
            if done is not None:
                self.appliance.metrics.count_rows(model.name, outcome.rows)
                return done[0]
        else:
            request, outcome = work()
        submitted = self.journal.submit(outcome.logged)
        answer = encode(request, outcome)
        if submitted is not None:
            await submitted
        self.appliance.metrics.count_rows(model.name, outcome.rows)
        return answer
