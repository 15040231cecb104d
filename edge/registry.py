"""OCI stores: a remote registry (distribution API over httpx) and a local OCI image layout.

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
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import httpx

from edge.artifact import MANIFEST_MEDIA_TYPE
from edge.errors import (
    DigestMismatch,
    NotPublished,
    RegistryAuthError,
    RegistryError,
    RegistryUnreachable,
)

LAYOUT_SCHEME = "oci-layout:"
DEFAULT_TIMEOUT = httpx.Timeout(connect=5.0, read=30.0, write=60.0, pool=5.0)
CHUNK = 4 << 20
RETRIES = 3
ACCEPT = ", ".join([MANIFEST_MEDIA_TYPE, "application/vnd.docker.distribution.manifest.v2+json"])
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


class Store(Protocol):
    """What push and pull need from where artifacts live."""

    def get_manifest(self, ref: Reference) -> tuple[bytes, str]: ...
    def open_blob(self, ref: Reference, digest: str) -> Iterator[bytes]: ...
    def put_blob(
        self, ref: Reference, path: Path, digest: str, progress: Progress | None
    ) -> None: ...
    def put_manifest(self, ref: Reference, manifest: bytes, annotations: dict[str, str]) -> str: ...


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
    timeout: httpx.Timeout = DEFAULT_TIMEOUT,
) -> Store:
    if ref.layout:
        return OciLayout(Path(ref.registry))
    return RemoteRegistry(ref.registry, username, password, insecure, timeout)


class OciLayout:
    """An OCI image layout directory (`oci-layout`, `index.json`, `blobs/sha256/...`)."""

    def __init__(self, root: Path) -> None:
        self.root = root

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
        if ref.tag:
            entries = [
                e
                for e in entries
                if e.get("annotations", {}).get("org.opencontainers.image.ref.name") == ref.tag
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

    def put_blob(self, ref: Reference, path: Path, digest: str, progress: Progress | None) -> None:
        target = self._blob_path(digest)
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            shutil.copyfile(path, target.with_name(target.name + ".part"))
            target.with_name(target.name + ".part").replace(target)
        if progress:
            size = path.stat().st_size
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


class RemoteRegistry:
    """The OCI distribution API: basic auth, or bearer tokens when the registry asks."""

    def __init__(
        self,
        host: str,
        username: str | None,
        password: str | None,
        insecure: bool | None,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
    ) -> None:
        if insecure is None:  # like docker: loopback registries speak plain http
            insecure = host.split(":")[0] in ("127.0.0.1", "localhost", "[::1]")
        self.base = f"{'http' if insecure else 'https'}://{host}"
        self.host = host
        self.auth = httpx.BasicAuth(username, password or "") if username else None
        self.client = httpx.Client(timeout=timeout, follow_redirects=True)
        self.token: str | None = None

    def _request(self, method: str, url: str, **kwargs: object) -> httpx.Response:
        """One call with bounded retries on transport failures and 5xx (idempotent only)."""
        url = url if url.startswith("http") else self.base + url
        attempts = RETRIES if method in ("GET", "HEAD") else 1
        for attempt in range(attempts):
            try:
                response = self._send(method, url, **kwargs)
            except httpx.TransportError as exc:
                if attempt + 1 == attempts:
                    raise RegistryUnreachable(
                        f"registry {self.host} unreachable ({type(exc).__name__}: {exc})"
                    ) from exc
            else:
                if response.status_code < 500 or attempt + 1 == attempts:
                    return response
            time.sleep(0.3 * 2**attempt)
        raise AssertionError("unreachable")

    def _send(self, method: str, url: str, **kwargs: object) -> httpx.Response:
        headers = dict(kwargs.pop("headers", {}) or {})  # type: ignore[call-overload]
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        auth = None if self.token else self.auth
        request = self.client.build_request(method, url, headers=headers, **kwargs)  # type: ignore[arg-type]
        response = self.client.send(request, auth=auth, stream=True)
        if response.status_code == 401 and self._authenticate(response):
            response.close()
            headers["Authorization"] = f"Bearer {self.token}"
            request = self.client.build_request(method, url, headers=headers, **kwargs)  # type: ignore[arg-type]
            response = self.client.send(request, stream=True)
        if response.status_code in (401, 403):
            response.close()
            raise RegistryAuthError(
                f"registry {self.host} refused the credentials ({response.status_code}); "
                f"check OCI_USERNAME / OCI_PASSWORD"
            )
        return response

    def _authenticate(self, response: httpx.Response) -> bool:
        challenge = response.headers.get("www-authenticate", "")
        if not challenge.lower().startswith("bearer "):
            return False
        params = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
        realm = params.pop("realm", None)
        if not realm:
            return False
        reply = self.client.get(realm, params=params, auth=self.auth or httpx.USE_CLIENT_DEFAULT)
        if reply.status_code != 200:
            return False
        body = reply.json()
        self.token = body.get("token") or body.get("access_token")
        return bool(self.token)

    def _check(self, response: httpx.Response, what: str) -> httpx.Response:
        if response.status_code == 404:
            response.close()
            raise NotPublished(f"{what} not found in registry {self.host}")
        if response.status_code >= 300:
            response.read()
            response.close()
            raise RegistryError(
                f"registry {self.host} answered {response.status_code} for {what}: "
                f"{response.text[:300]}"
            )
        return response

    def get_manifest(self, ref: Reference) -> tuple[bytes, str]:
        url = f"/v2/{ref.repository}/manifests/{ref.ref}"
        response = self._check(self._request("GET", url, headers={"Accept": ACCEPT}), str(ref))
        body = response.read()
        digest = f"sha256:{hashlib.sha256(body).hexdigest()}"
        if ref.digest and ref.digest != digest:
            raise DigestMismatch(f"manifest of {ref} has digest {digest}, not {ref.digest}")
        return body, digest

    def open_blob(self, ref: Reference, digest: str) -> Iterator[bytes]:
        url = f"/v2/{ref.repository}/blobs/{digest}"
        response = self._check(self._request("GET", url), f"blob {digest}")
        try:
            yield from response.iter_bytes(CHUNK)
        except httpx.TransportError as exc:
            raise RegistryUnreachable(
                f"download of {digest} from {self.host} broke: {exc}"
            ) from exc
        finally:
            response.close()

    def put_blob(self, ref: Reference, path: Path, digest: str, progress: Progress | None) -> None:
        head = self._request("HEAD", f"/v2/{ref.repository}/blobs/{digest}")
        head.close()
        size = path.stat().st_size
        if head.status_code == 200:
            if progress:
                progress(size, size)
            return
        start = self._check(
            self._request("POST", f"/v2/{ref.repository}/blobs/uploads/"), "upload session"
        )
        start.close()
        location = start.headers["location"]
        done = 0
        with open(path, "rb") as handle:
            while chunk := handle.read(CHUNK):
                reply = self._check(
                    self._request(
                        "PATCH",
                        location,
                        content=chunk,
                        headers={
                            "Content-Type": "application/octet-stream",
                            "Content-Range": f"{done}-{done + len(chunk) - 1}",
                        },
                    ),
                    f"upload of {digest}",
                )
                reply.close()
                location = reply.headers["location"]
                done += len(chunk)
                if progress:
                    progress(done, size)
        separator = "&" if "?" in location else "?"
        reply = self._check(
            self._request("PUT", f"{location}{separator}digest={digest}"), f"upload of {digest}"
        )
        reply.close()

    def put_manifest(self, ref: Reference, manifest: bytes, annotations: dict[str, str]) -> str:
        reply = self._check(
            self._request(
                "PUT",
                f"/v2/{ref.repository}/manifests/{ref.ref}",
                content=manifest,
                headers={"Content-Type": MANIFEST_MEDIA_TYPE},
            ),
            f"manifest {ref}",
        )
        reply.close()
        return reply.headers.get("docker-content-digest") or (
            f"sha256:{hashlib.sha256(manifest).hexdigest()}"
        )
