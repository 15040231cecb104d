"""Large pandas-records bodies of one flat numeric tensor per row are read without a Python
object per number (`edge.codecs.tensor_text`): the table is the general parser's, bit for bit,
and any body that reader cannot take exactly as JSON would is left to the general parser, whose
answer (a table, or the 400 naming the byte or the column) is then the only one."""

from __future__ import annotations

import gc
import itertools
import json
import random

import numpy as np
import pyarrow as pa
import pytest

from edge.codecs import RecordInfo, decode, encode_records, records_large, tensor_text
from edge.codecs.tensor_text import tensor_rows
from edge.errors import BadInput


def general(body: bytes) -> pa.Table:
    """The general parser alone (what `decode_records` did before the fast reader)."""
    gc.disable()
    try:
        return decode._parse(body)
    finally:
        gc.enable()


def same_bits(fast: pa.Table, slow: pa.Table) -> None:
    assert fast.schema == slow.schema
    assert fast.num_rows == slow.num_rows
    a = fast.column(0).combine_chunks().flatten().to_numpy()
    b = slow.column(0).combine_chunks().flatten().to_numpy()
    assert a.dtype == b.dtype == np.float64
    assert np.array_equal(a.view(np.uint64), b.view(np.uint64))  # -0.0 and 0.0 differ here


def compact(rows: list[dict[str, list[float]]]) -> bytes:
    return json.dumps(rows, separators=(",", ":")).encode()


def spaced(rows: list[dict[str, list[float]]]) -> bytes:
    return json.dumps(rows).encode()  # Python's json and `requests`: ", " and ": "


RNG = random.Random(7)


def _values(kind: str, width: int) -> list[float]:
    if kind == "decimals":  # the data set's kind of numbers
        return [round(RNG.uniform(-2000, 2000), RNG.randint(0, 6)) for _ in range(width)]
    if kind == "full precision":
        return [RNG.random() * 10 ** RNG.randint(-30, 30) for _ in range(width)]
    if kind == "exponents":  # json writes 1e-05, 1e+22, 1.5e-300
        return [
            RNG.choice([1e-05, 1e22, -1.5e-300, 2.5e200, 5e-324, 1.7976931348623157e308])
            for _ in range(width)
        ]
    if kind == "signed zeros and integers":  # -0.0 stays -0.0; 3 among floats becomes 3.0
        return [RNG.choice([-0.0, 0.0, 3, -7, 2**70, 0.5]) for _ in range(width)]
    raise AssertionError(kind)


KINDS = ["decimals", "full precision", "exponents", "signed zeros and integers"]


@pytest.mark.parametrize("writer", [compact, spaced], ids=["compact", "spaced"])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("width", [1, 30])
def test_the_fast_reader_gives_the_general_parsers_table(writer, kind: str, width: int) -> None:
    rows = [{"tensor": _values(kind, width) + [0.25]} for _ in range(8_000 // width + 300)]
    body = writer(rows)
    assert len(body) >= decode.NO_GC_BODY
    fast = tensor_rows(body)
    assert fast is not None  # the usual large body takes the fast reader
    same_bits(fast, general(body))
    same_bits(decode.decode_records(body), general(body))


def test_numbers_as_text_json_allows_read_the_same() -> None:
    texts = [
        "0",
        "-1",
        "0.5",
        "-0.0",
        "1e5",
        "1E5",
        "1e+05",
        "1E-05",
        "-0e0",
        "0.1e-2",
        "12345678901234567890123",
        "3.14159265358979323846264338",
        "-1e-400",
        "2.2250738585072011e-308",
        "9007199254740993",
        "0.30000000000000004",
    ]
    numbers = ",".join(texts)
    body = ("[" + ",".join('{"x":[' + numbers + "]}" for _ in range(400)) + "]").encode()
    fast = tensor_rows(body)
    assert fast is not None
    same_bits(fast, general(body))
    assert fast.column(0)[0][12].as_py() == 0.0  # -1e-400: -0.0 both ways


NOT_JSON = [
    ".5",
    "5.",
    "5.e3",
    "+1",
    "01",
    "-01",
    "00.5",
    "1e",
    "1e+",
    "--1",
    "1.5.3",
    "-",
    "NaN",
    "Infinity",
    "-Infinity",
    "1e400",
    "-1e309",
    "1,,2",
    "0x10",
    "1_000",
]


@pytest.mark.parametrize("token", NOT_JSON)
def test_a_number_json_does_not_allow_is_refused_at_its_byte(token: str) -> None:
    good = '{"tensor":[1.5,2.5,3.5]}'
    bad = '{"tensor":[1.5,' + token + ",3.5]}"
    body = ("[" + ",".join([good] * 3000 + [bad] + [good] * 10) + "]").encode()
    assert tensor_rows(body) is None
    with pytest.raises(BadInput) as slow:
        general(body)
    with pytest.raises(BadInput) as got:
        decode.decode_records(body)
    assert str(got.value) == str(slow.value)
    assert "malformed JSON at byte" in str(got.value)


def _row_bodies() -> dict[str, bytes]:
    good = '{"t":[1.5,2.5]}'
    many = [good] * 5000

    def body(*rows: str, prefix: str = "[", suffix: str = "]") -> bytes:
        return (prefix + ",".join(rows) + suffix).encode()

    return {
        "the integer -0 (0.0 in a float tensor)": body(*many, '{"t":[-0,2.5]}'),
        "integers only (an int64 tensor)": body(*['{"t":[1,2]}'] * 6000),
        "an empty last row": body(*many, '{"t":[]}'),
        "an empty row": body(*many[:9], '{"t":[]}', *many),
        "an empty first row": body('{"t":[]}', *many),
        "a ragged row": body(*many, '{"t":[1.5]}'),
        "a longer row": body(*many, '{"t":[1.5,2.5,3.5]}'),
        "a null": body(*many, '{"t":[1.5,null]}'),
        "a nested list": body(*many, '{"t":[[1.5],[2.5]]}'),
        "a second key": body(*many, '{"t":[1.5,2.5],"u":3}'),
        "another key": body(*many, '{"u":[1.5,2.5]}'),
        "a string": body(*many, '{"t":[1.5,"2.5"]}'),
        "a line break between rows": body(*many[:2500])[:-1] + b",\n" + body(*many[:2500])[1:],
        "a tab": body(*many, '{"t":[1.5,\t2.5]}'),
        "two spaces": body(*many, '{"t":[1.5,  2.5]}'),
        "a space before a comma": body(*many, '{"t":[1.5 ,2.5]}'),
        "spaced rows in a compact body": body(*many, ' {"t":[1.5,2.5]}'),
        "whitespace after the list": body(*many, suffix="]\n"),
        "whitespace before the list": body(*many, prefix=" ["),
        "a duplicate key": body(*many, '{"t":[1.5,2.5],"t":[1.5,2.5]}'),
        "an escaped key": body('{"\\u0074":[1.5,2.5]}', *many),
        "not a list at the end": body(*many, suffix="]]"),
        "a truncated body": body(*many)[:-2],
    }


ROW_BODIES = _row_bodies()


@pytest.mark.parametrize("case", sorted(ROW_BODIES))
def test_any_other_body_is_the_general_parsers(case: str) -> None:
    body = ROW_BODIES[case]
    assert len(body) >= decode.NO_GC_BODY
    assert tensor_rows(body) is None
    try:
        expected: pa.Table | str = general(body)
    except BadInput as exc:
        expected = str(exc)
    try:
        got: pa.Table | str = decode.decode_records(body)
    except BadInput as exc:
        got = str(exc)
    if isinstance(expected, str):
        assert got == expected
    else:
        assert isinstance(got, pa.Table) and got.equals(expected)


def test_every_short_token_reads_as_the_general_parser_reads_it() -> None:
    """Every token of up to three bytes of digits, dots, exponents and signs, at a row's start,
    middle and end: the fast reader takes it only as JSON does, to the same bits."""
    taken = 0
    for length in (1, 2, 3):
        for token in map("".join, itertools.product("019.eE+-", repeat=length)):
            for row in ('[{"t":[%s]}]', '[{"t":[1.5,%s]},{"t":[2.5,3]}]', '[{"t":[%s,1.5]}]'):
                body = (row % token).encode()
                fast = tensor_rows(body)
                if fast is None:
                    continue
                taken += 1
                same_bits(fast, general(body))  # a BadInput here: taken what JSON refuses
    assert taken > 100  # the floats among them (1.9, -1e9, 9E+1, ...; integers alone are not)


def _answer(body: bytes) -> bytes:
    table = decode.decode_records(body)
    info = RecordInfo("p", "m", "v", [1, 2], inputs=table)
    return encode_records(table.rename_columns(["in.tensor"]), info, None)


ECHO = {  # rows of numbers as a client wrote them: whether orjson writes each the same
    "short decimals": (["17.99", "0.07871", "1001.0", "-0.5", "0.0", "-0.0", "0.00001"], True),
    "fifteen digits": (["123456789012.345", "0.12345678901234", "-99999999999999.9"], True),
    "a trailing zero": (["1.50", "2.5"], False),
    "a whole number without a fraction": (["3", "2.5"], False),
    "an exponent": (["1e-05", "2.5"], False),
    "a capital exponent": (["1.5E+3", "2.5"], False),
    "below 1e-5": (["0.000009", "2.5"], False),
    "sixteen digits": (["0.1234567890123456", "2.5"], False),
    "full precision": (["0.30000000000000004", "0.1"], False),
    "more digits than float64 holds": (["1.00000000000000000001", "2.5"], False),
}


@pytest.mark.parametrize("case", sorted(ECHO))
def test_the_answer_echoes_the_bodys_numbers_only_as_orjson_writes_them(
    case: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The answer's `original_data` and `in` take the body's own text for its rows when it is
    what orjson writes; either way the answer is byte for byte the one orjson's text makes."""
    numbers, taken = ECHO[case]
    row = '{"t":[' + ",".join(numbers) + "]}"
    body = ("[" + ",".join([row] * 4000) + "]").encode()
    table = decode.decode_records(body)
    tensor = records_large._tensor(table.column(0).chunk(0))
    assert (tensor_text.rows_text(tensor) is not None) is taken
    echoed = _answer(body)
    monkeypatch.setattr(records_large, "rows_text", lambda tensor: None)
    assert echoed == _answer(body)


def test_a_numbers_own_text_is_taken_only_when_it_is_orjsons() -> None:
    """Random numbers in the layouts clients write (`%g`, `repr`, fixed decimals, with up to
    17 digits, down to 1e-7): where the body's text is taken for a row, it is orjson's."""
    rng = random.Random(11)

    def number() -> str:
        digits = rng.randint(1, 17)
        value = rng.uniform(-1, 1) * 10 ** rng.randint(-7, 14)
        text = rng.choice([f"{value:.{digits}g}", repr(value), f"{value:.{digits % 9}f}"])
        return "0" if text == "-0" else text  # the integer -0 is the general parser's

    taken = 0
    for _ in range(3000):
        body = ('[{"t":[' + ",".join(number() for _ in range(3)) + "]}]").encode()
        table = tensor_rows(body)
        if table is None:
            continue
        tensor = records_large._tensor(table.column(0).chunk(0))
        own = tensor_text.rows_text(tensor)
        if own is not None:
            taken += 1
            assert own == records_large._cut_2d(tensor), body
    assert taken > 100  # ~5 %: three numbers of a row all as orjson writes them


def test_a_view_of_the_rows_in_another_layout_is_written_by_orjson() -> None:
    body = ("[" + ",".join(['{"t":[1.5,2.5]}', '{"t":[3.5,4.5]}'] * 3000) + "]").encode()
    tensor = records_large._tensor(tensor_rows(body).column(0).chunk(0))
    assert tensor_text.rows_text(tensor) == [b"1.5,2.5", b"3.5,4.5"] * 3000
    square = tensor[:2]  # the same memory and a transposed view of it, of one shape
    assert square.ctypes.data == square.T.ctypes.data and square.shape == square.T.shape
    assert tensor_text.rows_text(square) is None  # another shape than the body's
    assert tensor_text.rows_text(square.T) is None
    assert tensor_text.rows_text(tensor.astype(np.float32).astype(np.float64)) is None
