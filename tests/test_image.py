"""The container image, built and run for real with podman: the cpu image from the Dockerfile's
default variant on a Debian base made here with debootstrap (nothing pulled), then run as a user
runs it: the example pipeline mounted as a layout, a named volume at /persist, a published port.

Opt-in: EDGE_TEST_IMAGE=1 (root; `.ci/run` sets it under CI=true). Once asked for, a missing
podman fails them, never skips them. The TensorFlow variant: EDGE_TEST_IMAGE_TENSORFLOW=1 too.
Cold (no base yet, no build layers) about 4 minutes; warm about 1 (packaging/podman/local.sh).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import MEASUREMENTS, REPO, Registry, free_port, wait_for

pytestmark = [
    pytest.mark.skipif(
        os.environ.get("EDGE_TEST_IMAGE") != "1",
        reason="opt-in: EDGE_TEST_IMAGE=1 (root, podman; .ci/run sets it under CI=true)",
    ),
    # the first test's time includes the image build (cold: the base and every wheel)
    pytest.mark.timeout(2400),
]

LOCAL = REPO / "packaging" / "podman" / "local.sh"
EXAMPLE = REPO / "examples" / "breast-cancer"
MAX_IMAGE_BYTES = 550_000_000  # the cpu image, uncompressed, as `podman images` counts it
INNER_PORT = 18080  # not the default 8080: the HEALTHCHECK must follow PORT
SESSION = uuid.uuid4().hex[:8]  # names of this run's images, containers and volumes
JSON = {"Content-Type": "application/json; format=pandas-records"}
ARROW = "application/vnd.apache.arrow.file"


def podman(
    *args: str, check: bool = True, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    """podman with this machine's settings (packaging/podman/local.sh)."""
    done = subprocess.run(
        ["bash", str(LOCAL), "podman", *args], capture_output=True, text=True, timeout=timeout
    )
    if check:
        assert done.returncode == 0, f"podman {' '.join(args)}: {done.stderr[-3000:]}"
    return done


def build(variant: str | None, tag: str) -> float:
    """Build with local.sh (VARIANT left at the Dockerfile's default when None); seconds taken."""
    started = time.monotonic()
    command = ["bash", str(LOCAL), "build", "--tag", tag] + ([variant] if variant else [])
    built = subprocess.run(command, capture_output=True, text=True, timeout=2000)
    assert built.returncode == 0, built.stderr[-6000:]
    return time.monotonic() - started


@pytest.fixture(scope="module")
def tools() -> None:
    if os.geteuid() != 0:
        pytest.fail("the image tests need root (podman's storage, debootstrap)")
    missing = [tool for tool in ("podman", "runc", "debootstrap") if not shutil.which(tool)]
    if missing:
        pytest.fail(f"{', '.join(missing)} missing: run `make image-setup`")


@pytest.fixture(scope="module")
def image(tools: None) -> Iterator[str]:
    """The cpu image, built from the Dockerfile with no VARIANT build argument."""
    tag = f"localhost/edge-test:cpu-{SESSION}"
    seconds = build(None, tag)
    MEASUREMENTS.append(f"cpu image: built in {seconds:.0f} s (packaging/podman/local.sh build)")
    yield tag
    tidy(tag)


def tidy(tag: str) -> None:
    """Drop this run's tag; the layers stay as build cache for the next run."""
    podman("rmi", tag, check=False)


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The example pipeline published to a local OCI layout, readable by the image's user."""
    folder = tmp_path_factory.mktemp("image-layout")
    folder.chmod(0o755)
    done = subprocess.run(
        [sys.executable, "-m", "edge", "publish", str(EXAMPLE / "pipeline.yaml")]
        + ["--layout", str(folder / "layout"), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    version = json.loads(done.stdout)["pipeline_version"]
    return folder / "layout", version


@dataclass
class Container:
    name: str
    port: int  # on 127.0.0.1 of the host

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def logs(self) -> str:
        done = podman("logs", self.name, check=False)
        return done.stdout + done.stderr

    def state(self) -> dict[str, Any]:
        return json.loads(podman("inspect", "--format", "{{json .State}}", self.name).stdout)


@pytest.fixture
def containers() -> Iterator[list[Container]]:
    started: list[Container] = []
    yield started
    for container in started:
        podman("rm", "--force", "--time", "5", container.name, check=False)


def run(
    containers: list[Container],
    image: str,
    *options: str,
    env: dict[str, str] | None = None,
    network_host: bool = False,
) -> Container:
    """`podman run -d` with a published port (or the host's network) and PORT=INNER_PORT."""
    container = Container(f"edge-test-{SESSION}-{uuid.uuid4().hex[:6]}", free_port())
    environment = {"PORT": str(INNER_PORT), **(env or {})}
    if network_host:
        environment.update(PORT=str(container.port), HOST="127.0.0.1")
        network = ["--network", "host"]
    else:
        network = ["-p", f"127.0.0.1:{container.port}:{INNER_PORT}"]
    flags = [f"--env={k}={v}" for k, v in environment.items()]
    podman("run", "-d", "--name", container.name, *network, *flags, *options, image)
    containers.append(container)
    return container


def wait_running(container: Container, timeout: float = 120) -> None:
    def running() -> bool:
        if not container.state()["Running"]:
            raise AssertionError(f"{container.name} exited:\n{container.logs()[-4000:]}")
        try:
            listing = httpx.get(f"{container.url}/pipelines", timeout=2).json()
        except (httpx.TransportError, ValueError):
            return False
        statuses = [p["status"] for p in listing["pipelines"]]  # none while it loads
        assert "Error" not in statuses, container.logs()[-4000:]
        return statuses == ["Running"]

    wait_for(running, timeout, f"{container.name} to serve its pipeline")


def in_process_answer(
    url: str, persist: Path, body: bytes, name: str = "breast-cancer", headers: Any = JSON
) -> httpx.Response:
    """The same request answered by the app in this process (the routes `edge serve` runs)."""
    from edge.appliance import Appliance, LoadState, load_pipeline
    from edge.config import load_settings
    from edge.server import create_app

    settings = load_settings({"pipeline_url": url, "persist_dir": persist})
    pipeline = load_pipeline(settings, echo=lambda line: None)
    state = Appliance(settings, pipeline=pipeline, state=LoadState.RUNNING)

    async def ask() -> httpx.Response:
        transport = httpx.ASGITransport(app=create_app(state))
        async with httpx.AsyncClient(transport=transport, base_url="http://edge") as client:
            return await client.post(f"/pipelines/{name}", content=body, headers=headers)

    try:
        reply = asyncio.run(ask())
    finally:
        pipeline.close()
    assert reply.status_code == 200, reply.text
    return reply


def comparable(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Records without what differs between two runs (when, how long)."""
    return [{k: v for k, v in r.items() if k not in ("time", "elapsed")} for r in records]


def host_ids(pid: int) -> tuple[str, str]:
    """(uid, gid) of a host process, from /proc (real, effective, saved, fs all alike)."""
    status = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    uids, gids = set(status["Uid"].split()), set(status["Gid"].split())
    assert len(uids) == len(gids) == 1, status["Uid"] + status["Gid"]
    return uids.pop(), gids.pop()


# ---- the image itself -----------------------------------------------------------------------


def test_cpu_image_size_layers_and_contents(image: str) -> None:
    (inspected,) = json.loads(podman("image", "inspect", image).stdout)
    size = int(inspected["Size"])
    history = json.loads(podman("history", "--format", "json", "--no-trunc", image).stdout)
    layers = sorted(history, key=lambda layer: -int(layer["size"]))[:4]
    packages = podman(
        "run", "--rm", image, "sh", "-c",
        "du -sk /opt/venv/lib/python3*/site-packages/* | sort -rn | head -n 8",
    ).stdout  # fmt: skip
    MEASUREMENTS.append(f"cpu image: {size / 1e6:.0f} MB uncompressed (limit 550 MB)")
    for layer in layers:
        MEASUREMENTS.append(
            f"  layer {int(layer['size']) / 1e6:6.1f} MB  {layer['CreatedBy'][:80]}"
        )
    for line in packages.splitlines():
        kib, path = line.split("\t")
        MEASUREMENTS.append(f"  package {int(kib) / 1024:6.0f} MiB  {Path(path).name}")
    assert size <= MAX_IMAGE_BYTES, f"{size / 1e6:.0f} MB"

    assert inspected["Labels"]["ai.edge.variant"] == "cpu"  # the default, no --build-arg
    health = " ".join(inspected["Healthcheck"]["Test"])  # kept: built with --format docker
    assert "/health/ready" in health and "PORT" in health
    assert inspected["Config"]["User"] == "10001:0"
    # nothing of the build left in the runtime: no pip, setuptools, apt lists, test suites
    leftovers = podman(
        "run", "--rm", image, "sh", "-c",
        "cd /opt/venv/lib/python3*/site-packages;"
        " ls -d /opt/venv/bin/pip* /var/lib/apt/lists/* pandas/tests numpy/_core/tests"
        " pyarrow/tests pyarrow/libarrow_flight* onnxruntime/capi/libonnxruntime.so*"
        " 2>/dev/null; python -c 'import pip' 2>/dev/null && echo pip;"
        " python -c 'import setuptools' 2>/dev/null && echo setuptools; true",
    ).stdout  # fmt: skip
    assert leftovers.split() == [] or leftovers.split() == ["/var/lib/apt/lists/lock"], leftovers


# ---- running it -----------------------------------------------------------------------------


def test_container_serves_logs_restarts_and_stops_cleanly(
    image: str, layout: tuple[Path, str], containers: list[Container], tmp_path: Path
) -> None:
    folder, version = layout
    volume = f"edge-test-{SESSION}-{uuid.uuid4().hex[:6]}"
    podman("volume", "create", volume)
    options = ["-v", f"{folder}:/layout:ro", "-v", f"{volume}:/persist"]
    env = {"PIPELINE_URL": f"oci-layout:/layout:{version}"}
    try:
        first = run(containers, image, *options, env=env)
        wait_running(first)
        assert f"Engine ready: pipeline breast-cancer on port {INNER_PORT}" in first.logs()

        sha = hashlib.sha256((EXAMPLE / "models/breast-cancer.onnx").read_bytes()).hexdigest()
        models = httpx.get(f"{first.url}/models").json()["models"]
        assert [(m["name"], m["sha"], m["status"]) for m in models] == [
            ("breast-cancer", sha, "Running")
        ]
        body = (EXAMPLE / "data/one-row.json").read_bytes()
        reply = httpx.post(f"{first.url}/pipelines/breast-cancer", content=body, headers=JSON)
        assert reply.status_code == 200, reply.text
        expected = in_process_answer(f"oci-layout:{folder}:{version}", tmp_path / "p", body).json()
        assert comparable(reply.json()) == comparable(expected)

        logged = httpx.get(f"{first.url}/logs", params={"limit": 10}).json()
        assert [row["out"] for row in logged] == [expected[0]["out"]]  # /persist is written

        # the processes run as uid 10001 (gid 0), PID 1 (tini) and the server under it
        tini = int(first.state()["Pid"])
        children = Path(f"/proc/{tini}/task/{tini}/children").read_text().split()
        assert len(children) == 1
        assert host_ids(tini) == host_ids(int(children[0])) == ("10001", "0")

        # the HEALTHCHECK probes PORT (18080 here; nothing listens on 8080 in the container)
        health = podman("healthcheck", "run", first.name, check=False)
        assert health.returncode == 0, health.stdout + health.stderr
        assert first.state()["Health"]["Status"] == "healthy"

        started = time.monotonic()
        podman("stop", "--time", "10", first.name, timeout=30)
        stopped_in = time.monotonic() - started
        state = first.state()
        assert state["ExitCode"] == 0, first.logs()[-3000:]  # a clean stop, not 143
        assert stopped_in < 10
        MEASUREMENTS.append(f"container: stopped in {stopped_in:.1f} s, exit status 0")

        # a new container on the same volume: the pipeline's cached copy and the log rows kept
        second = run(containers, image, *options, env=env)
        wait_running(second)
        again = httpx.get(f"{second.url}/logs", params={"limit": 10}).json()
        assert [row["out"] for row in again] == [expected[0]["out"]]
    finally:
        for container in containers:
            podman("rm", "--force", "--time", "5", container.name, check=False)
        podman("volume", "rm", "--force", volume, check=False)


STEPS = {
    "pre.py": """
import numpy as np


def wallaroo_json(data):
    features = np.stack(data["tensor"].to_numpy()).astype("float32")
    return {"tensor_fields": ["tensor"], "tensor": features}
""",
    "post.py": """
def wallaroo_json(data):
    return {"label": data["label"].to_numpy(), "sure": [max(p) for p in data["probabilities"]]}
""",
}
STEPPED = """name: stepped
steps:
  - {python: pre, file: steps/pre.py}
  - {model: breast-cancer, file: models/breast-cancer.onnx}
  - {python: post, file: steps/post.py}
validations:
  sure: pl.col("out.sure") > 0.99
"""


def test_trimmed_image_runs_steps_validations_and_large_batches(
    image: str, example: Path, containers: list[Container], tmp_path: Path
) -> None:
    """What the trimming kept is what these use: Python steps (pandas), validations (polars),
    10,000 rows as JSON and as Arrow (pyarrow), the log buffer; answers as in this process."""
    import numpy as np
    import pyarrow as pa

    folder = tmp_path / "stepped"
    (folder / "steps").mkdir(parents=True)
    (folder / "models").mkdir()
    shutil.copy(EXAMPLE / "models/breast-cancer.onnx", folder / "models")
    for name, text in STEPS.items():
        (folder / "steps" / name).write_text(text)
    (folder / "pipeline.yaml").write_text(STEPPED)
    layout = tmp_path / "mounted"
    layout.mkdir(mode=0o755)
    done = subprocess.run(
        [sys.executable, "-m", "edge", "publish", str(folder / "pipeline.yaml")]
        + ["--layout", str(layout / "layout"), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    version = json.loads(done.stdout)["pipeline_version"]
    layout.chmod(0o755)
    container = run(
        containers,
        image,
        "-v",
        f"{layout / 'layout'}:/layout:ro",
        env={"PIPELINE_URL": f"oci-layout:/layout:{version}"},
    )
    wait_running(container)
    url = f"oci-layout:{layout / 'layout'}:{version}"

    rows = (example / "data/10k-rows.json").read_bytes()
    reply = httpx.post(
        f"{container.url}/pipelines/stepped", content=rows, headers=JSON, timeout=120
    )
    assert reply.status_code == 200, reply.text
    mine = reply.json()
    theirs = in_process_answer(url, tmp_path / "p1", rows, "stepped").json()
    assert len(mine) == len(theirs) == 10_000
    assert [r["out"]["label"] for r in mine] == [r["out"]["label"] for r in theirs]
    np.testing.assert_allclose(
        [r["out"]["sure"] for r in mine], [r["out"]["sure"] for r in theirs], rtol=1e-6
    )
    assert [r["anomaly"] for r in mine] == [r["anomaly"] for r in theirs]
    assert 0 < sum(r["anomaly"]["count"] for r in mine) < 10_000  # the validation ran

    features = np.load(example / "data/10k-rows.npy")
    column = pa.FixedSizeListArray.from_arrays(pa.array(features.reshape(-1)), features.shape[1])
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, pa.schema([("tensor", column.type)])) as writer:
        writer.write_table(pa.table({"tensor": column}))
    arrow = {"Content-Type": ARROW, "Accept": ARROW}
    body = sink.getvalue().to_pybytes()
    reply = httpx.post(
        f"{container.url}/pipelines/stepped", content=body, headers=arrow, timeout=120
    )
    assert reply.status_code == 200, reply.text
    table = pa.ipc.open_file(pa.py_buffer(reply.content)).read_all()
    expected = in_process_answer(url, tmp_path / "p2", body, "stepped", arrow)
    other = pa.ipc.open_file(pa.py_buffer(expected.content)).read_all()
    assert table.column_names == other.column_names and table.num_rows == 10_000
    assert table.column("out.label").equals(other.column("out.label"))
    assert table.column("anomaly.count").equals(other.column("anomaly.count"))

    logged = httpx.get(
        f"{container.url}/logs", params={"limit": 20_001}, headers={"Accept": ARROW}, timeout=60
    )
    assert logged.status_code == 200
    assert pa.ipc.open_file(pa.py_buffer(logged.content)).read_all().num_rows == 20_000
    assert "edge_inference_requests" in httpx.get(f"{container.url}/metrics").text


@pytest.mark.parametrize(
    ("owner", "mode", "starts"),
    [
        ((0, 0), 0o770, True),  # root-owned, group-writable: the process's gid 0 writes
        ((10001, 0), 0o700, True),  # `chown 10001 ./data`
        ((0, 0), 0o755, False),  # not writable: exit 78, and the message names the fix
    ],
)
def test_bind_mount_permissions_as_readme_says(
    image: str,
    layout: tuple[Path, str],
    containers: list[Container],
    tmp_path: Path,
    owner: tuple[int, int],
    mode: int,
    starts: bool,
) -> None:
    folder, version = layout
    data = tmp_path / "data"
    data.mkdir()
    os.chown(data, *owner)
    data.chmod(mode)
    env = {"PIPELINE_URL": f"oci-layout:/layout:{version}"}
    container = run(
        containers, image, "-v", f"{folder}:/layout:ro", "-v", f"{data}:/persist", env=env
    )
    if starts:
        wait_running(container)
        assert (data / "logbuffer.db").stat().st_uid == 10001
        return
    wait_for(lambda: not container.state()["Running"], 60, "the container to exit")
    assert container.state()["ExitCode"] == 78
    logs = container.logs()
    assert "is not writable by uid 10001 gid 0" in logs and "chown -R 10001:0 ./data" in logs


# ---- the Engine URL names a real image --------------------------------------------------------


def test_published_engine_image_runs_from_the_registry(
    image: str,
    registry: Registry,
    containers: list[Container],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Push the image to the test registry, publish with `--engine-image` naming it, pull the
    chart as Helm does, and run the image the chart names, pulled from the registry, with the
    chart's environment: it logs in, pulls the pipeline and serves it."""
    import helm_python as helm  # a test dependency: missing is a failure, not a skip

    creds = f"{registry.username}:{registry.password}"
    reference = f"{registry.host}/edge-tests/engine:0.1.0-{SESSION}"
    podman("tag", image, reference)
    podman("push", "--tls-verify=false", "--creds", creds, reference, timeout=600)

    env = dict(os.environ, OCI_USERNAME=registry.username, OCI_PASSWORD=registry.password)
    command = [sys.executable, "-m", "edge", "publish", str(EXAMPLE / "pipeline.yaml"), "--json"]
    command += ["--registry", registry.host, "--repository", "edge-tests"]
    command += ["--engine-image", reference]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    published = json.loads(done.stdout)
    assert published["engine_url"] == reference

    for name in ("HELM_CONFIG_HOME", "HELM_CACHE_HOME", "HELM_DATA_HOME"):
        monkeypatch.setenv(name, str(tmp_path / "helm" / name.lower()))
    credentials = str(tmp_path / "helm" / "registry.json")
    monkeypatch.setenv("HELM_REGISTRY_CONFIG", credentials)
    (tmp_path / "charts").mkdir()
    with helm.RegistryClient(plain_http=True, credentials_file=credentials) as client:
        client.login(registry.host, registry.username, registry.password, plain_http=True)
        client.pull(
            published["helm_chart_url"],
            version=published["helm_chart_version"],
            destination=str(tmp_path / "charts"),
        )
    (pulled,) = (tmp_path / "charts").iterdir()
    values = {"ociRegistry": {"username": registry.username, "password": registry.password}}
    with helm.Chart.load(str(pulled)) as loaded:
        manifests = loaded.render(values, name="engine", namespace="edge")
    deployment = yaml.safe_load(manifests["breast-cancer/templates/deployment.yaml"])
    (engine,) = deployment["spec"]["template"]["spec"]["containers"]
    assert engine["image"] == reference
    chart_env = {e["name"]: e["value"] for e in engine["env"] if "value" in e}
    chart_env["OCI_PASSWORD"] = registry.password  # the chart reads it from its Secret

    podman("rmi", reference)  # only the tag: the image must come from the registry
    podman("pull", "--tls-verify=false", "--creds", creds, reference, timeout=600)
    wanted = ("PIPELINE_URL", "OCI_REGISTRY", "OCI_USERNAME", "OCI_PASSWORD", "CONFIG_CPUS")
    container = run(containers, reference, env={k: chart_env[k] for k in wanted}, network_host=True)
    try:
        wait_running(container)
        logs = container.logs()
        assert "Edge Engine - Standalone mode\nLogin Succeeded\n" in logs
        assert f"Fetching manifest and config for pipeline: {published['pipeline_url']}" in logs
        assert registry.password not in logs
        body = (EXAMPLE / "data/one-row.json").read_bytes()
        reply = httpx.post(f"{container.url}/pipelines/breast-cancer", content=body, headers=JSON)
        assert reply.status_code == 200, reply.text
    finally:
        podman("rm", "--force", "--time", "5", container.name, check=False)
        podman("rmi", reference, check=False)


# ---- the TensorFlow variant (opt-in on top) ---------------------------------------------------


@pytest.mark.timeout(2400)
@pytest.mark.skipif(
    os.environ.get("EDGE_TEST_IMAGE_TENSORFLOW") != "1",
    reason="opt-in: EDGE_TEST_IMAGE_TENSORFLOW=1 (downloads TensorFlow; several minutes)",
)
def test_tensorflow_variant_builds(tools: None) -> None:
    tag = f"localhost/edge-test:tensorflow-{SESSION}"
    seconds = build("tensorflow", tag)
    try:
        size = int(podman("image", "inspect", "--format", "{{.Size}}", tag).stdout)
        MEASUREMENTS.append(f"tensorflow image: {size / 1e6:.0f} MB, built in {seconds:.0f} s")
        label = podman("image", "inspect", "--format", '{{index .Labels "ai.edge.variant"}}', tag)
        assert label.stdout.strip() == "tensorflow"
        probe = "import tensorflow as tf, edge.runtimes.tensorflow; print(tf.__version__)"
        version = podman("run", "--rm", tag, "python", "-c", probe, timeout=300).stdout
        assert version.strip().split(".")[0] == "2"
    finally:
        tidy(tag)
