"""How the appliance ships: the Helm chart (rendered and linted with helm-python-sdk), the chart a
publish packages and the compose files. The Dockerfile and its scripts: tests/test_dockerfile.py
(parsed and linted) and tests/test_image.py (built and run); arm64: tests/test_arm64.py.
"""

from __future__ import annotations

import base64
import re
import tarfile
from pathlib import Path
from typing import Any

import pytest
import yaml

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
    assert engine(render({"variant": "tensorflow"}))["image"].endswith(":0.1.0-tensorflow")
    assert engine(render({"variant": "frameworks"}))["image"].endswith(":0.1.0-frameworks")
    assert engine(render({"variant": "frameworks", "gpus": 1}))["image"].endswith(":0.1.0-gpu")
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


def test_build_chart_image_registry_and_variant(tmp_path: Path) -> None:
    tgz = chart.build_chart(
        "tf-pipe",
        "/var/lib/edge/layout:" + PIPELINE_VERSION,  # a local OCI layout: no registry
        PIPELINE_VERSION,
        {"cpus": 0.5, "memory": "256Mi", "arch": "arm"},
        tmp_path,
        image="registry.example.com:5000/edge/edge:1.2.3",
        variant="tensorflow",
    )
    with helm.Chart.load(str(tgz)) as loaded:
        values = loaded.values
    assert values["ociRegistry"]["registry"] == ""
    assert values["image"]["repository"] == "registry.example.com:5000/edge/edge"
    assert values["image"]["tag"] == "1.2.3"
    assert values["variant"] == "tensorflow"
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
    cases = [({}, None), ({"gpus": 1}, None), ({}, "tensorflow"), ({}, "frameworks")]
    for config, variant in cases:
        tgz = chart.build_chart(
            "img", PIPELINE_URL, PIPELINE_VERSION, config, tmp_path, variant=variant
        )
        image = engine(render({}, source=tgz))["image"]
        assert image == chart.engine_image(config, variant=variant)
        assert image.endswith(f"-{variant}" if variant else "-gpu" if config else ":0.1.0")
    assert chart.engine_image({"gpus": 2}).endswith("-gpu")


@pytest.mark.parametrize(
    ("runtimes", "variants"),
    [
        (["onnx", "python", "byop"], []),
        (["onnx", "tensorflow"], ["tensorflow"]),
        (["keras"], ["tensorflow"]),
        (["sklearn", "onnx"], ["frameworks"]),
        (["xgboost", "pytorch", "hugging-face"], ["frameworks"]),
        (["keras", "sklearn"], ["frameworks", "tensorflow"]),
    ],
)
def test_each_runtime_names_the_image_variant_that_installs_it(
    runtimes: list[str], variants: list[str]
) -> None:
    """The chart and Engine URL name the image whose extras the pipeline's runtimes need."""
    from edge.runtimes import image_variants, runtime_extra

    assert image_variants(runtimes) == variants
    # every runtime with an extra has a variant that installs it, and the Dockerfile builds it
    dockerfile = (REPO / "Dockerfile").read_text()
    for runtime in ("tensorflow", "keras", "sklearn", "xgboost", "pytorch", "hugging-face"):
        extra = runtime_extra(runtime)
        [variant] = image_variants([runtime])
        assert extra is not None and re.search(rf"{variant}\) extras?=\S*{extra}", dockerfile)


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


def test_replica_count_and_deployment_label_render() -> None:
    one = render()
    assert one["Deployment"]["spec"]["replicas"] == 1
    assert one["Deployment"]["spec"]["strategy"]["type"] == "Recreate"
    assert "PersistentVolumeClaim" in one
    objects = render({"replicaCount": 3, "deploymentLabel": "doc-gpu-label:true"})
    spec = objects["Deployment"]["spec"]
    assert spec["replicas"] == 3 and spec["strategy"]["type"] == "RollingUpdate"
    assert pod_spec(objects)["nodeSelector"] == {
        "kubernetes.io/arch": "amd64",
        "doc-gpu-label": "true",
    }
    # more than one engine: each its own /persist, no shared claim
    assert "PersistentVolumeClaim" not in objects
    (persist,) = [v for v in pod_spec(objects)["volumes"] if v["name"] == "persist"]
    assert persist == {"name": "persist", "emptyDir": {}}
    assert pod_spec(render({"deploymentLabel": "pool=edge"}))["nodeSelector"]["pool"] == "edge"


def test_replica_count_refusals() -> None:
    with pytest.raises(helm.HelmError, match="a bundle joins one device"):
        render({"replicaCount": 2, "edgeBundle": "ZXhwb3J0IEE9Qgo="})
    with pytest.raises(helm.HelmError, match="replicaCount 0 must be 1 or more"):
        render({"replicaCount": 0})
    with pytest.raises(helm.HelmError, match="is not a node label"):
        render({"deploymentLabel": "no separator"})


def test_build_chart_fills_replica_count_and_deployment_label(tmp_path: Path) -> None:
    engine = {"cpus": 1, "memory": "1Gi", "replica_count": 2, "deployment_label": "pool:edge"}
    tgz = chart.build_chart("ccfraud", PIPELINE_URL, PIPELINE_VERSION, engine, tmp_path)
    with helm.Chart.load(str(tgz)) as loaded:
        assert loaded.values["replicaCount"] == 2
        assert loaded.values["deploymentLabel"] == "pool:edge"
    objects = render({}, source=tgz)
    assert objects["Deployment"]["spec"]["replicas"] == 2
    assert pod_spec(objects)["nodeSelector"]["pool"] == "edge"
    with pytest.raises(SpecError, match="replica_count"):
        chart.build_chart("ccfraud", PIPELINE_URL, PIPELINE_VERSION, {"replica_count": 0}, tmp_path)
