"""Result tables to Arrow IPC files (the seed's Arrow answers and logs)."""

from __future__ import annotations

import pyarrow as pa


def encode_arrow(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()
