"""Remote rollout on the appliance: switch the served pipeline to another published URL while
the current one serves, without failing a request.

The sync companion hands the ops center's desired URL to `Appliance.switch_to`, which gives it
to the `Rollout` worker (a thread of its own). One attempt:
1. pull, verify and load the URL with the start-up loader's own function
   (`edge.appliance.load_pipeline`: the same digest checks, the cache when the registry is
   down), while the old version serves;
2. a smoke inference (`smoke_test`): one row of zeros shaped by the first model's declared
   inputs, run through the whole pipeline; a pipeline that declares no inputs (a Python step
   or BYOP without schemas) is checked by its load alone;
3. `install` swaps it in between requests (a request holds the version it started on until it
   answers; the old one closes when the last of those requests finishes);
4. the URL and its manifest digest become the last good version (`LastGood`,
   PERSIST_DIR/rollout.json), which a restart serves.
If any step fails the old version keeps serving, the status says `failed` with the reason, and
the worker tries again after a `Backoff` wait (the loader's), until it succeeds or another URL
is asked for. `status()` is what `/health` and the heartbeat report as `rollout`.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from edge.errors import EdgeError
from edge.pipeline import Pipeline

log = logging.getLogger("edge.rollout")
LAST_GOOD = "rollout.json"


def smoke_test(pipeline: Pipeline) -> bool:
    """Run one row of zeros shaped by the pipeline's declared inputs through it (raises what
    the run raises). False when it declares none, so there is nothing to derive a row from."""
    from edge.v2 import tensors
    from edge.v2.model import V2Model

    inputs = V2Model(pipeline).inputs
    if not inputs:
        return False
    columns = {}
    for meta in inputs:
        dims = [1] + [d if d > 0 else 1 for d in (meta.shape or (-1,))[1:]]
        if meta.datatype == "BYTES":
            array = np.full(dims, "", dtype=object)
        else:
            array = np.zeros(dims, dtype=tensors.dtype_of(meta.datatype, meta.name))
        columns[meta.name] = tensors.to_column(array)
    pipeline.run(pa.table(columns))
    return True


@dataclass
class LastGood:
    """The last version a rollout installed, and the PIPELINE_URL it was rolled out over."""

    pipeline_url: str
    digest: str | None
    pipeline_version: str
    configured_url: str
    saved_at: float

    @classmethod
    def read(cls, persist_dir: Path) -> LastGood | None:
        path = persist_dir / LAST_GOOD
        try:
            return cls(**json.loads(path.read_text()))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError) as exc:  # damaged: start from PIPELINE_URL
            log.warning("ignoring %s: %s", path, exc)
            return None

    def write(self, persist_dir: Path) -> None:
        path = persist_dir / LAST_GOOD
        temporary = path.with_name(path.name + ".part")
        temporary.write_text(json.dumps(asdict(self)))
        os.replace(temporary, path)


@dataclass
class Status:
    pipeline_url: str | None = None
    state: str = "none"  # none | pending | current | failed
    reason: str | None = None
    attempts: int = 0  # failed attempts at this URL so far
    updated_at: float | None = None
    next_retry: float | None = None


class Rollout:
    """The worker that switches the served pipeline to the asked-for URL (see the module)."""

    def __init__(
        self,
        load: Callable[[str], Pipeline],
        install: Callable[[Pipeline], None],
        serving_url: Callable[[], str | None],
        may_start: Callable[[str], bool],
        backoff: Callable[[], Any],
        stopping: threading.Event,
        redact: Callable[[str], str],
    ) -> None:
        self._load, self._install, self._serving_url = load, install, serving_url
        self._may_start, self._backoff, self._stopping = may_start, backoff, stopping
        self._redact = redact
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._status = Status()
        self._thread: threading.Thread | None = None

    def switch_to(self, url: str) -> None:
        """Serve `url` from now on (the worker pulls it in the background); the same URL
        again changes nothing, a new one replaces the one being tried."""
        with self._lock:
            if url == self._status.pipeline_url:
                return
            self._status = Status(url, "pending", updated_at=time.time())
            self._wake.set()
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="rollout", daemon=True)
                self._thread.start()
        log.info("rollout asked pipeline_url=%s", url)

    def status(self) -> dict[str, Any]:
        with self._lock:
            return asdict(self._status)

    def wake(self) -> None:
        self._wake.set()

    def join(self, timeout: float) -> None:
        thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def _run(self) -> None:
        backoff = self._backoff()
        while not self._stopping.is_set():
            with self._lock:
                url = self._status.pipeline_url
                self._wake.clear()
                assert url is not None
                if url == self._serving_url():
                    self._set(url, "current", None)
                    self._thread = None
                    return
            if not self._may_start(url):  # the start-up loader is still at it
                self._wake.wait(0.2)
                continue
            try:
                pipeline = self._load(url)
                try:
                    if not smoke_test(pipeline):
                        log.info("rollout: no declared inputs, the load is the check url=%s", url)
                except BaseException:
                    pipeline.close()
                    raise
            except Exception as exc:
                reason = self._redact(str(exc) or type(exc).__name__)
                delay = backoff.next()
                with self._lock:
                    if url != self._status.pipeline_url:
                        continue  # another URL was asked for meanwhile: try that one
                    self._status.attempts += 1
                    self._set(url, "failed", reason, time.time() + delay)
                log.warning(
                    "rollout of %s failed (attempt %d), the current version serves on; "
                    "retrying in %.1f s: %s",
                    url,
                    self._status.attempts,
                    delay,
                    reason,
                    exc_info=None if isinstance(exc, EdgeError) else exc,
                )
                self._wake.wait(delay)
                continue
            with self._lock:
                superseded = url != self._status.pipeline_url or self._stopping.is_set()
            if superseded:
                pipeline.close()
                continue
            self._install(pipeline)
            backoff = self._backoff()

    def _set(self, url: str, state: str, reason: str | None, retry: float | None = None) -> None:
        status = self._status
        status.pipeline_url, status.state, status.reason = url, state, reason
        status.updated_at, status.next_retry = time.time(), retry
