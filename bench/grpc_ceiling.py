#!/usr/bin/env python3
"""grpcio's asyncio server with a canned ModelInfer answer (no model, no parsing of tensors,
no logging): the most that `grpc.aio` itself serves on this machine, measured beside the
appliance and MLServer by bench/v2.py. Run: python bench/grpc_ceiling.py PORT"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from edge.v2 import grpc_predict_v2_pb2 as pb  # noqa: E402


def canned() -> bytes:
    answer = pb.ModelInferResponse(model_name="breast-cancer", model_version="1")
    answer.outputs.add(name="label", datatype="INT64", shape=[1])
    answer.outputs.add(name="probabilities", datatype="FP32", shape=[1, 2])
    answer.raw_output_contents.extend([b"\0" * 8, b"\0" * 8])
    data: bytes = answer.SerializeToString()
    return data


async def main(port: int) -> None:
    body = canned()

    async def infer(data: bytes, context: Any) -> bytes:
        pb.ModelInferRequest.FromString(data)  # parsed, as any server must
        return body

    handler = grpc.unary_unary_rpc_method_handler(infer)
    server = grpc.aio.server()
    service = grpc.method_handlers_generic_handler(
        "inference.GRPCInferenceService", {"ModelInfer": handler}
    )
    server.add_generic_rpc_handlers((service,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1])))
