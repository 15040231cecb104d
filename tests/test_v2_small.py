"""The Open Inference Protocol's small requests' path (edge.v2.small) against the general one
(request.from_rest / from_grpc, V2Model.run, the answer writers): for a corpus of REST JSON
bodies and gRPC messages, the same answer bytes and the same logged rows, which are also the
rows `Pipeline.run` logs over Arrow; every request it does not take (wrong datatype or shape,
BYTES, BOOL, the binary extension's inputs, typed contents, unknown outputs, bad names) is
declined and the general path answers it, errors included; pipelines it cannot run
(validations, A/B split, shadow, Python steps) have no small path."""

from __future__ import annotations

import asyncio
import functools
import json
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import numpy as np
import pyarrow as pa
import pytest

from edge.appliance import Appliance
from edge.errors import EdgeError
from edge.pipeline import Pipeline
from edge.result import ResultRows
from edge.v2 import grpc_predict_v2_pb2 as pb
from edge.v2.grpc_server import encode_grpc
from edge.v2.model import V2Model
from edge.v2.request import from_grpc, from_rest
from edge.v2.rest import encode_rest
from edge.v2.small import SmallPath
from tests.test_fastpath import FEATURES, pipelines  # noqa: F401  (the pipelines fixture)

ROWS = FEATURES.astype(np.float32)
RENAMED = "the lone input by another name"


@pytest.fixture(autouse=True)
def fixed_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """Both paths read the same clocks: `time` and `elapsed` come out equal."""
    monkeypatch.setattr(time, "time_ns", lambda: 1_790_000_000_123_000_000)
    monkeypatch.setattr(time, "perf_counter_ns", lambda: 0)


def _logged(logged: ResultRows | pa.Table) -> pa.Table:
    return ResultRows.table([logged]) if isinstance(logged, ResultRows) else logged


def general_rest(model: V2Model, body: bytes) -> tuple[tuple[bytes, int | None], pa.Table]:
    request = from_rest(body, None)
    outcome = model.run(request, 0)
    return encode_rest(request, outcome), _logged(outcome.logged)


def general_grpc(model: V2Model, message: Any) -> tuple[bytes, pa.Table]:
    request = from_grpc(message, message.ByteSize())
    outcome = model.run(request, 0)
    return _wire(encode_grpc(request, outcome)), _logged(outcome.logged)


def arrow_only(pipeline: Pipeline, run: Any) -> Any:
    """`run` with the compiled plan off: the general path over Arrow (`Pipeline.run`)."""
    fast, pipeline.fast = pipeline.fast, None
    try:
        return run()
    finally:
        pipeline.fast = fast


def _wire(message: Any) -> bytes:
    data: bytes = message.SerializeToString(deterministic=True)
    return data


def tensor(rows: Any, **extra: Any) -> dict[str, Any]:
    values = np.asarray(rows)
    return {"name": "X", "shape": list(values.shape), "datatype": "FP32", **extra}


def body(*inputs: dict[str, Any], **fields: Any) -> bytes:
    return json.dumps({**fields, "inputs": list(inputs)}).encode()


def flat(rows: Any) -> list[Any]:
    return np.asarray(rows).ravel().tolist()


REST_TAKEN = {
    "flat one row": body(tensor(ROWS[:1], data=flat(ROWS[:1]))),
    "nested rows": body(tensor(ROWS[3:6], data=ROWS[3:6].tolist())),
    "whole numbers for FP32": body(tensor([[5, 3, 1, 0]], data=[5, 3, 1, 0])),
    "id and parameters": body(
        tensor(ROWS[:2], data=flat(ROWS[:2])), id="req-7", parameters={"trace": "a", "n": 3}
    ),
    "input parameters": body(tensor(ROWS[:1], data=flat(ROWS[:1]), parameters={"c": "np"})),
    "one output": body(tensor(ROWS[:2], data=flat(ROWS[:2])), outputs=[{"name": "label"}]),
    "outputs reordered": body(
        tensor(ROWS[:1], data=flat(ROWS[:1])),
        outputs=[{"name": "probabilities"}, {"name": "label"}],
    ),
    "binary_data output": body(
        tensor(ROWS[:2], data=flat(ROWS[:2])),
        outputs=[{"name": "probabilities", "parameters": {"binary_data": True}}, {"name": "label"}],
    ),
    "binary_data_output": body(
        tensor(ROWS[:1], data=flat(ROWS[:1])), parameters={"binary_data_output": True}
    ),
    RENAMED: body({**tensor(ROWS[:1], data=flat(ROWS[:1])), "name": "Y"}),
    "64 rows": body(tensor(np.resize(ROWS, (64, 4)), data=flat(np.resize(ROWS, (64, 4))))),
}

REST_DECLINED = {
    "wrong datatype": body({**tensor(ROWS[:1], data=flat(ROWS[:1])), "datatype": "FP64"}),
    "wrong shape": body({**tensor(ROWS[:1], data=flat(ROWS[:1])), "shape": [1, 5]}),
    "count off": body({**tensor(ROWS[:1], data=flat(ROWS[:1])), "shape": [2, 4]}),
    "no rows": body({"name": "X", "shape": [0, 4], "datatype": "FP32", "data": []}),
    "BYTES": body({"name": "X", "shape": [1, 4], "datatype": "BYTES", "data": list("abcd")}),
    "BOOL": body({"name": "X", "shape": [1, 4], "datatype": "BOOL", "data": [True] * 4}),
    "text data": body(tensor(ROWS[:1], data=["a", "b", "c", "d"])),
    "ragged": body(tensor(ROWS[:2], data=[[1, 2, 3, 4], [1, 2]])),
    "out of range": body(tensor(ROWS[:1], data=[1e300, 1, 1, 1])),
    "twice": body(tensor(ROWS[:1], data=flat(ROWS[:1])), tensor(ROWS[:1], data=flat(ROWS[:1]))),
    "unknown output": body(tensor(ROWS[:1], data=flat(ROWS[:1])), outputs=[{"name": "nope"}]),
    "no outputs": body(tensor(ROWS[:1], data=flat(ROWS[:1])), outputs=[]),
    "classification": body(
        tensor(ROWS[:1], data=flat(ROWS[:1])),
        outputs=[{"name": "label", "parameters": {"classification": 2}}],
    ),
    "binary_data not a flag": body(
        tensor(ROWS[:1], data=flat(ROWS[:1])), parameters={"binary_data_output": 1}
    ),
    "id with a control character": body(tensor(ROWS[:1], data=flat(ROWS[:1])), id="a\nb"),
    "id not text": body(tensor(ROWS[:1], data=flat(ROWS[:1])), id=7),
    "parameter not plain": body(tensor(ROWS[:1], data=flat(ROWS[:1])), parameters={"x": [1]}),
    "binary_data_size": body(tensor(ROWS[:1], parameters={"binary_data_size": 16})),
    "65 rows": body(tensor(np.resize(ROWS, (65, 4)), data=flat(np.resize(ROWS, (65, 4))))),
    "no inputs": b'{"inputs": []}',
    "not an object": b"[1, 2]",
    "not JSON": b'{"inputs": [',
    "unknown field": body(tensor(ROWS[:1], data=flat(ROWS[:1])), extra=1),
}


@pytest.mark.parametrize("name", ["single", "chain", "fields"])
def test_small_rest_requests_answer_and_log_byte_for_byte_as_the_general_path(
    pipelines: dict[str, Pipeline],  # noqa: F811
    name: str,
) -> None:
    pipeline = pipelines[name]
    model = V2Model(pipeline)
    small = SmallPath.compile(model)
    assert small is not None
    names = [t.name for t in model.inputs]
    for case, raw in REST_TAKEN.items():
        raw = raw.replace(b'"X"', json.dumps(names[0]).encode())
        done = small.rest(raw)
        if case == RENAMED and name == "fields":  # its model reads the column `tensor`
            assert done is None
            with pytest.raises(EdgeError, match="tensor"):
                general_rest(model, raw)
            continue
        assert done is not None, case
        expected, table = general_rest(model, raw)
        assert done.answer == expected, case
        logged = ResultRows.table([done.rows])
        assert logged.schema == table.schema, case
        assert logged.equals(table), case
        over_arrow = arrow_only(pipeline, lambda raw=raw: general_rest(model, raw))
        assert over_arrow[0] == expected, case
        assert over_arrow[1].equals(table), case


@pytest.mark.parametrize("name", ["single", "chain", "fields"])
def test_large_requests_on_the_compiled_plan_answer_and_log_as_over_arrow(
    pipelines: dict[str, Pipeline],  # noqa: F811
    name: str,
) -> None:
    """Past the small path's 64 rows, numeric tensors still run on the compiled plan (numpy
    in and out, whatever the size): the same answer bytes and logged rows as over Arrow."""
    pipeline = pipelines[name]
    model = V2Model(pipeline)
    label = json.dumps(model.inputs[0].name)
    for rows in (65, 1000):
        values = np.resize(ROWS, (rows, 4))
        raw = values.tobytes()
        header = json.dumps(
            {
                "inputs": [{**tensor(values), "parameters": {"binary_data_size": len(raw)}}],
                "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}],
                "id": "big",
            }
        ).encode()
        header = header.replace(b'"X"', label.encode())
        for request, length in (
            (body(tensor(values, data=flat(values))).replace(b'"X"', label.encode()), None),
            (header + raw, str(len(header))),
        ):
            planned = from_rest(request, length)
            outcome = model.run(planned, 0)
            assert isinstance(outcome.logged, ResultRows), (rows, length)  # the compiled plan
            answer, table = encode_rest(planned, outcome), _logged(outcome.logged)

            def over_arrow(request: bytes = request, length: str | None = length) -> Any:
                planned = from_rest(request, length)
                done = model.run(planned, 0)
                return encode_rest(planned, done), _logged(done.logged)

            expected, expected_table = arrow_only(pipeline, over_arrow)
            assert answer == expected, (rows, length)
            assert table.schema == expected_table.schema and table.equals(expected_table)


@pytest.mark.parametrize("case", sorted(REST_DECLINED))
def test_rest_requests_it_does_not_take_are_the_general_paths(
    pipelines: dict[str, Pipeline],  # noqa: F811
    case: str,
) -> None:
    model = V2Model(pipelines["single"])
    small = SmallPath.compile(model)
    assert small is not None
    raw = REST_DECLINED[case]
    assert small.rest(raw) is None
    try:
        (answer, _), _ = general_rest(model, raw)
    except EdgeError as exc:  # the general path's 4xx, naming what is wrong
        assert str(exc)
    else:  # or its answer: over Arrow, past the small path's limits
        assert json.loads(answer)["model_name"] == "single"


def message(rows: Any, **fields: Any) -> Any:
    values = np.ascontiguousarray(rows, "<f4")
    request = pb.ModelInferRequest(model_name="single", **fields)
    request.inputs.add(name="X", datatype="FP32", shape=list(values.shape))
    request.raw_input_contents.append(values.tobytes())
    return request


def _with(request: Any, change: Any) -> Any:
    change(request)
    return request


GRPC_TAKEN = {
    "one row": message(ROWS[:1]),
    "rows": message(ROWS[5:9]),
    "id": message(ROWS[:2], id="call-1"),
    "parameters": _with(
        message(ROWS[:1]), lambda m: m.parameters["t"].CopyFrom(pb.InferParameter(string_param="x"))
    ),
    "one output": _with(message(ROWS[:1]), lambda m: m.outputs.add(name="probabilities")),
    RENAMED: _with(message(ROWS[:1]), lambda m: setattr(m.inputs[0], "name", "Y")),
    "outputs reordered": _with(
        message(ROWS[:1]),
        lambda m: [m.outputs.add(name="probabilities"), m.outputs.add(name="label")],
    ),
}


def _typed(m: Any) -> None:
    del m.raw_input_contents[:]
    m.inputs[0].contents.fp32_contents.extend(flat(ROWS[:1]))


GRPC_DECLINED = {
    "typed contents": _with(message(ROWS[:1]), _typed),
    "wrong datatype": _with(message(ROWS[:1]), lambda m: setattr(m.inputs[0], "datatype", "FP64")),
    "wrong shape": _with(message(ROWS[:1]), lambda m: m.inputs[0].shape.__setitem__(1, 5)),
    "size off": _with(message(ROWS[:1]), lambda m: m.inputs[0].shape.__setitem__(0, 2)),
    "unknown output": _with(message(ROWS[:1]), lambda m: m.outputs.add(name="nope")),
    "classification": _with(
        message(ROWS[:1]),
        lambda m: (
            m.outputs.add(name="label")
            .parameters["classification"]
            .CopyFrom(pb.InferParameter(int64_param=2))
        ),
    ),
    "65 rows": message(np.resize(ROWS, (65, 4))),
}


@pytest.mark.parametrize("name", ["single", "chain", "fields"])
def test_small_grpc_calls_answer_and_log_byte_for_byte_as_the_general_path(
    pipelines: dict[str, Pipeline],  # noqa: F811
    name: str,
) -> None:
    pipeline = pipelines[name]
    model = V2Model(pipeline)
    small = SmallPath.compile(model)
    assert small is not None
    for case, request in GRPC_TAKEN.items():
        request = pb.ModelInferRequest.FromString(_wire(request))
        request.model_name = name
        if request.inputs[0].name == "X":
            request.inputs[0].name = model.inputs[0].name
        done = small.grpc(request)
        if case == RENAMED and name == "fields":
            assert done is None
            with pytest.raises(EdgeError, match="tensor"):
                general_grpc(model, request)
            continue
        assert done is not None, case
        expected, table = general_grpc(model, request)
        assert _wire(done.answer) == expected, case
        assert ResultRows.table([done.rows]).equals(table), case
        over_arrow = arrow_only(pipeline, lambda r=request: general_grpc(model, r))
        assert over_arrow[0] == expected, case
        assert over_arrow[1].equals(table), case


@pytest.mark.parametrize("case", sorted(GRPC_DECLINED))
def test_grpc_calls_it_does_not_take_are_the_general_paths(
    pipelines: dict[str, Pipeline],  # noqa: F811
    case: str,
) -> None:
    model = V2Model(pipelines["single"])
    small = SmallPath.compile(model)
    assert small is not None
    request = GRPC_DECLINED[case]
    assert small.grpc(request) is None
    try:
        answer, _ = general_grpc(model, request)
    except EdgeError as exc:
        assert str(exc)
    else:
        assert pb.ModelInferResponse.FromString(answer).model_name == "single"


@pytest.mark.parametrize("name", ["validated", "split", "shadow", "python"])
def test_pipelines_without_a_compiled_plan_have_no_small_path(
    pipelines: dict[str, Pipeline],  # noqa: F811
    name: str,
) -> None:
    """Validations, the A/B split, shadow challengers and Python steps: the general path
    answers (its split choice, shadow outputs and anomaly counts in the answer)."""
    model = V2Model(pipelines[name])
    assert SmallPath.compile(model) is None
    raw = body(tensor(ROWS[:2], data=flat(ROWS[:2])))
    (answer, _), table = general_rest(model, raw)
    doc = json.loads(answer)
    assert doc["outputs"] and table.num_rows == 2
    if name == "split":
        assert "model_split" in doc["parameters"]
    if name == "shadow":
        assert any(o["name"].startswith("out_b.") for o in doc["outputs"])
    if name == "validated":
        assert "anomaly.high" in doc["parameters"]


def test_grpc_results_of_calls_that_keep_coming_share_one_journal_record(
    pipelines: dict[str, Pipeline],  # noqa: F811
    tmp_path: Path,
) -> None:
    """gRPC's journal (`service.Journal`): results of calls that begin a turn or so apart
    are handed to the log buffer in one turn, one journal record for all, each caller told
    its own rows; a lone call is handed over within `IDLE_TURNS` turns, not `turns`."""
    from edge.logbuffer import LogBuffer
    from edge.v2.service import IDLE_TURNS, Journal

    small = SmallPath.compile(V2Model(pipelines["single"]))
    assert small is not None
    answered = [
        small.rest(body(tensor(ROWS[i : i + 2], data=flat(ROWS[i : i + 2])))) for i in (0, 4, 8)
    ]
    with LogBuffer(tmp_path / "logbuffer.db") as buffer:
        journal = Journal(cast(Any, SimpleNamespace(buffer=buffer)), turns=16)

        async def calls_a_turn_apart() -> list[tuple[int, int]]:
            logged = []
            for done in answered:
                assert done is not None
                journal.started += 1
                logged.append(journal.submit(done.rows))
                await asyncio.sleep(0)
            return [(r.first, r.last) for r in await asyncio.gather(*logged)]

        async def lone_call() -> int:
            journal.started += 1
            assert answered[0] is not None
            logged = asyncio.ensure_future(journal.submit(answered[0].rows))
            turns = 0
            while not logged.done():
                await asyncio.sleep(0)
                turns += 1
            return turns

        assert asyncio.run(calls_a_turn_apart()) == [(1, 2), (3, 4), (5, 6)]
        buffer.flush()
        assert buffer.stats()["appends"] == 1
        assert asyncio.run(lone_call()) <= IDLE_TURNS + 3
        buffer.flush()
        assert buffer.stats()["appends"] == 2
        stored, _ = buffer.query(limit=10)
    assert stored.num_rows == 8


@pytest.mark.parametrize("alone", [False, True], ids=["thread", "lone"])
def test_a_large_request_is_journaled_before_its_answer_and_refused_when_the_buffer_is_full(
    pipelines: dict[str, Pipeline],  # noqa: F811
    tmp_path: Path,
    alone: bool,
) -> None:
    """`V2Service`'s one thread hop for a large request (none for a lone one,
    `Appliance.runs_alone`): its rows reach the log buffer before the answer is written and
    the answer waits for them; a full buffer (`LogBufferFull`, a 503) refuses the request,
    and no answer is written."""
    import contextlib

    import anyio

    from edge.errors import LogBufferFull
    from edge.logbuffer import LogBuffer
    from edge.v2.service import INLINE_BYTES, V2Service

    pipeline = pipelines["single"]
    rows = np.resize(ROWS, (5000, 4))
    raw = rows.tobytes()
    header = json.dumps(
        {"inputs": [{**tensor(rows), "parameters": {"binary_data_size": len(raw)}}]}
    ).encode()
    request = header + raw
    assert len(request) > INLINE_BYTES  # the thread hop, not the event loop
    events: list[str] = []

    def encode(planned: Any, outcome: Any) -> Any:
        events.append("encoded")
        return encode_rest(planned, outcome)

    with LogBuffer(tmp_path / "logbuffer.db") as buffer:
        logged: list[pa.Table] = []
        real = buffer.log_answered

        def log_answered(table: pa.Table) -> Any:
            events.append("logged")
            logged.append(table)
            assert (threading.current_thread() is threading.main_thread()) == alone
            return real(table)

        buffer.log_answered = log_answered  # type: ignore[method-assign]
        appliance = SimpleNamespace(
            buffer=buffer,
            pipeline=pipeline,
            limiter=None,
            hold=lambda: contextlib.nullcontext(pipeline),
            runs_alone=lambda held, size: alone and held is pipeline and size == len(request),
            metrics=SimpleNamespace(count_rows=lambda name, count: events.append("counted")),
        )
        appliance.run_large = functools.partial(Appliance.run_large, appliance)
        service = V2Service(cast(Any, appliance))

        async def infer() -> Any:
            appliance.limiter = anyio.CapacityLimiter(1)
            read = lambda: from_rest(request, str(len(header)))  # noqa: E731
            return await service.infer(pipeline.name, None, read, len(request), encode)

        answer = asyncio.run(infer())
        assert events == ["logged", "encoded", "counted"]
        expected, table = general_rest_binary(V2Model(pipeline), request, str(len(header)))
        assert answer == expected
        assert logged[0].num_rows == 5000 and logged[0].equals(table)
        buffer.flush()
        assert buffer.stats()["rows"] == 5000

        events.clear()

        def full(table: pa.Table) -> Any:
            events.append("refused")
            raise LogBufferFull("the writer queue is full")

        buffer.log_answered = full  # type: ignore[method-assign]
        with pytest.raises(LogBufferFull):
            asyncio.run(infer())
        assert events == ["refused"]  # no answer written, nothing counted


def general_rest_binary(model: V2Model, raw: bytes, length: str) -> tuple[Any, pa.Table]:
    planned = from_rest(raw, length)
    outcome = model.run(planned, 0)
    return encode_rest(planned, outcome), _logged(outcome.logged)
