"""The sync protocol, as both ends speak it: the agent on the edge and the ops center.

- The bundle: `EDGE_BUNDLE` is base64 of `export KEY=VALUE` lines, the seed's format. The seed's
  system writes BUNDLE_VERSION, EDGE_NAME, JOIN_TOKEN, OPSCENTER_HOST, PIPELINE_URL and
  WORKSPACE_ID, one per line, in that order, without a trailing newline. We add OPSCENTER_CA
  (the ops center's CA certificate, base64 of its PEM) as one more line of the same shape, so a
  bundle of ours stays readable by anything that reads the seed's; PIPELINE_VERIFY_KEYS (base64
  of PEM public keys, when the ops center pins them) is another. Errors never quote the token.
- The edge API's paths, and a log batch on the wire: an Arrow IPC stream of result-table rows
  (`edge.result`) with its (epoch, first_seq, last_seq) in headers, sent as one zstd frame
  (`Content-Encoding: zstd`, RFC 8878) to an ops center that says it reads that (its edge
  replies carry `Accept-Encoding: zstd`, RFC 7694), else with zstd-compressed buffers (what
  every ops center reads). One frame costs ~20x less to write and read than Arrow's
  per-buffer zstd (a compression context per buffer) and is smaller.
- Refusal reasons: an error reply's `reason` names an `ops_sync.errors` class, which the other
  end raises again (`errors.REFUSALS`).
- The seed's `pipeline.logs` query rules are the appliance's own (`edge.logquery`): one parser
  for the device's `/logs` and the ops center's.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import zstandard

from edge import result
from ops_sync.errors import BadRequest, BundleError, PayloadTooLarge, UnsupportedCoding

STANDARD_KEYS = (
    "BUNDLE_VERSION",
    "EDGE_NAME",
    "JOIN_TOKEN",
    "OPSCENTER_HOST",
    "PIPELINE_URL",
    "WORKSPACE_ID",
)
REQUIRED_KEYS = ("BUNDLE_VERSION", "EDGE_NAME", "JOIN_TOKEN", "OPSCENTER_HOST")
CA_KEY = "OPSCENTER_CA"
VERIFY_KEYS_KEY = "PIPELINE_VERIFY_KEYS"  # base64 of the PEM public keys pipelines are signed with
MAX_BUNDLE_CHARS = 64 << 10
_LINE = re.compile(r"^(?:export\s+)?([A-Z][A-Z0-9_]*)=(.*)$")
_SAFE_VALUE = re.compile(r"^[^\s'\"`$\\]*$")


def decode(text: str) -> dict[str, str]:
    """Read an EDGE_BUNDLE into {KEY: VALUE}; raise `BundleError` saying what is wrong."""
    text = "".join(text.split())
    if not text:
        raise BundleError("EDGE_BUNDLE is empty; pass the value add-edge printed")
    if len(text) > MAX_BUNDLE_CHARS:
        raise BundleError(f"EDGE_BUNDLE is {len(text)} characters; a bundle is under 64 KiB")
    try:
        padded = text + "=" * (-len(text) % 4)
        raw = base64.b64decode(padded, altchars=_altchars(text), validate=True)
        lines = raw.decode("utf-8").splitlines()
    except (binascii.Error, ValueError):
        raise BundleError(
            "EDGE_BUNDLE is not base64 of text; copy the whole value add-edge printed"
        ) from None
    values: dict[str, str] = {}
    for number, line in enumerate(lines, start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = _LINE.match(line)
        if match is None:
            raise BundleError(f"EDGE_BUNDLE line {number} is not `export KEY=VALUE`")
        key, value = match.group(1), _unquote(match.group(2).strip())
        if key in values:
            raise BundleError(f"EDGE_BUNDLE sets {key} twice (line {number})")
        values[key] = value
    missing = [key for key in REQUIRED_KEYS if not values.get(key)]
    if missing:
        raise BundleError(
            f"EDGE_BUNDLE lacks {', '.join(missing)}; mint a new bundle with `ops-sync add-edge`"
        )
    return values


def encode(values: dict[str, str]) -> str:
    """Write {KEY: VALUE} as an EDGE_BUNDLE: the seed's keys first, in the seed's order."""
    missing = [key for key in REQUIRED_KEYS if not values.get(key)]
    if missing:
        raise BundleError(f"cannot encode a bundle without {', '.join(missing)}")
    keys = [k for k in STANDARD_KEYS if k in values]
    keys += sorted(k for k in values if k not in STANDARD_KEYS)
    lines = []
    for key in keys:
        value = str(values[key])
        if not re.fullmatch(r"[A-Z][A-Z0-9_]*", key):
            raise BundleError(f"bundle key {key!r} is not an upper-case shell name")
        if not _SAFE_VALUE.match(value):
            raise BundleError(f"bundle value of {key} has spaces, quotes or shell characters")
        lines.append(f"export {key}={value}")
    return base64.b64encode("\n".join(lines).encode()).decode("ascii")


def ca_pem(values: dict[str, str]) -> bytes | None:
    """The pinned ops center CA certificate (PEM) a bundle of ours carries, else None."""
    pinned = values.get(CA_KEY)
    if not pinned:
        return None
    try:
        pem = base64.b64decode(pinned, validate=True)
    except binascii.Error:
        raise BundleError(f"EDGE_BUNDLE {CA_KEY} is not base64 of a PEM certificate") from None
    if b"-----BEGIN CERTIFICATE-----" not in pem:
        raise BundleError(f"EDGE_BUNDLE {CA_KEY} is not a PEM certificate")
    return pem


def verify_keys_pem(values: dict[str, str]) -> str | None:
    """The pipeline verify keys (PEM text) a bundle pins, else None."""
    pinned = values.get(VERIFY_KEYS_KEY)
    if not pinned:
        return None
    try:
        pem = base64.b64decode(pinned, validate=True).decode("ascii")
    except (binascii.Error, UnicodeDecodeError):
        raise BundleError(
            f"EDGE_BUNDLE {VERIFY_KEYS_KEY} is not base64 of PEM public keys"
        ) from None
    if "-----BEGIN PUBLIC KEY-----" not in pem:
        raise BundleError(f"EDGE_BUNDLE {VERIFY_KEYS_KEY} holds no PEM public key")
    return pem


def _altchars(text: str) -> bytes | None:
    return b"-_" if ("-" in text or "_" in text) else None


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    return value


def token_digest(token: str) -> str:
    """What is kept of a join token, at the ops center and on the edge: its sha256."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


# ---------------------------------------------------------------------- the edge API

JOIN_PATH = "/v1/edge/join"
RENEW_PATH = "/v1/edge/renew"
HEARTBEAT_PATH = "/v1/edge/heartbeat"
LOGS_PATH = "/v1/edge/logs"
EPOCH_HEADER = "x-sync-epoch"
FIRST_SEQ_HEADER = "x-sync-first-seq"
LAST_SEQ_HEADER = "x-sync-last-seq"
BATCH_TYPE = "application/vnd.apache.arrow.stream"
WARNING_HEADER = "x-ops-warning"
MAX_SEQ = 2**63 - 2  # int64 (SQLite, Arrow), with room for the store's `last + 1`
EPOCH = re.compile(r"[A-Za-z0-9_-]{1,64}")
MAX_BODY = 64 << 20  # a batch body at most, as sent; a zstd frame's decoded IPC stream too
BATCH_CODING = "zstd"  # a batch body's Content-Encoding: the whole IPC stream, one zstd frame
CODING_HEADER = "content-encoding"
ACCEPT_CODING_HEADER = "accept-encoding"  # on the ops center's edge replies (RFC 7694)
_IPC_OPTIONS = pa.ipc.IpcWriteOptions(compression="zstd")  # the body without a coding
_READ_OPTIONS = pa.ipc.IpcReadOptions(use_threads=False)  # small batches: threads cost more
_ZSTD = threading.local()  # a zstd context per thread (they are not shared)


@dataclass(frozen=True)
class BatchRange:
    """Which rows of which buffer epoch a batch holds: `first_seq..last_seq`, inclusive."""

    epoch: str
    first_seq: int
    last_seq: int

    @property
    def rows(self) -> int:
        return self.last_seq - self.first_seq + 1

    def headers(self, coding: str | None = BATCH_CODING) -> dict[str, str]:
        """The batch's headers, for a body `encode_batch(table, coding)` wrote."""
        headers = {
            "content-type": BATCH_TYPE,
            EPOCH_HEADER: self.epoch,
            FIRST_SEQ_HEADER: str(self.first_seq),
            LAST_SEQ_HEADER: str(self.last_seq),
        }
        if coding:
            headers[CODING_HEADER] = coding
        return headers


def read_batch_range(headers: Mapping[str, str]) -> BatchRange:
    """A batch's range from its headers; `BadRequest` unless 1 <= first <= last <= 2**63-1."""
    epoch = headers.get(EPOCH_HEADER, "")
    first, last = headers.get(FIRST_SEQ_HEADER, ""), headers.get(LAST_SEQ_HEADER, "")
    if not EPOCH.fullmatch(epoch) or not _SEQ.fullmatch(first) or not _SEQ.fullmatch(last):
        raise BadRequest(
            f"a batch needs headers {EPOCH_HEADER} (1-64 letters, digits, '-', '_'), "
            f"{FIRST_SEQ_HEADER} and {LAST_SEQ_HEADER} (whole numbers)"
        )
    batch = BatchRange(epoch, int(first), int(last))
    if not 1 <= batch.first_seq <= batch.last_seq <= MAX_SEQ:
        raise BadRequest(f"batch sequence numbers need 1 <= first_seq <= last_seq <= {MAX_SEQ}")
    return batch


_SEQ = re.compile(r"[0-9]{1,19}")


def encode_batch(table: pa.Table, coding: str | None = BATCH_CODING) -> bytes:
    """A batch on the wire, as one record batch: with `coding` (`BATCH_CODING`) a plain IPC
    stream in one zstd frame that records its size; without, an IPC stream with zstd-compressed
    buffers (for an ops center that does not say it reads the coding)."""
    sink = pa.BufferOutputStream()
    options = None if coding else _IPC_OPTIONS
    with pa.ipc.new_stream(sink, table.schema, options=options) as writer:
        writer.write_table(table.combine_chunks())  # one batch: the buffer hands out many
    if not coding:
        return sink.getvalue().to_pybytes()
    return _compressor().compress(sink.getvalue())


def decode_batch(body: bytes, coding: str | None = BATCH_CODING, limit: int = MAX_BODY) -> pa.Table:
    """A batch from the wire, checked in full (a damaged body is a `BadRequest`). `coding` is
    the request's Content-Encoding: none or `zstd` (one frame that records its size, at most
    `limit` bytes decoded: `PayloadTooLarge`); another is `UnsupportedCoding`. (Buffers that
    Arrow compressed inside the stream are decoded to the sizes they declare, as before.)"""
    if coding:
        body = _decoded(body, coding.strip().lower(), limit)
    try:
        table = pa.ipc.open_stream(pa.py_buffer(body), options=_READ_OPTIONS).read_all()
        table.validate(full=True)
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise BadRequest(f"the batch is not a valid Arrow IPC stream: {exc}") from exc
    return table


def accepts_coding(headers: Mapping[str, str]) -> str | None:
    """`BATCH_CODING` if a reply's Accept-Encoding names it (the ops center reads it) with a
    weight above 0, else None."""
    for part in headers.get(ACCEPT_CODING_HEADER, "").split(","):
        coding, *params = (p.strip().lower() for p in part.split(";"))
        if coding == BATCH_CODING and all(_weight(p) > 0 for p in params):
            return BATCH_CODING
    return None


def _weight(param: str) -> float:
    """An Accept-Encoding parameter's weight: `q=W`, 1 for any other parameter."""
    name, _, value = param.partition("=")
    if name.strip() != "q":
        return 1.0
    try:
        return float(value)
    except ValueError:
        return 0.0


def _decoded(body: bytes, coding: str, limit: int) -> bytes:
    if coding == "identity":
        return body
    if coding != BATCH_CODING:
        raise UnsupportedCoding(
            f"batch Content-Encoding {coding[:40]!r} is not read here; send {BATCH_CODING} or none"
        )
    try:
        size = zstandard.frame_content_size(body)
    except zstandard.ZstdError as exc:
        raise BadRequest(f"the batch is not a zstd frame: {exc}") from exc
    if size < 0:
        raise BadRequest("a zstd batch must record its decoded size in its frame header")
    if size > limit:
        raise PayloadTooLarge(f"the batch decodes to {size} bytes; at most {limit}")
    try:
        decoded: bytes = _decompressor().decompress(body, allow_extra_data=False)
    except zstandard.ZstdError as exc:
        raise BadRequest(f"the batch's zstd frame cannot be read: {exc}") from exc
    return decoded


def _compressor() -> zstandard.ZstdCompressor:
    if not hasattr(_ZSTD, "compressor"):
        _ZSTD.compressor = zstandard.ZstdCompressor(level=1, write_content_size=True)
    compressor: zstandard.ZstdCompressor = _ZSTD.compressor
    return compressor


def _decompressor() -> zstandard.ZstdDecompressor:
    if not hasattr(_ZSTD, "decompressor"):
        _ZSTD.decompressor = zstandard.ZstdDecompressor()
    decompressor: zstandard.ZstdDecompressor = _ZSTD.decompressor
    return decompressor


# ---------------------------------------------------------------------- the log row schema

MAX_COLUMNS = 1024
MAX_NAME = 256
MAX_TIME_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z
_BAD_NAME = re.compile(r"[\x00-\x1f\x7f/\\]")


def check_rows(table: pa.Table) -> pa.Table:
    """A batch's rows as result-table rows (`edge.result`), or `BadRequest` naming the column:
    every column is `time` or an `in.` / `out.` / `out_<model>.` / `anomaly.` / `metadata.`
    column (so none can clash with the store's own columns), named once, of a plain data type
    (numbers, bools, text, binary, timestamps, and lists or structs of them); `time` is there,
    never null and within years 1970-9999. Returned with dictionary columns decoded, large
    offsets and fixed-size lists made plain, so equal data always has equal types."""
    names = table.column_names
    if len(names) > MAX_COLUMNS:
        raise BadRequest(f"the batch has {len(names)} columns; at most {MAX_COLUMNS}")
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})[:5]
        raise BadRequest(f"the batch names column(s) {twice} more than once")
    fields = []
    for field in table.schema:
        name = field.name
        if len(name) > MAX_NAME or _BAD_NAME.search(name) or result.dataset_of(name) is None:
            raise BadRequest(
                f"batch column {name[:80]!r} is not a result column (time, in.*, out.*, "
                f"out_<model>.*, anomaly.*, metadata.*; at most {MAX_NAME} characters)"
            )
        plain = _plain_type(field.type)
        if plain is None:
            raise BadRequest(f"batch column {name!r} has type {field.type}, which logs cannot hold")
        fields.append(pa.field(name, plain))
    schema = pa.schema(fields)
    if schema != table.schema:
        try:
            table = table.cast(schema)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise BadRequest(f"the batch's columns cannot be read: {exc}") from exc
    _check_time(table)
    return table


def _check_time(table: pa.Table) -> None:
    millis = result.time_ms(table)
    if millis is None:
        raise BadRequest("the batch has no `time` column of integers or timestamps")
    if millis.null_count:
        raise BadRequest("the batch's `time` column has nulls")
    if len(millis):
        bounds = pc.min_max(millis).as_py()
        if bounds["min"] < 0 or bounds["max"] > MAX_TIME_MS:
            raise BadRequest("the batch's `time` values lie outside the years 1970-9999")


def _plain_type(kind: pa.DataType) -> pa.DataType | None:
    """`kind` with dictionaries decoded and large offsets made plain; None if not allowed."""
    if pa.types.is_dictionary(kind):
        return _plain_type(kind.value_type)
    if pa.types.is_large_string(kind):
        return pa.string()
    if pa.types.is_large_binary(kind):
        return pa.binary()
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        inner = _plain_type(kind.value_type)
        return None if inner is None else pa.list_(inner)
    if pa.types.is_fixed_size_list(kind):  # as JSON clients' lists: one type for one tensor
        inner = _plain_type(kind.value_type)
        return None if inner is None else pa.list_(inner)
    if pa.types.is_struct(kind):
        members = [kind.field(i) for i in range(kind.num_fields)]
        plain = [_plain_type(m.type) for m in members]
        if any(p is None for p in plain) or len({m.name for m in members}) != len(members):
            return None
        return pa.struct([m.with_type(p) for m, p in zip(members, plain, strict=True)])
    simple = (
        pa.types.is_boolean(kind)
        or pa.types.is_integer(kind)
        or pa.types.is_floating(kind)
        or pa.types.is_string(kind)
        or pa.types.is_binary(kind)
        or pa.types.is_timestamp(kind)
        or pa.types.is_date(kind)
        or pa.types.is_null(kind)
    )
    return kind if simple else None
