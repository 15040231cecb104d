"""Signed pipelines in cosign's key-based format (sigstore/cosign specs/SIGNATURE_SPEC.md).

A signature is an ECDSA P-256 / SHA-256 signature over the raw bytes of a simple-signing
payload (`{"critical": {"identity": {"docker-reference": REPO}, "image":
{"docker-manifest-digest": DIGEST}, "type": "cosign container image signature"}, "optional":
null}`). It is stored as an OCI manifest tagged `sha256-<hex>.sig` in the pipeline's repository
(or local layout): one layer per signature, the payload as the layer blob, the base64
signature in the layer annotation `dev.cosignproject.cosign/signature`. `cosign verify --key`
reads exactly that.

The docker reference signed is `HOST[:PORT]/REPOSITORY` for a registry (as cosign writes it)
and `oci-layout:NAME` for a local layout (a layout can be copied to a device, so its directory
is not part of its identity; NAME is the pipeline's name from the signed manifest).

Keys: PEM files as cosign writes `cosign.pub` (SubjectPublicKeyInfo); private keys as PKCS8
PEM, optionally encrypted (`edge keygen`). cosign's own encrypted key format (scrypt and
secretbox) is not read.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge.artifact import MANIFEST_MEDIA_TYPE
from edge.errors import ConfigError, NotPublished, SignatureError
from edge.registry import Reference, Store, read_blob

if TYPE_CHECKING:  # cryptography (~6 MiB resident) is imported when keys are used
    from cryptography.hazmat.primitives.asymmetric import ec

PAYLOAD_MEDIA_TYPE = "application/vnd.dev.cosign.simplesigning.v1+json"
SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
SIGNATURE_TYPE = "cosign container image signature"
CONFIG_MEDIA_TYPE = "application/vnd.oci.image.config.v1+json"
VERSION_ANNOTATION = "ai.edge.pipeline.version"  # on a pipeline manifest (`edge publish`)
NAME_ANNOTATION = "ai.edge.pipeline.name"
PEM_BEGIN = "-----BEGIN"
MAX_SIGNATURES = 64  # layers read from one signature manifest
MAX_PAYLOAD = 64 << 10  # a simple-signing payload is a few hundred bytes


@dataclass(frozen=True)
class Signature:
    """One signature as stored: the payload bytes and the base64 signature over them."""

    payload: bytes
    signature: str

    def as_dict(self) -> dict[str, str]:
        return {"payload": base64.b64encode(self.payload).decode(), "signature": self.signature}

    @classmethod
    def from_dict(cls, value: dict[str, str]) -> Signature:
        return cls(base64.b64decode(value["payload"]), value["signature"])


# ---------------------------------------------------------------------- keys


def fingerprint(key: ec.EllipticCurvePublicKey) -> str:
    """A short name for a public key that is safe to print: sha256 of its DER, 16 hex."""
    from cryptography.hazmat.primitives import serialization

    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "sha256:" + hashlib.sha256(der).hexdigest()[:16]


def load_public_keys(
    value: str, where: str = "PIPELINE_VERIFY_KEYS"
) -> list[ec.EllipticCurvePublicKey]:
    """The verify keys `value` holds: PEM text (one or more `PUBLIC KEY` blocks, when it starts
    with `-----BEGIN`), else a comma-separated list of PEM files (each may hold several keys).
    A ConfigError names what is wrong."""
    text = value.strip()
    if not text:
        raise ConfigError(f"{where} is empty")
    if text.startswith(PEM_BEGIN):
        return _parse_public_pem(text, f"{where} (PEM text)")
    keys = []
    for name in (part.strip() for part in text.split(",")):
        if not name:
            continue
        try:
            pem = Path(name).read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(
                f"{where}: cannot read public key file {name} ({exc.__class__.__name__}); give "
                f"PEM files separated by commas, or the PEM text itself"
            ) from None
        keys += _parse_public_pem(pem, f"{where} file {name}")
    if not keys:
        raise ConfigError(f"{where} names no key file")
    return keys


def public_pem(value: str, where: str) -> str:
    """The keys `value` names (as `load_public_keys` reads it), as one PEM text."""
    from cryptography.hazmat.primitives import serialization

    return "".join(
        key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode()
        for key in load_public_keys(value, where)
    )


def _parse_public_pem(text: str, where: str) -> list[ec.EllipticCurvePublicKey]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    blocks = _pem_blocks(text)
    if not blocks:
        raise ConfigError(f"{where} holds no PEM block (-----BEGIN PUBLIC KEY-----)")
    keys = []
    for number, block in enumerate(blocks, start=1):
        try:
            key = serialization.load_pem_public_key(block.encode())
        except ValueError:
            raise ConfigError(f"{where}: PEM block {number} is not a public key") from None
        if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
            raise ConfigError(f"{where}: key {number} is not an ECDSA P-256 public key")
        keys.append(key)
    return keys


def _pem_blocks(text: str) -> list[str]:
    blocks, current = [], []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("-----BEGIN"):
            current = [line]
        elif current:
            current.append(line)
            if line.startswith("-----END"):
                blocks.append("\n".join(current) + "\n")
                current = []
    return blocks


def load_private_key(path: Path, password: str | None) -> ec.EllipticCurvePrivateKey:
    """The signing key at `path` (PKCS8 PEM, encrypted when `password` is given)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read signing key {path}: {exc.strerror}") from None
    try:
        key = serialization.load_pem_private_key(
            data, password.encode() if password is not None else None
        )
    except TypeError:  # encrypted without a password, or a password for a plain key
        raise ConfigError(
            f"signing key {path} is encrypted: give its password with --password-env VAR"
            if password is None
            else f"signing key {path} is not encrypted: drop --password-env"
        ) from None
    except ValueError:
        raise ConfigError(
            f"signing key {path} is not a PEM private key, or the password is wrong"
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise ConfigError(f"signing key {path} is not an ECDSA P-256 key (make one: edge keygen)")
    return key


def generate_key_pair(directory: Path, password: str | None) -> tuple[Path, Path]:
    """Write `cosign.key` (PKCS8 PEM, mode 0600, encrypted with `password` when given) and
    `cosign.pub` into `directory`; never overwrites."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    directory.mkdir(parents=True, exist_ok=True)
    private, public = directory / "cosign.key", directory / "cosign.pub"
    for path in (private, public):
        if path.exists():
            raise ConfigError(f"{path} exists; move it away or choose another --out directory")
    key = ec.generate_private_key(ec.SECP256R1())
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password.encode())
        if password
        else serialization.NoEncryption()
    )
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )
    fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return private, public


# ---------------------------------------------------------------------- the format


def identity(ref: Reference, manifest: dict[str, Any] | None = None) -> str:
    """The docker reference a pipeline's signature names (see the module docstring)."""
    if ref.layout:
        notes = (manifest or {}).get("annotations") or {}
        return f"oci-layout:{notes.get(NAME_ANNOTATION, '')}"
    return f"{ref.registry}/{ref.repository}"


def payload(docker_reference: str, digest: str) -> bytes:
    """The simple-signing payload for `digest` (the bytes that are signed)."""
    body = {
        "critical": {
            "identity": {"docker-reference": docker_reference},
            "image": {"docker-manifest-digest": digest},
            "type": SIGNATURE_TYPE,
        },
        "optional": None,
    }
    return json.dumps(body, separators=(",", ":")).encode()


def sign(key: ec.EllipticCurvePrivateKey, docker_reference: str, digest: str) -> Signature:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    body = payload(docker_reference, digest)
    der = key.sign(body, ec.ECDSA(hashes.SHA256()))
    return Signature(body, base64.b64encode(der).decode())


def signature_tag(digest: str) -> str:
    """cosign's tag for the signatures of `digest`: `sha256-<hex>.sig`."""
    algorithm, _, hexdigest = digest.partition(":")
    return f"{algorithm}-{hexdigest}.sig"


def is_signature_tag(tag: str | None) -> bool:
    return bool(tag) and str(tag).startswith("sha256-") and str(tag).endswith(".sig")


def attach(store: Store, ref: Reference, digest: str, signature: Signature) -> str:
    """Push `signature` under `digest`'s `.sig` tag, next to the signatures already there (as
    cosign does: one layer each); returns the signature manifest's digest."""
    tag_ref = replace(ref, tag=signature_tag(digest), digest=None)
    existing = fetch(store, ref, digest)
    signatures = [s for s in existing if s != signature] + [signature]
    layers = []
    for one in signatures:
        layer_digest = f"sha256:{hashlib.sha256(one.payload).hexdigest()}"
        store.put_blob(tag_ref, one.payload, layer_digest, None)
        layers.append(
            {
                "mediaType": PAYLOAD_MEDIA_TYPE,
                "size": len(one.payload),
                "digest": layer_digest,
                "annotations": {SIGNATURE_ANNOTATION: one.signature},
            }
        )
    config = json.dumps(
        {
            "architecture": "",
            "config": {},
            "created": "0001-01-01T00:00:00Z",
            "history": [{"created": "0001-01-01T00:00:00Z"}],
            "os": "",
            "rootfs": {"type": "layers", "diff_ids": [layer["digest"] for layer in layers]},
        },
        separators=(",", ":"),
    ).encode()
    config_digest = f"sha256:{hashlib.sha256(config).hexdigest()}"
    store.put_blob(tag_ref, config, config_digest, None)
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": {"mediaType": CONFIG_MEDIA_TYPE, "size": len(config), "digest": config_digest},
        "layers": layers,
    }
    return store.put_manifest(tag_ref, json.dumps(manifest).encode(), {})


def fetch(store: Store, ref: Reference, digest: str) -> list[Signature]:
    """The signatures stored for `digest` (none: an empty list). Registry failures other
    than "not there" propagate (an unreachable registry is not an unsigned pipeline)."""
    tag_ref = replace(ref, tag=signature_tag(digest), digest=None)
    try:
        raw, _ = store.get_manifest(tag_ref)
    except NotPublished:
        return []
    try:
        layers = json.loads(raw)["layers"]
        assert isinstance(layers, list)
    except (ValueError, KeyError, TypeError, AssertionError):
        raise SignatureError(f"signature manifest {tag_ref} is not an OCI manifest") from None
    found = []
    for layer in layers[:MAX_SIGNATURES]:
        if not isinstance(layer, dict) or layer.get("mediaType") != PAYLOAD_MEDIA_TYPE:
            continue
        encoded = (layer.get("annotations") or {}).get(SIGNATURE_ANNOTATION)
        layer_digest = str(layer.get("digest"))
        if int(layer.get("size") or 0) > MAX_PAYLOAD:
            raise SignatureError(f"signature manifest {tag_ref} has a payload over 64 KiB")
        if not re.fullmatch(r"sha256:[0-9a-f]{64}", layer_digest):
            raise SignatureError(
                f"signature manifest {tag_ref} has a layer digest that is not sha256"
            )
        if encoded and isinstance(encoded, str):
            found.append(Signature(read_blob(store, tag_ref, layer_digest), encoded))
    return found


# ---------------------------------------------------------------------- verification


def verify(
    signatures: Iterable[Signature],
    keys: list[ec.EllipticCurvePublicKey],
    digest: str,
    docker_reference: str,
    where: str,
) -> str:
    """Accept `digest` if one signature verifies with one of `keys` and its payload names
    `digest` and `docker_reference`; return the key's fingerprint. Otherwise raise a
    SignatureError with the most specific reason found."""
    signatures = list(signatures)
    if not signatures:
        raise SignatureError(
            f"pipeline {where} ({digest}) is not signed: no signature under tag "
            f"{signature_tag(digest)}; publish it with --sign-key"
        )
    reasons: list[str] = []
    for one in signatures:
        key = _key_for(one, keys)
        if key is None:
            continue
        try:
            critical = json.loads(one.payload)["critical"]
            signed_digest = critical["image"]["docker-manifest-digest"]
            signed_reference = critical["identity"]["docker-reference"]
            kind = critical["type"]
        except (ValueError, KeyError, TypeError):
            reasons.append("a signed payload is not a cosign simple-signing payload")
            continue
        if kind != SIGNATURE_TYPE:
            reasons.append(f"a signed payload has type {kind!r}, not {SIGNATURE_TYPE!r}")
        elif signed_digest != digest:
            reasons.append(f"the signature is for another digest ({signed_digest}), not {digest}")
        elif signed_reference != docker_reference:
            reasons.append(f"the signature names {signed_reference!r}, not {docker_reference!r}")
        else:
            return fingerprint(key)
    if not reasons:
        known = ", ".join(fingerprint(k) for k in keys)
        raise SignatureError(
            f"pipeline {where} ({digest}) is signed by an unknown key: none of its "
            f"{len(signatures)} signature(s) verifies with the verify keys ({known})"
        )
    raise SignatureError(f"pipeline {where} ({digest}) refused: {reasons[0]}")


def _key_for(
    signature: Signature, keys: list[ec.EllipticCurvePublicKey]
) -> ec.EllipticCurvePublicKey | None:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        der = base64.b64decode(signature.signature, validate=True)
    except (binascii.Error, ValueError):
        return None
    for key in keys:
        try:
            key.verify(der, signature.payload, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            continue
        return key
    return None


def check_tag(ref: Reference, manifest: dict[str, Any], digest: str) -> None:
    """A tag names the version it was published as: a signed older digest under a newer tag
    is a re-tag or rollback, accepted only when PIPELINE_URL pins that digest."""
    if ref.digest or not ref.tag:
        return
    version = (manifest.get("annotations") or {}).get(VERSION_ANNOTATION)
    if version != ref.tag:
        raise SignatureError(
            f"tag {ref.tag} resolves to {digest}, which was signed as version {version!r}: a "
            f"re-tag or rollback; to run it, pin the digest (PIPELINE_URL ...@{digest})"
        )
