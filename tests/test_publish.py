"""edge.publish: a spec becomes a definition and one OCI artifact in a local layout, in process,
no registry: the manifest, its digests and annotations, the layout's index, and what
`edge publish` prints."""

from __future__ import annotations

import hashlib
import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from edge import cli
from edge.artifact import (
    ARTIFACT_TYPE,
    CONFIG_MEDIA_TYPE,
    LAYER_MEDIA_TYPES,
    MANIFEST_MEDIA_TYPE,
    Definition,
)
from edge.cache import fetch_pipeline
from edge.errors import SpecError
from edge.publish import Published, engine_config, publish

SPEC = """\
name: fraud-check
steps:
  - python: pre
    file: steps/pre.py
  - model: scorer
    file: models/scorer.onnx
    tensor_fields: [tensor]
    batch_config: single
  - random_split:
      models:
        - {weight: 1, model: left, file: models/scorer.onnx}
        - {weight: 1, model: right, file: models/other.zip, runtime: byop}
deployment: {cpus: 2, memory: 1Gi, gpus: 1, arch: arm}
validations:
  high: pl.col("out.score") > 0.9
"""
FILES = {
    "steps/pre.py": b"def wallaroo_json(data):\n    return data\n",
    "models/scorer.onnx": b"not really onnx: publish only hashes it",
    "models/other.zip": b"PK not really a zip",
}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def spec(tmp_path: Path) -> Path:
    for name, content in FILES.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(content)
    path = tmp_path / "pipeline.yaml"
    path.write_text(SPEC)
    return path


class Layout:
    """An OCI image layout read back by hand, as another tool would."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def blob(self, digest: str) -> bytes:
        algorithm, hexdigest = digest.split(":")
        assert algorithm == "sha256"
        return (self.root / "blobs" / "sha256" / hexdigest).read_bytes()

    def index(self) -> dict[str, Any]:
        return dict(json.loads((self.root / "index.json").read_text()))

    def manifest(self, tag: str) -> tuple[dict[str, Any], str]:
        (entry,) = [
            e
            for e in self.index()["manifests"]
            if e["annotations"]["org.opencontainers.image.ref.name"] == tag
        ]
        body = self.blob(entry["digest"])
        assert len(body) == entry["size"] and entry["mediaType"] == MANIFEST_MEDIA_TYPE
        return json.loads(body), entry["digest"]


def test_the_layout_holds_one_manifest_config_and_a_layer_per_model(
    spec: Path, tmp_path: Path
) -> None:
    published, definition = publish(spec, layout=tmp_path / "layout", progress=False)
    layout = Layout(tmp_path / "layout")
    assert json.loads((layout.root / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    manifest, digest = layout.manifest(definition.version)
    assert digest == published.manifest_digest
    assert manifest["schemaVersion"] == 2
    assert manifest["mediaType"] == MANIFEST_MEDIA_TYPE
    assert manifest["artifactType"] == ARTIFACT_TYPE
    assert manifest["annotations"] == {
        "org.opencontainers.image.created": definition.created,
        "ai.edge.pipeline.name": "fraud-check",
        "ai.edge.pipeline.version": definition.version,
    }

    config = manifest["config"]
    body = layout.blob(config["digest"])
    assert config["mediaType"] == CONFIG_MEDIA_TYPE and config["size"] == len(body)
    assert Definition.from_json(body) == definition

    layers = manifest["layers"]
    assert [layer["annotations"]["ai.edge.model.name"] for layer in layers] == [
        "pre",
        "scorer",
        "left",
        "right",
    ]
    files = {"pre": "steps/pre.py", "scorer": "models/scorer.onnx", "left": "models/scorer.onnx"}
    files["right"] = "models/other.zip"
    runtimes = {"pre": "python", "scorer": "onnx", "left": "onnx", "right": "byop"}
    for layer in layers:
        name = layer["annotations"]["ai.edge.model.name"]
        content = FILES[files[name]]
        info = definition.models[name]
        assert layer["digest"] == f"sha256:{sha(content)}" and layer["size"] == len(content)
        assert layout.blob(layer["digest"]) == content
        assert layer["mediaType"] == LAYER_MEDIA_TYPES[runtimes[name]]
        assert layer["annotations"] == {
            "org.opencontainers.image.title": f"{name}{Path(files[name]).suffix}",
            "ai.edge.model.name": name,
            "ai.edge.model.version": info.version,
            "ai.edge.model.sha256": sha(content),
            "ai.edge.model.runtime": runtimes[name],
            "ai.edge.model.batch_config": "single" if name == "scorer" else "",
            "ai.edge.model.tensor_fields": '["tensor"]' if name == "scorer" else "null",
        }
    # one file used by two steps is stored once
    assert len(list((layout.root / "blobs" / "sha256").iterdir())) == 5


def test_every_blob_is_named_by_its_own_sha256(spec: Path, tmp_path: Path) -> None:
    publish(spec, layout=tmp_path / "layout", progress=False)
    blobs = list((tmp_path / "layout" / "blobs" / "sha256").iterdir())
    assert blobs and all(sha(blob.read_bytes()) == blob.name for blob in blobs)
    assert not list((tmp_path / "layout").rglob("*.part"))


def test_the_definition_records_versions_hashes_and_validations(spec: Path, tmp_path: Path) -> None:
    _, definition = publish(spec, layout=tmp_path / "layout", progress=False)
    assert definition.name == "fraud-check"
    versions = [definition.version, *(m.version for m in definition.models.values())]
    assert all(str(uuid.UUID(v)) == v for v in versions) and len(set(versions)) == len(versions)
    assert definition.models["scorer"].sha256 == sha(FILES["models/scorer.onnx"])
    assert definition.validations["high"].source == 'pl.col("out.score") > 0.9'
    assert '"out.score"' in definition.validations["high"].expr  # polars' JSON, not the text
    assert definition.polars_version


def test_published_fields_and_the_url_the_appliance_pulls(spec: Path, tmp_path: Path) -> None:
    published, definition = publish(spec, layout=tmp_path / "layout", progress=False)
    root = (tmp_path / "layout").resolve()
    assert published.pipeline_url == f"oci-layout:{root}:{definition.version}"
    assert published.id == published.pipeline_version == definition.version
    assert published.pipeline_name == "fraud-check" and published.status == "Published"
    assert published.created_at == definition.created
    pulled = fetch_pipeline(published.pipeline_url, tmp_path / "persist", echo=lambda line: None)
    assert pulled.definition == definition
    for name, path in pulled.model_paths.items():
        assert sha(path.read_bytes()) == definition.models[name].sha256


def test_publishing_again_adds_a_version_beside_the_first(spec: Path, tmp_path: Path) -> None:
    first, _ = publish(spec, layout=tmp_path / "layout", progress=False)
    second, _ = publish(spec, layout=tmp_path / "layout", progress=False)
    assert first.pipeline_version != second.pipeline_version
    tags = [
        e["annotations"]["org.opencontainers.image.ref.name"]
        for e in Layout(tmp_path / "layout").index()["manifests"]
    ]
    assert tags == [first.pipeline_version, second.pipeline_version]
    for published in (first, second):
        pulled = fetch_pipeline(
            published.pipeline_url, tmp_path / published.id, echo=lambda line: None
        )
        assert pulled.definition.version == published.pipeline_version


def test_engine_config_from_the_deployment(spec: Path, tmp_path: Path) -> None:
    published, definition = publish(spec, layout=tmp_path / "layout", progress=False)
    limits = {"cpu": 2.0, "memory": "1Gi", "nvidia.com/gpu": 1}
    assert published.engine_config == {
        "engine": {"resources": {"limits": limits, "requests": limits}, "arch": "arm"},
        "engineAux": {"images": {}},
        "enginelb": {},
    }
    assert engine_config(definition) == published.engine_config


@pytest.mark.parametrize(
    "where",
    [{}, {"layout": Path("x"), "registry": "127.0.0.1:5000"}],
    ids=["neither", "both"],
)
def test_a_layout_or_a_registry_exactly(spec: Path, where: dict[str, Any]) -> None:
    with pytest.raises(SpecError, match="give either --layout DIR or --registry"):
        publish(spec, **where)


def test_large_files_show_progress_on_stderr(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "big.onnx").write_bytes(b"\0" * (9 << 20))
    (tmp_path / "small.onnx").write_bytes(b"small")
    (tmp_path / "p.yaml").write_text(
        "name: big\nsteps:\n  - model: big\n    file: big.onnx\n"
        "  - model: small\n    file: small.onnx\n"
    )
    publish(tmp_path / "p.yaml", layout=tmp_path / "layout")
    captured = capsys.readouterr()
    assert captured.err.splitlines() == ["  big.onnx: 9 / 9 MiB (100%)"]
    assert captured.out == ""
    publish(tmp_path / "p.yaml", layout=tmp_path / "layout", progress=False)
    assert capsys.readouterr().err == ""


# ---------------------------------------------------------------------------- what it prints


def test_edge_publish_prints_the_seeds_fields(
    spec: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["publish", str(spec), "--layout", str(tmp_path / "layout")]) == 0
    lines = capsys.readouterr().out.splitlines()
    labels = [line.split("  ")[0] for line in lines]
    assert labels == [
        "ID",
        "Pipeline Name",
        "Pipeline Version",
        "Status",
        "Engine URL",
        "Pipeline URL",
        "Engine Config",
        "User Images",
        "Created By",  # the seed's (EDGE_PUBLISHER, else the login name)
        "Created At",
        "Docker Run Variables",
    ]  # no chart for a local layout: its lines are left out
    values = [line.split("  ", 1)[1].lstrip() for line in lines]
    assert len({len(line) - len(value) for line, value in zip(lines, values, strict=True)}) == 1
    fields = dict(zip(labels, values, strict=True))  # the values are aligned in one column
    version = fields["Pipeline Version"]
    assert fields["ID"] == version and fields["Status"] == "Published"
    assert fields["Pipeline URL"] == f"oci-layout:{(tmp_path / 'layout').resolve()}:{version}"
    assert json.loads(fields["Engine Config"])["engine"]["arch"] == "arm"
    assert fields["User Images"] == "[]" and json.loads(fields["Docker Run Variables"]) == {}
    assert fields["Engine URL"] == "ghcr.io/edge-appliance/edge:0.1.0-gpu"  # the spec asks a GPU


def test_edge_publish_json_is_one_object(
    spec: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["publish", str(spec), "--layout", str(tmp_path / "layout"), "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert set(record) == {
        "id",
        "pipeline_name",
        "pipeline_version",
        "status",
        "pipeline_url",
        "manifest_digest",
        "engine_config",
        "created_at",
        "created_by",
        "engine_url",
    }
    _, digest = Layout(tmp_path / "layout").manifest(record["pipeline_version"])
    assert record["manifest_digest"] == digest
    assert record["pipeline_url"].endswith(f":{record['pipeline_version']}")


def test_a_bad_spec_is_one_line_on_stderr_and_exit_status_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "p.yaml").write_text("name: Bad_Name\nsteps: [{model: a, file: a.onnx}]\n")
    assert cli.main(["publish", str(tmp_path / "p.yaml"), "--layout", str(tmp_path / "l")]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith("error: ")
    assert "DNS-style" in captured.err and "Traceback" not in captured.err
    assert not (tmp_path / "l" / "index.json").exists()


@pytest.mark.parametrize(
    "name,source,words",
    [
        ("sneaky", 'pl.col("in.x").map_elements(lambda v: v.bit_length())', "AnonymousFunction"),
        ("too-low", 'pl.col("in.x") > 1', "identifier"),
    ],
)
def test_an_unsafe_validation_is_refused_at_publish(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, source: str, words: str
) -> None:
    (tmp_path / "m.onnx").write_bytes(b"model")
    (tmp_path / "p.yaml").write_text(
        "name: unsafe\nsteps:\n  - model: m\n    file: m.onnx\n"
        f"validations:\n  {name}: '{source}'\n"
    )
    assert cli.main(["publish", str(tmp_path / "p.yaml"), "--layout", str(tmp_path / "l")]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and words in captured.err and f"'{name}'" in captured.err
    assert not (tmp_path / "l" / "index.json").exists()


def test_a_validation_named_count_is_ignored_with_a_warning_and_the_others_kept(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The seed's add_validations: "Any validations submitted with the name count are ignored
    and an warning returned. Other validations ... are added to the pipeline."
    """
    (tmp_path / "m.onnx").write_bytes(b"model")
    (tmp_path / "p.yaml").write_text(
        "name: counted\nsteps:\n  - model: m\n    file: m.onnx\n"
        "validations:\n  count: 'pl.col(\"in.x\") > 1'\n  high: 'pl.col(\"in.x\") > 2'\n"
    )
    assert cli.main(["publish", str(tmp_path / "p.yaml"), "--layout", str(tmp_path / "l")]) == 0
    captured = capsys.readouterr()
    assert "Warning: count is not allowed" in captured.err
    _, definition = publish(tmp_path / "p.yaml", layout=tmp_path / "l2", progress=False)
    assert list(definition.validations) == ["high"]
    assert "Warning: count is not allowed" in capsys.readouterr().err  # even without progress


def test_published_lines_include_the_chart_fields_when_there_are_some() -> None:
    published = Published("v", "p", "v", "reg/p:v", "sha256:0", {}, "now")
    published.extra.update(helm_chart_url="oci://reg/charts/p", engine_url="img:1")
    labels = [line.split("  ")[0] for line in published.lines()]
    assert labels[4:7] == ["Engine URL", "Pipeline URL", "Helm Chart URL"]
    assert published.as_dict()["helm_chart_url"] == "oci://reg/charts/p"
