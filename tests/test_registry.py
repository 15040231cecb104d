"""The OCI registry client on its own: references, loopback rules, a registry that trickles,
and where credentials may go."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from edge import remote
from edge.errors import RegistryError, RegistryUnreachable
from edge.registry import Reference, is_loopback
from edge.remote import RemoteRegistry


def test_references() -> None:
    ref = Reference.parse("127.0.0.1:5000/team/edge/pipelines/ccfraud:1234")
    assert (ref.registry, ref.repository, ref.tag) == (
        "127.0.0.1:5000",
        "team/edge/pipelines/ccfraud",
        "1234",
    )
    digest = "sha256:" + "a" * 64
    pinned = Reference.parse(f"registry.example.com/p/x@{digest}")
    assert pinned.digest == digest and pinned.ref == digest
    layout = Reference.parse("oci-layout:/data/layout:1234")
    assert layout.layout and layout.registry == "/data/layout" and layout.tag == "1234"
    assert Reference.parse("oci-layout:/data/layout").tag is None
    with pytest.raises(RegistryError, match="HOST"):
        Reference.parse("just-a-name")


def test_loopback_hosts() -> None:
    assert is_loopback("127.0.0.1:5000") and is_loopback("localhost") and is_loopback("[::1]:5000")
    assert not is_loopback("registry.example.com:443") and not is_loopback("10.0.0.1")


def test_a_trickling_download_is_given_up(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(remote, "DOWNLOAD_GRACE", 0.2)
    monkeypatch.setattr(remote, "MIN_RATE", 1 << 30)

    class Trickle(httpx.SyncByteStream):
        def __iter__(self) -> Iterator[bytes]:
            for _ in range(50):
                time.sleep(0.05)
                yield b"x" * 10

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-length": "500"}, stream=Trickle())

    store = RemoteRegistry("127.0.0.1:9", None, None, True, transport=httpx.MockTransport(handler))
    ref = Reference("127.0.0.1:9", "p/x", tag="1")
    started = time.monotonic()
    with pytest.raises(RegistryUnreachable, match="too slow"):
        b"".join(store.open_blob(ref, "sha256:" + "0" * 64))
    assert time.monotonic() - started < 2


def test_credentials_go_only_to_https_or_loopback_token_realms() -> None:
    seen: dict[str, str | None] = {}

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "auth.example":
            seen["authorization"] = request.headers.get("authorization")
            return httpx.Response(200, json={"token": "t"})
        if request.headers.get("authorization") == "Bearer t":
            return httpx.Response(200)
        challenge = 'Bearer realm="http://auth.example/token",service="registry"'
        return httpx.Response(401, headers={"WWW-Authenticate": challenge})

    store = RemoteRegistry(
        "registry.example", "user", "s3cret", False, transport=httpx.MockTransport(handler)
    )
    store.check_api()
    assert seen["authorization"] is None  # a plain-http realm elsewhere never sees the password
