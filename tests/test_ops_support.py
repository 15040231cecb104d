"""Shared helpers for the ops_sync tests (no tests in here).

- `Clock`: an injectable clock the tests move by hand (days pass in a line).
- `Ops`: an `OpsCenter` plus its app in process; `edge_client(cert)` calls the app as the edge
  holding `cert` (the cert goes into the ASGI TLS extension, where `ops_sync.serve` puts it).
- `result_table`: rows shaped like the appliance's result table (docs/CONTRACTS.md).
- `OpsServer`: a real `ops-sync serve` process with TLS on a free loopback port.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pyarrow as pa

from ops_sync.center import OpsCenter
from ops_sync.identity import build_ssl_context, key_pem, make_csr, new_key
from ops_sync.serve import with_tls_extension
from ops_sync.server import create_app
from tests.conftest import free_port as free_port  # the ops tests import it from here

ADMIN = "admin-token-for-tests-0123456789"
PIPELINE_URL = "127.0.0.1:5000/edge/pipelines/ccfraud:3b49fba8-94d8-4fca-aecc-c75257fd16c6"
REPO = Path(__file__).resolve().parent.parent


class Clock:
    def __init__(self, now: float | None = None) -> None:
        self.now = time.time() if now is None else now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


DAY = 24 * 3600.0


@dataclass
class Joined:
    edge_id: str
    cert: str
    key: Any
    spiffe_id: str


@dataclass
class Ops:
    root: Path
    clock: Clock = field(default_factory=Clock)
    metadata_url: str | None = None
    logs_url: str | None = None

    def __post_init__(self) -> None:
        self.center = OpsCenter(
            self.root,
            ADMIN,
            "127.0.0.1:8443",
            clock=self.clock,
            commit_interval=0.0,
            metadata_url=self.metadata_url,
            logs_url=self.logs_url,
        )
        self.app = create_app(self.center)

    def admin_client(self, token: str | None = ADMIN) -> httpx.AsyncClient:
        headers = {"authorization": f"Bearer {token}"} if token else {}
        transport = httpx.ASGITransport(app=self.app)
        return httpx.AsyncClient(transport=transport, base_url="https://ops", headers=headers)

    def edge_client(self, cert: str | Callable[[], str | None] | None) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=cert_transport(self.app, cert), base_url="https://ops")

    def add_edge(self, name: str, url: str = PIPELINE_URL) -> dict[str, Any]:
        return self.center.add_edge(name, url, [])

    def join(self, token: str) -> Joined:
        key = new_key()
        joined = self.center.join(token, make_csr(key, "x"))
        return Joined(joined["edge_id"], joined["certificate"], key, joined["spiffe_id"])


def cert_transport(app: Any, cert: str | Callable[[], str | None] | None) -> httpx.ASGITransport:
    """Call `app` in process as if over mutual TLS with `cert` (a PEM, or a function giving the
    current one, e.g. read from an agent's persist directory)."""

    async def wrapped(scope: dict[str, Any], receive: Any, send: Any) -> None:
        pem = cert() if callable(cert) else cert
        tls = {"client_cert_chain": [pem] if pem else []}
        await with_tls_extension(app, tls)(scope, receive, send)

    return httpx.ASGITransport(app=wrapped)


def result_table(
    n: int, t0_ms: int, *, partition: str = "device", dropped: bool = False
) -> pa.Table:
    """`n` rows like the appliance's result table, times t0_ms, t0_ms+1, ..."""
    rng = np.random.default_rng(n + t0_ms)
    features = rng.random((n, 4), dtype=np.float32)
    tensors = pa.FixedSizeListArray.from_arrays(pa.array(features.ravel()), 4)
    out = pa.FixedSizeListArray.from_arrays(pa.array(features.sum(axis=1)), 1)
    drops: list[list[str]] = [["in.tensor"] if dropped and i % 2 else [] for i in range(n)]
    times = pa.array(np.arange(t0_ms, t0_ms + n), pa.int64()).cast(pa.timestamp("ms", tz="UTC"))
    return pa.table(
        {
            "time": times,
            "in.tensor": tensors.cast(pa.list_(pa.float32())),
            "out.dense_1": out.cast(pa.list_(pa.float32())),
            "anomaly.count": pa.array(np.zeros(n, np.uint32)),
            "metadata.last_model": pa.array(['{"model_name":"m","model_sha":"abc"}'] * n),
            "metadata.pipeline_version": pa.array(["3b49fba8-94d8-4fca-aecc-c75257fd16c6"] * n),
            "metadata.elapsed": pa.array([[1000, 2000]] * n, pa.list_(pa.int64())),
            "metadata.dropped": pa.array(drops, pa.list_(pa.string())),
            "metadata.partition": pa.array([partition] * n),
        }
    )


def table_rows(url: str, where: str = "true", storage: dict[str, str] | None = None) -> list:
    """`(partition, _epoch, _seq)` of every stored row of the Delta table at `url`, through
    DuckDB over `deltalake`'s pyarrow dataset (as README shows readers)."""
    import duckdb
    from deltalake import DeltaTable

    if not DeltaTable.is_deltatable(url, storage_options=storage):
        return []
    dataset = DeltaTable(url, storage_options=storage).to_pyarrow_dataset()  # noqa: F841
    sql = f"SELECT partition, _epoch, _seq FROM dataset WHERE {where} ORDER BY 1, 2, 3"
    return duckdb.sql(sql).fetchall()


@dataclass
class OpsServer:
    """`ops-sync serve` as a real process (TLS on 127.0.0.1)."""

    data: Path
    port: int = field(default_factory=free_port)
    clock_offset: float = 0.0
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    extra: list[str] = field(default_factory=list)  # more `serve` flags (--metadata, --logs)
    env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def ca(self) -> Path:
        return self.data / "ca.crt"

    def start(self, timeout: float = 20.0) -> None:
        self.log_path = self.data.parent / f"ops-{self.port}.log"
        command = [
            sys.executable,
            "-m",
            "ops_sync",
            "serve",
            "--data",
            str(self.data),
            "--port",
            str(self.port),
            "--admin-token",
            ADMIN,
            "--clock-offset",
            str(self.clock_offset),
            *self.extra,
        ]
        env = {**os.environ, **self.env}
        with open(self.log_path, "ab") as sink:
            self.process = subprocess.Popen(command, stdout=sink, stderr=sink, cwd=REPO, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ops-sync serve exited: {self.log()}")
            if self.ca.exists() and self._healthy():
                return
            time.sleep(0.1)
        raise TimeoutError(f"ops-sync serve did not come up: {self.log()}")

    def _healthy(self) -> bool:
        try:
            ctx = build_ssl_context("client", ca_pem=self.ca.read_bytes())
            return httpx.get(f"{self.url}/healthz", verify=ctx, timeout=2).status_code == 200
        except (httpx.HTTPError, OSError):
            return False

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path and self.log_path.exists() else ""


def write_client_files(directory: Path, joined: Joined) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / "edge.crt", directory / "edge.key"
    cert.write_text(joined.cert)
    key.write_bytes(key_pem(joined.key))
    os.chmod(key, 0o600)
    return cert, key
