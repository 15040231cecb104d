"""`edge publish`: pack a pipeline spec into one OCI artifact and push it.

Registry layout: `<registry>/<repository>/pipelines/<name>:<version>`; a local layout is
tagged `<version>` and addressed as `oci-layout:DIR:<version>`.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import tempfile
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge.artifact import (
    ARTIFACT_TYPE,
    CONFIG_MEDIA_TYPE,
    MANIFEST_MEDIA_TYPE,
    Definition,
    ModelInfo,
    Validation,
    encode_schema,
)
from edge.errors import SpecError
from edge.registry import LAYOUT_SCHEME, Progress, Reference, open_store, sha256_file
from edge.result import MAX_VALIDATIONS
from edge.spec import PipelineSpec, load_spec

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePrivateKey

    from edge.convert import Packed

COUNT_WARNING = (
    "Warning: count is not allowed. A validation named count was ignored (anomaly.count is "
    "reserved); the other validations are added."
)
LARGE = 8 << 20  # show progress for files above this


@dataclass
class Published:
    """What a publish prints (the seed's fields) and returns as JSON."""

    id: str
    pipeline_name: str
    pipeline_version: str
    pipeline_url: str
    manifest_digest: str
    engine_config: dict[str, Any]
    created_at: str
    status: str = "Published"
    extra: dict[str, Any] = field(default_factory=dict)
    placement: dict[str, Any] = field(default_factory=dict)  # the chart's replicas and label

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "pipeline_name": self.pipeline_name,
            "pipeline_version": self.pipeline_version,
            "status": self.status,
            "pipeline_url": self.pipeline_url,
            "manifest_digest": self.manifest_digest,
            "engine_config": self.engine_config,
            "created_at": self.created_at,
            **self.extra,
        }

    def lines(self) -> list[str]:
        rows = [
            ("ID", self.id),
            ("Pipeline Name", self.pipeline_name),
            ("Pipeline Version", self.pipeline_version),
            ("Status", self.status),
            ("Engine URL", self.extra.get("engine_url", "")),
            ("Pipeline URL", self.pipeline_url),
            ("Helm Chart URL", self.extra.get("helm_chart_url", "")),
            ("Helm Chart Reference", self.extra.get("helm_chart_reference", "")),
            ("Helm Chart Version", self.extra.get("helm_chart_version", "")),
            ("Engine Config", json.dumps(self.engine_config)),
            ("User Images", "[]"),
            ("Created By", self.extra.get("created_by", "")),
            ("Created At", self.created_at),
            ("Signature", self.extra.get("signature", {}).get("tag", "")),
            ("Docker Run Variables", json.dumps(self.extra.get("docker_run_variables", {}))),
        ]
        width = max(len(k) for k, _ in rows)
        return [f"{k:<{width}}  {v}" for k, v in rows if v != ""]


def engine_config(definition: Definition) -> dict[str, Any]:
    """The seed's engine config shape, from the deployment section."""
    d = definition.deployment
    resources = {"cpu": float(d.cpus), "memory": d.memory}
    if d.gpus:
        resources["nvidia.com/gpu"] = d.gpus
    return {
        "engine": {"resources": {"limits": resources, "requests": resources}, "arch": d.arch},
        "engineAux": {"images": {}},
        "enginelb": {},
    }


def _engine_placement(placement: dict[str, Any]) -> dict[str, Any]:
    """replica_count and deployment_label in the engine config, where they are set."""
    shown: dict[str, Any] = {}
    if placement.get("replica_count", 1) != 1:
        shown["replicas"] = placement["replica_count"]
    if placement.get("deployment_label"):
        shown["deployment_label"] = placement["deployment_label"]
    return shown


def pack_models(
    spec: PipelineSpec, scratch: Path, convert: bool = True, say: Callable[[str], None] = print
) -> dict[str, Packed]:
    """Convert (or pack for their own runtime) the models of other frameworks (edge.convert),
    saying what was done with each; the converters are imported only when a spec needs one."""
    framed = [entry for entry in spec.models.values() if entry.framework]
    if not framed:
        return {}
    from edge.convert import pack

    packed = {}
    for entry in framed:
        packed[entry.name] = pack(entry, scratch, convert)
        say(packed[entry.name].message)
    return packed


def build_definition(
    spec: PipelineSpec,
    packed: Mapping[str, Packed] | None = None,
    warn: Callable[[str], None] | None = None,
) -> Definition:
    """Hash and version every model file (the packed one, for models `pack_models` converted
    or packed); compile validations to polars JSON. A validation named `count` is left out
    with a warning (`warn`, default stderr) and the others are added, as the seed's
    `add_validations` does."""
    models = {}
    for entry in spec.models.values():
        done = (packed or {}).get(entry.name)
        file = done.file if done else entry.file
        models[entry.name] = ModelInfo(
            name=entry.name,
            version=str(uuid.uuid4()),
            sha256=sha256_file(file),
            runtime=done.runtime if done else entry.runtime,
            filename=f"{entry.name}{file.suffix}",
            size=file.stat().st_size,
            tensor_fields=entry.tensor_fields,
            batch_config=entry.batch_config,
            input_schema=encode_schema(entry.input_schema) if entry.input_schema else None,
            output_schema=encode_schema(entry.output_schema) if entry.output_schema else None,
            framework=entry.framework,
            conversion=done.conversion if done else None,
        )
    validations: dict[str, Validation] = {}
    polars_version = None
    if spec.validations:
        import polars

        from edge.validations import RESERVED, check_name, compile_expression

        polars_version = polars.__version__
        for name, source in spec.validations.items():
            if name == RESERVED:
                (warn or _stderr)(COUNT_WARNING)
                continue
            check_name(name)
            validations[name] = Validation(source=source, expr=compile_expression(source, name))
    if len(validations) > MAX_VALIDATIONS:
        raise SpecError(
            f"{len(validations)} validations: at most {MAX_VALIDATIONS} (anomaly.count is an "
            f"int8 in the seed's Arrow results)"
        )
    return Definition(
        name=spec.name,
        version=str(uuid.uuid4()),
        steps=spec.steps,
        models=models,
        deployment=spec.deployment,
        validations=validations,
        polars_version=polars_version,
        created=dt.datetime.now(dt.UTC).isoformat(),
    )


def publish(
    spec_path: Path,
    *,
    registry: str | None = None,
    repository: str | None = None,
    layout: Path | None = None,
    username: str | None = None,
    password: str | None = None,
    insecure: bool | None = None,
    progress: bool = True,
    convert: bool = True,
    sign_key: EllipticCurvePrivateKey | None = None,
) -> tuple[Published, Definition]:
    """Pack and push `spec_path`; with `sign_key`, also push a cosign signature of the
    manifest digest (`edge.signing`)."""
    if (layout is None) == (registry is None):
        raise SpecError("give either --layout DIR or --registry HOST[:PORT] (with --repository)")
    spec = load_spec(spec_path)
    for line in spec.warnings():  # printed even with progress off, as the count warning
        _stderr(line)
    with tempfile.TemporaryDirectory(prefix="edge-publish-") as scratch:
        say = _stderr if progress else _quiet
        packed = pack_models(spec, Path(scratch), convert, say)
        definition = build_definition(spec, packed, _stderr)
        files = {name: entry.file for name, entry in spec.models.items()}
        files.update({name: done.file for name, done in packed.items()})
        published = _push(
            definition,
            files,
            registry=registry,
            repository=repository,
            layout=layout,
            username=username,
            password=password,
            insecure=insecure,
            progress=progress,
            sign_key=sign_key,
        )
    published.placement = dict(spec.placement)
    published.engine_config["engine"].update(_engine_placement(spec.placement))
    if spec.ignored:
        published.extra["deployment_ignored"] = spec.ignored
    if packed:  # what publish made of each framework's model
        published.extra["models"] = [
            {"name": m.name, "framework": m.framework, "runtime": m.runtime,
             "conversion": m.conversion}
            for m in definition.models.values()
            if m.framework
        ]  # fmt: skip
    return published, definition


def _push(
    definition: Definition,
    files: dict[str, Path],
    *,
    registry: str | None,
    repository: str | None,
    layout: Path | None,
    username: str | None,
    password: str | None,
    insecure: bool | None,
    progress: bool,
    sign_key: EllipticCurvePrivateKey | None = None,
) -> Published:
    if layout is not None:
        layout = layout.resolve()
        layout.mkdir(parents=True, exist_ok=True)
        ref = Reference(registry=str(layout), repository="", tag=definition.version, layout=True)
        url = f"{LAYOUT_SCHEME}{layout}:{definition.version}"
    else:
        repo = "/".join(
            p for p in [(repository or "").strip("/"), "pipelines", definition.name] if p
        )
        ref = Reference(registry=str(registry), repository=repo, tag=definition.version)
        url = str(ref)
    store = open_store(ref, username, password, insecure)
    try:
        with tempfile.TemporaryDirectory() as scratch:
            config_path = Path(scratch) / "config.json"
            config_path.write_bytes(definition.to_json())
            config_digest = f"sha256:{sha256_file(config_path)}"
            store.put_blob(ref, config_path, config_digest, None)
            for info in definition.models.values():
                show = _progress_printer(info.filename) if progress and info.size > LARGE else None
                store.put_blob(ref, files[info.name], info.digest, show)
            manifest = {
                "schemaVersion": 2,
                "mediaType": MANIFEST_MEDIA_TYPE,
                "artifactType": ARTIFACT_TYPE,
                "config": {
                    "mediaType": CONFIG_MEDIA_TYPE,
                    "digest": config_digest,
                    "size": config_path.stat().st_size,
                },
                "layers": [
                    {
                        "mediaType": info.media_type,
                        "digest": info.digest,
                        "size": info.size,
                        "annotations": info.annotations(),
                    }
                    for info in definition.models.values()
                ],
                "annotations": {
                    "org.opencontainers.image.created": definition.created or "",
                    "ai.edge.pipeline.name": definition.name,
                    "ai.edge.pipeline.version": definition.version,
                },
            }
            body = json.dumps(manifest, indent=1).encode()
            digest = store.put_manifest(ref, body, {"ai.edge.pipeline.name": definition.name})
            extra: dict[str, Any] = {}
            if sign_key is not None:
                from edge import signing

                reference = signing.identity(ref, manifest)
                signing.attach(store, ref, digest, signing.sign(sign_key, reference, digest))
                extra["signature"] = {
                    "tag": signing.signature_tag(digest),
                    "docker_reference": reference,
                    "key": signing.fingerprint(sign_key.public_key()),
                }
    finally:
        store.close()
    return Published(
        id=definition.version,
        pipeline_name=definition.name,
        pipeline_version=definition.version,
        pipeline_url=url,
        manifest_digest=digest,
        engine_config=engine_config(definition),
        created_at=definition.created or "",
        extra=extra,
    )


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)


def _quiet(line: str) -> None:
    pass


def _progress_printer(name: str) -> Progress:
    last = [-1]

    def show(done: int, total: int) -> None:
        percent = int(done * 100 / total) if total else 100
        if percent // 10 != last[0] // 10 or percent == 100 and last[0] != 100:
            print(f"  {name}: {done >> 20} / {total >> 20} MiB ({percent}%)", file=sys.stderr)
            last[0] = percent

    return show
