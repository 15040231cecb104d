"""Pull a published pipeline into the persist directory, or fall back to the cached copy.

Layout: `PERSIST_DIR/pipelines/<key>/` with `manifest.json`, `config.json` and `models/`,
where `<key>` is derived from the pipeline URL. Each layer is stored as `models/<digest hex>`
(the seed's layer file name). A copy is complete once `manifest.json` is written (last,
atomically); every model file is re-checked against the manifest's digest before it is used,
whether it was just downloaded or found in the cache.

Credentials (OCI_USERNAME / OCI_PASSWORD) are for the registry OCI_REGISTRY names, as the seed's
`docker login` is: a pull logs in there first (`Login Succeeded`) and never sends them to
another host.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edge.artifact import CONFIG_MEDIA_TYPE, TITLE_ANNOTATION, Definition, ModelInfo
from edge.errors import (
    ArtifactError,
    DigestMismatch,
    EdgeError,
    NoCachedCopy,
    RegistryAuthError,
    RegistryError,
    RegistryUnreachable,
)
from edge.registry import (
    Reference,
    RemoteRegistry,
    Store,
    download_blob,
    open_store,
    read_blob,
    sha256_file,
)

log = logging.getLogger(__name__)
UNKNOWN = "unknown"
NAME_ANNOTATION = "ai.edge.pipeline.name"  # on a layout's index entry (`edge publish --layout`)
REF_NAME = "org.opencontainers.image.ref.name"
Echo = Callable[[str], None]


@dataclass
class LocalPipeline:
    definition: Definition
    model_paths: dict[str, Path]  # model name -> file
    directory: Path
    from_cache: bool


def cache_dir(persist_dir: Path, url: str) -> Path:
    key = hashlib.sha256(url.encode()).hexdigest()[:16]
    return persist_dir / "pipelines" / key


def expected_name(url: str) -> str:
    """The pipeline's name before it is pulled: `.../pipelines/<name>:<version>` in a registry
    reference, the `ai.edge.pipeline.name` annotation of a layout's tag, else "unknown"."""
    try:
        ref = Reference.parse(url)
        if ref.layout:
            index = json.loads((Path(ref.registry) / "index.json").read_text())
            for entry in reversed(index.get("manifests", [])):
                notes = entry.get("annotations") or {}
                if ref.tag in (None, notes.get(REF_NAME)) and notes.get(NAME_ANNOTATION):
                    return str(notes[NAME_ANNOTATION])
            return UNKNOWN
    except (EdgeError, OSError, ValueError, AttributeError):
        return UNKNOWN
    head, sep, name = ref.repository.rpartition("pipelines/")
    if sep and name and (not head or head.endswith("/")) and "/" not in name:
        return name
    return UNKNOWN


def fetch_pipeline(
    url: str,
    persist_dir: Path,
    username: str | None = None,
    password: str | None = None,
    insecure: bool | None = None,
    echo: Echo = print,
    registry: str | None = None,
) -> LocalPipeline:
    """Pull `url` (verifying every digest) into the cache; serve the cache if offline.

    `registry` (OCI_REGISTRY) is the registry the credentials are for; None: the pipeline's.
    """
    ref = Reference.parse(url)
    directory = cache_dir(persist_dir, url)
    username, password = _credentials_for(ref, registry, username, password, echo)
    try:
        return _pull(ref, directory, username, password, insecure, echo)
    except RegistryError as exc:  # down, refusing credentials, 5xx: a device keeps serving
        if not (directory / "manifest.json").exists():
            fix = (
                "check OCI_USERNAME / OCI_PASSWORD"
                if isinstance(exc, RegistryAuthError)
                else "make the registry reachable (check OCI_REGISTRY and the network)"
            )
            raise NoCachedCopy(
                f"cannot fetch pipeline {url}: {exc}; and there is no cached copy in "
                f"{directory}. Fix: {fix} for the first start"
            ) from exc
        what = "unreachable" if isinstance(exc, RegistryUnreachable) else "failed"
        echo(f"Registry {what} ({exc}); serving the cached copy from {directory}")
        log.warning("registry %s; serving the cached pipeline error=%s", what, exc)
        return _load_cached(directory, echo)


def _pull(
    ref: Reference,
    directory: Path,
    username: str | None,
    password: str | None,
    insecure: bool | None,
    echo: Echo,
) -> LocalPipeline:
    store = open_store(ref, username, password, insecure)
    try:
        _login(store, username, password, echo)
        echo(f"Fetching manifest and config for pipeline: {ref}")
        manifest_bytes, manifest_digest = store.get_manifest(ref)
        manifest = _parse_manifest(manifest_bytes, str(ref))
        config = read_blob(store, ref, manifest["config"]["digest"])
        definition = Definition.from_json(config)
        models_dir = directory / "models"
        models_dir.mkdir(parents=True, exist_ok=True)
        echo("Fetching model layers")
        paths = {}
        for layer in manifest["layers"]:
            info = _layer_model(definition, layer)
            path = models_dir / _layer_file_name(layer["digest"])
            _echo_layer(echo, layer["digest"], path.name, info.name, info.runtime, info.version)
            if not (path.exists() and f"sha256:{sha256_file(path)}" == layer["digest"]):
                download_blob(store, ref, layer["digest"], path, size=int(layer.get("size", 0)))
            paths[info.name] = path
    finally:
        store.close()
    (directory / "config.json").write_bytes(config)
    temporary = directory / "manifest.json.part"
    temporary.write_bytes(manifest_bytes)
    os.replace(temporary, directory / "manifest.json")
    echo("Fetched")
    log.info(
        "pipeline=%s version=%s manifest=%s", definition.name, definition.version, manifest_digest
    )
    return LocalPipeline(definition, paths, directory, from_cache=False)


def _load_cached(directory: Path, echo: Echo) -> LocalPipeline:
    manifest = _parse_manifest((directory / "manifest.json").read_bytes(), str(directory))
    config = (directory / "config.json").read_bytes()
    if f"sha256:{hashlib.sha256(config).hexdigest()}" != manifest["config"]["digest"]:
        raise DigestMismatch(f"cached pipeline config in {directory} does not match its manifest")
    definition = Definition.from_json(config)
    paths = {}
    for layer in manifest["layers"]:
        info = _layer_model(definition, layer)
        path = directory / "models" / _layer_file_name(layer["digest"])
        if not path.exists():  # a cache written before layers were named by their digest
            path = directory / "models" / info.filename
        _echo_layer(echo, layer["digest"], path.name, info.name, info.runtime, info.version)
        if not path.exists() or f"sha256:{sha256_file(path)}" != layer["digest"]:
            raise DigestMismatch(
                f"cached model {info.name!r} ({path}) does not match layer {layer['digest']}; "
                f"the cache is damaged: start once with the registry reachable"
            )
        paths[info.name] = path
    echo("Fetched (from cache)")
    return LocalPipeline(definition, paths, directory, from_cache=True)


def registry_host(registry: str) -> str:
    """OCI_REGISTRY as `host[:port]`: the seed writes it with or without a scheme
    (`https://sample-registry.com`, `sample-registry.com`); a path after the host is dropped."""
    host = registry.strip()
    for scheme in ("oci://", "https://", "http://"):
        host = host.removeprefix(scheme)
    return host.split("/", 1)[0].lower()


def _credentials_for(
    ref: Reference, registry: str | None, username: str | None, password: str | None, echo: Echo
) -> tuple[str | None, str | None]:
    """The credentials to send to the pipeline's registry: none when OCI_REGISTRY names
    another one (they are for that registry only)."""
    if ref.layout or not (username or password) or not registry:
        return username, password
    if registry_host(registry) == ref.registry.lower():
        return username, password
    echo(
        f"OCI_REGISTRY {registry_host(registry)} is not the pipeline's registry {ref.registry}: "
        "its credentials are not sent there"
    )
    log.warning("credentials not sent registry=%s pipeline_registry=%s", registry, ref.registry)
    return None, None


def _login(store: Store, username: str | None, password: str | None, echo: Echo) -> None:
    """The seed's `Login Succeeded`: with credentials, the registry accepts them before the
    pull (a refusal is a RegistryAuthError, as it would be on the manifest)."""
    if isinstance(store, RemoteRegistry) and username and password:
        store.check_api()
        echo("Login Succeeded")


def _layer_file_name(digest: str) -> str:
    """A layer's file in the cache: its digest's hex (`sha256:` and a 64-digit hex, checked)."""
    algorithm, _, hexdigest = digest.partition(":")
    if algorithm != "sha256" or len(hexdigest) != 64 or not _is_hex(hexdigest):
        raise ArtifactError(f"layer digest {digest!r} is not sha256:<64 hex digits>")
    return hexdigest


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdef" for c in text)


def _parse_manifest(raw: bytes, where: str) -> dict:
    try:
        manifest = json.loads(raw)
        config = manifest["config"]
        layers = manifest["layers"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ArtifactError(f"{where}: manifest is not an OCI image manifest ({exc})") from exc
    if config.get("mediaType") != CONFIG_MEDIA_TYPE:
        raise ArtifactError(
            f"{where}: config media type {config.get('mediaType')!r} is not a pipeline "
            f"({CONFIG_MEDIA_TYPE}); was this published with `edge publish`?"
        )
    if not isinstance(layers, list):
        raise ArtifactError(f"{where}: manifest layers are not a list")
    return manifest


def _layer_model(definition: Definition, layer: dict) -> ModelInfo:
    annotations = layer.get("annotations") or {}
    title = annotations.get(TITLE_ANNOTATION, "")
    for info in definition.models.values():
        if info.digest == layer.get("digest") and info.filename == title:
            if os.path.basename(title) != title or title in ("", ".", ".."):
                raise ArtifactError(f"layer {layer.get('digest')} has an unsafe file name")
            return info
    raise ArtifactError(
        f"layer {layer.get('digest')} ({title!r}) is not a model of the pipeline definition"
    )


def _echo_layer(
    echo: Echo, digest: str, filename: str, name: str, runtime: str, version: str
) -> None:
    echo(f"digest: {digest}")
    echo(f"  filename: {filename}")
    echo(f"  name: {name}")
    echo("  type: model")
    echo(f"  runtime: {runtime}")
    echo(f"  version: {version}")
    echo("")
