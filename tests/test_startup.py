"""What `edge serve` prints and does at start and at stop, as a user sees it: the seed's start-up
lines in full, OCI_REGISTRY as the registry the credentials are for, and a clean exit on
SIGTERM (what `docker stop` and Kubernetes send)."""

from __future__ import annotations

import hashlib
import json
import re
import signal
import time
from pathlib import Path

import httpx

from tests.conftest import Registry, publish, wait_for

TIMESTAMPED = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")  # log lines, not the seed's


def start_up_lines(output: str) -> list[str]:
    """The lines a person reads at start, without the timestamped log lines around them."""
    lines = [line for line in output.splitlines() if not TIMESTAMPED.match(line)]
    return lines[: lines.index("Starting engine") + 1]


def layer_hex(example: Path) -> str:
    return hashlib.sha256((example / "models/breast-cancer.onnx").read_bytes()).hexdigest()


def test_seed_start_up_lines_in_full_with_login(
    registry: Registry, example: Path, tmp_path: Path, start_edge
) -> None:
    published = publish(example / "pipeline.yaml", registry=registry)
    edge = start_edge(published["pipeline_url"], registry, persist=tmp_path / "persist")
    hexdigest = layer_hex(example)
    lines = start_up_lines(edge.output())
    version = lines[9].removeprefix("  version: ")
    assert lines == [
        "Edge Engine - Standalone mode",
        "Login Succeeded",
        f"Fetching manifest and config for pipeline: {published['pipeline_url']}",
        "Fetching model layers",
        f"digest: sha256:{hexdigest}",
        f"  filename: {hexdigest}",
        "  name: breast-cancer",
        "  type: model",
        "  runtime: onnx",
        f"  version: {version}",
        "",
        "Fetched",
        "Starting engine",
    ]
    models = httpx.get(f"{edge.url}/models").json()["models"]
    assert models[0]["version"] == version
    # the layer file is stored under the name printed
    stored = list((tmp_path / "persist" / "pipelines").glob(f"*/models/{hexdigest}"))
    assert len(stored) == 1
    assert hashlib.sha256(stored[0].read_bytes()).hexdigest() == hexdigest
    assert registry.password not in edge.output()

    # a restart with the registry down serves the copy stored under that name
    edge.stop()
    registry.stop()
    try:
        again = start_edge(published["pipeline_url"], registry, persist=tmp_path / "persist")
        assert f"  filename: {hexdigest}" in again.output()
        assert "serving the cached copy" in again.output()
    finally:
        registry.start()


def test_no_login_line_without_credentials(example: Path, tmp_path: Path, start_edge) -> None:
    url = publish(example / "pipeline.yaml", layout=tmp_path / "layout")["pipeline_url"]
    edge = start_edge(url)
    lines = start_up_lines(edge.output())
    assert lines[:2] == [
        "Edge Engine - Standalone mode",
        f"Fetching manifest and config for pipeline: {url}",
    ]
    assert "Login Succeeded" not in edge.output()


def test_oci_registry_as_the_seed_writes_it(registry: Registry, example: Path, start_edge) -> None:
    """`OCI_REGISTRY=https://sample-registry.com` (the seed's `docker login` form) names the
    registry of a pipeline URL written without a scheme."""
    url = publish(example / "pipeline.yaml", registry=registry)["pipeline_url"]
    edge = start_edge(url, registry, env={"OCI_REGISTRY": f"https://{registry.host}/"})
    assert "Login Succeeded" in edge.output()
    assert httpx.get(f"{edge.url}/pipelines").json()["pipelines"][0]["status"] == "Running"


def test_credentials_go_only_to_oci_registry(registry: Registry, example: Path, start_edge) -> None:
    """Credentials for another registry are not sent to the pipeline's: the pull goes without
    them, the registry refuses it, and the start-up says why (the server stays up, Error with
    the reason, and retries: credentials may be fixed at the registry)."""
    url = publish(example / "pipeline.yaml", registry=registry)["pipeline_url"]
    edge = start_edge(
        url,
        registry,
        env={"OCI_REGISTRY": "registry.example.com", "PULL_RETRY_MAX": "1"},
        wait_ready=False,
    )
    entry = edge.load_error()
    assert entry["status"] == "Error" and "needs a username and password" in entry["error"]
    assert httpx.get(f"{edge.url}/health/ready").status_code == 503
    output = edge.output()
    assert (
        f"OCI_REGISTRY registry.example.com is not the pipeline's registry {registry.host}: "
        "its credentials are not sent there"
    ) in output
    assert "Login Succeeded" not in output
    assert "needs a username and password" in output
    assert registry.password not in output


def test_wrong_password_fails_the_login(registry: Registry, example: Path, start_edge) -> None:
    url = publish(example / "pipeline.yaml", registry=registry)["pipeline_url"]
    edge = start_edge(
        url,
        registry,
        env={"OCI_PASSWORD": "not-the-password", "PULL_RETRY_MAX": "1"},
        wait_ready=False,
    )
    entry = edge.load_error()
    assert entry["status"] == "Error" and "OCI_USERNAME / OCI_PASSWORD" in entry["error"]
    assert "Login Succeeded" not in edge.output()
    assert "OCI_USERNAME / OCI_PASSWORD" in edge.output()
    assert "not-the-password" not in edge.output()
    assert "not-the-password" not in json.dumps(entry)


def test_sigterm_stops_with_status_0(example: Path, tmp_path: Path, start_edge) -> None:
    url = publish(example / "pipeline.yaml", layout=tmp_path / "layout")["pipeline_url"]
    edge = start_edge(url)
    body = (example / "data/one-row.json").read_bytes()
    headers = {"Content-Type": "application/json; format=pandas-records"}
    assert httpx.post(f"{edge.url}/pipelines/breast-cancer", content=body, headers=headers)
    assert edge.process is not None
    started = time.monotonic()
    edge.process.send_signal(signal.SIGTERM)
    assert edge.wait_exit(10) == 0
    assert time.monotonic() - started < 10
    # the request answered before the stop is in the log buffer a restart reads
    again = start_edge(url, persist=edge.persist)
    logs = httpx.get(f"{again.url}/logs", params={"limit": 10}).json()
    assert len(logs) == 1, json.dumps(logs)[:500]


def test_sigterm_while_the_pipeline_loads_still_exits_0(
    example: Path, tmp_path: Path, start_edge
) -> None:
    url = publish(example / "pipeline.yaml", layout=tmp_path / "layout")["pipeline_url"]
    edge = start_edge(url, wait_ready=False)
    wait_for(lambda: "Fetching model layers" in edge.output(), 60, "the pull to start")
    assert edge.process is not None
    edge.process.send_signal(signal.SIGTERM)
    assert edge.wait_exit(30) == 0
