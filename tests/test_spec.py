"""The pipeline spec file: what a person writes, and the messages for what is wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.artifact import Definition, ModelStep, RandomSplitStep, ShadowStep
from edge.errors import SpecError
from edge.publish import build_definition
from edge.spec import load_spec


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "models").mkdir(exist_ok=True)
    for name in ("a.onnx", "b.onnx", "c.onnx", "m.zip", "step.py"):
        (tmp_path / "models" / name).write_bytes(b"model bytes " + name.encode())
    spec = tmp_path / "pipeline.yaml"
    spec.write_text(text)
    return spec


def test_full_spec_round_trips_through_the_definition(tmp_path: Path) -> None:
    spec = load_spec(
        write(
            tmp_path,
            """
name: ccfraud-2
steps:
  - python: pre
    file: models/step.py
  - model: main
    file: models/a.onnx
    tensor_fields: [tensor]
    batch_config: single
  - random_split:
      hash_key: id
      models:
        - {weight: 2, model: control, file: models/b.onnx}
        - {weight: 1, model: challenger, file: models/c.onnx}
  - shadow:
      champion: {model: tf, file: models/m.zip}
      challengers: [{byop: custom, file: models/m.zip}]
deployment: {cpus: 2, memory: 1Gi, gpus: 1, arch: arm}
""",
        )
    )
    assert [type(s) for s in spec.steps] == [ModelStep, ModelStep, RandomSplitStep, ShadowStep]
    assert spec.models["pre"].runtime == "python"
    assert spec.models["tf"].runtime == "tensorflow"
    assert spec.models["custom"].runtime == "byop"
    assert spec.models["main"].tensor_fields == ["tensor"]
    definition = build_definition(spec)
    again = Definition.from_json(definition.to_json())
    assert again == definition
    assert again.models["main"].batch_config == "single"
    assert again.deployment.arch == "arm"
    assert len(again.version) == 36


@pytest.mark.parametrize(
    "text,words",
    [
        ("name: Bad_Name\nsteps: [{model: a, file: models/a.onnx}]\n", "DNS-style"),
        ("name: ok\nsteps: [{model: a, file: models/missing.onnx}]\n", "missing.onnx"),
        ("name: ok\nsteps: [{model: a, file: models/a.onnx, colour: red}]\n", "colour"),
        ("name: ok\nsteps: [{model: a, file: models/a.onnx}]\nextra: 1\n", "extra"),
        ("name: ok\nsteps: []\n", "steps"),
        (
            "name: ok\nsteps: [{model: a, file: models/a.onnx, batch_config: many}]\n",
            "batch_config",
        ),
        ("name: ok\nsteps: [{model: a, file: models/a.onnx, runtime: torch}]\n", "runtime"),
        (
            "name: ok\nsteps: [{model: a, file: models/a.onnx}, {model: a, file: models/b.onnx}]\n",
            "twice",
        ),
        ("name: ok\nsteps: [{model: a, file: models/a.onnx}]\ndeployment: {arch: mips}\n", "arch"),
        (
            "name: ok\nsteps: [{random_split: {models: [{weight: 0, model: a, "
            "file: models/a.onnx}]}}]\n",
            "weight",
        ),
        ("name: [unclosed\n", "YAML"),
    ],
)
def test_invalid_spec_names_the_field(tmp_path: Path, text: str, words: str) -> None:
    with pytest.raises(SpecError, match=words):
        load_spec(write(tmp_path, text))
