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
from typing import TYPE_CHECKING

from edge import signing
from edge.artifact import CONFIG_MEDIA_TYPE, TITLE_ANNOTATION, Definition, ModelInfo
from edge.errors import (
    ArtifactError,
    DigestMismatch,
    EdgeError,
    NoCachedCopy,
    RegistryAuthError,
    RegistryError,
    RegistryUnreachable,
    SignatureError,
)
from edge.registry import (
    Reference,
    Store,
    download_blob,
    open_store,
    read_blob,
    sha256_file,
)

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePublicKey

log = logging.getLogger(__name__)
SIGNATURES = "signatures.json"  # the pulled manifest's signatures (with PIPELINE_VERIFY_KEYS)
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
    verify_keys: list[EllipticCurvePublicKey] | None = None,
) -> LocalPipeline:
    """Pull `url` (verifying every digest) into the cache; serve the cache if offline.

    `registry` (OCI_REGISTRY) is the registry the credentials are for; None: the pipeline's.
    With `verify_keys` (PIPELINE_VERIFY_KEYS), the manifest's signature is checked before any
    layer is fetched, and the cached copy's (against the cached manifest) before it is served:
    a `SignatureError` otherwise, and the cache is not used instead.
    """
    ref = Reference.parse(url)
    directory = cache_dir(persist_dir, url)
    username, password = _credentials_for(ref, registry, username, password, echo)
    try:
        return _pull(ref, directory, username, password, insecure, echo, verify_keys)
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
        return _load_cached(ref, directory, echo, verify_keys)


def _pull(
    ref: Reference,
    directory: Path,
    username: str | None,
    password: str | None,
    insecure: bool | None,
    echo: Echo,
    verify_keys: list[EllipticCurvePublicKey] | None,
) -> LocalPipeline:
    store = open_store(ref, username, password, insecure)
    try:
        _login(store, username, password, echo)
        echo(f"Fetching manifest and config for pipeline: {ref}")
        manifest_bytes, manifest_digest = store.get_manifest(ref)
        manifest = _parse_manifest(manifest_bytes, str(ref))
        signatures = None
        if verify_keys is not None:
            signatures = signing.fetch(store, ref, manifest_digest)
            _verify(ref, manifest, manifest_digest, signatures, verify_keys, echo)
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
    if signatures is not None:  # what the cached copy is verified with when offline
        (directory / SIGNATURES).write_text(json.dumps([one.as_dict() for one in signatures]))
    else:  # none were fetched for this manifest: a later check must not find older ones
        (directory / SIGNATURES).unlink(missing_ok=True)
    temporary = directory / "manifest.json.part"
    temporary.write_bytes(manifest_bytes)
    os.replace(temporary, directory / "manifest.json")
    echo("Fetched")
    log.info(
        "pipeline=%s version=%s manifest=%s", definition.name, definition.version, manifest_digest
    )
    return LocalPipeline(definition, paths, directory, from_cache=False)


def _verify(
    ref: Reference,
    manifest: dict,
    digest: str,
    signatures: list[signing.Signature],
    keys: list[EllipticCurvePublicKey],
    echo: Echo,
) -> None:
    """The one signature check, for a pull and for the cache (`edge.signing`)."""
    echo(f"Verifying signature of {digest}")
    key = signing.verify(signatures, keys, digest, signing.identity(ref, manifest), str(ref))
    signing.check_tag(ref, manifest, digest)
    echo(f"Signature verified (key {key})")
    log.info("signature verified manifest=%s key=%s", digest, key)


def _cached_signatures(directory: Path) -> list[signing.Signature]:
    try:
        stored = json.loads((directory / SIGNATURES).read_text())
        return [signing.Signature.from_dict(one) for one in stored]
    except FileNotFoundError:  # cached while verification was off
        return []
    except (ValueError, KeyError, TypeError) as exc:
        raise SignatureError(f"cached signatures in {directory} are unreadable ({exc})") from exc


def _load_cached(
    ref: Reference,
    directory: Path,
    echo: Echo,
    verify_keys: list[EllipticCurvePublicKey] | None = None,
) -> LocalPipeline:
    manifest_bytes = (directory / "manifest.json").read_bytes()
    manifest = _parse_manifest(manifest_bytes, str(directory))
    if verify_keys is not None:
        digest = f"sha256:{hashlib.sha256(manifest_bytes).hexdigest()}"
        _verify(ref, manifest, digest, _cached_signatures(directory), verify_keys, echo)
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
    if not (username and password):
        return
    from edge.remote import RemoteRegistry  # loaded already: a registry's store is one

    if isinstance(store, RemoteRegistry):
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
