"""The chart a publish pushes, against real registries (Debian's docker-registry on loopback):
pushed with `edge.chart.push_chart`, pulled back by hand (manifest and blobs, digests checked),
pulled by Helm itself (helm-python-sdk), and rendered.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from edge import chart
from edge.errors import RegistryAuthError, RegistryError, RegistryUnreachable
from tests.conftest import free_port

helm = pytest.importorskip("helm_python")

PIPELINE_VERSION = "0b5e2c7a-1d2f-4c3b-9a8e-7f6d5c4b3a21"
ENGINE = {"cpus": 2, "memory": "1Gi", "gpus": 0, "arch": "arm"}
MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"


@dataclass
class Registry:
    host: str
    username: str | None
    password: str | None

    @property
    def auth(self) -> tuple[str, str] | None:
        return (self.username, self.password) if self.username and self.password else None


def _start_registry(root: Path, username: str | None, password: str | None) -> Iterator[Registry]:
    binary = shutil.which("docker-registry")
    if not binary or (username and not shutil.which("htpasswd")):
        pytest.skip("needs Debian's docker-registry and apache2-utils (htpasswd)")
    host = f"127.0.0.1:{free_port()}"
    config: dict[str, Any] = {
        "version": 0.1,
        "log": {"level": "error"},
        "storage": {
            "filesystem": {"rootdirectory": str(root / "data")},
            "delete": {"enabled": True},
        },
        "http": {"addr": host},
    }
    if username and password:
        entry = subprocess.run(
            ["htpasswd", "-Bbn", "-C", "5", username, password],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout
        (root / "htpasswd").write_text(entry)
        config["auth"] = {"htpasswd": {"realm": "edge-test", "path": str(root / "htpasswd")}}
    (root / "config.yml").write_text(yaml.safe_dump(config))
    process = subprocess.Popen(
        [binary, "serve", str(root / "config.yml")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                if httpx.get(f"http://{host}/v2/", timeout=1).status_code in (200, 401):
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None, "docker-registry exited at start"
            assert time.monotonic() < deadline, "docker-registry did not start in 15 s"
            time.sleep(0.05)
        yield Registry(host, username, password)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@pytest.fixture(scope="module")
def auth_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    yield from _start_registry(tmp_path_factory.mktemp("reg-auth"), "publisher", "chart-pass-1")


@pytest.fixture(scope="module")
def open_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    yield from _start_registry(tmp_path_factory.mktemp("reg-open"), None, None)


@pytest.fixture(autouse=True)
def _helm_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HELM_CONFIG_HOME", "HELM_CACHE_HOME", "HELM_DATA_HOME"):
        monkeypatch.setenv(name, str(tmp_path / "helm" / name.lower()))
    monkeypatch.setenv("HELM_REGISTRY_CONFIG", str(tmp_path / "helm" / "registry.json"))


def _build(tmp_path: Path, registry: Registry, name: str = "ccfraud") -> Path:
    pipeline_url = f"{registry.host}/edge/pipelines/{name}:{PIPELINE_VERSION}"
    return chart.build_chart(name, pipeline_url, PIPELINE_VERSION, ENGINE, tmp_path / "out")


def _pull_by_hand(registry: Registry, ref: chart.ChartRef) -> tuple[dict[str, Any], bytes, bytes]:
    """GET the manifest, config and layer, checking every digest; returns them."""
    repo = ref.url.split("/", 1)[1]
    with httpx.Client(
        base_url=f"http://{registry.host}", auth=registry.auth, timeout=10, follow_redirects=True
    ) as client:
        response = client.get(
            f"/v2/{repo}/manifests/{ref.version}", headers={"Accept": MANIFEST_TYPE}
        )
        assert response.status_code == 200, response.text
        assert response.headers["Docker-Content-Digest"] == ref.reference
        assert "sha256:" + hashlib.sha256(response.content).hexdigest() == ref.reference
        manifest = response.json()
        blobs = []
        for descriptor in (manifest["config"], *manifest["layers"]):
            blob = client.get(f"/v2/{repo}/blobs/{descriptor['digest']}")
            assert blob.status_code == 200
            assert "sha256:" + hashlib.sha256(blob.content).hexdigest() == descriptor["digest"]
            assert len(blob.content) == descriptor["size"]
            blobs.append(blob.content)
    return manifest, blobs[0], blobs[1]


def test_pushed_chart_pulls_back_intact_and_renders(
    tmp_path: Path, auth_registry: Registry
) -> None:
    tgz = _build(tmp_path, auth_registry)
    ref = chart.push_chart(
        tgz, auth_registry.host, "edge", auth_registry.username, auth_registry.password, True
    )
    assert ref.url == f"{auth_registry.host}/edge/charts/ccfraud"
    assert ref.oci_url == f"oci://{ref.url}"
    assert ref.version == f"0.0.1-{PIPELINE_VERSION}"
    assert ref.reference.startswith("sha256:") and len(ref.reference) == 71

    manifest, config, layer = _pull_by_hand(auth_registry, ref)
    assert manifest["mediaType"] == MANIFEST_TYPE
    assert manifest["config"]["mediaType"] == "application/vnd.cncf.helm.config.v1+json"
    assert [layer["mediaType"] for layer in manifest["layers"]] == [
        "application/vnd.cncf.helm.chart.content.v1.tar+gzip"
    ]
    assert json.loads(config)["name"] == "ccfraud"  # Chart.yaml as JSON
    assert json.loads(config)["version"] == ref.version
    assert layer == tgz.read_bytes()

    pulled = tmp_path / "pulled.tgz"
    pulled.write_bytes(layer)
    with helm.Chart.load(str(pulled)) as loaded:
        assert loaded.name == "ccfraud" and loaded.version == ref.version
        manifests = loaded.render(
            {"ociRegistry": {"username": "devops", "password": "token"}},
            name="ccfraud",
            namespace="edge",
        )
    deployment = yaml.safe_load(manifests["ccfraud/templates/deployment.yaml"])
    pod = deployment["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["PIPELINE_URL"] == f"{auth_registry.host}/edge/pipelines/ccfraud:{PIPELINE_VERSION}"
    assert env["OCI_REGISTRY"] == auth_registry.host
    assert env["CONFIG_CPUS"] == "2"
    assert pod["nodeSelector"] == {"kubernetes.io/arch": "arm64"}
    service = yaml.safe_load(manifests["ccfraud/templates/service.yaml"])
    assert service["metadata"]["name"] == "engine-svc"


def test_helm_itself_pulls_the_pushed_chart(tmp_path: Path, auth_registry: Registry) -> None:
    """`helm registry login` + `helm pull oci://<url> --version <version>`, as the seed's
    DevOps steps do."""
    tgz = _build(tmp_path, auth_registry, name="helm-pull")
    ref = chart.push_chart(
        tgz, auth_registry.host, "edge", auth_registry.username, auth_registry.password, None
    )
    with helm.RegistryClient(
        plain_http=True, credentials_file=str(tmp_path / "helm" / "registry.json")
    ) as client:
        assert auth_registry.username and auth_registry.password
        client.login(
            auth_registry.host, auth_registry.username, auth_registry.password, plain_http=True
        )
        assert client.tags(ref.oci_url) == [ref.version]
        assert client.resolve(f"{ref.oci_url}:{ref.version}")["digest"] == ref.reference
        (tmp_path / "dl").mkdir()
        client.pull(ref.oci_url, version=ref.version, destination=str(tmp_path / "dl"))
    pulled = tmp_path / "dl" / f"helm-pull-{ref.version}.tgz"
    assert pulled.read_bytes() == tgz.read_bytes()


def test_push_to_a_registry_without_auth_and_again(tmp_path: Path, open_registry: Registry) -> None:
    tgz = _build(tmp_path, open_registry)
    first = chart.push_chart(tgz, open_registry.host, "", None, None, True)
    assert first.url == f"{open_registry.host}/charts/ccfraud"
    again = chart.push_chart(tgz, f"http://{open_registry.host}", "", None, None, False)
    assert again == first  # same content, same digest; blobs already there are not re-sent
    _pull_by_hand(open_registry, first)


def test_wrong_or_missing_credentials_are_auth_errors(
    tmp_path: Path, auth_registry: Registry
) -> None:
    tgz = _build(tmp_path, auth_registry)
    with pytest.raises(RegistryAuthError, match="username or password is wrong") as wrong:
        chart.push_chart(tgz, auth_registry.host, "edge", "publisher", "not-it", True)
    assert "not-it" not in str(wrong.value)
    with pytest.raises(RegistryAuthError, match="needs a username and password"):
        chart.push_chart(tgz, auth_registry.host, "edge", None, None, True)


def test_unreachable_registry_fails_fast_with_the_cause(tmp_path: Path) -> None:
    registry = Registry(f"127.0.0.1:{free_port()}", None, None)
    tgz = _build(tmp_path, registry)
    started = time.monotonic()
    with pytest.raises(RegistryUnreachable, match=f"cannot reach registry {registry.host}"):
        chart.push_chart(tgz, registry.host, "edge", None, None, True, timeout=5)
    assert time.monotonic() - started < 5


def test_https_to_a_plain_http_registry_names_the_flag(
    tmp_path: Path, open_registry: Registry
) -> None:
    tgz = _build(tmp_path, open_registry)
    with pytest.raises(RegistryUnreachable, match="needs --insecure"):
        chart.push_chart(tgz, open_registry.host, "edge", None, None, False, timeout=5)


def test_silent_server_times_out(tmp_path: Path) -> None:
    """A registry that accepts connections but never answers: a finite timeout, not a hang."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        host = f"127.0.0.1:{server.getsockname()[1]}"
        tgz = _build(tmp_path, Registry(host, None, None))
        started = time.monotonic()
        with pytest.raises(RegistryUnreachable, match="did not answer"):
            chart.push_chart(tgz, host, "edge", None, None, True, timeout=0.5)
        assert time.monotonic() - started < 5


def test_registry_must_be_a_host(tmp_path: Path) -> None:
    tgz = _build(tmp_path, Registry("127.0.0.1:1", None, None))
    with pytest.raises(RegistryError, match="must be host"):
        chart.push_chart(tgz, "127.0.0.1:1/edge", "x", None, None, True)


def test_bearer_token_registries(tmp_path: Path) -> None:
    """GHCR / Docker Hub style: 401 with a Bearer challenge, a token from the realm (asked with
    basic auth), then the token on every registry call."""
    host = "registry.test"
    seen: list[tuple[str, str, str | None]] = []
    blobs: dict[str, bytes] = {}

    def handler(request: httpx.Request) -> httpx.Response:
        authorization = request.headers.get("Authorization")
        seen.append((request.method, request.url.host + request.url.path, authorization))
        if request.url.host == "auth.test":
            assert request.url.params["service"] == "registry.test"
            if authorization != httpx.BasicAuth("bot", "pw")._auth_header:
                return httpx.Response(401)
            return httpx.Response(200, json={"token": "T0KEN"})
        if authorization != "Bearer T0KEN":
            challenge = 'Bearer realm="https://auth.test/token",service="registry.test"'
            return httpx.Response(401, headers={"WWW-Authenticate": challenge})
        path = request.url.path
        if path == "/v2/":
            return httpx.Response(200)
        if request.method == "HEAD":
            return httpx.Response(404)
        if request.method == "POST":
            return httpx.Response(202, headers={"Location": "/v2/upload/abc?_state=x"})
        if request.method == "PUT" and path.startswith("/v2/upload/"):
            assert request.url.params["_state"] == "x"
            blobs[request.url.params["digest"]] = request.content
            return httpx.Response(201)
        if request.method == "PUT" and "/manifests/" in path:
            digest = "sha256:" + hashlib.sha256(request.content).hexdigest()
            return httpx.Response(201, headers={"Docker-Content-Digest": digest})
        return httpx.Response(500)

    tgz = _build(tmp_path, Registry(host, None, None))
    ref = chart.push_chart(
        tgz, host, "org/edge", "bot", "pw", False, transport=httpx.MockTransport(handler)
    )
    assert ref.url == "registry.test/org/edge/charts/ccfraud"
    assert tgz.read_bytes() in blobs.values()
    token_calls = [s for s in seen if s[1].startswith("auth.test")]
    assert len(token_calls) == 1  # the token is reused
    registry_calls = [s for s in seen if s[1].startswith("registry.test")]
    assert registry_calls[0][2] is None  # the first call learns the challenge
    assert all(auth == "Bearer T0KEN" for _, _, auth in registry_calls[1:])


def _publish_cli(
    spec: Path, registry: Registry, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    assert registry.username and registry.password
    environment = {k: v for k, v in os.environ.items() if k != "EDGE_IMAGE"}
    environment.update(OCI_USERNAME=registry.username, OCI_PASSWORD=registry.password)
    environment.update(env or {})
    command = [sys.executable, "-m", "edge", "publish", str(spec), "--json"]
    command += ["--registry", registry.host, "--repository", "edge", *args]
    return subprocess.run(command, env=environment, capture_output=True, text=True, timeout=120)


def _pushed_values(registry: Registry, published: dict[str, Any], tmp_path: Path) -> Any:
    url, digest = published["helm_chart_reference"].split("@")
    assert published["helm_chart_url"] == f"oci://{url}"
    ref = chart.ChartRef(url=url, version=published["helm_chart_version"], reference=digest)
    _, _, layer = _pull_by_hand(registry, ref)
    pulled = tmp_path / f"{published['pipeline_version']}.tgz"
    pulled.write_bytes(layer)
    with helm.Chart.load(str(pulled)) as loaded:
        manifests = loaded.render({}, name="p", namespace="edge")
        values = loaded.values
        name = loaded.name
    deployment = yaml.safe_load(manifests[f"{name}/templates/deployment.yaml"])
    return values, deployment["spec"]["template"]["spec"]


def test_publish_engine_image_is_what_the_chart_runs(
    tmp_path: Path, auth_registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--engine-image (or EDGE_IMAGE) is the Engine URL the publish prints and the image the
    pushed chart runs; the chart's resources, gpus and arch are the pipeline's deployment."""
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "m.onnx").write_bytes(b"not really onnx, never loaded")
    spec = tmp_path / "pipeline.yaml"
    spec.write_text(
        "name: gpu-pipe\nsteps:\n  - model: m\n    file: models/m.onnx\n"
        "deployment: {cpus: 2, memory: 1Gi, gpus: 1, arch: arm}\n"
    )
    image = f"{auth_registry.host}/edge/engine:1.2.3-gpu"
    done = _publish_cli(spec, auth_registry, "--engine-image", image)
    assert done.returncode == 0, done.stderr
    published = json.loads(done.stdout)
    assert published["engine_url"] == image
    values, pod = _pushed_values(auth_registry, published, tmp_path)
    assert pod["containers"][0]["image"] == image
    assert values["resources"] == {"cpus": 2, "memory": "1Gi"}
    assert values["gpus"] == 1 and values["arch"] == "arm"
    assert pod["nodeSelector"]["kubernetes.io/arch"] == "arm64"

    # the environment default, a bare repository: tagged as the chart tags it
    done = _publish_cli(spec, auth_registry, env={"EDGE_IMAGE": "registry.example.com/t/edge"})
    assert done.returncode == 0, done.stderr
    published = json.loads(done.stdout)
    assert published["engine_url"] == "registry.example.com/t/edge:0.1.0-gpu"
    _, pod = _pushed_values(auth_registry, published, tmp_path)
    assert pod["containers"][0]["image"] == published["engine_url"]

    # the flag wins over the environment; a digest pins the image
    pinned = "registry.example.com/t/edge@sha256:" + "b" * 64
    done = _publish_cli(
        spec, auth_registry, "--engine-image", pinned, env={"EDGE_IMAGE": "other.example/x"}
    )
    published = json.loads(done.stdout)
    assert published["engine_url"] == pinned
    assert _pushed_values(auth_registry, published, tmp_path)[1]["containers"][0]["image"] == pinned


def test_publish_refuses_a_bad_engine_image_before_pushing(
    tmp_path: Path, auth_registry: Registry
) -> None:
    (tmp_path / "m.onnx").write_bytes(b"x")
    spec = tmp_path / "pipeline.yaml"
    spec.write_text("name: bad-image\nsteps:\n  - model: m\n    file: m.onnx\n")
    done = _publish_cli(spec, auth_registry, "--engine-image", "Edge Engine:latest")
    assert done.returncode == 2
    assert "engine image 'Edge Engine:latest' is not an image reference" in done.stderr
    tags = httpx.get(
        f"http://{auth_registry.host}/v2/edge/pipelines/bad-image/tags/list",
        auth=auth_registry.auth,
    )
    assert tags.status_code == 404  # nothing was pushed


def test_publish_carries_replica_count_and_deployment_label_into_the_chart(
    tmp_path: Path, auth_registry: Registry
) -> None:
    """The seed's replica_count and deployment_label reach the pushed chart's values and its
    rendering; the settings an edge cannot apply are named on stderr as ignored."""
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "m.onnx").write_bytes(b"not really onnx, never loaded")
    spec = tmp_path / "pipeline.yaml"
    spec.write_text(
        "name: pool-pipe\nsteps:\n  - model: m\n    file: models/m.onnx\n"
        "deployment: {cpus: 1, memory: 1Gi, replica_count: 2,"
        " deployment_label: 'doc-gpu-label:true', lb_cpus: 0.5,"
        " replica_autoscale_min_max: {minimum: 2, maximum: 5}}\n"
    )
    done = _publish_cli(spec, auth_registry)
    assert done.returncode == 0, done.stderr
    warnings = [line for line in done.stderr.splitlines() if line.startswith("Warning:")]
    assert any("deployment.lb_cpus is accepted and ignored" in w for w in warnings)
    assert any(
        "deployment.replica_autoscale_min_max is accepted and ignored" in w for w in warnings
    )
    assert any("deployment.replica_count 2 applies to the Helm chart only" in w for w in warnings)
    published = json.loads(done.stdout)
    assert published["deployment_ignored"] == {
        "lb_cpus": 0.5,
        "replica_autoscale_min_max": {"minimum": 2, "maximum": 5},
    }
    assert published["engine_config"]["engine"]["replicas"] == 2
    assert published["engine_config"]["engine"]["deployment_label"] == "doc-gpu-label:true"
    url, digest = published["helm_chart_reference"].split("@")
    ref = chart.ChartRef(url=url, version=published["helm_chart_version"], reference=digest)
    _, _, layer = _pull_by_hand(auth_registry, ref)
    pulled = tmp_path / "pulled.tgz"
    pulled.write_bytes(layer)
    with helm.Chart.load(str(pulled)) as loaded:
        values = loaded.values
        manifests = loaded.render({}, name="p", namespace="edge")
    assert values["replicaCount"] == 2 and values["deploymentLabel"] == "doc-gpu-label:true"
    deployment = yaml.safe_load(manifests["pool-pipe/templates/deployment.yaml"])
    assert deployment["spec"]["replicas"] == 2
    pod = deployment["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"kubernetes.io/arch": "amd64", "doc-gpu-label": "true"}
