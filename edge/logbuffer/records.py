"""The journal's record format, and the file helpers the journal and the store share.

Record: a 40-byte header (magic, flags, payload length, first sequence number, rows, checksum:
CRC-32 of a payload up to 64 KiB, the sum of its 64-bit words above) then the payload, an Arrow
IPC stream, padded to 8 bytes. Reading stops at the first record that is short or fails its
checksum: a torn tail, never an answered row.

A record with the `IN_FILE` flag has no payload: its table is in a file of its own, named by
the record (`table_file_name`: the segment's epoch and the record's first sequence number), and
that file holds one record of the same format.
"""

from __future__ import annotations

import logging
import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc

log = logging.getLogger(__name__)

MAGIC = b"EDJ1"
SMALL = 64 << 10  # payloads up to this are checksummed with CRC-32, larger ones word-summed
HEADER = struct.Struct("<4sIQQQQ")  # magic, flags, length, first_seq, rows, checksum
IN_FILE = 1  # flags: the table is in its own file
TABLE_SUFFIX = ".table"


@dataclass(frozen=True)
class Encoded:
    """A table as a record's payload: an Arrow IPC stream, in parts."""

    parts: list[bytes | pa.Buffer]
    rows: int
    length: int
    # the record batch messages alone, without the schema message (None when the stream
    # holds dictionaries): the store keeps them joined, with no Arrow work
    batches: list[bytes | pa.Buffer] | None


def table_file_name(epoch: str, first_seq: int) -> str:
    return f"{epoch}-{first_seq:016d}{TABLE_SUFFIX}"


def name_parts(name: str) -> tuple[str, int] | None:
    """(epoch, first seq) of a segment or table file name, or None for another name."""
    epoch, _, rest = name.rpartition("-")
    seq = rest.split(".", 1)[0]
    return (epoch, int(seq)) if epoch and seq.isdigit() else None


def stream(table: pa.Table) -> Encoded:
    """`table` as one Arrow IPC stream (dictionaries included)."""
    sink = pa.BufferOutputStream()
    with ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    data = sink.getvalue()
    return Encoded([data], table.num_rows, len(data), None)


BY_REFERENCE = 64 << 10  # `stream_parts` keeps buffers from this size by reference


def stream_parts(table: pa.Table) -> Encoded:
    """`stream(table)`, the same bytes, with the table's large buffers (the columns a
    request's Arrow body brought, the model's outputs) by reference: no copy is made of them
    before they are written."""
    sink = _PartsSink()
    with ipc.new_stream(pa.PythonFile(sink, mode="w"), table.schema) as writer:
        writer.write_table(table)
    parts = sink.parts()
    return Encoded(parts, table.num_rows, sum(len(p) for p in parts), None)


class _PartsSink:
    """A file for `pa.PythonFile`: Arrow's IPC writer hands it each body buffer as a
    `pa.Buffer` of the table's own memory. The large ones at 8-byte offsets, of whole 64-bit
    words, stay as they are; everything between is joined (so `record` need not join)."""

    def __init__(self) -> None:
        self._parts: list[bytes | pa.Buffer] = []
        self._small = bytearray()
        self._offset = 0
        self.closed = False

    def write(self, data: bytes | pa.Buffer) -> int:
        size = len(data)
        if size >= BY_REFERENCE and size % 8 == 0 and self._offset % 8 == 0:
            if self._small:
                self._parts.append(bytes(self._small))
                self._small.clear()
            self._parts.append(data)
        else:
            self._small += data
        self._offset += size
        return size

    def parts(self) -> list[bytes | pa.Buffer]:
        if self._small:
            self._parts.append(bytes(self._small))
            self._small.clear()
        return self._parts

    def tell(self) -> int:
        return self._offset

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


def record(first_seq: int, encoded: Encoded) -> tuple[list[bytes | pa.Buffer], int]:
    """The header, the payload and the padding of one record."""
    parts = encoded.parts
    length = encoded.length
    if length <= SMALL or any(len(p) % 8 for p in parts[:-1]):
        parts = [b"".join(parts)]
    pad = b"\0" * (-length % 8)
    header = HEADER.pack(MAGIC, 0, length, first_seq, encoded.rows, _checksum(parts))
    return [header, *parts, pad], len(header) + length + len(pad)


def reference(first_seq: int, rows: int) -> bytes:
    """A record that says: the table of `rows` rows from `first_seq` is in its own file."""
    return HEADER.pack(MAGIC, IN_FILE, 0, first_seq, rows, zlib.crc32(b""))


def read_records(
    path: Path, live: bool, data: bytes | None = None
) -> Iterator[tuple[int, int, pa.Table | None]]:
    """(first seq, rows, table) of each whole record of a file (`data`: its bytes, read
    already); the table is None for a record whose table is in its own file. `live`: the
    file may be mid-write (its tail is not reported as torn)."""
    if data is None:
        data = path.read_bytes()
    offset = 0
    while offset + HEADER.size <= len(data):
        magic, flags, length, first_seq, rows, checksum = HEADER.unpack_from(data, offset)
        end = offset + HEADER.size + length
        if magic != MAGIC or end > len(data):
            break
        payload = memoryview(data)[offset + HEADER.size : end]
        if _checksum([payload]) != checksum:
            break
        if flags & IN_FILE:
            if length:
                break
            yield first_seq, rows, None
        else:
            try:
                table = ipc.open_stream(pa.py_buffer(payload)).read_all()
            except (pa.ArrowInvalid, OSError):
                break
            if table.num_rows != rows:
                break
            yield first_seq, rows, table
        offset = end + (-length % 8)
    if offset < len(data) and not live:
        log.warning(
            "log journal %s: %d bytes after the last whole record ignored (a torn write)",
            path,
            len(data) - offset,
        )


def read_table(path: Path, packed: bool = False) -> pa.Table:
    """The table in a file of its own, dictionary columns decoded unless `packed`; OSError
    when the file is missing or holds no whole record."""
    for _, _, table in read_records(path, live=False):
        if table is not None:
            return table if packed else plain(table)
    raise OSError(f"{path}: no whole record")


def plain(table: pa.Table) -> pa.Table:
    """Dictionary columns decoded to their value type (tables come back as they were logged)."""
    for index, column in enumerate(table.columns):
        if pa.types.is_dictionary(column.type):
            decoded = pa.chunked_array(
                [chunk.dictionary.take(chunk.indices) for chunk in column.chunks],
                column.type.value_type,
            )
            table = table.set_column(
                index, pa.field(table.field(index).name, decoded.type), decoded
            )
    return table


def plain_schema(schema: pa.Schema) -> pa.Schema:
    return pa.schema(
        [f.with_type(f.type.value_type) if pa.types.is_dictionary(f.type) else f for f in schema],
        metadata=schema.metadata,
    )


def _checksum(parts: list[bytes | memoryview | pa.Buffer]) -> int:
    """CRC-32 of a small payload (one part); for a large one (every part but the last a
    whole number of 64-bit words) the sum of its words: ~40x faster, and enough to tell a
    torn or zero-filled tail from a whole record."""
    if len(parts) == 1 and len(parts[0]) <= SMALL:
        return zlib.crc32(parts[0])
    return sum(_word_sum(p) for p in parts) & 0xFFFFFFFFFFFFFFFF


def _word_sum(data: bytes | memoryview | pa.Buffer) -> int:
    view = memoryview(data).cast("B")
    whole = len(view) // 8 * 8
    total = int(np.frombuffer(view[:whole], np.uint64).sum(dtype=np.uint64)) if whole else 0
    return (total + int.from_bytes(view[whole:], "little")) & 0xFFFFFFFFFFFFFFFF


def write_all(fd: int, parts: list[bytes | pa.Buffer], size: int) -> None:
    done = os.writev(fd, parts)
    if done == size:
        return
    rest = b"".join(bytes(p) for p in parts)[done:]  # a short write: rare, finish it
    while rest:
        rest = rest[os.write(fd, rest) :]


def forget_pages(fd: int) -> None:
    """Let the kernel drop a written, synced file's pages from its cache: log data is read
    back rarely, and a page cache that only grows made each new large table cost
    milliseconds of kernel time, against far less while freed pages were reused."""
    if hasattr(os, "posix_fadvise"):
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)


def fsync_path(path: Path) -> None:
    """fsync a file, or a folder (so that the names in it are durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
