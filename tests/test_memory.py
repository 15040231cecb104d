"""edge.memory: which requests are followed by a trim, and the trim itself."""

from __future__ import annotations

import pytest

from edge import memory


def scope(*headers: tuple[bytes, bytes]) -> dict[str, object]:
    return {"type": "http", "headers": list(headers)}


def test_only_large_declared_bodies_are_followed_by_a_trim() -> None:
    big = str(memory.LARGE_BODY).encode()
    assert memory.large_request(scope((b"host", b"x"), (b"content-length", big)))
    assert not memory.large_request(scope((b"content-length", b"4096")))
    assert not memory.large_request(scope())  # chunked: no length declared
    assert not memory.large_request(scope((b"content-length", b"-5")))


def test_release_trims_with_glibc() -> None:
    import platform

    if platform.libc_ver()[0] == "glibc":  # the machines this ships on
        assert memory._TRIM is not None
    blocks = [bytearray(1 << 20) for _ in range(32)]
    del blocks
    memory.release()


def test_a_burst_of_large_requests_is_followed_by_one_trim(monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    trims: list[int] = []
    monkeypatch.setattr(memory, "release", lambda: trims.append(1))

    async def burst() -> None:
        for _ in range(5):
            memory.release_soon(0.05)
        await asyncio.sleep(0.2)
        memory.release_soon(0.05)  # a later request: a later trim
        await asyncio.sleep(0.2)

    if memory._TRIM is None:
        return  # not glibc: nothing is ever scheduled
    asyncio.run(burst())
    assert trims == [1, 1]


def test_a_trim_due_on_a_closed_loop_does_not_stop_later_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import asyncio

    trims: list[int] = []
    monkeypatch.setattr(memory, "release", lambda: trims.append(1))

    async def request(wait: float) -> None:
        memory.release_soon(0.05)
        await asyncio.sleep(wait)

    if memory._TRIM is None:
        return
    asyncio.run(request(0))  # the loop closes before its trim is due
    asyncio.run(request(0.2))
    assert trims == [1]


def _python(code: str, **env: str) -> str:
    import os
    import subprocess
    import sys

    clean = {k: v for k, v in os.environ.items() if k not in ("ARROW_DEFAULT_MEMORY_POOL",)}
    done = subprocess.run(
        [sys.executable, "-c", code],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return done.stdout.strip()


POOL = (
    "from edge import memory; memory.configure(); import pyarrow as pa; "
    "print(pa.default_memory_pool().backend_name)"
)


def test_serving_allocates_arrow_from_the_c_heap_unless_told_otherwise() -> None:
    assert _python(POOL) == "system"  # where malloc_trim reaches it
    assert _python(POOL, ARROW_DEFAULT_MEMORY_POOL="mimalloc") == "mimalloc"


def test_serving_from_a_layout_imports_no_registry_client_nor_cryptography() -> None:
    """What `edge serve` imports to serve a pipeline from a local layout without verify keys
    or gRPC leaves out httpx, cryptography and protobuf (~14 MiB resident together)."""
    loaded = _python(
        "import sys; import edge.cli, edge.appliance, edge.server, edge.cache, edge.signing; "
        "print(' '.join(m for m in ('httpx', 'cryptography', 'google.protobuf', 'grpc') "
        "if m in sys.modules))"
    )
    assert loaded == ""
