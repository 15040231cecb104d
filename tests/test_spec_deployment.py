"""The spec's deployment section beyond the engine's resources (issue 16, item 13): the seed's
replica_count and deployment_label (the Helm chart's), and the seed's settings an edge cannot
apply, accepted and named as ignored."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from edge.errors import SpecError
from edge.publish import publish
from edge.spec import IGNORED, parse_spec


def spec_doc(**deployment: Any) -> dict[str, Any]:
    return {"name": "p", "steps": [{"python": "s", "file": "s.py"}], "deployment": deployment}


@pytest.fixture
def base(tmp_path: Path) -> Path:
    (tmp_path / "s.py").write_text("def wallaroo_json(data):\n    return data\n")
    return tmp_path


def test_replica_count_and_deployment_label_are_the_charts(base: Path) -> None:
    spec = parse_spec(spec_doc(cpus=0.5, replica_count=3, deployment_label="pool:edge"), base)
    assert spec.placement == {"replica_count": 3, "deployment_label": "pool:edge"}
    assert spec.deployment.cpus == 0.5  # the engine's resources as before
    assert spec.ignored == {}
    assert parse_spec(spec_doc(), base).placement == {"replica_count": 1}


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("replica_count", 0, "replica_count must be a whole number"),
        ("replica_count", 1.5, "replica_count must be a whole number"),
        ("replica_count", True, "replica_count must be a whole number"),
        ("deployment_label", "no-separator", "deployment_label must be a node label"),
        ("deployment_label", "bad key:v", "deployment_label must be a node label"),
        ("deployment_label", 3, "deployment_label must be a node label"),
        ("autoscale", True, "unknown key"),
    ],
)
def test_bad_chart_settings_are_refused(base: Path, key: str, value: Any, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        parse_spec(spec_doc(**{key: value}), base)


def test_what_an_edge_cannot_apply_is_accepted_and_named(base: Path) -> None:
    written = {key: 1 for key in IGNORED}
    spec = parse_spec(spec_doc(**written), base)
    assert spec.ignored == written
    lines = spec.warnings()
    assert len(lines) == len(IGNORED)
    for key, line in zip(IGNORED, lines, strict=True):
        assert line.startswith(f"Warning: deployment.{key} is accepted and ignored: ")
    assert {"lb_cpus", "lb_memory", "sidekick_env", "replica_autoscale_min_max"} <= set(IGNORED)


def test_publish_prints_the_ignored_settings_and_keeps_them_out_of_the_definition(
    base: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import yaml

    doc = spec_doc(lb_memory="1Gi", sidekick_cpus=0.25, replica_count=2)
    (base / "p.yaml").write_text(yaml.safe_dump(doc))
    published, definition = publish(base / "p.yaml", layout=base / "layout", progress=False)
    err = capsys.readouterr().err
    assert "Warning: deployment.lb_memory is accepted and ignored" in err
    assert "Warning: deployment.sidekick_cpus is accepted and ignored" in err
    assert "Warning: deployment.replica_count 2 applies to the Helm chart only" in err
    assert published.as_dict()["deployment_ignored"] == {"lb_memory": "1Gi", "sidekick_cpus": 0.25}
    assert published.engine_config["engine"]["replicas"] == 2
    assert published.placement == {"replica_count": 2}
    # the definition an appliance reads is unchanged in shape: older appliances read it too
    assert set(definition.engine_config()) == {"cpus", "memory", "gpus", "arch"}
