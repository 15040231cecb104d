"""Small Open Inference Protocol requests on the compiled small path (`edge.fastpath`):
a REST JSON body or a gRPC `ModelInferRequest` of a few rows of numeric tensors goes
message -> numpy -> `FastPath.run_columns` -> numpy -> answer, without the general path's
request and outcome objects; its rows go to the journal as `ResultRows` (one Arrow table per
loop turn, `edge.logbuffer.batcher`). The answer is written by the general path's own
writers (`edge.v2.answer`), from the same tensors, so it is the same bytes.

It takes only what it is sure of: a REST body without the binary extension's inputs (its
`binary_data` outputs it writes), gRPC tensors in `raw_input_contents`, tensors the model
declares with their datatype (numeric, not BOOL) and shape, outputs the model lists; the
tensors are read by the general path's readers (`tensors.from_json`, `tensors.from_raw`).
Anything else, and anything the compiled path declines (more rows, a model error), is
declined (None) and the general path answers it, errors included: the two cannot disagree
on an error.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from edge import result
from edge.errors import BadInput
from edge.fastpath import MAX_ROWS, FastPath
from edge.httpio import _CONTROL
from edge.v2 import answer, request, tensors
from edge.v2.model import TensorMeta, V2Model
from edge.v2.request import NAME_LEN, grpc_parameters

SMALL_BODY = 16 << 10  # REST bodies up to this many bytes (a few rows)
MAX_INPUTS = 16
_REQUEST_KEYS = frozenset({"id", "inputs", "outputs", "parameters"})
_INPUT_KEYS = frozenset({"name", "datatype", "shape", "data"})
_INPUT_ALL = _INPUT_KEYS | {"parameters"}
_OUTPUT_KEYS = frozenset({"name", "parameters"})
_ANOMALY = {result.ANOMALY_COUNT: 0}  # no validations on this path: nothing flagged


@dataclass
class Small:
    """One answered small request: its rows for the journal, and its answer (REST: body and
    JSON header length; gRPC: the response message)."""

    rows: result.ResultRows
    answer: Any


class SmallPath:
    """The small path of one V2 model (see the module doc)."""

    def __init__(self, model: V2Model, fast: FastPath) -> None:
        self.model = model
        self.fast = fast
        self.inputs = {t.name: t for t in model.inputs}
        self.lone = model.inputs[0] if len(model.inputs) == 1 else None
        self.outputs = frozenset(t.name for t in model.outputs)

    @classmethod
    def compile(cls, model: V2Model) -> SmallPath | None:
        fast = model.pipeline.fast
        if fast is None or not model.inputs or not model.outputs:
            return None
        return cls(model, fast)

    # ---------------------------------------------------------------- REST

    def rest(self, body: bytes) -> Small | None:
        """A JSON body's answer `(body, None)`, or None: the general path answers it."""
        started = time.perf_counter_ns()
        if len(body) > SMALL_BODY:
            return None
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            return None
        if type(doc) is not dict or not doc.keys() <= _REQUEST_KEYS:
            return None
        request_id = doc.get("id")
        if request_id is None:
            request_id = ""
        elif not _name(request_id, empty=True):
            return None
        parameters = _parameters(doc.get("parameters"))
        if parameters is None:
            return None
        binary = parameters.get("binary_data_output", False)
        if type(binary) is not bool:
            return None
        items = doc.get("inputs")
        if type(items) is not list or not 0 < len(items) <= MAX_INPUTS:
            return None
        lone = self.lone if len(items) == 1 else None
        columns: dict[str, np.ndarray] = {}
        for item in items:
            if type(item) is not dict or not _INPUT_KEYS <= item.keys() <= _INPUT_ALL:
                return None
            extra = _parameters(item.get("parameters"))
            if extra is None or "binary_data_size" in extra:
                return None  # the binary extension: the general path's
            name, datatype, shape = item["name"], item["datatype"], item["shape"]
            declared = self._declared(name, datatype, shape, lone, columns)
            if declared is None:
                return None
            try:
                columns[name] = tensors.from_json(item["data"], datatype, tuple(shape), name)
            except BadInput:
                return None
        wanted = self._rest_outputs(doc.get("outputs"), binary)
        if wanted is None:
            return None
        ran = self._run(columns, started, wanted, binary)
        if ran is None:
            return None
        done, chosen = ran
        model = self.model
        return Small(
            done, answer.rest(model.name, model.version, request_id, dict(_ANOMALY), chosen)
        )

    def _rest_outputs(self, items: Any, default: bool) -> list[tuple[str, bool]] | None:
        """(name, in binary) of each requested output; [] for all; None: decline."""
        if items is None:
            return []
        if type(items) is not list or not 0 < len(items) <= MAX_INPUTS:
            return None
        wanted = []
        for item in items:
            if type(item) is not dict or not item.keys() <= _OUTPUT_KEYS:
                return None
            name, parameters = item.get("name"), item.get("parameters")
            if not _name(name) or name not in self.outputs:
                return None
            parameters = _parameters(parameters)
            if parameters is None or parameters.get("classification"):
                return None
            binary = parameters.get("binary_data", default)
            if type(binary) is not bool:
                return None
            wanted.append((name, binary))
        return wanted

    # ---------------------------------------------------------------- gRPC

    def grpc(self, message: Any) -> Small | None:
        """A parsed `ModelInferRequest`'s response message, or None: the general path's."""
        started = time.perf_counter_ns()
        inputs, raw = message.inputs, message.raw_input_contents
        count = len(inputs)
        if not 0 < count <= MAX_INPUTS or len(raw) != count:
            return None
        try:
            grpc_parameters(message.parameters)  # the general path's checks of them
        except BadInput:
            return None
        lone = self.lone if count == 1 else None
        columns: dict[str, np.ndarray] = {}
        for index, tensor in enumerate(inputs):
            name, datatype, shape = tensor.name, tensor.datatype, list(tensor.shape)
            if len(tensor.parameters):
                return None
            if self._declared(name, datatype, shape, lone, columns) is None:
                return None
            try:
                columns[name] = tensors.from_raw(raw[index], datatype, tuple(shape), name)
            except BadInput:
                return None
        wanted = []
        for requested in message.outputs:
            name = requested.name
            if len(requested.parameters) or not _name(name) or name not in self.outputs:
                return None
            wanted.append((name, False))
        ran = self._run(columns, started, wanted, False)
        if ran is None:
            return None
        done, chosen = ran
        model = self.model
        request_id = message.id[:NAME_LEN]
        return Small(
            done, answer.grpc(model.name, model.version, request_id, dict(_ANOMALY), chosen)
        )

    # ---------------------------------------------------------------- shared

    def _declared(
        self,
        name: Any,
        datatype: Any,
        shape: Any,
        lone: TensorMeta | None,
        columns: dict[str, np.ndarray],
    ) -> TensorMeta | None:
        """The declared input a tensor feeds, when it is one this path takes; else None."""
        if not _name(name) or name in columns:
            return None
        declared = self.inputs.get(name, lone)
        if declared is None or datatype != declared.datatype or datatype in ("BOOL", "BYTES"):
            return None
        if type(shape) is not list or not 0 < len(shape) <= tensors.MAX_DIMS:
            return None
        for dim in shape:
            if type(dim) is not int or not 0 <= dim < 2**62:
                return None
        rows = shape[0]
        if not 0 < rows <= MAX_ROWS:
            return None
        if columns and len(next(iter(columns.values()))) != rows:
            return None
        try:
            declared.check(name, datatype, tuple(shape))
        except BadInput:
            return None
        return declared

    def _run(
        self,
        columns: dict[str, np.ndarray],
        started: int,
        wanted: list[tuple[str, bool]],
        default: bool,
    ) -> tuple[result.ResultRows, list[tuple[str, np.ndarray, bool]]] | None:
        """The run's rows and the answer's tensors (`_chosen`), or None: the general path
        answers it."""
        done = self.fast.run_columns(columns, time.perf_counter_ns() - started)
        if done is None:
            return None
        chosen = _chosen(done.rows.outputs, wanted, default)
        return None if chosen is None else (done.rows, chosen)


def _name(value: Any, empty: bool = False) -> bool:
    """A name (or id) the general path takes as it is: text of 1 (0) to 256 characters,
    no control characters."""
    return (
        type(value) is str
        and (empty or value != "")
        and len(value) <= NAME_LEN
        and not _CONTROL.search(value)
    )


def _parameters(raw: Any) -> dict[str, Any] | None:
    """Parameters as the general path takes them (None: it would refuse them)."""
    if raw is None:
        return {}
    if type(raw) is not dict:
        return None
    try:
        return request.check_parameters(raw, "")
    except BadInput:
        return None


def _chosen(
    outputs: dict[str, np.ndarray], wanted: list[tuple[str, bool]], default: bool
) -> list[tuple[str, np.ndarray, bool]] | None:
    """The answer's tensors: the requested ones (every output, `default` saying whether in
    binary, for []), None when one was not made (the general path says so)."""
    if not wanted:
        return [(name, array, default) for name, array in outputs.items()]
    chosen = []
    for name, binary in wanted:
        array = outputs.get(name)
        if array is None:
            return None
        chosen.append((name, array, binary))
    return chosen
