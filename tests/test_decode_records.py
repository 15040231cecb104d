"""pandas-records request bodies of every size: a large body decodes to the table its first
rows make as a small body, a bad one is refused with the same message naming the column or
row, and no request imports polars or pandas (~50-85 and ~40 MiB resident that never go back)."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from edge import codecs
from edge.codecs.decode import ORJSON_BODY
from edge.errors import BadInput

ROWS = {  # what requests hold: a few rows, repeated to make a large body
    "tensor": [{"tensor": [17.99, 10.38, 122.8, 1001.0]}, {"tensor": [1.0, 2.0, 3.0, 4.5]}],
    "ints": [{"ids": [1, -2, 3], "n": 7}],
    "ints and floats": [{"x": [1, 2]}, {"x": [2.5, 3]}],
    "2-d": [{"image": [[0.5, 1.0], [1.5, 2.0]]}],
    "text": [{"name": 'caf\u00e9 "x"', "v": 1.5}, {"name": "b", "v": -0.0}],
    "bools": [{"flag": True, "mask": [True, False]}],
    "nulls": [{"tensor": None, "id": 3}, {"tensor": [1.0], "id": 4}],
    "missing keys": [{"a": 1.5}, {"b": [1, 2]}, {"a": 2.5, "b": [3, 4]}],
}


def body_of(rows: list[Any]) -> bytes:
    return json.dumps(rows).encode()


@pytest.mark.parametrize("kind", sorted(ROWS))
def test_large_bodies_decode_to_the_tables_small_ones_do(kind: str) -> None:
    small = ROWS[kind]
    large = small * (ORJSON_BODY // len(body_of(small)) * 4 + 3)
    assert len(body_of(small)) < ORJSON_BODY <= len(body_of(large))
    few = codecs.decode_records(body_of(small))
    many = codecs.decode_records(body_of(large))
    assert many.schema == few.schema
    assert many.num_rows == len(large)
    assert many.slice(0, len(small)).equals(few)


def test_a_large_numeric_body_keeps_every_value() -> None:
    rows = [{"tensor": [i + 0.1, -i / 7, 1e-7 * i], "id": i} for i in range(2_000)]
    table = codecs.decode_records(body_of(rows))
    assert table.column("tensor").to_pylist() == [r["tensor"] for r in rows]
    assert table.column("id").to_pylist() == list(range(2_000))
    assert str(table.schema.field("tensor").type) == "list<item: double>"
    assert str(table.schema.field("id").type) == "int64"


BAD_ROWS = {  # a bad row among good ones: (row, the message's words)
    "ragged tensor": ({"tensor": [1.0, 2.0, 3.0]}, "column 'tensor': ragged tensor"),
    "ragged nesting": ({"tensor": [[1.0], [2.0, 3.0]]}, "column 'tensor': ragged tensor"),
    "text in a tensor": ({"tensor": ["a", 2.0]}, "column 'tensor': mixed element types"),
    "not an object": ([1.0, 2.0], "row 1 is not a JSON object"),
}


@pytest.mark.parametrize("kind", sorted(BAD_ROWS))
def test_large_bodies_are_refused_with_the_small_ones_message(kind: str) -> None:
    bad, words = BAD_ROWS[kind]
    good = {"tensor": [1.0, 2.0]} if "nesting" not in kind else {"tensor": [[1.0], [2.0]]}
    messages = []
    for rows in ([good, bad, good], [good, bad] + [good] * 400):
        with pytest.raises(BadInput) as caught:
            codecs.decode_records(body_of(rows))
        messages.append(str(caught.value))
    assert len(body_of([good, bad] + [good] * 400)) >= ORJSON_BODY
    assert messages[0] == messages[1]
    assert words in messages[0]


@pytest.mark.parametrize("cut", [1, 7, ORJSON_BODY + 100])
def test_malformed_json_is_refused_at_its_byte_whatever_the_size(cut: int) -> None:
    whole = body_of([{"tensor": [1.5, 2.5]}] * 400)
    body = whole[: len(whole) - cut]  # cut short: the end is missing
    with pytest.raises(BadInput, match=rf"malformed JSON at byte {len(body)}: "):
        codecs.decode_records(body)


def test_an_empty_list_is_no_rows() -> None:
    for body in (b"[]", b"[" + b" " * ORJSON_BODY + b"]"):
        with pytest.raises(BadInput, match="the request holds no rows"):
            codecs.decode_records(body)


def test_no_pandas_records_request_imports_polars_or_pandas() -> None:
    script = (  # 10,000 rows of floats: the fast reader's body (`edge.codecs.tensor_text`)
        "import json, sys\n"
        "from edge import codecs\n"
        "rows = [{'tensor': [float(i)] * 30} for i in range(10_000)]\n"
        "body = json.dumps(rows).encode()\n"
        "table = codecs.decode_records(body)\n"
        "info = codecs.RecordInfo('p', 'm', 'v', [1], inputs=table)\n"
        "shown = table.rename_columns(['in.tensor'])\n"
        "codecs.encode_records(shown, info, None)\n"
        "print(table.num_rows, 'polars' in sys.modules, 'pandas' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["10000", "False", "False"]


def test_the_garbage_collector_is_on_again_after_a_large_body() -> None:
    import gc

    good = body_of([{"tensor": [1.5, 2.5]}] * 10_000)
    assert gc.isenabled()
    codecs.decode_records(good)
    assert gc.isenabled()
    with pytest.raises(BadInput):
        codecs.decode_records(good[:-1])
    assert gc.isenabled()
