"""The seed's `export_logs` from the ops center: one file per pipeline version, named
`{file_prefix}-1.json`, `-2.json`, ... (the newest published version first), NDJSON or Arrow."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from ops_sync import cli
from ops_sync import client as client_module
from ops_sync.client import AdminClient
from tests.test_ops_records import _SyncASGI
from tests.test_ops_server import T0, joined_edge, upload, with_version
from tests.test_ops_support import ADMIN, PIPELINE_URL, Ops, result_table

V1 = "3b49fba8-94d8-4fca-aecc-c75257fd16c6"  # PIPELINE_URL's version
V2 = "0a1b2c3d-94d8-4fca-aecc-c75257fd16c6"
V3 = "99999999-94d8-4fca-aecc-c75257fd16c6"  # published, never logged


@pytest.fixture()
def two_versions(tmp_path: Path) -> Ops:
    ops = Ops(tmp_path / "ops")
    for version in (V1, V2, V3):  # published in this order: V3 is the newest version
        ops.center.register_publish({"pipeline_url": PIPELINE_URL.replace(V1, version)})
    cert = joined_edge(ops, "edge-a")
    assert upload(ops, cert, 1, with_version(result_table(5, T0), V1, [0] * 5)).is_success
    assert upload(ops, cert, 6, with_version(result_table(3, T0 + 100), V2, [0] * 3)).is_success
    return ops


def versions_in(path: Path) -> list[str]:
    lines = path.read_text().splitlines()
    return [json.loads(line)["metadata.pipeline_version"] for line in lines]


RANGE = {"start_datetime": "2026-09-21T00:00:00Z", "end_datetime": "2026-09-23T00:00:00Z"}
DATASETS = {"dataset": ["time", "metadata"]}


def test_one_file_per_version_newest_first_and_empty_versions_skipped(
    two_versions: Ops, tmp_path: Path
) -> None:
    with AdminClient("https://ops", ADMIN, transport=_SyncASGI(two_versions)) as client:
        files, _ = client.export_logs("ccfraud", tmp_path / "logs", limit=1000, **RANGE, **DATASETS)
    assert [f.name for f in files] == ["ccfraud-1.json", "ccfraud-2.json"]  # V3 has no rows
    assert versions_in(files[0]) == [V2] * 3
    assert versions_in(files[1]) == [V1] * 5


def test_a_prefix_arrow_files_and_one_chosen_version(two_versions: Ops, tmp_path: Path) -> None:
    with AdminClient("https://ops", ADMIN, transport=_SyncASGI(two_versions)) as client:
        files, _ = client.export_logs(
            "ccfraud", tmp_path / "out", "fraud", arrow=True, limit=1000, **RANGE, **DATASETS
        )
        assert [f.name for f in files] == ["fraud-1.arrow", "fraud-2.arrow"]
        tables = [pa.ipc.open_file(io.BytesIO(f.read_bytes())).read_all() for f in files]
        assert [t.num_rows for t in tables] == [3, 5]
        only, _ = client.export_logs(
            "ccfraud", tmp_path / "one", pipeline_version=V1, limit=1000, **DATASETS
        )
    assert [f.name for f in only] == ["ccfraud-1.json"] and versions_in(only[0]) == [V1] * 5


def test_ops_sync_logs_directory_writes_and_prints_the_files(
    two_versions: Ops, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    def local(url: str, token: str, ca: Any = None, **kw: Any) -> AdminClient:
        return AdminClient(url, token, ca, transport=_SyncASGI(two_versions))

    monkeypatch.setattr(client_module, "AdminClient", local)
    folder = tmp_path / "exported"
    argv = ["logs", "ccfraud", "--opscenter", "https://ops", "--admin-token", ADMIN]
    argv += ["--directory", str(folder), "--file-prefix", "cc", "--limit", "1000"]
    argv += ["--start", RANGE["start_datetime"], "--end", RANGE["end_datetime"]]
    assert cli.main([*argv, "--dataset", "time", "--dataset", "metadata"]) == 0
    printed = capsys.readouterr().out.split()
    assert printed == [str(folder / "cc-1.json"), str(folder / "cc-2.json")]
    assert versions_in(folder / "cc-2.json") == [V1] * 5


def test_ops_sync_logs_valid_and_pipeline_version_reach_the_query(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    """`ops-sync logs --valid false --pipeline-version V`: that version's rows with an anomaly."""
    ops = Ops(tmp_path / "ops")
    for version in (V1, V2):
        ops.center.register_publish({"pipeline_url": PIPELINE_URL.replace(V1, version)})
    cert = joined_edge(ops, "edge-a")
    assert upload(ops, cert, 1, with_version(result_table(4, T0), V1, [0, 2, 0, 1])).is_success
    assert upload(ops, cert, 5, with_version(result_table(2, T0 + 100), V2, [1, 1])).is_success

    def local(url: str, token: str, ca: Any = None, **kw: Any) -> AdminClient:
        return AdminClient(url, token, ca, transport=_SyncASGI(ops))

    monkeypatch.setattr(client_module, "AdminClient", local)
    argv = ["logs", "ccfraud", "--opscenter", "https://ops", "--admin-token", ADMIN, "--json"]
    argv += ["--dataset", "time", "--dataset", "anomaly", "--dataset", "metadata"]

    def shown(*extra: str) -> list[tuple[int, int, str]]:
        assert cli.main([*argv, *extra]) == 0
        records = json.loads(capsys.readouterr().out)
        return [
            (r["time"], r["anomaly"]["count"], r["metadata"]["pipeline_version"]) for r in records
        ]

    assert shown("--valid", "false", "--pipeline-version", V1) == [
        (T0 + 3, 1, V1),
        (T0 + 1, 2, V1),
    ]
    assert shown("--valid", "true", "--pipeline-version", V1) == [(T0 + 2, 0, V1), (T0, 0, V1)]
    assert [v for _, _, v in shown()] == [V2, V2]  # no range, no version: the newest row's


def test_the_ndjson_export_gives_the_split_as_the_seeds_list_of_one_object() -> None:
    from ops_sync import logs

    chosen = {"name": "control", "version": V1, "sha": "ab" * 32}
    table = pa.table({"time": pa.array([T0], pa.int64()), "out._model_split": [json.dumps(chosen)]})
    (line,) = logs.to_ndjson(table).decode().splitlines()
    assert json.loads(line)["out._model_split"] == [chosen]
