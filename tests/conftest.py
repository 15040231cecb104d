"""Shared fixtures: a real OCI registry (Debian's docker-registry) with htpasswd auth, the
example model made at test time, and real `edge serve` processes on free loopback ports."""

from __future__ import annotations

import itertools
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

REPO = Path(__file__).resolve().parent.parent
USERNAME, PASSWORD = "edge-test", "s3cret-registry-pass"
MEASUREMENTS: list[str] = []  # lines for the end of the run: image size, demo time, ...


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if MEASUREMENTS:
        terminalreporter.section("measurements")
        for line in MEASUREMENTS:
            terminalreporter.write_line(line)


# Ports for the servers tests start: below the kernel's ephemeral range (32768-60999 here), so
# no outgoing connection takes one between `free_port` and the server's bind (a test's server
# takes a second or two to bind), and never the same one twice in a run.
_PORTS = range(20000, 32000)
_next_port = [_PORTS.start + random.randrange(len(_PORTS))]
_given: set[int] = set()


def free_port() -> int:
    """A loopback port no listener holds, not given out before in this run."""
    for _ in range(len(_PORTS)):
        port = _next_port[0]
        _next_port[0] = _PORTS.start + (port + 1 - _PORTS.start) % len(_PORTS)
        if port in _given:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _given.add(port)
        return port
    raise RuntimeError(f"no free loopback port in {_PORTS}")


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


@dataclass
class Registry:
    host: str
    root: Path  # storage root, to tamper with blobs
    username: str = USERNAME
    password: str = PASSWORD
    process: subprocess.Popen | None = None
    config: Path | None = None

    def start(self) -> None:
        assert self.config
        self.process = subprocess.Popen(
            [shutil.which("docker-registry") or "docker-registry", "serve", str(self.config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

        def up() -> bool:
            try:
                return httpx.get(f"http://{self.host}/v2/", timeout=0.5).status_code == 401
            except httpx.TransportError:
                return False

        wait_for(up, 20, "docker-registry")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)

    def blob_path(self, digest: str) -> Path:
        hexdigest = digest.split(":", 1)[1]
        return self.root / "docker/registry/v2/blobs/sha256" / hexdigest[:2] / hexdigest / "data"


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    if not shutil.which("docker-registry") or not shutil.which("htpasswd"):
        pytest.fail("docker-registry and htpasswd are required: run `make setup` (apt packages)")
    base = tmp_path_factory.mktemp("registry")
    htpasswd = subprocess.run(
        ["htpasswd", "-Bbn", "-C", "5", USERNAME, PASSWORD],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    (base / "htpasswd").write_text(htpasswd)
    port = free_port()
    config = base / "config.yml"
    config.write_text(
        "version: 0.1\n"
        "log: {level: error}\n"
        f"storage:\n  filesystem: {{rootdirectory: {base / 'data'}}}\n  delete: {{enabled: true}}\n"
        f"http: {{addr: 127.0.0.1:{port}}}\n"
        f"auth: {{htpasswd: {{realm: edge-test, path: {base / 'htpasswd'}}}}}\n"
    )
    reg = Registry(host=f"127.0.0.1:{port}", root=base / "data", config=config)
    reg.start()
    yield reg
    reg.stop()


@pytest.fixture(scope="session")
def example(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example pipeline folder (spec + ONNX model + sample data), made at test time."""
    folder = tmp_path_factory.mktemp("example")
    shutil.copy(REPO / "examples/breast-cancer/pipeline.yaml", folder / "pipeline.yaml")
    subprocess.run(
        [sys.executable, str(REPO / "examples/breast-cancer/make_model.py"), str(folder)],
        check=True,
        capture_output=True,
    )
    return folder


def edge_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "edge", *args]


def publish(
    spec: Path,
    registry: Registry | None = None,
    layout: Path | None = None,
    extra: tuple[str, ...] = (),
) -> dict:
    env = dict(os.environ)
    args = ["publish", str(spec), "--json", *extra]
    if registry is not None:
        args += ["--registry", registry.host, "--repository", "edge-tests", "--no-chart"]
        env.update(OCI_USERNAME=registry.username, OCI_PASSWORD=registry.password)
    else:
        assert layout is not None
        args += ["--layout", str(layout)]
    done = subprocess.run(edge_cmd(*args), env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@dataclass
class Edge:
    """A real `edge serve` process."""

    port: int
    persist: Path
    env: dict[str, str]
    process: subprocess.Popen | None = None
    log: Path | None = None
    extra_args: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait_ready: bool = True, timeout: float = 60) -> Edge:
        self.log = self.persist.parent / f"edge-{self.port}-{time.monotonic_ns()}.log"
        handle = open(self.log, "wb")
        self.process = subprocess.Popen(
            edge_cmd(
                "serve",
                "--port",
                str(self.port),
                "--host",
                "127.0.0.1",
                "--persist-dir",
                str(self.persist),
                *self.extra_args,
            ),
            # gRPC off unless the test gives GRPC_PORT: test processes run side by side
            env={"GRPC_PORT": "0", **self.env},
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
        if wait_ready:

            def ready() -> bool:
                if self.process is not None and self.process.poll() is not None:
                    raise RuntimeError(f"edge serve exited early:\n{self.output()}")
                try:
                    return httpx.get(f"{self.url}/health/ready", timeout=1).status_code == 200
                except httpx.TransportError:
                    return False

            wait_for(ready, timeout, f"edge serve on {self.port}")
        return self

    def load_error(self, timeout: float = 60) -> dict:
        """`/pipelines`'s entry once it says Error (a failed load: the process keeps running
        and retries it)."""
        seen: dict = {}

        def errored() -> bool:
            assert self.process is not None and self.process.poll() is None, self.output()
            try:
                (entry,) = httpx.get(f"{self.url}/pipelines", timeout=1).json()["pipelines"]
            except httpx.TransportError:
                return False
            seen.update(entry)
            return entry["status"] == "Error"

        wait_for(errored, timeout, "/pipelines to say Error")
        return seen

    def wait_exit(self, timeout: float = 60) -> int:
        assert self.process
        return self.process.wait(timeout)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log else ""

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


@pytest.fixture
def start_edge(tmp_path: Path) -> Iterator[Callable[..., Edge]]:
    started: list[Edge] = []

    def start(
        pipeline_url: str,
        registry: Registry | None = None,
        persist: Path | None = None,
        wait_ready: bool = True,
        env: dict[str, str] | None = None,
        args: list[str] | None = None,
    ) -> Edge:
        environment = {
            k: v for k, v in os.environ.items() if not k.startswith("OCI_") and k != "EDGE_BUNDLE"
        }
        environment.update(PIPELINE_URL=pipeline_url, CONFIG_CPUS="1")
        if registry is not None:
            environment.update(
                OCI_REGISTRY=registry.host,
                OCI_USERNAME=registry.username,
                OCI_PASSWORD=registry.password,
            )
        environment.update(env or {})
        edge = Edge(
            free_port(), persist or tmp_path / "persist", environment, extra_args=args or []
        )
        started.append(edge)
        return edge.start(wait_ready=wait_ready)

    yield start
    for edge in started:
        edge.stop()


@pytest.fixture(scope="session")
def postgres() -> Iterator[object]:
    """Debian's PostgreSQL 15 started for the session (fails, never skips, if it cannot)."""
    from tests.fleet_support import PostgresServer

    server = PostgresServer().start()
    yield server
    server.stop()


def load_quietly(url: str, persist: Path, partition: str | None = None) -> Any:
    """The appliance's pipeline loader in process (`edge.appliance.load_pipeline`), for a
    published URL, without its start-up lines."""
    from edge.appliance import load_pipeline
    from edge.config import load_settings

    flags: dict[str, Any] = {"pipeline_url": url, "persist_dir": persist}
    if partition is not None:
        flags["partition"] = partition
    return load_pipeline(load_settings(flags), echo=lambda line: None)


_DATABASES = itertools.count()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An ops center metadata database: a SQLite file, then a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return str(tmp_path / "ops.db")
    server: Any = request.getfixturevalue("postgres")
    return str(server.fresh_database(f"test_{next(_DATABASES)}"))


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[object]:
    """moto's S3 server process with one bucket, for the session."""
    from tests.fleet_support import MotoServer

    server = MotoServer().start()
    yield server
    server.stop()
