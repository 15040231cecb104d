"""A large pandas-records body of one numeric tensor column, read without a Python object per
number.

The usual large request is `[{"tensor":[n,n,...]},{"tensor":[n,n,...]},...]`: one key, a flat
list of JSON numbers per row. `orjson.loads` makes a float per number and a list and a dict per
row, and numpy then walks them (~17-22 ms for 10,000 rows of 30 here). Here the row wrappers are
cut out of the bytes (one `replace`: a row per line, its numbers comma-separated), the text is
checked to hold JSON numbers only, and Arrow's CSV reader parses it, one float64 column per
tensor position, on one thread (~13 ms with the checks, in process).

The answer is the general parser's (`decode._parse`) or nothing: any body that is not exactly
that shape (whitespace, a second key, nested lists, nulls, rows of other lengths, integers
only, a number written as JSON does not allow) gives None, and the general parser reads it,
errors and all. The checks make Arrow's number grammar JSON's: Arrow also takes `+1`, `.5`,
`5.`, `01` and `1e400` (as inf), and reads the integer `-0` as -0.0, where orjson gives 0
(0.0 in a float tensor).
"""

from __future__ import annotations

import re
import weakref

import numpy as np
import pyarrow as pa

from edge.tensors import ndarray_to_column, numbers, single_array

# `[{"name":[`, or `[{"name": [` as Python's json writes it: a key without escapes
_HEAD = re.compile(rb'\[\{"([^"\\\x00-\x1f]+)":( ?)\[')
_NUMBER_BYTES = b"0123456789.eE+-,\n"
_TEXTS: dict[int, tuple[tuple[int, ...], bytes]] = {}  # a read tensor's address: shape, text


def tensor_rows(body: bytes) -> pa.Table | None:
    """The table `decode._parse` makes of `body` when every row is one flat list of numbers
    under the same key and at least one number has a fraction or exponent, else None."""
    head = _HEAD.match(body)
    if head is None or not body.endswith(b"]}]") or b"\n" in body:
        return None
    key, space = head.group(1), head.group(2)
    try:
        name = key.decode()
    except UnicodeDecodeError:
        return None
    text = body[head.end() : -3].replace(b"]}," + space + b'{"' + key + b'":' + space + b"[", b"\n")
    if space:
        text = text.replace(b", ", b",")  # only ", ": any other space stays and refuses it
    if not text or text.translate(None, _NUMBER_BYTES):
        return None  # anything but numbers, commas and the rows' ends
    if b"." not in text and b"e" not in text and b"E" not in text:
        return None  # integers only: an int64 tensor, the general parser's
    if not _json_numbers(text):
        return None
    rows = text.count(b"\n") + 1
    width = text.count(b",", 0, text.find(b"\n")) + 1 if rows > 1 else text.count(b",") + 1
    columns = _parse_csv(text, width)
    if columns is None or columns.num_rows != rows:
        return None
    tensor = np.empty((rows, width), np.float64)
    for i, column in enumerate(columns.columns):
        tensor[:, i] = numbers(single_array(column))  # not `to_numpy`: it imports pandas
    if not np.isfinite(tensor).all():
        return None  # orjson refuses a number past float64's range (1e400)
    tensor.flags.writeable = False  # its rows' text is the body's (`rows_text`)
    _TEXTS[tensor.ctypes.data] = (tensor.shape, text)
    weakref.finalize(tensor, _TEXTS.pop, tensor.ctypes.data, None)
    return pa.table({name: ndarray_to_column(tensor)})


def rows_text(tensor: np.ndarray) -> list[bytes] | None:
    """The rows of a float64 tensor `tensor_rows` read, each as orjson writes it (without its
    brackets), cut from the body's own text: when every number there is written as orjson
    writes it (the numbers a client's JSON writer makes, mostly), else None. The answer's
    pandas-records echo the inputs twice; writing 300,000 numbers takes orjson ~7 ms."""
    same_layout = tensor.dtype == np.float64 and tensor.flags.c_contiguous
    found = _TEXTS.get(tensor.ctypes.data) if same_layout else None
    if found is None or found[0] != tensor.shape:  # the same memory, read-only: the same rows
        return None
    text = found[1]
    if not _as_orjson_writes(text, tensor):
        return None
    return text.split(b"\n")


def _as_orjson_writes(raw: bytes, tensor: np.ndarray) -> bool:
    """Whether each number in `raw` (checked JSON numbers, comma- and line-separated, read
    into `tensor`) is what orjson writes for its float64. A number of at most 15 digits is
    the shortest that reads back as its float64 (15 digits always do), so it is the one
    orjson writes if it is laid out as orjson lays numbers out: a fraction (".0" for a
    whole number), no trailing zero, no exponent (orjson writes one below 1e-5 and from
    1e16; 15 digits stay below 1e15)."""
    if len(raw) > 18 * tensor.size or b"e" in raw or b"E" in raw:
        return False  # over 18 bytes a number with its comma (full precision), exponents
    text = np.frombuffer(raw, np.uint8)
    if np.count_nonzero(text == 46) != tensor.size:
        return False  # a number without a fraction (each has one dot at most: read)
    bounds = np.concatenate(([-1], np.flatnonzero((text == 44) | (text == 10)), [len(text)]))
    lengths = np.diff(bounds) - 1 - (text[bounds[:-1] + 1] == 45)  # without the minus
    if lengths.max() > 16:
        return False  # more than 15 digits: orjson may write fewer
    if np.any((text[bounds[1:] - 1] == 48) & (text[bounds[1:] - 2] != 46)):
        return False  # a trailing zero, but for ".0"
    return bool(np.all((np.abs(tensor) >= 1e-5) | (tensor == 0)))


def _json_numbers(raw: bytes) -> bool:
    """Whether every comma- or line-separated token Arrow reads as a number is one JSON allows
    (Arrow refuses the rest: empty tokens, stray signs, `e`, two dots)."""
    text = np.frombuffer(raw, np.uint8)
    digit = (text - np.uint8(48)) < 10  # the bytes wrap below "0"
    dot = text == 46
    if dot[0] or dot[-1] or np.any(dot[1:-1] > (digit[:-2] & digit[2:])):
        return False  # `.5`, `5.`, `5.e3`: a dot between two digits only
    if b"+" in raw:
        plus = text == 43
        if plus[0] or np.any(plus[1:] > ((text[:-1] | np.uint8(32)) == 101)):
            return False  # `+1`: a plus only after e or E
    sep = (text == 44) | (text == 10)  # a comma or a row's end
    start = np.empty(len(text), np.bool_)  # a token's first byte
    start[0] = True
    start[1:] = sep[:-1]
    integer = start  # the integer part's first byte: the token's, or after its minus
    if b"-" in raw:
        lead = start & (text == 45)
        ends = np.append(sep[2:], [True, True])  # whether the byte two on ends the token
        if np.any(lead & ends & (np.append(text[1:], 0) == 48)):
            return False  # the integer -0 (orjson: 0, so 0.0 in a float tensor; Arrow: -0.0)
        integer = start.copy()
        integer[1:] |= lead[:-1]
    # `01`, `-01`: no leading zeros
    return not np.any(integer[:-1] & (text[:-1] == 48) & digit[1:])


def _parse_csv(text: bytes, width: int) -> pa.Table | None:
    import pyarrow.csv as csv  # imported by the first large body, not at start-up

    names = [str(i) for i in range(width)]
    try:
        return csv.read_csv(
            pa.BufferReader(text),
            read_options=csv.ReadOptions(
                use_threads=False, column_names=names, block_size=len(text) + 1
            ),
            parse_options=csv.ParseOptions(newlines_in_values=False, ignore_empty_lines=False),
            convert_options=csv.ConvertOptions(
                column_types=dict.fromkeys(names, pa.float64()),
                null_values=[],
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
            ),
        )
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return None
