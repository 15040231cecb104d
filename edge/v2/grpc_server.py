"""The Open Inference Protocol over gRPC: `inference.GRPCInferenceService` (ServerLive,
ServerReady, ModelReady, ServerMetadata, ModelMetadata, ModelInfer) on GRPC_PORT, served by
grpcio's asyncio server on the appliance's own event loop, started and stopped by the
composition root (`edge.appliance`).

Requests arrive as bytes and are parsed here, so a malformed message is the client's
INVALID_ARGUMENT rather than grpcio's INTERNAL. Tensors come in `raw_input_contents` or the
typed `contents`; answers always carry `raw_output_contents` (what Triton's client reads).
Errors abort the call with the code `V2_STATUS` gives and the message REST would send.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import grpc.aio
from google.protobuf.message import DecodeError

from edge.appliance import Appliance
from edge.errors import BadInput, ConfigError
from edge.httpio import log_unexpected
from edge.v2 import answer
from edge.v2 import grpc_predict_v2_pb2 as pb
from edge.v2.model import Outcome
from edge.v2.request import InferRequest, from_grpc
from edge.v2.service import V2Service
from edge.v2.status import V2_STATUS

log = logging.getLogger("edge.v2")
SERVICE = "inference.GRPCInferenceService"
STOP_GRACE = 5.0  # seconds calls in flight get at shutdown
GATHER_TURNS = 16  # loop turns at most a call's rows wait for others' (`service.Journal`)
Handler = Callable[[bytes, grpc.aio.ServicerContext], Awaitable[Any]]


class GrpcServer:
    def __init__(self, appliance: Appliance) -> None:
        self.appliance = appliance
        self.service = V2Service(appliance, GATHER_TURNS)
        self.server: grpc.aio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        settings = self.appliance.settings
        limit = settings.max_body_bytes
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", max(limit, 64 << 20)),
                ("grpc.so_reuseport", 0),  # a port in use is an error, not a shared port
            ],
            maximum_concurrent_rpcs=settings.max_connections,
        )
        server.add_generic_rpc_handlers((self._handlers(),))
        address = f"{settings.host}:{settings.grpc_port}"
        try:
            self.port = server.add_insecure_port(address)
        except RuntimeError:
            self.port = 0
        if not self.port:
            raise ConfigError(
                f"cannot listen for gRPC on {address}: the port is in use or not allowed; set "
                f"GRPC_PORT (--grpc-port) to a free port, or 0 to turn gRPC off"
            )
        await server.start()
        self.server = server

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop(STOP_GRACE)
            self.server = None

    def _handlers(self) -> grpc.GenericRpcHandler:
        calls: dict[str, Handler] = {
            "ServerLive": self.server_live,
            "ServerReady": self.server_ready,
            "ModelReady": self.model_ready,
            "ServerMetadata": self.server_metadata,
            "ModelMetadata": self.model_metadata,
            "ModelInfer": self.model_infer,
        }
        handlers = {
            name: grpc.unary_unary_rpc_method_handler(
                call, request_deserializer=None, response_serializer=_serialize
            )
            for name, call in calls.items()
        }
        return grpc.method_handlers_generic_handler(SERVICE, handlers)

    # ---------------------------------------------------------------- the calls

    async def server_live(self, data: bytes, context: grpc.aio.ServicerContext) -> Any:
        await self._parse(pb.ServerLiveRequest, data, context)
        return pb.ServerLiveResponse(live=True)

    async def server_ready(self, data: bytes, context: grpc.aio.ServicerContext) -> Any:
        await self._parse(pb.ServerReadyRequest, data, context)
        return pb.ServerReadyResponse(ready=self.service.ready())

    async def model_ready(self, data: bytes, context: grpc.aio.ServicerContext) -> Any:
        message = await self._parse(pb.ModelReadyRequest, data, context)
        try:
            self.service.model_ready(message.name, message.version or None)
        except Exception as exc:
            if V2_STATUS.lookup(exc) is None:
                await self._abort(context, exc)
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=True)

    async def server_metadata(self, data: bytes, context: grpc.aio.ServicerContext) -> Any:
        await self._parse(pb.ServerMetadataRequest, data, context)
        meta = self.service.server_metadata
        return pb.ServerMetadataResponse(
            name=meta["name"], version=meta["version"], extensions=meta["extensions"]
        )

    async def model_metadata(self, data: bytes, context: grpc.aio.ServicerContext) -> Any:
        message = await self._parse(pb.ModelMetadataRequest, data, context)
        try:
            model = self.service.model(message.name, message.version or None)
        except Exception as exc:
            await self._abort(context, exc)
        answer = pb.ModelMetadataResponse(
            name=model.name, versions=[model.version], platform=model.platform
        )
        for part, metas in ((answer.inputs, model.inputs), (answer.outputs, model.outputs)):
            for meta in metas:
                part.add(**meta.as_dict())
        return answer

    async def model_infer(self, data: bytes, context: grpc.aio.ServicerContext) -> Any:
        started = time.perf_counter()
        message = await self._parse(pb.ModelInferRequest, data, context)
        name = message.model_name
        try:
            answer = await self.service.infer(
                name,
                message.model_version or None,
                lambda: from_grpc(message, len(data)),
                len(data),
                encode_grpc,
                lambda small: small.grpc(message),
            )
        except Exception as exc:
            self._observe(name, V2_STATUS.status(exc), started)
            await self._abort(context, exc)
        self._observe(name, 200, started)
        return answer

    # ---------------------------------------------------------------- helpers

    async def _parse(self, kind: Any, data: bytes, context: grpc.aio.ServicerContext) -> Any:
        try:
            return kind.FromString(data)
        except DecodeError:
            await self._abort(context, BadInput(f"the request is not a valid {kind.__name__}"))

    async def _abort(self, context: grpc.aio.ServicerContext, exc: Exception) -> Any:
        """End the call with the error's code (raises)."""
        found = V2_STATUS.lookup(exc)
        if found is None:
            log_unexpected("grpc", exc)
            await context.abort(grpc.StatusCode.INTERNAL, f"internal error ({type(exc).__name__})")
        assert found is not None
        code, status = found
        if code >= 500:
            log.error("grpc error=%s", exc)
        await context.abort(grpc.StatusCode[status], str(exc))

    def _observe(self, name: str, code: int, started: float) -> None:
        label = self.service.known(name)
        self.appliance.metrics.observe(label, code, time.perf_counter() - started)


def _serialize(message: Any) -> bytes:
    data: bytes = message.SerializeToString()
    return data


def encode_grpc(request: InferRequest, outcome: Outcome) -> Any:
    """A `ModelInferResponse` with every selected output in `raw_output_contents`."""
    model = outcome.model
    chosen = [(name, outcome.tensor(name), False) for name, _ in outcome.selected(request)]
    return answer.grpc(model.name, model.version, request.id, outcome.parameters, chosen)
