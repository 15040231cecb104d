"""Run the ops center under uvicorn with TLS, handing the client certificate to the app.

uvicorn verifies client certificates but does not pass them to the application. This module's
`PeerCertProtocol` (a subclass of uvicorn's httptools protocol) reads the verified peer
certificate off the TLS socket when the connection is made and puts it into every request's
scope as the standard ASGI TLS extension (`scope["extensions"]["tls"]["client_cert_chain"]`),
which `ops_sync.server` reads. The certificate never comes from a header, so nothing in
front of the app can forge it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from ops_sync.center import OpsCenter
from ops_sync.identity import build_ssl_context, write_private
from ops_sync.server import create_app

log = logging.getLogger("ops_sync.serve")
ASGIApp = Callable[..., Any]


def with_tls_extension(app: ASGIApp, tls: dict[str, Any]) -> ASGIApp:
    async def wrapped(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            scope = {**scope, "extensions": {**(scope.get("extensions") or {}), "tls": tls}}
        await app(scope, receive, send)

    return wrapped


class PeerCertProtocol(HttpToolsProtocol):
    """uvicorn's HTTP protocol, plus the peer certificate in the scope (see module doc)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is None:
            return
        der = ssl_object.getpeercert(binary_form=True)
        tls = {
            "server_cert": None,
            "client_cert_chain": [ssl.DER_cert_to_PEM_cert(der)] if der else [],
            "client_cert_name": None,
            "client_cert_error": None,
            "tls_version": None,
            "cipher_suite": None,
        }
        self.app = with_tls_extension(self.app, tls)


def server_tls(center: OpsCenter, data_dir: Path, hosts: list[str]) -> ssl.SSLContext:
    """Issue this run's server certificate from our CA and build the server context. Its
    validity uses the real time: TLS peers check it against theirs, whatever `--clock-offset`."""
    cert, key = center.ca.issue_server(hosts, time.time())
    cert_file, key_file = data_dir / "server.crt", data_dir / "server.key"
    write_private(key_file, key)
    cert_file.write_bytes(cert)
    return build_ssl_context("server", ca_pem=center.ca.pem, cert_file=cert_file, key_file=key_file)


def run(
    data_dir: Path,
    admin_token: str,
    port: int,
    host: str,
    bind: str,
    *,
    trust_domain: str,
    accepted_domains: tuple[str, ...] = (),
    clock_offset: float = 0.0,
    ca_files: tuple[Path, Path] | None = None,
    max_connections: int = 10_000,
    metadata_url: str | None = None,
    logs_url: str | None = None,
    commit_interval: float = 0.25,
    retention_days: int | None = None,
    upkeep_interval: float = 60.0,
    verify_keys: str | None = None,
    assay_interval: float = 60.0,
) -> None:
    """Serve until interrupted (blocking). Request bodies have 30 s to arrive
    (`edge.httpio.read_body`); past `max_connections` open connections, new ones get 503."""

    def clock() -> float:
        return time.time() + clock_offset

    center = OpsCenter(
        data_dir,
        admin_token,
        f"{host}:{port}",
        trust_domain=trust_domain,
        accepted_domains=accepted_domains,
        clock=clock,
        ca_files=ca_files,
        metadata_url=metadata_url,
        logs_url=logs_url,
        commit_interval=commit_interval,
        verify_keys=verify_keys,
    )
    stop = threading.Event()
    upkeep = threading.Thread(
        target=_upkeep, args=(center, stop, upkeep_interval, retention_days), daemon=True
    )
    upkeep.start()
    assays = threading.Thread(target=_assays, args=(center, stop, assay_interval), daemon=True)
    assays.start()
    context = server_tls(center, data_dir, [host, "localhost", "127.0.0.1"])
    config = uvicorn.Config(
        create_app(center),
        host=bind,
        port=port,
        http=PeerCertProtocol,
        ssl_context_factory=lambda _config, _default: context,
        lifespan="off",
        log_level="info",
        access_log=False,
        timeout_keep_alive=30,
        limit_concurrency=max_connections,
    )
    log.info(
        "ops center starting data=%s metadata=%s logs=%s listen=%s:%d opscenter_host=%s:%d ca=%s",
        data_dir,
        center.store.db.shown,
        center.logs.url,
        bind,
        port,
        host,
        port,
        data_dir / "ca.crt",
    )
    try:
        uvicorn.Server(config).run()
    finally:
        stop.set()
        center.close()


def _upkeep(center: OpsCenter, stop: threading.Event, interval: float, days: int | None) -> None:
    """Compaction and retention in the background, by whichever replica holds the lease."""
    owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    while not stop.wait(interval):
        try:
            done = center.upkeep(owner, days)
            if done:
                log.info("upkeep compacted_files=%d deleted_files=%d", *done.values())
        except Exception:  # upkeep must never take the server down; the next round retries
            log.exception("upkeep round failed")


def _assays(center: OpsCenter, stop: threading.Event, interval: float) -> None:
    """Scheduled assay windows, by whichever replica holds the `assays` lease."""
    owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    while not stop.wait(interval):
        try:
            done = center.assays.run_due(owner)
            if done:
                log.info("assays windows_run=%d", done)
        except Exception:  # a failed round must not take the server down; the next retries
            log.exception("assay round failed")
