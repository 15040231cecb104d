"""The stored-row codec: how a buffer row holds its tables, both ways.

A buffer row (`batches.body`) holds one logged table, or several small ones of one schema that
were stored in the same transaction, as Arrow IPC record-batch messages (the schema is stored
once in `schemas`, by fingerprint). `Codec` says how:

    zstd   the messages, zstd-compressed (small tables: mostly repeated strings)
    none   the messages as they are (large tensors of floats barely compress)
    file   the body is the name of the table's own file in the store's tables folder (a large
           table: SQLite is slow at multi-megabyte blobs, a file of its own costs one write)
    stream a whole IPC stream, dictionaries included, zstd-compressed: what the cap leaves of
           a large table it trimmed (`Encoder.rewritten`), its one-value columns kept packed

Small tables are stored as the very messages the journal wrote (`Encoder.journaled`: no Arrow
work on the writer). A large table's per-request columns are packed as one-value dictionaries
before it is journaled (`pack_constants`): its file shrinks by half, and the cap holds more.
"""

from __future__ import annotations

import enum
import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import zstandard

from edge.errors import LogBufferError
from edge.logbuffer.records import plain, plain_schema, read_table, stream
from edge.result import CACHED_CONSTANTS, CONSTANT_ROWS, is_per_request, time_bounds

COMPRESS_BELOW = 256 << 10  # serialized tables above this are stored uncompressed
COMPARE_BELOW_ROWS = 512  # a rewritten table of fewer rows is stored the smaller way


class Codec(enum.StrEnum):
    ZSTD = "zstd"
    NONE = "none"
    FILE = "file"
    STREAM = "stream"


@dataclass(frozen=True)
class StoredRow:
    """A buffer row's content, ready for its INSERT or UPDATE."""

    schema: pa.Schema
    fingerprint: str
    body: bytes
    n_rows: int
    min_time: int | None
    max_time: int | None
    codec: Codec
    size: int = -1  # bytes stored (-1: len(body); a file's size for Codec.FILE)

    @property
    def stored_bytes(self) -> int:
        return len(self.body) if self.size < 0 else self.size


class Encoder:
    """Tables into stored rows. One per writer thread (a zstd context is not shared)."""

    def __init__(self) -> None:
        self._compressor = zstandard.ZstdCompressor(level=1)
        # schema, stored schema, fingerprint, has dictionaries
        self._last_schema: tuple[pa.Schema, pa.Schema, str, bool] | None = None

    def tables(self, tables: list[pa.Table], compress: bool = False) -> StoredRow:
        """`tables` (one schema) as one stored row of one record batch message."""
        schema, fingerprint, has_dictionaries = self.fingerprint(tables[0].schema)
        if has_dictionaries:
            tables = [plain(table) for table in tables]
        batches = [batch for table in tables for batch in table.to_batches()]
        batch = batches[0] if len(batches) == 1 else pa.concat_batches(batches)
        lo, hi = time_bounds(batch)
        raw = batch.serialize()
        # Tensors of floats barely compress and zstd would cost more than the model run on big
        # batches; small tables (mostly repeated strings) shrink well.
        codec = Codec.ZSTD if compress or raw.size <= COMPRESS_BELOW else Codec.NONE
        body = self._compressor.compress(raw) if codec is Codec.ZSTD else raw.to_pybytes()
        return StoredRow(schema, fingerprint, body, batch.num_rows, lo, hi, codec)

    def journaled(
        self,
        schema: pa.Schema,
        n_rows: int,
        bounds: tuple[int | None, int | None],
        messages: list[bytes | pa.Buffer],
    ) -> StoredRow:
        """Small tables as one stored row: their record batch messages as the journal wrote
        them, joined (`Decoder` reads the messages back one by one); `bounds`: their
        earliest and latest `time`."""
        schema, fingerprint, _ = self.fingerprint(schema)
        raw = b"".join(messages)
        lo, hi = bounds
        # each message repeats its metadata, which zstd folds away: compress unless the
        # tables are large (tensors of floats barely compress)
        small = len(raw) <= max(COMPRESS_BELOW, len(messages) * (16 << 10))
        codec = Codec.ZSTD if small else Codec.NONE
        body = self._compressor.compress(raw) if codec is Codec.ZSTD else raw
        return StoredRow(schema, fingerprint, body, n_rows, lo, hi, codec)

    def file(
        self,
        schema: pa.Schema,
        rows: int,
        bounds: tuple[int | None, int | None],
        name: str,
        size: int,
    ) -> StoredRow:
        """A table in a file of its own (written by the journal): the row holds its name,
        and what it needs of the table (the writer need not hold it)."""
        stored, fingerprint, _ = self.fingerprint(schema)
        lo, hi = bounds
        return StoredRow(stored, fingerprint, name.encode(), rows, lo, hi, Codec.FILE, size)

    def stream(self, table: pa.Table) -> StoredRow:
        """`table` as one stored row of codec `stream`, its one-value columns packed
        (`pack_constants`): a large table the cap trimmed keeps only small columns, and
        packed they are a fraction of its decoded size, with no decode on the way."""
        table = pack_constants(table)
        schema, fingerprint, _ = self.fingerprint(table.schema)
        lo, hi = time_bounds(table)
        body = self._compressor.compress(stream(table).parts[0])
        return StoredRow(schema, fingerprint, body, table.num_rows, lo, hi, Codec.STREAM)

    def rewritten(self, table: pa.Table) -> StoredRow:
        """A trimmed or cut table's new row: `stream`, unless the table is small enough that
        a stream's own schema and dictionary messages (~600 bytes zstd'd) cost more than its
        packed columns save; then the smaller of the two (a trim must free bytes)."""
        row = self.stream(table)
        if table.num_rows < COMPARE_BELOW_ROWS:
            messages = self.tables([table], compress=True)
            if len(messages.body) < len(row.body):
                return messages
        return row

    def fingerprint(self, schema: pa.Schema) -> tuple[pa.Schema, str, bool]:
        """The stored schema (dictionaries decoded), its fingerprint, and whether `schema`
        has dictionaries. Cached: most tables share the last one's schema, and hashing it
        costs more than the rest."""
        cached = self._last_schema
        if cached is None or not cached[0].equals(schema, check_metadata=True):
            has_dictionaries = any(pa.types.is_dictionary(t) for t in schema.types)
            stored = plain_schema(schema) if has_dictionaries else schema
            fingerprint = hashlib.sha256(stored.serialize().to_pybytes()).hexdigest()
            cached = (schema, stored, fingerprint, has_dictionaries)
            self._last_schema = cached
        return cached[1], cached[2], cached[3]


class Decoder:
    """Stored rows back into tables. One per thread that reads (a zstd context is not shared)."""

    def __init__(self, tables: Path) -> None:
        self.tables = tables  # the store's folder of tables in files of their own
        self._decompressor = zstandard.ZstdDecompressor()

    def decode(self, schema: pa.Schema, codec: str, body: bytes, packed: bool = False) -> pa.Table:
        """A stored row's table. `packed`: one-value columns may stay packed as dictionaries
        (for a rewrite, which packs them anyway); else every column is of its stored type."""
        if codec == Codec.FILE:
            try:
                return read_table(self.tables / file_name(body), packed)
            except OSError as exc:
                raise LogBufferError(f"log buffer table file is unreadable: {exc}") from exc
        if codec == Codec.STREAM:
            table = ipc.open_stream(pa.py_buffer(self._decompressor.decompress(body))).read_all()
            return table if packed else plain(table)
        if codec == Codec.ZSTD:
            raw = self._decompressor.decompress(body)
        elif codec == Codec.NONE:
            raw = body
        else:
            raise LogBufferError(f"log buffer row has unknown codec {codec!r}")
        # one record batch message, or several (small tables stored as journaled)
        messages = ipc.MessageReader.open_stream(pa.py_buffer(raw))
        batches = [ipc.read_record_batch(m, schema) for m in messages]
        return pa.Table.from_batches(batches, schema).combine_chunks()


def file_name(body: bytes) -> str:
    """The table file a `Codec.FILE` row names."""
    return bytes(body).decode()


def pack_constants(table: pa.Table, fresh: bool = False) -> pa.Table:
    """Per-request columns (`edge.result.is_per_request`) that hold one value in every row,
    as dictionaries of that value with int8 indices: a large result's file shrinks by about
    half (and so the cap holds more of them). `fresh`: a result being journaled, whose
    pipeline-cached columns are remembered (`_packed`); not a table read back from a file,
    whose arrays are views of the file's bytes."""
    for index, field in enumerate(table.schema):
        if not is_per_request(field.name):
            continue
        column = table.column(index)
        if column.num_chunks != 1 or pa.types.is_dictionary(field.type):
            continue
        packed = _packed(column.chunk(0), field.name if fresh else "")
        if packed is not None:
            table = table.set_column(index, pa.field(field.name, packed.type), packed)
    return table


def _packed(array: pa.Array, name: str = "") -> pa.Array | None:
    """`array` as a dictionary of its one value, or None when its rows differ (comparing
    two slices costs far less than a compute kernel). For the columns a pipeline fills from
    its cache (`result.CACHED_CONSTANTS`: slices of one array, `ResultBuilder._constant`) the
    last answer is kept with the array it was for, and the next large result's, the same
    memory, is not compared again (~0.2 ms for 10,000 rows: their memory is cold by then).
    Kept here, that memory cannot be reused by another array, and Arrow arrays do not change."""
    rows = len(array)
    if rows == 0:
        return None
    identity = None
    if name in CACHED_CONSTANTS and rows <= CONSTANT_ROWS:
        identity = (array.type, array.offset, rows, [b and b.address for b in array.buffers()])
        kept = _KEPT.get(name)
        if kept is not None and kept[0] == identity:
            return kept[2]
    packed = None
    if array.slice(1).equals(array.slice(0, rows - 1)):  # a[i+1] == a[i]: one value
        packed = pa.DictionaryArray.from_arrays(_zeros(rows), array.slice(0, 1))
    if identity is not None and packed is not None:
        _KEPT[name] = (identity, array, packed)
    return packed


_KEPT: dict[str, tuple[tuple[Any, ...], pa.Array, pa.Array]] = {}


@functools.lru_cache(maxsize=16)
def _zeros(rows: int) -> pa.Array:
    # from a buffer: `pa.array` of a numpy array imports pandas
    return pa.Array.from_buffers(pa.int8(), rows, [None, pa.py_buffer(np.zeros(rows, np.int8))])
