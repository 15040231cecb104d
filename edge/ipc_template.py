"""A record batch's Arrow IPC message made once, then refilled with new values in place.

The journal writes each loop turn's small results (`edge.result.ResultRows`) as one record
batch message. For a given layout and row count that message differs from turn to turn only
in the bytes of a few fixed-width buffers (the times, the tensors, the step timings): the
flatbuffer metadata, the list offsets and the constant columns (model, version, partition)
stay the same. Building the batch in pyarrow each turn (a dozen arrays, a schema check, the
serialization) cost more than the model run; copying the new values into a copy of the
message costs a few microseconds.

A `BatchTemplate` is made from a `build` function by building the batch once from random
values and finding each value buffer's bytes in the serialized message (each must appear
exactly once). It is then checked: filled with other random values, the message must read
back as exactly what `build` makes of them. A layout where that does not hold (bools packed
into bits, a value that does not land in the message as it is) gets no template, and the
caller builds its batches as before.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc

# (dtype, shape) of each variable array, in the order `build` takes them
Layout = Sequence[tuple[np.dtype, tuple[int, ...]]]


@dataclass(frozen=True)
class EncodedBatch:
    """A record batch as the journal takes it: its schema, one IPC record batch message,
    its rows and the earliest and latest `time` (epoch ms) among them."""

    schema: pa.Schema
    message: bytes
    rows: int
    bounds: tuple[int | None, int | None]


class BatchTemplate:
    """One layout's record batch message with the places of its variable buffers."""

    __slots__ = ("schema", "_message", "_slots")

    def __init__(self, schema: pa.Schema, message: bytes, slots: list[tuple[int, int]]):
        self.schema = schema
        self._message = message
        self._slots = slots  # (offset, nbytes) of each variable array, in `build`'s order

    @classmethod
    def make(
        cls, build: Callable[[list[np.ndarray]], pa.Table], layout: Layout
    ) -> BatchTemplate | None:
        """The template of what `build` makes of arrays of `layout`, or None when the message
        cannot be refilled in place (see the module doc)."""
        rng = np.random.default_rng()
        for _ in range(3):  # values that happen to repeat other bytes: try others
            template = cls._probe(build, layout, rng)
            if template is not None:
                return template
        return None

    @classmethod
    def _probe(
        cls,
        build: Callable[[list[np.ndarray]], pa.Table],
        layout: Layout,
        rng: np.random.Generator,
    ) -> BatchTemplate | None:
        probe = [_random(rng, dtype, shape) for dtype, shape in layout]
        table = build(probe)
        batches = table.to_batches()
        if len(batches) != 1 or any(map(pa.types.is_dictionary, table.schema.types)):
            return None
        message = batches[0].serialize().to_pybytes()
        slots: list[tuple[int, int]] = []
        for array in probe:
            data = array.tobytes()
            at = message.find(data) if data else -1
            if at < 0 or message.find(data, at + 1) >= 0:
                return None
            slots.append((at, len(data)))
        ends = sorted(slots)
        if any(a + n > b for (a, n), (b, _) in zip(ends, ends[1:], strict=False)):
            return None
        template = cls(table.schema, message, slots)
        check = [_random(rng, dtype, shape) for dtype, shape in layout]
        filled = ipc.read_record_batch(pa.py_buffer(template.fill(check)), table.schema)
        if not filled.equals(build(check).to_batches()[0]):
            return None
        return template

    def fill(self, arrays: list[np.ndarray]) -> bytes:
        """The message with `arrays` (of the template's layout) as its variable buffers."""
        out = bytearray(self._message)
        for (at, size), array in zip(self._slots, arrays, strict=True):
            if array.nbytes != size:  # another layout: the slice would resize the message
                raise ValueError(f"array of {array.nbytes} bytes for a slot of {size}")
            out[at : at + size] = np.ascontiguousarray(array).data.cast("B")
        return bytes(out)


def _random(rng: np.random.Generator, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    """Values whose bytes are unlikely to appear elsewhere in a message (and no NaN, which
    would not compare equal)."""
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        values = rng.uniform(1.0, 2.0, shape) * rng.choice([-1.0, 1.0], shape)
        return values.astype(dtype)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, shape, dtype=dtype, endpoint=True)
    return rng.integers(0, 2, shape).astype(dtype)  # bools: packed into bits, refused
