"""`POST /pipelines/{name}`: the inference route, a plain ASGI endpoint in front of Starlette's
router (`edge.server` sends every other request to Starlette). Starlette's request, routing and
response machinery costs more than a small model run; this reads the headers, query and body
straight from the ASGI scope and answers with two `send`s.

A request runs on the small requests' path (`edge.fastpath`) when the pipeline has one and
the body is a few rows of numeric pandas-records; otherwise on the general path: decode into
Arrow, `Pipeline.run`, shape, encode. Either way it is answered only once its rows are in the
log journal (`edge.logbuffer`).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qs

import anyio
import anyio.to_thread

from edge import codecs, fastpath
from edge.appliance import Appliance
from edge.httpio import read_asgi_body, requests_in_flight
from edge.metrics import Metrics
from edge.pipeline import Inference, Pipeline
from edge.result import without_nulls

INLINE_BYTES = 64 << 10  # smaller bodies run on the event loop: a thread hop costs more
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ErrorAnswer = Callable[[str, Exception], tuple[int, bytes]]
Body = bytes | memoryview  # an Arrow answer is a view of Arrow's buffer (no copy into bytes)
_JSON = codecs.JSON_TYPE.encode()
_ARROW = codecs.ARROW_FILE_TYPE.encode()
_ERROR = b"application/json"


class InferenceEndpoint:
    def __init__(self, appliance: Appliance, metrics: Metrics, error: ErrorAnswer) -> None:
        self.appliance = appliance
        self.metrics = metrics
        self.error = error  # the server's error body for an exception (and its logging)

    async def __call__(
        self, scope: dict[str, Any], receive: Receive, send: Send, name: str
    ) -> None:
        started = time.perf_counter()
        try:
            media, payload = await self._infer(scope, receive, name)
            code = 200
        except Exception as exc:
            code, payload = self.error(scope["path"], exc)
            media = _ERROR
        headers = [(b"content-type", media), (b"content-length", str(len(payload)).encode())]
        await send({"type": "http.response.start", "status": code, "headers": headers})
        await send({"type": "http.response.body", "body": payload})
        # an unknown name is labelled as such: clients must not grow the label set
        pipeline = self.appliance.pipeline
        known = pipeline is not None and name == pipeline.name
        self.metrics.observe(name if known else "unknown", code, time.perf_counter() - started)

    async def _infer(
        self, scope: dict[str, Any], receive: Receive, name: str
    ) -> tuple[bytes, Body]:
        with self.appliance.hold(name) as pipeline:  # a swap meanwhile: this one answers
            return await self._infer_on(pipeline, scope, receive, name)

    async def _infer_on(
        self, pipeline: Pipeline, scope: dict[str, Any], receive: Receive, name: str
    ) -> tuple[bytes, Body]:
        appliance = self.appliance
        headers = {
            key.decode("latin-1"): value.decode("latin-1") for key, value in scope["headers"]
        }
        decode = codecs.request_decoder(headers.get("content-type", ""))
        want_arrow = codecs.wants_arrow(headers.get("accept", ""), headers.get("format", ""))
        query = scope.get("query_string", b"")
        params = parse_qs(query.decode("latin-1"), keep_blank_values=True) if query else {}
        shape = codecs.parse_shape(params)  # a bad dataset is refused before the run
        declared = headers.get("content-length", "")
        body = await read_asgi_body(receive, declared, appliance.settings.max_body_bytes)
        if pipeline.fast is not None and decode is codecs.decode_records and not want_arrow:
            fast = pipeline.fast.run(body)
            if fast is not None:
                alone = pipeline.alone and requests_in_flight(scope) == 1
                return _JSON, await self._answer_fast(name, fast, shape, alone)
        return await self._answer(pipeline, name, decode, body, shape, want_arrow)

    async def _answer_fast(
        self, name: str, inference: fastpath.FastInference, shape: codecs.Shape, alone: bool
    ) -> bytes:
        buffer = self.appliance.buffer
        rows = inference.rows
        logged = None
        if buffer is not None:
            seqs = buffer.log_now(rows) if alone else None  # no other request to share with
            if seqs is None:
                logged = buffer.submit(rows)  # one record for the loop turn's requests
        payload = fastpath.encode(inference, shape)
        if logged is not None:
            await logged
        self.metrics.count_rows(name, rows.rows)
        return payload

    async def _answer(
        self,
        pipeline: Pipeline,
        name: str,
        decode: Callable[[bytes], Any],
        body: bytes,
        shape: codecs.Shape,
        want_arrow: bool,
    ) -> tuple[bytes, Body]:
        def work() -> Inference:
            parse_started = time.perf_counter_ns()
            table = decode(body)
            return pipeline.run(table, time.perf_counter_ns() - parse_started)

        def encode(inference: Inference) -> Body:
            shown = codecs.shape(inference.table, shape)
            if want_arrow:
                return memoryview(codecs.arrow_file(shown))
            info = inference.record_info(pipeline.name)
            return codecs.encode_records(shown, info, shape.separator)

        media = _ARROW if want_arrow else _JSON
        buffer = self.appliance.buffer
        if len(body) > INLINE_BYTES or not pipeline.quick:
            # One thread hop for all of it (none for a lone request): decode, run, journal
            # (answered only once the rows are written: LogBufferFull / LogBufferDiskFull
            # become 503 / 507), encode.
            def answer() -> tuple[int, Body]:
                inference = work()
                result = inference.table
                if buffer is not None:
                    buffer.log_answered(without_nulls(result))
                return result.num_rows, encode(inference)

            rows, payload = await self.appliance.run_large(pipeline, len(body), answer)
            self.metrics.count_rows(name, rows)
            return media, payload
        inference = work()
        result = inference.table
        # Journal the rows (large tables on a thread, while the answer is encoded); answer
        # only once they are written.
        logged = buffer.submit(without_nulls(result)) if buffer is not None else None
        if result.num_rows < codecs.SMALL:
            payload = encode(inference)
        else:
            payload = await anyio.to_thread.run_sync(encode, inference)
        if logged is not None:
            await logged
        self.metrics.count_rows(name, result.num_rows)
        return media, payload
