"""One write transaction on the log buffer's file: rows in, out and rewritten, the cap, acks.

`Store.transact` hands a `Transaction` to the writer's function; its `state` is a copy that
becomes the store's state only if the transaction commits. The cap is applied here, in the
transaction that went over it, one `edge.logbuffer.retention` step at a time.
"""

from __future__ import annotations

import logging
import sqlite3
from typing import TYPE_CHECKING

import pyarrow as pa

from edge.logbuffer import retention, schema
from edge.logbuffer.codec import Codec, StoredRow, file_name
from edge.result import drop_columns

if TYPE_CHECKING:
    from edge.logbuffer.store import State, Store

log = logging.getLogger("edge.logbuffer.store")


class Transaction:
    """One write transaction: the rows it changes, and the state they leave (`state`)."""

    def __init__(self, store: Store, conn: sqlite3.Connection, state: State) -> None:
        self.store = store
        self.conn = conn
        self.state = state
        self.new_schemas: dict[str, tuple[int, pa.Schema]] = {}

    def insert(self, row: StoredRow, first: int) -> None:
        last = first + row.n_rows - 1
        self.conn.execute(
            "INSERT INTO batches (first_seq, last_seq, n_rows, min_time, max_time, bytes,"
            " schema_id, codec, trimmed, body) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0, ?)",
            (
                first,
                last,
                row.n_rows,
                row.min_time,
                row.max_time,
                row.stored_bytes,
                self._schema_id(row.schema, row.fingerprint),
                row.codec.value,
                row.body,
            ),
        )
        st = self.state
        st.last_seq = max(st.last_seq, last)
        st.bytes += row.stored_bytes
        st.rows += row.n_rows
        st.batches += 1
        st.unsynced_rows += row.n_rows
        if row.codec is Codec.FILE:
            st.files.add(file_name(row.body))

    def stored_through(self, seq: int) -> None:
        """Every number up to `seq` was given (stored, or failed): the high-water mark."""
        self.state.last_seq = max(self.state.last_seq, seq)
        schema.set_meta(self.conn, "last_seq", self.state.last_seq)

    def delete(self, first_seq: int) -> tuple[int, int]:
        """Delete one row; returns its rows and how many of them were not delivered."""
        last, n_rows, size, codec, body = self.conn.execute(
            "SELECT last_seq, n_rows, bytes, codec, body FROM batches WHERE first_seq = ?",
            (first_seq,),
        ).fetchone()
        self.conn.execute("DELETE FROM batches WHERE first_seq = ?", (first_seq,))
        st = self.state
        self._forget(codec, body)
        st.bytes -= size
        st.rows -= n_rows
        st.batches -= 1
        row = retention.Row(first_seq, last, size)
        unsynced = retention.unsynced_in(row, n_rows, st.acked_through)
        st.unsynced_rows -= unsynced
        return n_rows, unsynced

    def rewrite(
        self, first_seq: int, table: pa.Table, trimmed: int, new_first: int | None = None
    ) -> None:
        old_bytes, old_codec, old_body = self.conn.execute(
            "SELECT bytes, codec, body FROM batches WHERE first_seq = ?", (first_seq,)
        ).fetchone()
        self._forget(old_codec, old_body)
        row = self.store.encoder.rewritten(table)  # what is left: mostly one-value columns
        self.conn.execute(
            "UPDATE batches SET first_seq = ?, n_rows = ?, min_time = ?, max_time = ?, bytes = ?,"
            " schema_id = ?, codec = ?, trimmed = ?, body = ? WHERE first_seq = ?",
            (
                first_seq if new_first is None else new_first,
                row.n_rows,
                row.min_time,
                row.max_time,
                len(row.body),
                self._schema_id(row.schema, row.fingerprint),
                row.codec.value,
                trimmed,
                row.body,
                first_seq,
            ),
        )
        self.state.bytes += len(row.body) - old_bytes

    # ---------------------------------------------------------------- the cap

    def enforce_cap(self) -> None:
        st = self.state
        before = dict(st.drops)
        while st.bytes > self.store.max_bytes and st.batches > 0:
            step = retention.next_step(self._oldest(), st.acked_through)
            assert step is not None
            if step.action is retention.Action.EVICT_SYNCED:
                self.delete(step.row.first_seq)
            elif step.action is retention.Action.TRIM:
                self._trim(step.row.first_seq, step.level)
            else:
                st.drops["rows"] += self.delete(step.row.first_seq)[1]
        if st.drops != before:
            self.conn.executemany(
                "INSERT INTO drops (reason, count) VALUES (?, ?)"
                " ON CONFLICT (reason) DO UPDATE SET count = excluded.count",
                sorted(st.drops.items()),
            )
            log.warning(
                "log buffer over its cap, dropped data max_bytes=%d bytes=%d dropped=%s",
                self.store.max_bytes,
                st.bytes,
                {
                    k: st.drops[k] - before.get(k, 0)
                    for k in st.drops
                    if st.drops[k] != before.get(k)
                },
            )

    def _oldest(self) -> retention.Oldest:
        def first(where: str = "", *params: int) -> retention.Row | None:
            row = self.conn.execute(
                f"SELECT first_seq, last_seq, bytes FROM batches {where}"
                " ORDER BY first_seq LIMIT 1",
                params,
            ).fetchone()
            return None if row is None else retention.Row(*row)

        trimmed = "WHERE trimmed = ?"
        return retention.Oldest(
            first(), first(trimmed, retention.TRIM_INPUTS), first(trimmed, retention.TRIM_OUTPUTS)
        )

    def _trim(self, first_seq: int, level: int) -> None:
        """Drop columns of one kind from a row, as many as the excess needs."""
        size, schema_id, codec, body = self.conn.execute(
            "SELECT bytes, schema_id, codec, body FROM batches WHERE first_seq = ?", (first_seq,)
        ).fetchone()
        table = self._table(schema_id, codec, body)
        columns = [(name, table.column(name).nbytes) for name in table.column_names]
        excess = self.state.bytes - self.store.max_bytes
        chosen, done = retention.columns_to_drop(columns, level, size, table.nbytes, excess)
        trimmed = level + 1 if done else level
        if not chosen:
            self.conn.execute(
                "UPDATE batches SET trimmed = ? WHERE first_seq = ?", (trimmed, first_seq)
            )
            return
        self.rewrite(first_seq, drop_columns(table, chosen), trimmed)
        self.state.drops[retention.reason(level)] += table.num_rows * len(chosen)

    # ---------------------------------------------------------------- acks

    def ack(self, last_seq: int) -> None:
        st = self.state
        if last_seq > st.last_seq:
            raise ValueError(
                f"cannot ack seq {last_seq}: the last committed seq of epoch "
                f"{self.store.epoch} is {st.last_seq}"
            )
        if last_seq <= st.acked_through:
            return
        st.unsynced_rows -= schema.rows_between(self.conn, st.acked_through, last_seq)
        st.acked_through = last_seq
        schema.set_meta(self.conn, "acked_through", last_seq)
        synced = self.conn.execute(
            "SELECT first_seq, bytes FROM batches WHERE first_seq <= ? AND last_seq <= ?"
            " ORDER BY first_seq",
            (last_seq, last_seq),
        ).fetchall()
        for first_seq in retention.synced_to_delete(synced, self.store.keep_synced_bytes):
            self.delete(first_seq)
        if self.store.keep_synced_bytes == 0:
            self._cut_straddling(last_seq)

    def _cut_straddling(self, last_seq: int) -> None:
        """Delete the acked head of a table that was acked only in part."""
        row = self.conn.execute(
            "SELECT first_seq, schema_id, codec, body, trimmed FROM batches"
            " WHERE first_seq <= ? AND last_seq > ? ORDER BY first_seq DESC LIMIT 1",
            (last_seq, last_seq),
        ).fetchone()
        if row is None:
            return
        first_seq, schema_id, codec, body, trimmed = row
        table = self._table(schema_id, codec, body)
        cut = last_seq - first_seq + 1
        self.rewrite(first_seq, table.slice(cut), trimmed, new_first=last_seq + 1)
        self.state.rows -= cut

    # ---------------------------------------------------------------- inside

    def _forget(self, codec: str, body: bytes) -> None:
        """A row that named its own file names it no more (the sweep deletes the file)."""
        if codec == Codec.FILE:
            self.state.files.discard(file_name(body))

    def _table(self, schema_id: int, codec: str, body: bytes) -> pa.Table:
        """A row's table, to rewrite: its one-value columns may stay packed (the rewrite
        packs them, `Encoder.stream`)."""
        known = self.store.schemas.get(schema_id)
        if known is None:
            new = [s for i, s in self.new_schemas.values() if i == schema_id]
            known = new[0] if new else schema.stored_schema(self.conn, schema_id)
        return self.store.decoder.decode(known, codec, body, packed=True)

    def _schema_id(self, stored: pa.Schema, fingerprint: str) -> int:
        known = self.store.schema_ids.get(fingerprint)
        if known is not None:
            return known
        if fingerprint in self.new_schemas:
            return self.new_schemas[fingerprint][0]
        cursor = self.conn.execute(
            "INSERT INTO schemas (fingerprint, ipc) VALUES (?, ?)",
            (fingerprint, stored.serialize().to_pybytes()),
        )
        schema_id = int(cursor.lastrowid or 0)
        self.new_schemas[fingerprint] = (schema_id, stored)
        return schema_id
