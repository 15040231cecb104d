"""Every answered inference is in the log buffer: through a real server, across SIGKILL and
restarts with another pipeline version, readable with `GET /logs` and `edge logs`."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pyarrow as pa
import pytest

from edge.logbuffer import LogBuffer
from tests.conftest import publish

JSON = {"Content-Type": "application/json; format=pandas-records"}
WARNING = (
    "Warning: There are more logs available. Please set a larger limit or request a file "
    "using export_logs."
)


@pytest.fixture(scope="module")
def tagged_spec(example: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example model with tensor_fields, so requests can carry an id column."""
    folder = tmp_path_factory.mktemp("tagged")
    shutil.copytree(example / "models", folder / "models")
    spec = folder / "pipeline.yaml"
    spec.write_text(
        "name: tagged\nsteps:\n  - model: breast-cancer\n    file: models/breast-cancer.onnx\n"
        "    tensor_fields: [tensor]\n"
    )
    return spec


def body(example: Path, ids: list[int]) -> str:
    features = np.load(example / "data/10k-rows.npy")[: len(ids)].tolist()
    return json.dumps([{"tensor": f, "request_id": i} for f, i in zip(features, ids, strict=True)])


def logged_ids(persist: Path) -> tuple[list[int], list[int]]:
    """Request ids and sequence numbers of every row in a stopped appliance's buffer."""
    buffer = LogBuffer(persist / "logbuffer.db")
    buffer.start()
    try:
        ids: list[int] = []
        seqs: list[int] = []
        for batch in buffer.pending(10**9):
            ids += batch.table.column("in.request_id").to_pylist()
            seqs += list(range(batch.first_seq, batch.last_seq + 1))
        return ids, seqs
    finally:
        buffer.close()


def test_sigkill_loses_no_answered_inference(
    tagged_spec: Path, example: Path, tmp_path: Path, start_edge
) -> None:
    url = publish(tagged_spec, layout=tmp_path / "layout")["pipeline_url"]
    persist = tmp_path / "persist"
    edge = start_edge(url, persist=persist)
    answered: list[int] = []
    lock = threading.Lock()
    stop = threading.Event()

    def client(worker: int) -> None:
        with httpx.Client(timeout=5) as http:
            n = 0
            while not stop.is_set():
                request_id = worker * 1_000_000 + n
                n += 1
                try:
                    reply = http.post(
                        f"{edge.url}/pipelines/tagged",
                        content=body(example, [request_id]),
                        headers=JSON,
                    )
                except httpx.TransportError:
                    return
                if reply.status_code == 200:
                    with lock:
                        answered.append(request_id)

    threads = [threading.Thread(target=client, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 20
    while len(answered) < 300 and time.monotonic() < deadline:
        time.sleep(0.05)
    edge.stop(signal.SIGKILL)
    stop.set()
    for thread in threads:
        thread.join(10)
    assert len(answered) >= 300
    ids, seqs = logged_ids(persist)
    assert set(answered) <= set(ids), "an answered inference is missing from the buffer"
    assert len(seqs) == len(set(seqs)), "duplicate sequence numbers"
    # restart: the buffer opens cleanly and keeps numbering after the old rows
    again = start_edge(url, persist=persist)
    reply = httpx.post(f"{again.url}/pipelines/tagged", content=body(example, [7]), headers=JSON)
    assert reply.status_code == 200
    again.stop()
    ids2, seqs2 = logged_ids(persist)
    assert len(seqs2) == len(set(seqs2)) and max(seqs2) > max(seqs)
    assert 7 in ids2


def test_logs_api_and_versions_across_restart(
    tagged_spec: Path, example: Path, tmp_path: Path, start_edge
) -> None:
    layout = tmp_path / "layout"
    first = publish(tagged_spec, layout=layout)
    persist = tmp_path / "persist"
    edge = start_edge(first["pipeline_url"], persist=persist)
    for i in range(5):
        reply = httpx.post(f"{edge.url}/pipelines/tagged", content=body(example, [i]), headers=JSON)
        assert reply.status_code == 200
    edge.stop()
    second = publish(tagged_spec, layout=layout)
    edge = start_edge(second["pipeline_url"], persist=persist)
    reply = httpx.post(
        f"{edge.url}/pipelines/tagged", content=body(example, [100, 101, 102]), headers=JSON
    )
    assert reply.status_code == 200

    with_metadata = [("dataset", "*"), ("dataset", "metadata")]
    logs = httpx.get(f"{edge.url}/logs", params=[("limit", "2"), *with_metadata])
    assert logs.status_code == 200
    assert logs.headers["x-edge-warning"] == WARNING
    records = logs.json()
    assert [r["in"]["request_id"] for r in records] == [102, 101]  # newest first
    # without a range, the loaded version's rows only (the seed segments logs by version)
    current = httpx.get(f"{edge.url}/logs", params=[("limit", "100"), *with_metadata]).json()
    assert [r["in"]["request_id"] for r in current] == [102, 101, 100]
    assert {r["metadata"]["pipeline_version"] for r in current} == {second["pipeline_version"]}
    older = httpx.get(
        f"{edge.url}/logs",
        params=[("pipeline_version", first["pipeline_version"]), *with_metadata],
    ).json()
    assert [r["in"]["request_id"] for r in older] == [4, 3, 2, 1, 0]
    everything = current + older
    plain = httpx.get(f"{edge.url}/logs", params={"limit": 100})
    assert "x-edge-warning" not in plain.headers
    assert not any("metadata" in r for r in plain.json())  # the seed's default is `*`
    versions = {r["in"]["request_id"]: r["metadata"]["pipeline_version"] for r in everything}
    assert versions[0] == first["pipeline_version"] and versions[100] == second["pipeline_version"]
    assert all(r["metadata"]["dropped"] == [] for r in everything)
    assert all(isinstance(r["time"], int) for r in everything)

    start = "2000-01-01T00:00:00"
    end = "2100-01-01T00:00:00"
    ranged = httpx.get(
        f"{edge.url}/logs", params={"start_datetime": start, "end_datetime": end, "limit": 100}
    ).json()
    assert [r["in"]["request_id"] for r in ranged] == [0, 1, 2, 3, 4, 100, 101, 102]
    half = httpx.get(f"{edge.url}/logs", params={"start_datetime": start})
    assert half.status_code == 400 and "both" in half.json()["error"]
    arrow = httpx.get(
        f"{edge.url}/logs",
        params={"dataset": "out"},
        headers={"Accept": "application/vnd.apache.arrow.file"},
    )
    table = pa.ipc.open_file(pa.py_buffer(arrow.content)).read_all()
    assert table.num_rows == 3 and all(c.startswith("out.") for c in table.column_names)

    cli = subprocess.run(
        [sys.executable, "-m", "edge", "logs", "--url", edge.url, "--limit", "2"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cli.returncode == 0 and WARNING in cli.stderr
    assert len(json.loads(cli.stdout)) == 2
    metrics = httpx.get(f"{edge.url}/metrics").text
    assert 'edge_log_buffer{figure="rows"}' in metrics


def test_buffer_cap_drops_columns_and_says_so(
    tagged_spec: Path, example: Path, tmp_path: Path, start_edge
) -> None:
    url = publish(tagged_spec, layout=tmp_path / "layout")["pipeline_url"]
    edge = start_edge(url, env={"LOG_BUFFER_BYTES": "400000"})
    ids = list(range(2_000))
    reply = httpx.post(f"{edge.url}/pipelines/tagged", content=body(example, ids), headers=JSON)
    assert reply.status_code == 200
    assert len(reply.json()) == 2_000  # the answer is whole; only the log is trimmed
    logs = httpx.get(f"{edge.url}/logs", params=[("limit", "5"), ("dataset", "metadata")])
    assert logs.status_code == 200
    assert len(logs.json()) == 5
    assert all("in.tensor" in r["metadata"]["dropped"] for r in logs.json())
    warnings = logs.headers.get_list("x-edge-warning")
    assert any("may have been suppressed" in w and "in.tensor" in w for w in warnings)
    counters = json.loads(logs.headers["x-edge-dropped"])
    assert counters["input_values"] >= 2_000
    metrics = httpx.get(f"{edge.url}/metrics").text
    assert 'edge_log_buffer_dropped{reason="input_values"}' in metrics


def test_journal_errors_answer_every_request_of_the_turn_and_lose_nothing_accepted(
    tagged_spec: Path, example: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The app in-process (the same routes `edge serve` runs): four requests in one turn of
    the loop share one journal write; when it fails they all get the error, 507 for a full
    disk and 503 for a full queue, and the next request is answered and logged."""
    import asyncio
    import errno

    from edge.appliance import Appliance, LoadState, load_pipeline
    from edge.config import load_settings
    from edge.logbuffer import records
    from edge.server import create_app

    url = publish(tagged_spec, layout=tmp_path / "layout")["pipeline_url"]
    settings = load_settings({"pipeline_url": url, "persist_dir": tmp_path / "persist"})
    buffer = LogBuffer(tmp_path / "persist" / "logbuffer.db")
    buffer.start()
    pipeline = load_pipeline(settings)
    state = Appliance(settings, buffer=buffer, pipeline=pipeline, state=LoadState.RUNNING)
    app = create_app(state)

    async def four(first_id: int) -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://edge") as http:
            return await asyncio.gather(
                *(
                    http.post("/pipelines/tagged", content=body(example, [i]), headers=JSON)
                    for i in range(first_id, first_id + 4)
                )
            )

    writes: list[int] = []

    def disk_full(fd: int, parts: list, size: int) -> None:  # the journal's one write call
        writes.append(size)
        raise OSError(errno.ENOSPC, "No space left on device")

    try:
        monkeypatch.setattr(records, "write_all", disk_full)
        answers = asyncio.run(four(0))
        assert [a.status_code for a in answers] == [507] * 4
        assert all("disk full" in a.json()["error"] for a in answers)
        assert len(writes) == 1  # one record for the four
        monkeypatch.undo()
        monkeypatch.setattr(buffer._inbox, "has_room", lambda nbytes: False)
        answers = asyncio.run(four(10))
        assert [a.status_code for a in answers] == [503] * 4
        assert buffer.stats()["rejected"] == 4
        monkeypatch.undo()
        answers = asyncio.run(four(20))
        assert [a.status_code for a in answers] == [200] * 4
        logged, _ = buffer.query(limit=100)
        assert sorted(logged.column("in.request_id").to_pylist()) == [20, 21, 22, 23]
    finally:
        buffer.close()
        pipeline.close()
