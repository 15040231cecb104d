"""The Open Inference Protocol (KServe V2) over REST and gRPC, beside the seed's API: the
pipeline is the model (named after it, its version the pipeline version), and every
inference is the same pipeline run, logged like any other.

tensors.py              V2 tensors <-> numpy: datatypes, JSON data, raw bytes, BYTES lengths
request.py              REST bodies (JSON, binary extension) and gRPC messages -> InferRequest
model.py                the pipeline as a model: metadata, input checks, one inference
small.py                small requests on the compiled plan (declines the rest to the above)
answer.py               the REST body and gRPC response writers, for both paths
service.py              what both front ends share: lookup, readiness, infer + journal
                        (gRPC's gathers calls a few loop turns apart into one hand-over)
status.py               the protocol's status table (HTTP status and gRPC code per error)
rest.py                 the `/v2` routes, a plain ASGI endpoint (edge.server dispatches)
grpc_server.py          inference.GRPCInferenceService on GRPC_PORT (grpc.aio)
grpc_predict_v2.proto   the service and messages, with the protocol's field numbers

`grpc_predict_v2_pb2.py` / `.pyi` are generated from the proto and committed (`make proto`
regenerates them; a test checks they match the proto): the appliance then needs only
grpcio and protobuf at run time, not protoc or grpcio-tools at install, and the image build
stays a plain `pip install`. They use a descriptor pool of their own, so the appliance's
messages never clash with another `inference` package in the process (Triton's client).
"""
