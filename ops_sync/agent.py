"""The edge side of the sync: join once, then ship, heartbeat and renew in the background.

`SyncAgent` runs inside `edge serve`. It redeems the bundle's join token once (the key pair is
made on the device; only a CSR leaves it), then loops: renew the certificate at about half its
life (with jitter), heartbeat with the appliance's health and the buffer's counters, and ship
`buffer.pending()` batches in sequence order as Arrow IPC, each with its (epoch, first_seq,
last_seq): in one zstd frame once the ops center's replies say it reads that
(`Accept-Encoding: zstd`), else with zstd-compressed buffers (`protocol.encode_batch`).
`buffer.ack()` runs only after the ops center's reply says the batch is stored; a batch sent
twice is stored once there. Failures back off exponentially (capped, with jitter); every call
has a finite timeout. A heartbeat's reply carries the pipeline version the ops center wants
here (`desired`): the agent hands its URL to the appliance (`PipelineSwitch.switch_to`, which
rolls it out in the background) and heartbeats again as soon as the rollout's state changes,
so the ops center sees it within a round. Past its certificate's life (7 days without contact)
the agent stops calling, keeps the buffer and keys, and reports `credentials expired` until a
new bundle arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from edge.appliance import PipelineSwitch
from edge.errors import LogBufferError
from edge.logbuffer import Batch, LogBuffer
from ops_sync import protocol
from ops_sync.client import check
from ops_sync.credentials import CredentialFiles, Credentials
from ops_sync.errors import (
    BadRequest,
    BundleError,
    CredentialsExpired,
    EdgeRemoved,
    PayloadTooLarge,
    Refused,
    SyncError,
    Unreachable,
    UnsupportedCoding,
)
from ops_sync.identity import build_ssl_context, make_csr

log = logging.getLogger("ops_sync.agent")
TIMEOUT = httpx.Timeout(30.0, connect=10.0)
# An idle connection is kept 25 s (httpx's default is 5 s), below `ops-sync serve`'s 30 s: an
# agent that waits between ships or heartbeats reuses its mTLS session instead of handshaking
# again (TLS handshakes were about half of a busy ops center's samples in bench/fleet.py).
LIMITS = httpx.Limits(max_connections=4, max_keepalive_connections=1, keepalive_expiry=25.0)
_BUFFER_FACTS = ("epoch", "rows", "bytes", "unsynced_rows", "oldest_unsynced", "dropped")


def backoff(failures: int, base: float, cap: float) -> float:
    """Seconds to wait after `failures` failures in a row: exponential, capped, jittered
    (between half and all of it, so a fleet coming back does not retry in step)."""
    return min(cap, base * 2 ** min(failures - 1, 32)) * random.uniform(0.5, 1.0)


class SyncAgent:
    def __init__(
        self,
        bundle: dict[str, str],
        persist_dir: Path,
        buffer: LogBuffer,
        health: Callable[[], dict[str, Any]],
        clock: Callable[[], float] = time.time,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        batch_rows: int = 10_000,
        ship_interval: float = 1.0,
        heartbeat_interval: float = 30.0,
        backoff_base: float = 1.0,
        backoff_cap: float = 60.0,
        timeout: httpx.Timeout = TIMEOUT,
        join_timeout: float = 15.0,
        switch: PipelineSwitch | None = None,
    ) -> None:
        missing = [k for k in protocol.REQUIRED_KEYS if not bundle.get(k)]
        if missing:
            raise BundleError(f"EDGE_BUNDLE lacks {', '.join(missing)}")
        self._secret = bundle["JOIN_TOKEN"]
        self._name = bundle["EDGE_NAME"]
        self._host = bundle["OPSCENTER_HOST"]
        self._pin = protocol.ca_pem(bundle)
        self._files = CredentialFiles(persist_dir)
        self._rows = batch_rows  # rows per batch now: halved while batches are too large
        self._coding: str | None = None  # the batches' Content-Encoding the ops center reads
        self._buffer, self._health, self._clock = buffer, health, clock
        self._transport, self._timeout, self._join_timeout = transport, timeout, join_timeout
        self._batch_rows, self._ship_interval = batch_rows, ship_interval
        self._heartbeat_interval = heartbeat_interval
        self._backoff = (backoff_base, backoff_cap)
        self._creds: Credentials | None = None
        self._http: httpx.AsyncClient | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._refused: Refused | None = None
        self._renew_at = 0.0
        self._next_heartbeat = 0.0
        self._last_contact: float | None = None
        self._last_error: str | None = None
        self.shipped_rows = 0
        self._switch = switch
        self._reported_rollout: Any = None  # the rollout state the last heartbeat carried

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        """Join if this bundle was never redeemed here, then run the loop in the background.

        The ops center being down is not an error (the loop retries). A definite refusal of
        the join token (expired, used, unknown, edge removed) raises that `Refused` error: its
        message says to mint a new bundle."""
        creds = self._files.load()
        if creds is not None and creds.token_sha256 == protocol.token_digest(self._secret):
            self._adopt(creds)
        else:
            try:
                await asyncio.wait_for(self._join(), self._join_timeout)
            except Refused:
                raise
            except (SyncError, TimeoutError, OSError) as exc:
                self._note_error(exc)
                log.warning("join deferred, ops center not reachable yet: %s", self._last_error)
        self._task = asyncio.create_task(self._run(), name="ops-sync-agent")

    async def stop(self) -> None:
        self._stopping.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    def status(self) -> dict[str, Any]:
        creds = self._creds
        credentials = self._credentials()
        if isinstance(self._refused, EdgeRemoved):
            health = "edge removed"
        elif credentials == "expired":
            health = "credentials expired"
        elif creds is None:
            health = "not joined"
        else:
            health = "ok" if self._last_error is None else "sync retrying"
        return {
            "joined": creds is not None,
            "credentials": credentials,
            "health": health,
            "edge_name": self._name,
            "edge_id": creds.edge_id if creds else None,
            "spiffe_id": creds.spiffe_id if creds else None,
            "cert_not_after": _iso(creds.cert_not_after) if creds else None,
            "opscenter": self._host,
            "last_contact": _iso(self._last_contact),
            "last_error": self._last_error,
            "shipped_rows": self.shipped_rows,
        }

    def _credentials(self) -> str:
        if self._creds is None:
            return "missing"
        if isinstance(self._refused, EdgeRemoved):
            return "revoked"
        if isinstance(self._refused, CredentialsExpired):
            return "expired"
        return "expired" if self._clock() >= self._creds.cert_not_after else "valid"

    # -- the loop --------------------------------------------------------------------------
    async def _run(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            try:
                wait = await self._step()
                failures = 0
            except Refused as exc:
                self._refused = exc
                self._note_error(exc)
                log.error("ops center refused this edge: %s", exc)
                wait = 600.0
            except (SyncError, LogBufferError, OSError, ValueError) as exc:
                failures += 1
                self._note_error(exc)
                wait = backoff(failures, *self._backoff)
                log.warning("sync failed attempt=%d retry_in=%.1fs error=%s", failures, wait, exc)
            except Exception as exc:  # a bug must not end the sync silently: log, back off
                failures += 1
                self._note_error(exc)
                wait = backoff(failures, *self._backoff)
                log.exception("sync step failed unexpectedly attempt=%d", failures)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), wait)

    async def _step(self) -> float:
        """One round; returns how long to wait before the next."""
        if self._creds is None:
            await self._join()
        assert self._creds is not None
        now = self._clock()
        if now >= self._creds.cert_not_after:
            return 60.0  # nothing to do until a new bundle; keep the buffer and the keys
        if now >= self._renew_at:
            await self._renew()
        if now >= self._next_heartbeat or self._rollout_changed():
            await self._heartbeat()
        shipped = await self._ship()
        return 0.0 if shipped >= self._batch_rows else self._ship_interval

    # -- calls -----------------------------------------------------------------------------
    async def _post(self, path: str, **kwargs: Any) -> dict[str, Any]:
        if self._http is None:
            self._http = self._client()
        try:
            response = await self._http.post(path, **kwargs)
        except httpx.TransportError as exc:
            raise Unreachable(f"ops center {self._host}: {type(exc).__name__}: {exc}") from exc
        body: dict[str, Any] = check(response).json()
        self._last_contact, self._last_error, self._refused = self._clock(), None, None
        if path in _CODING_PATHS:  # the replies that say which batch coding it reads
            self._coding = protocol.accepts_coding(response.headers)
        return body

    def _client(self) -> httpx.AsyncClient:
        joined = self._creds is not None
        verify = build_ssl_context(
            "client",
            ca_pem=self._pin,
            cert_file=self._files.cert if joined else None,
            key_file=self._files.key if joined else None,
        )
        return httpx.AsyncClient(
            base_url=f"https://{self._host}",
            verify=verify,
            timeout=self._timeout,
            limits=LIMITS,
            transport=self._transport,
        )

    async def _reset_client(self) -> None:
        if self._http is not None:
            await self._http.aclose()
        self._http = None

    async def _join(self) -> None:
        key = self._files.device_key()
        csr = make_csr(key, self._name).decode()
        joined = await self._post(protocol.JOIN_PATH, json={"token": self._secret, "csr": csr})
        self._adopt(self._files.save_join(joined, protocol.token_digest(self._secret)))
        await self._reset_client()
        log.info(
            "Node attestation was successful edge=%s edge_id=%s spiffe_id=%s",
            self._name,
            joined["edge_id"],
            joined["spiffe_id"],
        )

    def _adopt(self, creds: Credentials) -> None:
        self._creds = creds
        life = creds.cert_not_after - creds.cert_not_before
        self._renew_at = creds.cert_not_before + life * random.uniform(0.4, 0.6)
        self._next_heartbeat = 0.0

    async def _renew(self) -> None:
        csr = make_csr(self._files.device_key(), self._name).decode()
        renewed = await self._post(protocol.RENEW_PATH, json={"csr": csr})
        self._files.save_cert(renewed["certificate"].encode())
        if isinstance(renewed.get("spiffe_id"), str):  # the ops center's trust domain may change
            self._files.save_spiffe_id(renewed["spiffe_id"])
        creds = self._files.load()
        assert creds is not None
        self._adopt(creds)
        await self._reset_client()
        log.info("certificate renewed edge=%s not_after=%s", self._name, _iso(creds.cert_not_after))

    def _rollout_changed(self) -> bool:
        if self._switch is None:
            return False
        status = self._switch.rollout_status()
        return (status.get("state"), status.get("updated_at")) != self._reported_rollout

    async def _heartbeat(self) -> None:
        if self._switch is not None:
            status = self._switch.rollout_status()
            self._reported_rollout = (status.get("state"), status.get("updated_at"))
        stats = await asyncio.to_thread(self._buffer.stats)
        try:  # off the event loop: the appliance's health report reads SQLite too
            health = await asyncio.to_thread(self._health)
        except Exception as exc:  # the appliance's health must not stop the sync
            health = {"error": f"health check failed: {exc}"}
        report = {
            "health": health,
            "buffer": {k: stats.get(k) for k in _BUFFER_FACTS},
            "agent": self.status(),
        }
        reply = await self._post(protocol.HEARTBEAT_PATH, json=report)
        self._next_heartbeat = self._clock() + self._heartbeat_interval
        desired = reply.get("desired")
        url = desired.get("pipeline_url") if isinstance(desired, dict) else None
        if self._switch is not None and isinstance(url, str) and url:
            self._switch.switch_to(url)  # at once: the pull runs on the appliance's thread

    async def _ship(self) -> int:
        """Send pending batches in order; ack each after the ops center stored it."""
        batches = await asyncio.to_thread(self._buffer.pending, self._rows)
        shipped = 0
        for batch in batches:
            try:
                await self._send(batch)
            except PayloadTooLarge:
                if batch.table.num_rows == 1:
                    raise  # one row over the ops center's body limit: say so, keep it
                # wide rows (images): send fewer at a time until batches fit
                self._rows = max(1, batch.table.num_rows // 2)
                log.warning("batch over the ops center's body limit; now %d rows", self._rows)
                return shipped
            await asyncio.to_thread(self._buffer.ack, batch.epoch, batch.last_seq)
            shipped += batch.table.num_rows
            self.shipped_rows += batch.table.num_rows
        self._rows = min(self._batch_rows, self._rows * 2)
        return shipped

    async def _send(self, batch: Batch) -> None:
        coding = self._coding
        body = await asyncio.to_thread(protocol.encode_batch, batch.table, coding)
        span = protocol.BatchRange(batch.epoch, batch.first_seq, batch.last_seq)
        try:
            reply = await self._post(protocol.LOGS_PATH, content=body, headers=span.headers(coding))
        except BadRequest as exc:
            if coding is None or not _refused_coding(exc, batch):
                raise
            self._coding = None  # the body every ops center reads, this batch and on
            await self._send(batch)
            return
        if (reply.get("epoch"), reply.get("last_seq")) != (batch.epoch, batch.last_seq):
            raise SyncError(f"the ops center acknowledged {reply}, not batch {batch.first_seq}")
        log.debug(
            "batch shipped epoch=%s first=%d last=%d stored=%s duplicates=%s",
            batch.epoch,
            batch.first_seq,
            batch.last_seq,
            reply.get("stored"),
            reply.get("duplicates"),
        )

    def _note_error(self, exc: BaseException) -> None:
        self._last_error = f"{type(exc).__name__}: {exc}"


_CODING_PATHS = (protocol.HEARTBEAT_PATH, protocol.LOGS_PATH)


def _refused_coding(exc: BadRequest, batch: Batch) -> bool:
    """Whether a framed batch's refusal is one the compressed-buffers body may not meet: its
    coding is not read (an ops center downgraded since its reply said it was: its 415, or
    an older one's 400 for a body that is not Arrow IPC), or one row decodes past the limit
    (a smaller batch would not help; the other body may still fit, as it did before)."""
    if isinstance(exc, UnsupportedCoding):
        return True
    if isinstance(exc, PayloadTooLarge):
        return batch.table.num_rows == 1  # `_ship` halves larger batches
    return type(exc) is BadRequest and "not a valid Arrow IPC stream" in str(exc)


def _iso(seconds: float | None) -> str | None:
    return dt.datetime.fromtimestamp(seconds, dt.UTC).isoformat() if seconds else None
