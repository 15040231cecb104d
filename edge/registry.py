"""OCI stores: a remote registry (`edge.remote`, the distribution API over httpx, imported
when a registry is used) and a local OCI image layout.

Both expose the same four calls (`get_manifest`, `open_blob`, `put_blob`, `put_manifest`) so
push and pull in `edge.publish` / `edge.cache` are written once. Every blob read is checked
against its digest while it streams; a mismatch raises `DigestMismatch` and nothing is kept.

Why not oras-py: its requests carry no timeout, its retry decorator sleeps up to minutes on
any exception, and its pull writes blobs without checking digests (TOOLCHAIN.md). The
distribution API we need is five endpoints; here each call has a finite timeout, retries
are bounded and only for transport failures and 5xx, and errors are typed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from edge.artifact import MANIFEST_MEDIA_TYPE
from edge.errors import (
    DigestMismatch,
    NotPublished,
    RegistryError,
)

if TYPE_CHECKING:
    import httpx

LAYOUT_SCHEME = "oci-layout:"
CHUNK = 4 << 20
Progress = Callable[[int, int], None]  # (bytes done, bytes total)


@dataclass(frozen=True)
class Reference:
    """`host[:port]/repository[:tag][@sha256:...]`, or a local layout `oci-layout:DIR[:TAG]`."""

    registry: str  # host[:port], or the layout directory
    repository: str  # empty for a layout
    tag: str | None = None
    digest: str | None = None
    layout: bool = False

    @property
    def ref(self) -> str:
        return self.digest or self.tag or "latest"

    def __str__(self) -> str:
        if self.layout:
            return f"{LAYOUT_SCHEME}{self.registry}" + (f":{self.tag}" if self.tag else "")
        text = f"{self.registry}/{self.repository}"
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text

    @classmethod
    def parse(cls, url: str) -> Reference:
        url = url.strip()
        if url.startswith(LAYOUT_SCHEME):
            rest = url[len(LAYOUT_SCHEME) :]
            directory, sep, tag = rest.rpartition(":")
            if sep and tag and "/" not in tag:
                return cls(registry=directory, repository="", tag=tag, layout=True)
            return cls(registry=rest, repository="", layout=True)
        for scheme in ("oci://", "https://", "http://"):
            url = url.removeprefix(scheme)
        name, _, digest = url.partition("@")
        host, slash, path = name.partition("/")
        if not slash or not path or not ("." in host or ":" in host or host == "localhost"):
            raise RegistryError(
                f"pipeline URL {url!r} is not HOST[:PORT]/REPOSITORY[:TAG] nor "
                f"{LAYOUT_SCHEME}DIR[:TAG]"
            )
        repository, tag = path, ""
        if ":" in path.rsplit("/", 1)[-1]:
            repository, tag = path.rsplit(":", 1)
        return cls(host, repository, tag=tag or None, digest=digest or None)


def is_loopback(host: str) -> bool:
    """`host[:port]` names this machine (127.0.0.0/8, localhost, [::1])."""
    name = host.rsplit("]", 1)[0].lstrip("[") if host.startswith("[") else host.split(":")[0]
    return name in ("localhost", "::1") or name.startswith("127.")


class Store(Protocol):
    """What push and pull need from where artifacts live."""

    def get_manifest(self, ref: Reference) -> tuple[bytes, str]: ...
    def open_blob(self, ref: Reference, digest: str) -> Iterator[bytes]: ...
    def put_blob(
        self, ref: Reference, source: Path | bytes, digest: str, progress: Progress | None
    ) -> None: ...
    def put_manifest(self, ref: Reference, manifest: bytes, annotations: dict[str, str]) -> str: ...
    def close(self) -> None: ...


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def download_blob(
    store: Store,
    ref: Reference,
    digest: str,
    dest: Path,
    progress: Progress | None = None,
    size: int = 0,
) -> None:
    """Stream a blob to `dest`, verifying its sha256; the file appears only when it matches."""
    partial = dest.with_name(dest.name + ".part")
    hasher = hashlib.sha256()
    done = 0
    with open(partial, "wb") as out:
        for chunk in store.open_blob(ref, digest):
            hasher.update(chunk)
            out.write(chunk)
            done += len(chunk)
            if progress:
                progress(done, size)
        out.flush()
        os.fsync(out.fileno())
    actual = f"sha256:{hasher.hexdigest()}"
    if actual != digest:
        partial.unlink(missing_ok=True)
        raise DigestMismatch(
            f"blob {digest} of {ref} arrived with digest {actual}: refusing to use it "
            f"(tampered or corrupted in the registry)"
        )
    partial.replace(dest)


def read_blob(store: Store, ref: Reference, digest: str) -> bytes:
    """A small blob (config) read whole and verified."""
    data = b"".join(store.open_blob(ref, digest))
    actual = f"sha256:{hashlib.sha256(data).hexdigest()}"
    if actual != digest:
        raise DigestMismatch(f"blob {digest} of {ref} arrived with digest {actual}")
    return data


def open_store(
    ref: Reference,
    username: str | None = None,
    password: str | None = None,
    insecure: bool | None = None,
    timeout: httpx.Timeout | None = None,
) -> Store:
    """The layout or registry `ref` names; a registry's calls time out after `timeout`
    (default `edge.remote.DEFAULT_TIMEOUT`)."""
    if ref.layout:
        return OciLayout(Path(ref.registry))
    from edge.remote import DEFAULT_TIMEOUT, RemoteRegistry  # httpx, only for a registry

    return RemoteRegistry(ref.registry, username, password, insecure, timeout or DEFAULT_TIMEOUT)


class OciLayout:
    """An OCI image layout directory (`oci-layout`, `index.json`, `blobs/sha256/...`)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def close(self) -> None:
        """Nothing to release: files are opened per call."""

    def _blob_path(self, digest: str) -> Path:
        algorithm, _, hexdigest = digest.partition(":")
        if algorithm != "sha256" or not re.fullmatch(r"[0-9a-f]{64}", hexdigest):
            raise RegistryError(f"unsupported digest {digest!r}")
        return self.root / "blobs" / "sha256" / hexdigest

    def _index(self) -> dict:
        try:
            return json.loads((self.root / "index.json").read_text())
        except FileNotFoundError:
            raise NotPublished(f"{self.root} is not an OCI layout (no index.json)") from None

    def get_manifest(self, ref: Reference) -> tuple[bytes, str]:
        entries = self._index().get("manifests", [])
        tags = [e.get("annotations", {}).get("org.opencontainers.image.ref.name") for e in entries]
        if ref.tag:
            entries = [e for e, tag in zip(entries, tags, strict=True) if tag == ref.tag]
        else:  # the latest pipeline, not a signature (`sha256-<hex>.sig`, edge.signing)
            entries = [
                e
                for e, tag in zip(entries, tags, strict=True)
                if not (tag and tag.startswith("sha256-") and tag.endswith(".sig"))
            ]
        if not entries:
            raise NotPublished(f"no pipeline tagged {ref.tag or '(any)'} in layout {self.root}")
        digest = entries[-1]["digest"]
        return read_blob(self, ref, digest), digest

    def open_blob(self, ref: Reference, digest: str) -> Iterator[bytes]:
        try:
            with open(self._blob_path(digest), "rb") as handle:
                while chunk := handle.read(CHUNK):
                    yield chunk
        except FileNotFoundError:
            raise NotPublished(f"blob {digest} missing from layout {self.root}") from None

    def put_blob(
        self, ref: Reference, source: Path | bytes, digest: str, progress: Progress | None
    ) -> None:
        target = self._blob_path(digest)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".part")
        if not target.exists():
            if isinstance(source, bytes):
                partial.write_bytes(source)
            else:
                shutil.copyfile(source, partial)
            partial.replace(target)
        if progress:
            size = len(source) if isinstance(source, bytes) else source.stat().st_size
            progress(size, size)

    def put_manifest(self, ref: Reference, manifest: bytes, annotations: dict[str, str]) -> str:
        digest = f"sha256:{hashlib.sha256(manifest).hexdigest()}"
        target = self._blob_path(digest)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(manifest)
        (self.root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
        try:
            index = self._index()
        except NotPublished:
            index = {"schemaVersion": 2, "manifests": []}
        tag = ref.tag or "latest"
        index["manifests"] = [
            e
            for e in index["manifests"]
            if e.get("annotations", {}).get("org.opencontainers.image.ref.name") != tag
        ]
        index["manifests"].append(
            {
                "mediaType": MANIFEST_MEDIA_TYPE,
                "digest": digest,
                "size": len(manifest),
                "annotations": {**annotations, "org.opencontainers.image.ref.name": tag},
            }
        )
        tmp = self.root / "index.json.part"
        tmp.write_text(json.dumps(index, indent=1))
        tmp.replace(self.root / "index.json")
        return digest
