"""EDGE_BUNDLE: base64 of `export KEY=VALUE` lines, the seed's format.

The seed's system writes BUNDLE_VERSION, EDGE_NAME, JOIN_TOKEN, OPSCENTER_HOST, PIPELINE_URL and
WORKSPACE_ID, one per line, in that order, without a trailing newline. We add OPSCENTER_CA (the
ops center's CA certificate, base64 of its PEM) as one more line of the same shape, so a bundle
of ours stays readable by anything that reads the seed's. Errors never quote the token.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re

from ops_sync.errors import BundleError

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


def _altchars(text: str) -> bytes | None:
    return b"-_" if ("-" in text or "_" in text) else None


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    return value


def token_digest(token: str) -> str:
    """What is kept of a join token, at the ops center and on the edge: its sha256."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()
