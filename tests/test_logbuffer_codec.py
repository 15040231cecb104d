"""The stored-row codec: every codec encodes and decodes to the same table."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from edge.errors import LogBufferError
from edge.logbuffer import records
from edge.logbuffer.codec import Codec, Decoder, Encoder, pack_constants
from edge.logbuffer.journal import Journal
from edge.result import time_bounds
from tests.logbuffer_support import T0, result_table, small_table


def test_codec_names_are_the_stored_strings() -> None:
    # the file's `batches.codec` column holds these: changing one needs a migration
    assert [c.value for c in Codec] == ["zstd", "none", "file", "stream"]


def test_small_tables_round_trip_compressed_and_large_ones_raw(tmp_path: Path) -> None:
    encoder, decoder = Encoder(), Decoder(tmp_path)
    small = result_table(3)
    row = encoder.tables([small, result_table(2)])
    assert row.codec is Codec.ZSTD and row.n_rows == 5
    assert decoder.decode(row.schema, row.codec, row.body).equals(
        pa.concat_tables([small, result_table(2)])
    )
    large = result_table(400, big=200)
    row = encoder.tables([large])
    assert row.codec is Codec.NONE and row.stored_bytes == len(row.body)
    assert decoder.decode(row.schema, row.codec, row.body).equals(large)
    assert (row.min_time, row.max_time) == (1_700_000_000_000, 1_700_000_000_000)


def test_journaled_messages_are_stored_as_they_are(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal", tmp_path / "tables")
    tables = [small_table(2), small_table(3, start=2)]
    messages = [m for t in tables for m in journal.encode(t).batches or []]
    bounds = (T0, T0 + 4)
    row = Encoder().journaled(tables[0].schema, 5, bounds, messages)
    assert row.n_rows == 5 and row.codec is Codec.ZSTD
    assert (row.min_time, row.max_time) == bounds
    decoded = Decoder(tmp_path).decode(row.schema, row.codec, row.body)
    assert decoded.column("in.x").to_pylist() == [0.0, 1.0, 2.0, 3.0, 4.0]


def test_a_file_row_names_its_file_and_reads_it_back(tmp_path: Path) -> None:
    table = result_table(50)
    parts, size = records.record(7, records.stream(pack_constants(table)))
    (tmp_path / "e-0000000000000007.table").write_bytes(b"".join(bytes(p) for p in parts))
    name = "e-0000000000000007.table"
    row = Encoder().file(table.schema, table.num_rows, time_bounds(table), name, size)
    assert row.codec is Codec.FILE and row.stored_bytes == size
    assert row.body == b"e-0000000000000007.table"
    assert Decoder(tmp_path).decode(row.schema, row.codec, row.body).equals(table)
    with pytest.raises(LogBufferError, match="unreadable"):
        Decoder(tmp_path / "elsewhere").decode(row.schema, row.codec, row.body)


def test_an_unknown_codec_is_refused(tmp_path: Path) -> None:
    row = Encoder().tables([small_table(1)])
    with pytest.raises(LogBufferError, match="unknown codec"):
        Decoder(tmp_path).decode(row.schema, "lz4", row.body)


def test_dictionary_columns_are_stored_plain(tmp_path: Path) -> None:
    table = small_table(4).append_column("in.kind", pa.array(["a", "b"] * 2).dictionary_encode())
    row = Encoder().tables([table])
    assert row.schema.field("in.kind").type == pa.string()
    decoded = Decoder(tmp_path).decode(row.schema, row.codec, row.body)
    assert decoded.column("in.kind").to_pylist() == ["a", "b", "a", "b"]


@pytest.mark.parametrize("fresh", [False, True])  # True: journaled, the cache remembers
def test_per_request_constants_are_packed_and_read_back_as_they_were(fresh: bool) -> None:
    def with_partition(values: pa.Array) -> pa.Table:
        rows = len(values)
        return small_table(rows).append_column("metadata.partition", values)

    def pack(table: pa.Table) -> pa.Table:
        return pack_constants(table, fresh=fresh)

    constant = pa.array(["edge-a"] * 1000)
    for _ in range(3):  # the same arrays again and again (the pipeline's cached constants)
        packed = pack(with_partition(constant.slice(0, 500)))
        assert pa.types.is_dictionary(packed.schema.field("metadata.partition").type)
        assert records.plain(packed).column("metadata.partition").to_pylist() == ["edge-a"] * 500
    other = pack(with_partition(pa.array(["edge-b"] * 500)))  # new buffers
    assert records.plain(other).column("metadata.partition").to_pylist() == ["edge-b"] * 500
    longer = pack(with_partition(constant))  # same buffer, another length
    assert records.plain(longer).column("metadata.partition").to_pylist() == ["edge-a"] * 1000
    mixed = pack(with_partition(pa.array(["x", "y"] * 250)))  # not one value
    assert mixed.schema.field("metadata.partition").type == pa.string()
    halves = pa.array(["edge-a"] * 500 + ["edge-c"] * 500)  # one buffer, other offsets
    for start, want in ((0, ["edge-a"] * 500), (500, ["edge-c"] * 500), (0, ["edge-a"] * 500)):
        got = pack(with_partition(halves.slice(start, 500)))
        assert records.plain(got).column("metadata.partition").to_pylist() == want
    straddling = pack(with_partition(halves.slice(250, 500)))
    assert straddling.schema.field("metadata.partition").type == pa.string()
    assert straddling.column("metadata.partition").chunk(0).equals(halves.slice(250, 500))
    lists = pa.array([[7, 8]] * 300, pa.list_(pa.int64()))  # metadata.elapsed: a list
    result = small_table(300).append_column("metadata.elapsed", lists)
    packed = pack_constants(result)
    assert pa.types.is_dictionary(packed.schema.field("time").type) is False  # times differ
    assert pa.types.is_dictionary(packed.schema.field("metadata.elapsed").type)
    assert records.plain(packed).equals(result)
    assert "in.x" in packed.column_names and packed.column("in.x").type == pa.float64()
    same = pa.table({"in.same": pa.array(["v"] * 300)})  # an input, one value: not packed
    assert pack_constants(same).schema.field("in.same").type == pa.string()


def test_a_stream_row_keeps_one_value_columns_packed_and_reads_back_plain(
    tmp_path: Path,
) -> None:
    table = result_table(2_000)  # every per-request column holds one value
    row = Encoder().stream(table)
    assert row.codec is Codec.STREAM and row.n_rows == 2_000
    assert (row.min_time, row.max_time) == (T0, T0)
    assert row.schema.equals(table.schema)  # the stored schema is the plain one
    decoder = Decoder(tmp_path)
    assert decoder.decode(row.schema, row.codec, row.body).equals(table)
    packed = decoder.decode(row.schema, row.codec, row.body, packed=True)
    assert pa.types.is_dictionary(packed.schema.field("metadata.last_model").type)
    assert records.plain(packed).equals(table)
    # packed, the 2,000 copies of each value are stored once: what a trim leaves of a row
    # (time, anomaly, metadata) takes a fraction of the bytes
    skeleton = table.drop_columns(["in.tensor", "out.dense_1"])
    plain_bytes = len(Encoder().tables([skeleton], compress=True).body)
    assert Encoder().stream(skeleton).stored_bytes * 4 < plain_bytes
    # a packed table (as a rewrite reads it) is stored alike, its time bounds known
    again = Encoder().stream(packed)
    assert (again.min_time, again.max_time) == (T0, T0) and again.body == row.body
