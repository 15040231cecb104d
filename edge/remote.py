"""The OCI distribution API over httpx: `RemoteRegistry`, the store of a remote registry (see
`edge.registry` for the calls every store exposes), and its authentication (basic, or bearer
tokens as the registry asks). Its own module so that an appliance serving from a local layout
does not import httpx (~5 MiB resident: it brings click, rich and pygments along).
"""

from __future__ import annotations

import base64
import hashlib
import re
import time
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import httpx

from edge.artifact import MANIFEST_MEDIA_TYPE
from edge.errors import (
    DigestMismatch,
    NotPublished,
    RegistryAuthError,
    RegistryError,
    RegistryUnreachable,
)
from edge.registry import CHUNK, Progress, Reference, is_loopback

DEFAULT_TIMEOUT = httpx.Timeout(connect=5.0, read=30.0, write=60.0, pool=5.0)
MIN_RATE = 128 << 10  # bytes/s a blob download must average, after DOWNLOAD_GRACE seconds
DOWNLOAD_GRACE = 60.0
RETRIES = 3
ACCEPT = ", ".join([MANIFEST_MEDIA_TYPE, "application/vnd.docker.distribution.manifest.v2+json"])


class RegistryAuth(httpx.Auth):
    """Answers a registry's 401 challenge with basic auth or a bearer token, then reuses it.
    Credentials go only to the registry itself and to a token realm over https (or over
    plain http on this machine), never elsewhere."""

    # False: blob downloads must stream, not be read whole by the auth flow; the one body it
    # needs (the token reply) it reads itself (this client is synchronous).
    requires_response_body = False

    def __init__(self, host: str, username: str | None, password: str | None) -> None:
        self.host = host
        self.credentials = (username, password or "") if username else None
        self.header: str | None = None

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        ours = request.url.netloc.decode() == self.host
        if ours and self.header:
            request.headers["Authorization"] = self.header
        response = yield request
        if response.status_code != 401 or not ours:
            return
        scheme, _, rest = response.headers.get("WWW-Authenticate", "").strip().partition(" ")
        params = dict(re.findall(r'(\w+)="([^"]*)"', rest))
        if scheme.lower() == "basic" and self.credentials:
            self.header = _basic(*self.credentials)
        elif scheme.lower() == "bearer" and params.get("realm"):
            realm = httpx.URL(params["realm"])
            safe = realm.scheme == "https" or is_loopback(realm.netloc.decode())
            query = {key: params[key] for key in ("service", "scope") if params.get(key)}
            token_request = httpx.Request("GET", realm, params=query)
            if self.credentials and safe:
                token_request.headers["Authorization"] = _basic(*self.credentials)
            token_response = yield token_request
            if token_response.status_code != 200:
                return
            try:
                token_response.read()
                body = token_response.json()
                token = body.get("token") or body.get("access_token")
            except (ValueError, AttributeError):
                token = None
            if not token:
                return
            self.header = f"Bearer {token}"
        else:
            return
        request.headers["Authorization"] = self.header
        yield request


def _basic(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


class RemoteRegistry:
    """The OCI distribution API over httpx (basic auth or bearer tokens, as the registry asks).
    Every failure becomes a `RegistryError` saying what was being done and what to check."""

    def __init__(
        self,
        host: str,
        username: str | None,
        password: str | None,
        insecure: bool | None,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if insecure is None:  # like docker: loopback registries speak plain http
            insecure = is_loopback(host)
        self.base = f"{'http' if insecure else 'https'}://{host}"
        self.host = host
        self.plain_http = bool(insecure)
        self.has_credentials = bool(username)
        self.client = httpx.Client(
            base_url=self.base,
            auth=RegistryAuth(host, username, password),
            timeout=timeout,
            follow_redirects=True,
            transport=transport,
        )

    def close(self) -> None:
        self.client.close()

    def _request(self, method: str, url: str, what: str, **kwargs: Any) -> httpx.Response:
        """One call, streamed; bounded retries on transport failures and 5xx (GET/HEAD only)."""
        attempts = RETRIES if method in ("GET", "HEAD") else 1
        for attempt in range(attempts):
            try:
                request = self.client.build_request(method, url, **kwargs)
                response = self.client.send(request, stream=True)
            except httpx.TimeoutException as exc:
                error: RegistryError = RegistryUnreachable(
                    f"registry {self.host} did not answer {what} in time ({exc})"
                )
            except httpx.TransportError as exc:
                hint = "" if self.plain_http else " (a plain-HTTP registry needs --insecure)"
                error = RegistryUnreachable(f"cannot reach registry {self.host}{hint}: {exc}")
            else:
                if response.status_code in (401, 403):
                    response.close()
                    raise RegistryAuthError(
                        f"registry {self.host} refused {what}: "
                        + (
                            "the user may not do that"
                            if response.status_code == 403
                            else "the username or password is wrong"
                            if self.has_credentials
                            else "it needs a username and password (OCI_USERNAME / OCI_PASSWORD)"
                        )
                    )
                if response.status_code < 500 or attempt + 1 == attempts:
                    return response
                response.close()
                error = RegistryError(f"registry {self.host} answered {response.status_code}")
            if attempt + 1 == attempts:
                raise error
            time.sleep(0.3 * 2**attempt)
        raise AssertionError("unreachable")

    def check_api(self) -> None:
        """GET /v2/: the registry is there, speaks the distribution API, takes our login."""
        reply = self._request("GET", "/v2/", "the API check (GET /v2/)")
        reply.close()
        if reply.status_code != 200:
            raise RegistryError(
                f"{self.host} does not look like an OCI registry: GET /v2/ answered "
                f"{reply.status_code}"
            )

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
        what = f"manifest {ref}"
        response = self._check(self._request("GET", url, what, headers={"Accept": ACCEPT}), what)
        body = response.read()
        digest = f"sha256:{hashlib.sha256(body).hexdigest()}"
        if ref.digest and ref.digest != digest:
            raise DigestMismatch(f"manifest of {ref} has digest {digest}, not {ref.digest}")
        return body, digest

    def open_blob(self, ref: Reference, digest: str) -> Iterator[bytes]:
        url = f"/v2/{ref.repository}/blobs/{digest}"
        what = f"blob {digest}"
        response = self._check(self._request("GET", url, what), what)
        # Timeouts are per read: a registry trickling bytes would never trip them. A whole
        # download gets a minute plus what its size takes at MIN_RATE.
        size = int(response.headers.get("content-length") or 0)
        deadline = time.monotonic() + DOWNLOAD_GRACE + size / MIN_RATE
        try:
            for chunk in response.iter_bytes():  # as it arrives, so the deadline is checked
                if time.monotonic() > deadline:
                    raise RegistryUnreachable(
                        f"download of {digest} ({size} bytes) from {self.host} is too slow; "
                        f"gave up at {MIN_RATE >> 10} KiB/s"
                    )
                yield chunk
        except httpx.TransportError as exc:
            raise RegistryUnreachable(
                f"download of {digest} from {self.host} broke: {exc}"
            ) from exc
        finally:
            response.close()

    def put_blob(
        self, ref: Reference, source: Path | bytes, digest: str, progress: Progress | None
    ) -> None:
        """Upload a blob (a file, streamed in chunks, or bytes) unless the registry has it."""
        what = f"blob {digest} of {ref.repository}"
        head = self._request("HEAD", f"/v2/{ref.repository}/blobs/{digest}", f"checking {what}")
        head.close()
        size = len(source) if isinstance(source, bytes) else source.stat().st_size
        if head.status_code == 200:
            if progress:
                progress(size, size)
            return
        start = self._request("POST", f"/v2/{ref.repository}/blobs/uploads/", f"starting {what}")
        start.close()
        location = start.headers.get("location")
        if start.status_code != 202 or not location:
            raise RegistryError(
                f"registry {self.host} answered {start.status_code} to starting upload of {what}"
            )
        if isinstance(source, bytes):  # small (configs, charts): one monolithic PUT
            final = self.client.base_url.join(location).copy_merge_params({"digest": digest})
            reply = self._check(
                self._request(
                    "PUT",
                    str(final),
                    f"uploading {what}",
                    content=source,
                    headers={"Content-Type": "application/octet-stream"},
                ),
                what,
            )
            reply.close()
            if progress:
                progress(size, size)
            return
        done = 0
        for chunk in _chunks(source):
            reply = self._check(
                self._request(
                    "PATCH",
                    location,
                    f"uploading {what}",
                    content=chunk,
                    headers={
                        "Content-Type": "application/octet-stream",
                        "Content-Range": f"{done}-{done + len(chunk) - 1}",
                    },
                ),
                f"upload of {what}",
            )
            reply.close()
            location = reply.headers["location"]
            done += len(chunk)
            if progress:
                progress(done, size)
        final = self.client.base_url.join(location).copy_merge_params({"digest": digest})
        reply = self._check(self._request("PUT", str(final), f"closing {what}"), what)
        reply.close()

    def put_manifest(self, ref: Reference, manifest: bytes, annotations: dict[str, str]) -> str:
        digest = f"sha256:{hashlib.sha256(manifest).hexdigest()}"
        what = f"manifest {ref}"
        reply = self._check(
            self._request(
                "PUT",
                f"/v2/{ref.repository}/manifests/{ref.ref}",
                f"pushing {what}",
                content=manifest,
                headers={"Content-Type": MANIFEST_MEDIA_TYPE},
            ),
            what,
        )
        reply.close()
        answered = reply.headers.get("docker-content-digest")
        if answered and answered != digest:
            raise RegistryError(
                f"registry {self.host} stored {what} as {answered}, but its content is {digest}"
            )
        return digest


def _chunks(source: Path) -> Iterator[bytes]:
    with open(source, "rb") as handle:
        while chunk := handle.read(CHUNK):
            yield chunk
