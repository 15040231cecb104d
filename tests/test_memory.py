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


FAULTS = """
import json, resource
from edge import memory
memory.configure()
from edge import codecs
rows = [{"tensor": [i / 7 + j for j in range(30)]} for i in range(10_000)]
body = json.dumps(rows, separators=(",", ":")).encode()
def request():
    table = codecs.decode_records(body)
    info = codecs.RecordInfo("p", "m", "v", [1], inputs=table)
    return codecs.encode_records(table.rename_columns(["in.tensor"]), info, None)
for i in range(6):
    if i == 3:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    request()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) // 3)
"""


@pytest.mark.skipif(memory._LIBC is None, reason="glibc's heap settings (musl, macOS: none)")
def test_a_large_requests_buffers_come_from_the_heap_not_fresh_pages() -> None:
    """A 10k-row JSON request and its ~20 MB of buffers: with glibc's defaults each one
    page-faulted ~5,000 fresh pages (6-7 ms of its ~40); `configure` keeps them in the heap.
    glibc's own variables, when set, win (128 KiB: every buffer mapped afresh)."""
    assert int(_python(FAULTS)) < 500
    small = {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}
    assert int(_python(FAULTS, **small)) > 2_000


def test_serving_from_a_layout_imports_no_registry_client_nor_cryptography() -> None:
    """What `edge serve` imports to serve a pipeline from a local layout without verify keys
    or gRPC leaves out httpx, cryptography and protobuf (~14 MiB resident together)."""
    loaded = _python(
        "import sys; import edge.cli, edge.appliance, edge.server, edge.cache, edge.signing; "
        "print(' '.join(m for m in ('httpx', 'cryptography', 'google.protobuf', 'grpc') "
        "if m in sys.modules))"
    )
    assert loaded == ""
