"""The Helm chart pushed with every publish: fill in its values, package it, push it as OCI.

`edge publish` calls `build_chart` and then `push_chart`. The chart's source is
`helm/edge-pipeline` in a checkout, or its copy shipped as package data (`edge/chart_template`)
in an installed wheel.

A chart is pushed the way Helm pushes one, so `helm pull oci://<url> --version <version>` gets it
back: an OCI image manifest whose config blob is Chart.yaml as JSON
(`application/vnd.cncf.helm.config.v1+json`) and whose one layer is the chart archive
(`application/vnd.cncf.helm.chart.content.v1.tar+gzip`), tagged with the chart version.

Every call to the registry has a finite timeout. Registries without auth, with HTTP basic auth
(htpasswd) and with bearer tokens (the `WWW-Authenticate: Bearer realm=...` dance of Docker Hub,
GHCR, Harbor, ...) all work.
"""

from __future__ import annotations

import fnmatch
import hashlib
import importlib.metadata
import io
import json
import math
import re
import tarfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import httpx
import yaml

from edge.artifact import DNS_NAME, MANIFEST_MEDIA_TYPE
from edge.errors import (
    ArtifactError,
    RegistryError,
    SpecError,
)
from edge.registry import Reference, is_loopback
from edge.remote import RemoteRegistry

CHART_CONFIG_MEDIA_TYPE = "application/vnd.cncf.helm.config.v1+json"
CHART_LAYER_MEDIA_TYPE = "application/vnd.cncf.helm.chart.content.v1.tar+gzip"
CHART_BASE_VERSION = "0.0.1"
TEMPLATE_CHART_NAME = "edge-pipeline"
DEFAULT_TIMEOUT = 30.0  # seconds, for each call to the registry

_PACKAGE_TEMPLATE = Path(__file__).resolve().parent / "chart_template"
_CHECKOUT_TEMPLATE = Path(__file__).resolve().parents[1] / "helm" / TEMPLATE_CHART_NAME
_SEMVER_IDENTIFIERS = re.compile(r"^[0-9A-Za-z-]+(\.[0-9A-Za-z-]+)*$")
_REGISTRY_HOST = re.compile(
    r"^(localhost|[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+)(:[0-9]+)?$|^[A-Za-z0-9-]+:[0-9]+$"
)
_IMAGE_REFERENCE = re.compile(
    r"^(?:(?:[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)(?::[0-9]+)?/)?"  # registry host[:port]/
    r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*"  # path
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}|@sha256:[0-9a-f]{64})?$"  # :tag or @digest
)
# deployment_label: a Kubernetes node label `key:value` (or `key=value`), the seed's form
NODE_LABEL = re.compile(
    r"(?:[A-Za-z0-9][-A-Za-z0-9_.]*/)?[A-Za-z0-9](?:[-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
    r"[:=](?:[A-Za-z0-9](?:[-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?"
)
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?([eE][0-9]+|[KMGTPE]i|[kMGTPE]|m)?$")
_ARCHES = {
    "x86": "x86",
    "x86_64": "x86",
    "amd64": "x86",
    "arm": "arm",
    "arm64": "arm",
    "aarch64": "arm",
    "": "",
}


@dataclass(frozen=True)
class ChartRef:
    """Where a pushed chart lives: what the publish prints as Helm Chart URL / Version /
    Reference."""

    url: str  # <registry>/<repository>/charts/<name>, no scheme (as `helm pull oci://` takes it)
    version: str  # 0.0.1-<pipeline version>
    reference: str  # the manifest digest, sha256:<hex>

    @property
    def oci_url(self) -> str:
        return f"oci://{self.url}"


def chart_source() -> Path:
    """The chart directory publishes start from: the checkout's, else the installed copy."""
    for candidate in (_CHECKOUT_TEMPLATE, _PACKAGE_TEMPLATE):
        if (candidate / "Chart.yaml").is_file():
            return candidate
    raise ArtifactError(
        f"the Helm chart template is missing (looked in {_CHECKOUT_TEMPLATE} and "
        f"{_PACKAGE_TEMPLATE}): reinstall edge-appliance"
    )


def chart_version(pipeline_version: str) -> str:
    """`0.0.1-<pipeline version>`: a SemVer pre-release Helm and OCI tags both accept."""
    if not _SEMVER_IDENTIFIERS.match(pipeline_version) or any(
        part.isdigit() and len(part) > 1 and part.startswith("0")
        for part in pipeline_version.split(".")
    ):
        raise SpecError(
            f"pipeline version {pipeline_version!r} cannot be a chart version suffix: use a UUID "
            "(letters, digits, '-' and '.')"
        )
    version = f"{CHART_BASE_VERSION}-{pipeline_version}"
    if len(version) > 128:
        raise SpecError(f"pipeline version {pipeline_version!r} is too long for an OCI tag")
    return version


def engine_values(engine_config: Mapping[str, Any]) -> dict[str, Any]:
    """A publish's engine config checked and normalized: cpus, memory, gpus, arch (x86|arm|"")."""
    cpus = engine_config.get("cpus", 1)
    if isinstance(cpus, bool) or not isinstance(cpus, int | float) or not cpus > 0:
        raise SpecError(f"engine config cpus must be a number above 0, not {cpus!r}")
    if not math.isfinite(cpus):
        raise SpecError(f"engine config cpus must be finite, not {cpus!r}")
    if isinstance(cpus, float) and cpus.is_integer():
        cpus = int(cpus)
    memory = str(engine_config.get("memory", "512Mi"))
    if not _QUANTITY.match(memory):
        raise SpecError(
            f"engine config memory {memory!r} is not a Kubernetes quantity such as 512Mi or 2Gi"
        )
    gpus = engine_config.get("gpus", 0) or 0
    if isinstance(gpus, bool) or not isinstance(gpus, int) or gpus < 0:
        raise SpecError(f"engine config gpus must be a whole number of GPUs, not {gpus!r}")
    arch = str(engine_config.get("arch") or "").lower()
    if arch not in _ARCHES:
        raise SpecError(f"engine config arch {arch!r} is not one of x86, arm")
    replicas = engine_config.get("replica_count", 1)
    if isinstance(replicas, bool) or not isinstance(replicas, int) or not 1 <= replicas <= 1000:
        raise SpecError(
            f"engine config replica_count must be a whole number 1-1000, not {replicas!r}"
        )
    label = str(engine_config.get("deployment_label") or "")
    if label and not NODE_LABEL.fullmatch(label):
        raise SpecError(
            f"engine config deployment_label {label!r} is not a node label key:value such as "
            "doc-gpu-label:true"
        )
    return {
        "cpus": cpus,
        "memory": memory,
        "gpus": gpus,
        "arch": _ARCHES[arch],
        "replica_count": replicas,
        "deployment_label": label,
    }


def engine_image(
    engine_config: Mapping[str, Any], variant: str | None = None, image: str | None = None
) -> str:
    """The engine image the chart runs for this engine config (the publish's Engine URL).

    `image` (`edge publish --engine-image`) with a tag or digest is used as it is; a bare
    repository, or the chart's own image repository when `image` is None, is tagged with the
    engine version and the variant (`-gpu` when gpus > 0, else `-<variant>`: `tensorflow` or
    `frameworks`, from `edge.runtimes.image_variants`), as the chart's template tags it.
    """
    if image:
        repository, tag = _split_image(check_image_reference(image))
        if tag:
            return image
    else:
        values = yaml.safe_load((chart_source() / "values.yaml").read_text())
        repository = values["image"]["repository"]
    chart_meta = yaml.safe_load((chart_source() / "Chart.yaml").read_text())
    tag = _engine_version(str(chart_meta.get("appVersion", "")))
    if engine_values(engine_config)["gpus"] > 0:
        tag += "-gpu"
    elif variant:
        tag += f"-{variant}"
    return f"{repository}:{tag}"


def check_image_reference(image: str) -> str:
    """`image` if it is a container image reference (`[host[:port]/]path[:tag|@sha256:hex]`,
    path in lower case, as Docker and Kubernetes take it); else a SpecError saying so."""
    if not _IMAGE_REFERENCE.match(image):
        raise SpecError(
            f"engine image {image!r} is not an image reference such as "
            "registry.example.com/team/edge, registry.example.com/team/edge:0.1.0 or "
            "registry.example.com/team/edge@sha256:<64 hex digits>"
        )
    return image


def build_chart(
    name: str,
    pipeline_url: str,
    pipeline_version: str,
    engine_config: Mapping[str, Any],
    dest: Path,
    *,
    registry: str | None = None,
    image: str | None = None,
    variant: str | None = None,
) -> Path:
    """Package the chart for one pipeline version into `dest/<name>-<version>.tgz`.

    Values filled in: pipelineUrl, pipelineVersion, ociRegistry.registry (`registry`, else the
    host of `pipeline_url`), resources/gpus/arch/replicaCount/deploymentLabel from
    `engine_config`, `variant` (the image
    variant the pipeline's runtimes need: `tensorflow`, `frameworks`; None: the cpu image)
    and, when given, `image` (`repository[:tag]` or `repository@sha256:...`).
    Chart name: the pipeline name; version: `0.0.1-<pipeline_version>`.
    """
    if not DNS_NAME.match(name):
        raise SpecError(
            f"pipeline name {name!r} is not a valid chart name (lower-case letters, digits, '-')"
        )
    version = chart_version(pipeline_version)
    values: dict[tuple[str, ...], Any] = {
        ("pipelineUrl",): pipeline_url,
        ("pipelineVersion",): pipeline_version,
        ("ociRegistry", "registry"): registry or _registry_of(pipeline_url),
        ("variant",): variant or "",
    }
    engine = engine_values(engine_config)
    values[("resources", "cpus")] = engine["cpus"]
    values[("resources", "memory")] = engine["memory"]
    values[("gpus",)] = engine["gpus"]
    values[("arch",)] = engine["arch"]
    values[("replicaCount",)] = engine["replica_count"]
    values[("deploymentLabel",)] = engine["deployment_label"]
    if image:
        repository, tag = _split_image(check_image_reference(image))
        values[("image", "repository")] = repository
        values[("image", "tag")] = tag

    source = chart_source()
    chart_meta = yaml.safe_load((source / "Chart.yaml").read_text())
    chart_meta.update(
        name=name,
        version=version,
        appVersion=_engine_version(str(chart_meta.get("appVersion", ""))),
        description=f"Edge pipeline {name}, version {pipeline_version}, served by edge-appliance.",
    )
    files = {
        "Chart.yaml": yaml.safe_dump(chart_meta, sort_keys=False).encode(),
        "values.yaml": set_values((source / "values.yaml").read_text(), values).encode(),
    }
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / f"{name}-{version}.tgz"
    mtime = int(time.time())
    with tarfile.open(target, "w:gz", format=tarfile.PAX_FORMAT) as archive:
        for relative in _chart_files(source):
            if relative in files:
                data = files[relative]
            else:
                data = (source / relative).read_bytes()
            info = tarfile.TarInfo(f"{name}/{relative}")
            info.size, info.mtime, info.mode = len(data), mtime, 0o644
            archive.addfile(info, io.BytesIO(data))
    return target


def set_values(text: str, values: Mapping[tuple[str, ...], Any]) -> str:
    """Set scalar values in a values.yaml text, keeping its comments and layout.

    Each key path must already be in the text with a scalar value on its line.
    """
    lines = text.splitlines(keepends=True)
    found: set[tuple[str, ...]] = set()
    stack: list[tuple[int, str]] = []
    line_pattern = re.compile(r"^( *)([A-Za-z0-9_.\-/]+):( +)?(.*?)(\s+#.*)?(\r?\n)?$")
    for index, line in enumerate(lines):
        stripped = line.strip()
        if not stripped or stripped.startswith(("#", "-")):
            continue
        match = line_pattern.match(line)
        if not match:
            continue
        indent = len(match.group(1))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, match.group(2)))
        path = tuple(key for _, key in stack)
        if path in values:
            found.add(path)
            lines[index] = (
                f"{match.group(1)}{match.group(2)}: {_yaml_scalar(values[path])}"
                f"{match.group(5) or ''}{match.group(6) or ''}"
            )
    missing = set(values) - found
    if missing:
        raise ArtifactError(
            "the chart template's values.yaml lacks " + ", ".join(".".join(p) for p in missing)
        )
    result = "".join(lines)
    loaded = yaml.safe_load(result)
    for path, expected in values.items():
        node: Any = loaded
        for key in path:
            node = node[key]
        if node != expected:
            raise ArtifactError(f"could not set {'.'.join(path)} in the chart's values.yaml")
    return result


def push_chart(
    tgz: Path,
    registry: str,
    repository: str,
    username: str | None,
    password: str | None,
    insecure: bool | None,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    transport: httpx.BaseTransport | None = None,
) -> ChartRef:
    """Push a packaged chart to `<registry>/<repository>/charts/<name>:<version>`.

    `registry` is `host[:port]` (or a URL with its scheme). `insecure` talks plain HTTP to a
    registry given without a scheme; None means plain HTTP for loopback hosts only, as `docker`
    does. Returns the chart's URL, version and manifest digest. `transport` is for tests.
    """
    data = tgz.read_bytes()
    meta = chart_metadata(data)
    name, version = str(meta["name"]), str(meta["version"])
    base_url, host = _registry_base(registry, insecure)
    repo_path = "/".join(part for part in (repository.strip("/"), "charts", name) if part)
    config = json.dumps(meta, separators=(",", ":"), sort_keys=True).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": MANIFEST_MEDIA_TYPE,
            "config": _descriptor(CHART_CONFIG_MEDIA_TYPE, config),
            "layers": [_descriptor(CHART_LAYER_MEDIA_TYPE, data)],
            "annotations": {
                "org.opencontainers.image.title": name,
                "org.opencontainers.image.version": version,
                "org.opencontainers.image.description": str(meta.get("description", "")),
            },
        },
        separators=(",", ":"),
    ).encode()
    store = RemoteRegistry(
        host,
        username,
        password,
        base_url.startswith("http://"),
        timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
        transport=transport,
    )
    ref = Reference(host, repo_path, tag=version.replace("+", "_"))
    try:
        store.check_api()
        for blob in (config, data):
            store.put_blob(ref, blob, _digest(blob), None)
        digest = store.put_manifest(ref, manifest, {})
    finally:
        store.close()
    return ChartRef(url=f"{host}/{repo_path}", version=version, reference=digest)


def chart_metadata(tgz_bytes: bytes) -> dict[str, Any]:
    """Chart.yaml of a chart archive, as a dict."""
    try:
        with tarfile.open(fileobj=io.BytesIO(tgz_bytes), mode="r:gz") as archive:
            for member in archive:
                parts = PurePosixPath(member.name).parts
                if len(parts) == 2 and parts[1] == "Chart.yaml" and member.isfile():
                    handle = archive.extractfile(member)
                    if handle is not None:
                        meta = yaml.safe_load(handle.read())
                        if isinstance(meta, dict) and meta.get("name") and meta.get("version"):
                            return meta
    except (tarfile.TarError, OSError, yaml.YAMLError) as exc:
        raise ArtifactError(f"the chart archive is unreadable: {exc}") from exc
    raise ArtifactError("the chart archive has no <name>/Chart.yaml with a name and version")


def _chart_files(source: Path) -> Iterator[str]:
    ignore_file = source / ".helmignore"
    patterns = []
    if ignore_file.is_file():
        patterns = [
            line.strip()
            for line in ignore_file.read_text().splitlines()
            if line.strip() and not line.strip().startswith("#")
        ]
    for path in sorted(source.rglob("*")):
        relative = path.relative_to(source).as_posix()
        if not path.is_file() or "__pycache__" in path.parts:
            continue
        if any(_ignored(relative, pattern) for pattern in patterns):
            continue
        yield relative


def _ignored(relative: str, pattern: str) -> bool:
    parts = relative.split("/")
    if pattern.endswith("/"):
        return any(fnmatch.fnmatch(part, pattern[:-1]) for part in parts[:-1])
    return fnmatch.fnmatch(relative, pattern) or fnmatch.fnmatch(parts[-1], pattern)


def _yaml_scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))


def _registry_of(pipeline_url: str) -> str:
    """The registry host of `host[:port]/repo/...`; empty for a local OCI layout path."""
    reference = pipeline_url.split("://", 1)[-1]
    first, slash, _ = reference.partition("/")
    return first if slash and _REGISTRY_HOST.match(first) else ""


def _split_image(image: str) -> tuple[str, str]:
    if "@" in image:
        repository, digest = image.split("@", 1)
        return repository, digest
    last = image.rsplit("/", 1)[-1]
    if ":" in last:
        repository, tag = image.rsplit(":", 1)
        return repository, tag
    return image, ""


def _engine_version(fallback: str) -> str:
    try:
        return importlib.metadata.version("edge-appliance")
    except importlib.metadata.PackageNotFoundError:
        return fallback


def _descriptor(media_type: str, blob: bytes) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": _digest(blob), "size": len(blob)}


def _digest(blob: bytes) -> str:
    return "sha256:" + hashlib.sha256(blob).hexdigest()


def _registry_base(registry: str, insecure: bool | None) -> tuple[str, str]:
    registry = registry.strip().rstrip("/")
    if "://" in registry:
        scheme, host = registry.split("://", 1)
        if scheme not in ("http", "https"):
            raise RegistryError(f"registry {registry!r}: only http:// or https:// are understood")
    else:
        host = registry
        if insecure is None:
            insecure = is_loopback(host)
        scheme = "http" if insecure else "https"
    if not host or "/" in host:
        raise RegistryError(
            f"registry {registry!r} must be host[:port]; put the path in the repository"
        )
    return f"{scheme}://{host}", host
