"""The columnar pandas-records writer for large results: one polars expression per record
piece, no Python object per cell (imported on the first large result: polars costs ~50 MB)."""

from __future__ import annotations

import orjson
import polars as pl
import pyarrow as pa

from edge.codecs.records import (
    RecordInfo,
    _group,
    _output_columns,
    _shadow_columns,
    _type_name,
)


def records_large(table: pa.Table, info: RecordInfo | None, separator: str | None) -> bytes:
    frame = pl.from_arrow(table)
    assert isinstance(frame, pl.DataFrame)
    pieces: list[pl.Expr] = []

    def key(name: str) -> pl.Expr:
        return pl.lit(orjson.dumps(name).decode() + ":")

    if info is not None:
        fixed = orjson.dumps(
            {
                "check_failures": info.check_failures,
                "elapsed": info.elapsed,
                "model_name": info.model_name,
                "model_version": info.model_version,
                "original_data": None,
            }
        ).decode()[1:-1]
        pieces.append(pl.lit(fixed + ',"outputs":['))

        def entries(names: list[str]) -> list[pl.Expr]:
            encoded = []
            for name in names:
                kind = _type_name(table.schema.field(name).type)
                dtype = frame.schema[name]
                if isinstance(dtype, pl.List):
                    data = pl.col(name)
                    while isinstance(dtype, pl.List) and isinstance(dtype.inner, pl.List):
                        data = data.list.eval(pl.element().explode())  # flatten nested lists
                        dtype = dtype.inner
                    dim = pl.concat_list(
                        pl.lit(1, pl.Int64), pl.col(name).list.len().cast(pl.Int64)
                    )
                else:
                    data = pl.concat_list(pl.col(name))
                    dim = pl.lit([1], dtype=pl.List(pl.Int64))
                entry = pl.struct(data.alias("data"), dim.alias("dim"), pl.lit(1).alias("v"))
                encoded.append(
                    pl.concat_str(
                        [pl.lit('{"' + kind + '":'), entry.struct.json_encode(), pl.lit("}")]
                    )
                )
            return encoded

        outputs = entries(_output_columns(table))
        if outputs:
            pieces.append(pl.concat_str(outputs, separator=","))
        shadow = _shadow_columns(table, info)
        tail = orjson.dumps(
            {"pipeline_name": info.pipeline_name, "shadow_data": info.shadow_data}
        ).decode()[1:-1]
        if not shadow:
            pieces.append(pl.lit("]," + tail))
        else:  # per-row challenger outputs after the recorded errors
            pieces.append(pl.lit("]," + tail[:-1] + ("," if info.shadow_data else "")))
            for i, (model, names) in enumerate(shadow.items()):
                pieces.append(pl.lit(("," if i else "") + orjson.dumps(model).decode() + ":["))
                pieces.append(pl.concat_str(entries(names), separator=","))
                pieces.append(pl.lit("]"))
            pieces.append(pl.lit("}"))
    groups: dict[str, list[tuple[str, str]]] = {}
    order: list[str] = []
    for name in table.column_names:
        shown = name
        if separator is not None and separator != "." and "." in name:
            shown = name.replace(".", separator, 1)
        group = _group(name, separator)
        top, sub = group if group else (shown, "")
        if top not in groups:
            groups[top] = []
            order.append(top)
        groups[top].append((name, sub))
    for top in order:
        sep = "," if pieces else ""
        members = groups[top]
        if len(members) == 1 and members[0][1] == "":
            name = members[0][0]
            value = pl.col(name)
            if name == "time":
                value = value.cast(pl.Int64)
            encoded = pl.struct(value.alias("v")).struct.json_encode().str.slice(5).str.head(-1)
        else:
            encoded = pl.struct([pl.col(n).alias(s) for n, s in members]).struct.json_encode()
        pieces.append(pl.concat_str([pl.lit(sep), key(top), encoded]))
    record = pl.concat_str([pl.lit("{"), *pieces, pl.lit("}")])
    lines = frame.select(record.alias("r")).to_series()
    return b"[" + ",".join(lines.to_list()).encode() + b"]"
