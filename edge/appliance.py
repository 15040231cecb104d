"""The appliance's composition root: its parts built from the settings, started and stopped in
one explicit order.

Start (`start`, run by the HTTP server's lifespan before it accepts requests):
1. the log buffer opens its file and stores what the journal holds from a crash;
2. the gRPC front end (the Open Inference Protocol, `edge.v2.grpc_server`) binds GRPC_PORT
   (unless 0) and answers at once (UNAVAILABLE until the pipeline is loaded);
3. the sync companion (when an EDGE_BUNDLE is set) redeems its join token once and starts
   shipping in the background;
4. the pipeline loader thread pulls, verifies and loads the pipeline: `/pipelines` lists it
   as `Loading` (its name from the URL), `/health/ready` says 503, then `Running`. A load that
   fails (registry unreachable with no cache, a digest mismatch, a model that will not load)
   does not end the process: `/pipelines` says `Error` with the reason, readiness stays 503,
   and the loader tries again after a capped, jittered backoff (`Backoff`: 1 s doubling to
   PULL_RETRY_MAX, 60 s by default), one log line per failure, until it succeeds. A refused
   signature (PIPELINE_VERIFY_KEYS) is such a failure: nothing is loaded, and it is retried,
   since pushing the signature fixes "unsigned". Only what
   no retry can fix ends the start: an invalid PIPELINE_URL (checked before serving), a
   model runtime this image lacks, a gRPC port in use, a refused join.
Stop (`stop`, after the server stopped accepting): the gRPC front end (its calls in flight
given a grace period), the sync companion, the loader and the rollout worker (given time
to finish a native load), the pipeline's runtimes, then the log buffer (journal synced last).

While it runs, the ops center may ask for another pipeline URL (`switch_to`, through the sync
companion): `edge.rollout` pulls, loads and smoke-tests it in the background and `install`
swaps it in between requests; each request holds the version it started on (`hold`). The last
version a rollout installed is what a restart serves, when PIPELINE_URL has not changed since.

The sync companion comes from the ops center package through the `edge_appliance.sync` entry
point (`SyncPlugin`): ops_sync builds on edge, and edge never imports ops_sync.
"""

from __future__ import annotations

import enum
import hashlib
import logging
import random
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Protocol, TypeVar

import anyio
import anyio.to_thread

from edge.config import Settings
from edge.errors import (
    ConfigError,
    EdgeError,
    NotFound,
    NotReady,
    RegistryError,
    RuntimeNotInstalled,
)
from edge.logbuffer import LogBuffer
from edge.metrics import Metrics
from edge.pipeline import Pipeline
from edge.registry import Reference
from edge.rollout import LastGood, Rollout

log = logging.getLogger("edge")
T = TypeVar("T")
SYNC_ENTRY_POINTS = "edge_appliance.sync"
VERIFY_KEYS = "PIPELINE_VERIFY_KEYS"  # a bundle's pinned verify keys (PEM text), if any
LONE_BYTES = 4 << 20  # a lone request up to this size runs on the event loop (`runs_alone`)


class LoadState(enum.StrEnum):
    """What `/health` and `/pipelines` say of the pipeline (`Error` while a retry waits)."""

    LOADING = "Loading"
    RUNNING = "Running"
    ERROR = "Error"


class SyncCompanion(Protocol):
    """What the appliance needs of the sync agent: start (join), stop, a status for health."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def status(self) -> dict[str, Any]: ...


class PipelineSwitch(Protocol):
    """What the sync companion may ask of the appliance: serve another pipeline URL (in the
    background, `edge.rollout`), and how the last such attempt stands."""

    def switch_to(self, url: str) -> None: ...

    def rollout_status(self) -> dict[str, Any]: ...


class GrpcFront(Protocol):
    """A front end on a port of its own, started after the log buffer, stopped first."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class SyncPlugin(Protocol):
    """How the appliance reaches an ops center (provided by the `ops_sync` package)."""

    def read_bundle(self, text: str) -> dict[str, str]:
        """EDGE_BUNDLE's keys (EDGE_NAME, PIPELINE_URL, ...); a ConfigError if malformed."""
        ...

    def companion(
        self,
        bundle: dict[str, str],
        persist_dir: Path,
        buffer: LogBuffer,
        health: Callable[[], dict[str, Any]],
        switch: PipelineSwitch | None = None,
        heartbeat_interval: float = 30.0,
    ) -> SyncCompanion: ...

    def register_publish(self, opscenter: str, record: dict[str, Any]) -> dict[str, Any]: ...


def sync_plugin() -> SyncPlugin | None:
    """The installed sync plugin, or None when the ops center package is not installed."""
    for entry in entry_points(group=SYNC_ENTRY_POINTS):
        plugin: SyncPlugin = entry.load()
        return plugin
    return None


def say(text: str) -> None:
    """A start-up line in the seed's words, on stdout."""
    print(text, flush=True)


@dataclass
class Backoff:
    """Waits between load attempts: `first` doubling up to `cap`, each drawn from
    [half, all] of that step (jitter, so a fleet that booted together does not pull in step)."""

    first: float = 1.0
    cap: float = 60.0
    attempt: int = 0

    def next(self) -> float:
        step = min(self.cap, self.first * 2 ** min(self.attempt, 32))
        self.attempt += 1
        return random.uniform(step / 2, step)


@dataclass
class Appliance:
    """Every part of a running appliance; the routes read it, `start` / `stop` run it."""

    settings: Settings
    buffer: LogBuffer | None = None
    sync: SyncCompanion | None = None
    pipeline: Pipeline | None = None
    state: LoadState = LoadState.LOADING
    error: str | None = None
    # model runs at once, off the event loop (CONFIG_CPUS)
    limiter: anyio.CapacityLimiter = field(default_factory=lambda: anyio.CapacityLimiter(1))
    started: float = field(default_factory=time.time)
    metrics: Metrics = field(default_factory=Metrics)  # every front end's inference figures
    # the Open Inference Protocol over gRPC (`edge.v2.grpc_server`), when GRPC_PORT is not 0
    grpc: GrpcFront | None = None
    # called once when a part cannot start: the CLI stops the server (exit status 2)
    on_fatal: Callable[[Exception], None] | None = None
    _bundle: dict[str, str] | None = None
    _loader: threading.Thread | None = None
    _failed: bool = False
    _stopping: threading.Event = field(default_factory=threading.Event)
    load_attempts: int = 0  # failed loads so far (the loader retries)
    next_retry: float | None = None  # when the loader tries again (epoch s)
    _expected_name: str | None = None
    # the PIPELINE_URL given (the bundle's or the setting's); `settings.pipeline_url` is the
    # URL served at start, the last rolled-out one when there is one (`LastGood`)
    configured_url: str | None = None
    rollout: Rollout | None = None
    _swap: threading.Lock = field(default_factory=threading.Lock)  # `pipeline` changes under it

    @classmethod
    def from_settings(cls, settings: Settings) -> Appliance:
        """The parts the settings ask for (nothing started yet): the bundle read, the log
        buffer made, the sync companion built."""
        bundle = None
        plugin = sync_plugin() if settings.edge_bundle else None
        if settings.edge_bundle:
            if plugin is None:
                raise ConfigError(
                    "EDGE_BUNDLE is set but this installation has no ops center sync (the "
                    "ops_sync package); install the full appliance"
                )
            bundle = plugin.read_bundle(settings.edge_bundle)
            settings = replace(settings, partition=bundle["EDGE_NAME"])
            if not settings.pipeline_url:
                settings = replace(settings, pipeline_url=bundle.get("PIPELINE_URL"))
            if not settings.verify_keys and bundle.get(VERIFY_KEYS):  # pinned by the ops center
                settings = replace(settings, verify_keys=bundle[VERIFY_KEYS])
        if not settings.pipeline_url:
            raise ConfigError(
                "PIPELINE_URL is not set: give the pipeline's URL from `edge publish` "
                "(HOST/REPOSITORY/pipelines/NAME:VERSION or oci-layout:DIR[:TAG])"
            )
        try:  # no retry fixes a malformed URL: refuse it before serving
            Reference.parse(settings.pipeline_url)
        except RegistryError as exc:
            raise ConfigError(f"PIPELINE_URL is not valid: {exc}") from None
        if settings.verify_keys:  # a key that does not parse ends the start
            from edge.signing import fingerprint, load_public_keys

            keys = load_public_keys(settings.verify_keys)
            log.info("pipeline signatures verified with keys %s", [fingerprint(k) for k in keys])
        else:
            log.warning(
                "pipeline signatures are not verified: PIPELINE_VERIFY_KEYS is not set (any "
                "pipeline at PIPELINE_URL is loaded, as before)"
            )
        settings.persist_dir.mkdir(parents=True, exist_ok=True)
        configured = settings.pipeline_url
        last = LastGood.read(settings.persist_dir)
        if last is not None and last.configured_url == configured != last.pipeline_url:
            say(f"Serving the last rolled-out pipeline {last.pipeline_url} (PIPELINE_URL as then)")
            settings = replace(settings, pipeline_url=last.pipeline_url)
        appliance = cls(
            settings, limiter=anyio.CapacityLimiter(settings.cpus), configured_url=configured
        )
        if settings.logging_enabled:
            appliance.buffer = LogBuffer(
                settings.persist_dir / "logbuffer.db",
                max_bytes=settings.log_buffer_bytes,
                keep_synced_bytes=settings.log_buffer_bytes // 4,  # for `GET /logs` after a sync
                fsync_interval=settings.log_fsync_interval,
            )
        if bundle is not None:
            if appliance.buffer is None:
                raise ConfigError("EDGE_BUNDLE needs inference logging on (EDGE_LOGGING=true)")
            assert plugin is not None
            appliance.sync = plugin.companion(
                bundle,
                settings.persist_dir,
                appliance.buffer,
                appliance.health_report,
                switch=appliance,
                heartbeat_interval=settings.sync_heartbeat_interval,
            )
        return appliance

    # ---------------------------------------------------------------- the parts, in order

    async def start(self) -> None:
        if self.buffer is not None:
            self.buffer.start()
        if self.settings.grpc_port:
            from edge.v2.grpc_server import GrpcServer

            self.grpc = GrpcServer(self)
            try:  # a port in use ends the start, as the HTTP port would
                await self.grpc.start()
            except ConfigError as exc:
                self.grpc = None
                self._fail(exc)
                return
        if self.sync is not None:
            try:  # joins once (redeems the token), then syncs in the background
                await self.sync.start()
            except Exception as exc:  # refused token, removed edge, unwritable key: say why
                self._fail(exc)
                return
        if self.pipeline is None:
            self._loader = threading.Thread(target=self._load, name="pipeline-loader", daemon=True)
            self._loader.start()
        else:
            self.state = LoadState.RUNNING

    async def stop(self) -> None:
        self._stopping.set()  # a loader waiting to retry gives up at once
        if self.grpc is not None:  # stops taking calls, lets those running finish
            await self.grpc.stop()
        if self.sync is not None:
            await self.sync.stop()
        if self._loader is not None and self._loader.is_alive():
            # exiting while native code loads a model can abort the process
            await anyio.to_thread.run_sync(self._loader.join, 60.0)
        if self.rollout is not None:
            self.rollout.wake()
            await anyio.to_thread.run_sync(self.rollout.join, 60.0)
        if self.pipeline is not None:
            self.pipeline.close()
        if self.buffer is not None:
            self.buffer.close()

    @property
    def failed(self) -> bool:
        return self._failed

    @property
    def pipeline_name(self) -> str:
        """The loaded pipeline's name, else the name its URL gives (or "unknown")."""
        if self.pipeline is not None:
            return self.pipeline.name
        if self._expected_name is None:
            from edge.cache import expected_name

            self._expected_name = expected_name(self.settings.pipeline_url or "")
        return self._expected_name

    def _load(self) -> None:
        """Load the pipeline, retrying every failure after a `Backoff` wait until it loads or
        the appliance stops."""
        backoff = Backoff(cap=self.settings.pull_retry_max)
        while not self._stopping.is_set():
            try:
                pipeline = load_pipeline(self.settings)
            except (ConfigError, RuntimeNotInstalled) as exc:  # no retry fixes these
                self._fail(exc)
                return
            except Exception as exc:  # the device keeps serving its health and retries
                if self.pipeline is not None:  # a rollout installed one meanwhile
                    return
                self._retry_later(exc, backoff.next())
                continue
            with self._swap:
                taken = self._stopping.is_set() or self.pipeline is not None
                if not taken:
                    self.pipeline, self.error, self.next_retry = pipeline, None, None
                    self.state = LoadState.RUNNING
            if taken:  # stopping, or a rollout installed another version meanwhile
                pipeline.close()
                return
            grpc = f", gRPC on {self.settings.grpc_port}" if self.settings.grpc_port else ""
            say(f"Engine ready: pipeline {pipeline.name} on port {self.settings.port}{grpc}")
            return

    # ---------------------------------------------------------------- rollout and swap

    @contextmanager
    def hold(self, name: str | None = None) -> Iterator[Pipeline]:
        """The serving pipeline (`serving`), held until the block ends: a swap meanwhile
        lets this request finish on it, and closes it after."""
        with self._swap:
            pipeline = self.serving(name)
            pipeline.enter()
        try:
            yield pipeline
        finally:
            pipeline.leave()

    def install(self, pipeline: Pipeline) -> None:
        """Serve `pipeline` from the next request on (the rollout worker's last step); the
        old one closes once its requests finish. It becomes the last good version."""
        with self._swap:
            old, self.pipeline = self.pipeline, pipeline
            self.state, self.error, self.next_retry = LoadState.RUNNING, None, None
        if old is not None:
            old.retire()
        configured = self.configured_url or self.settings.pipeline_url
        assert pipeline.url is not None and configured is not None
        good = LastGood(
            pipeline.url, pipeline.digest, pipeline.definition.version, configured, time.time()
        )
        try:
            good.write(self.settings.persist_dir)
        except OSError as exc:  # serving goes on; a restart serves PIPELINE_URL
            log.warning("could not record the rolled-out version: %s", exc)
        was = f"{old.definition.version} -> " if old is not None else ""
        say(f"Rolled out: pipeline {pipeline.name} version {was}{pipeline.definition.version}")

    def switch_to(self, url: str) -> None:
        """Serve `url` (a published pipeline URL) instead; pulled in the background."""
        if self.rollout is None:
            self.rollout = Rollout(
                load=lambda target: load_pipeline(
                    replace(self.settings, pipeline_url=target), echo=lambda line: None
                ),
                install=self.install,
                serving_url=lambda: self.pipeline.url if self.pipeline is not None else None,
                may_start=self._may_roll_out,
                backoff=lambda: Backoff(cap=self.settings.pull_retry_max),
                stopping=self._stopping,
                redact=self.redact,
            )
        self.rollout.switch_to(url)

    def _may_roll_out(self, url: str) -> bool:
        """Not while the start-up loader's first attempt runs, nor beside its retries of the
        same URL (one pull of a URL at a time)."""
        if self.pipeline is not None:
            return True
        return self.state is not LoadState.LOADING and url != self.settings.pipeline_url

    def rollout_status(self) -> dict[str, Any]:
        return self.rollout.status() if self.rollout is not None else {"state": "none"}

    def running(self) -> dict[str, Any] | None:
        pipeline = self.pipeline
        if pipeline is None:
            return None
        return {
            "pipeline_url": pipeline.url,
            "pipeline_version": pipeline.definition.version,
            "digest": pipeline.digest,
        }

    def _retry_later(self, exc: Exception, delay: float) -> None:
        self.load_attempts += 1
        reason = self.redact(str(exc) or type(exc).__name__)
        self.state, self.error = LoadState.ERROR, reason
        self.next_retry = time.time() + delay
        log.warning(
            "pipeline load failed (attempt %d), retrying in %.1f s: %s",
            self.load_attempts,
            delay,
            reason,
            exc_info=None if isinstance(exc, EdgeError) else exc,  # a bug: its traceback
        )
        self._stopping.wait(delay)

    def redact(self, text: str) -> str:
        """`text` with the settings' secrets (registry password, bundle) masked."""
        for secret in (self.settings.oci_password, self.settings.edge_bundle):
            if secret:
                text = text.replace(secret, "***")
        return text

    def _fail(self, exc: Exception) -> None:
        """A part could not start: the appliance says why and stops (exit status 2)."""
        self.state, self.error, self._failed = LoadState.ERROR, str(exc), True
        print(f"error: {exc}", file=sys.stderr, flush=True)
        if not isinstance(exc, EdgeError):
            log.exception("start-up failed")
        if self.on_fatal is not None:
            self.on_fatal(exc)

    # ---------------------------------------------------------------- what the routes ask

    async def run_large(self, pipeline: Pipeline, size: int, work: Callable[[], T]) -> T:
        """`work` (a large request's decode, run, journal and answer) on a worker thread
        within the model budget (CONFIG_CPUS), or on the event loop when it runs alone."""
        if self.runs_alone(pipeline, size):
            return work()
        return await anyio.to_thread.run_sync(work, limiter=self.limiter)

    def runs_alone(self, pipeline: Pipeline, size: int) -> bool:
        """Whether a request of `size` bytes may run on the event loop though it is large:
        it is the only request in flight and no model runs on a worker thread, so nothing
        waits for the loop meanwhile, and two thread hops (0.3-0.7 ms here) are saved. Not
        with a budget of several model runs (a burst would run one by one on the loop), nor
        when an answer waits for an fsync (never on the loop)."""
        limiter, buffer = self.limiter, self.buffer
        return (
            size <= LONE_BYTES
            and pipeline.quick
            and pipeline.alone
            and limiter.total_tokens == 1
            and limiter.borrowed_tokens == 0
            and (buffer is None or not buffer.syncs_each_answer)
        )

    def serving(self, name: str | None = None) -> Pipeline:
        """The loaded pipeline (named `name`, when given), else NotReady / NotFound."""
        pipeline = self.pipeline
        if pipeline is None:
            if self.state is LoadState.ERROR:
                raise NotReady(f"the pipeline failed to load: {self.error}")
            raise NotReady("the pipeline is still loading; retry shortly")
        if name is not None and name != pipeline.name:
            raise NotFound(f"no pipeline named {name!r}; this appliance serves {pipeline.name!r}")
        return pipeline

    def health_report(self) -> dict[str, Any]:
        """`/health`: status, pipeline, log buffer and sync figures (reads SQLite: a thread)."""
        pipeline = self.pipeline
        report: dict[str, Any] = {
            "status": str(self.state),
            "pipeline": pipeline.name if pipeline else None,
            "pipeline_version": pipeline.definition.version if pipeline else None,
            "error": self.error,
            "uptime_s": round(time.time() - self.started, 1),
            "running": self.running(),
            "rollout": self.rollout_status(),
        }
        if self.load_attempts:
            retry = self.next_retry
            report["load_attempts"] = self.load_attempts
            report["next_retry_s"] = round(max(0.0, retry - time.time()), 1) if retry else None
        if self.buffer is not None:
            report["log_buffer"] = self.buffer.stats()
        if self.sync is not None:
            report["sync"] = self.sync.status()
        return report


def load_pipeline(settings: Settings, echo: Callable[[str], None] = say) -> Pipeline:
    """Pull (or read from the cache), verify and load the pipeline `settings` name. The pull
    and its checks (digests; signatures with PIPELINE_VERIFY_KEYS) are `fetch_pipeline`'s:
    nothing is loaded unless they pass."""
    from edge.cache import fetch_pipeline
    from edge.runtimes import RuntimeContext, load_runtime
    from edge.signing import load_public_keys

    assert settings.pipeline_url
    keys = load_public_keys(settings.verify_keys) if settings.verify_keys else None
    local = fetch_pipeline(
        settings.pipeline_url,
        settings.persist_dir,
        settings.oci_username,
        settings.oci_password,
        settings.oci_insecure,
        echo=echo,
        registry=settings.oci_registry,
        verify_keys=keys,
    )
    definition = local.definition
    echo("Starting engine")
    context = RuntimeContext(
        threads=settings.cpus,
        gpus=definition.deployment.gpus,
        work_dir=_empty_dir(local.directory / "work"),  # last start's unzipped models go
    )
    runtimes = {
        name: load_runtime(definition.models[name], path, context)
        for name, path in local.model_paths.items()
    }
    validator = None
    if definition.validations:
        from edge.validations import load_validations

        validator = load_validations(definition.validations, definition.polars_version)
    pipeline = Pipeline(definition, runtimes, settings.partition, validator)
    pipeline.url = settings.pipeline_url
    manifest = (local.directory / "manifest.json").read_bytes()  # as verified: its digest
    pipeline.digest = f"sha256:{hashlib.sha256(manifest).hexdigest()}"
    return pipeline


def _empty_dir(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path
