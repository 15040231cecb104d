"""The appliance's side of a rollout, in process over a local OCI layout: the swap leaves a
request on the version it started on and closes that version after it; a pipeline that will
not load is refused while the current one serves; the last good version is what a restart
serves, unless PIPELINE_URL changed since."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np

from edge import codecs, signing
from edge.appliance import Appliance, load_pipeline
from edge.config import load_settings
from edge.rollout import LastGood
from tests.conftest import load_quietly, publish


def wait(check, timeout: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


def stop(appliance: Appliance) -> None:
    appliance._stopping.set()
    if appliance.rollout is not None:
        appliance.rollout.wake()
        appliance.rollout.join(60)


def test_swap_refusal_and_last_good(example: Path, tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    v1 = publish(example / "pipeline.yaml", layout=layout)["pipeline_url"]
    v2 = publish(example / "pipeline.yaml", layout=layout)["pipeline_url"]
    broken = tmp_path / "broken"
    shutil.copytree(example, broken)
    (broken / "models/breast-cancer.onnx").write_bytes(b"garbage" * 100)
    v3 = publish(broken / "pipeline.yaml", layout=layout)["pipeline_url"]
    persist = tmp_path / "persist"
    flags = {"pipeline_url": v1, "persist_dir": persist, "logging_enabled": False}
    settings = load_settings(flags, environ={})
    appliance = Appliance.from_settings(settings)
    appliance.pipeline = load_quietly(v1, persist)
    row = np.load(example / "data/10k-rows.npy")[:1]
    table = codecs.decode_records(json.dumps([{"tensor": row[0].tolist()}]).encode())
    try:
        with appliance.hold("breast-cancer") as held:
            appliance.switch_to(v2)
            wait(lambda: appliance.pipeline is not held)
            assert not held.closed  # this request still runs on v1
            assert held.run(table).table.num_rows == 1
        assert held.closed  # and v1 closed once it was answered
        assert appliance.pipeline is not None and appliance.pipeline.url == v2
        wait(lambda: appliance.rollout_status()["state"] == "current")
        running = appliance.health_report()["running"]
        assert running["pipeline_url"] == v2 and running["digest"].startswith("sha256:")

        appliance.switch_to(v3)
        wait(lambda: appliance.rollout_status()["state"] == "failed")
        status = appliance.rollout_status()
        assert "not a loadable ONNX model" in status["reason"] and status["attempts"] >= 1
        assert appliance.pipeline.url == v2 and not appliance.pipeline.closed
        with appliance.hold("breast-cancer") as serving:
            assert serving.run(table).table.num_rows == 1
    finally:
        stop(appliance)
    good = LastGood.read(persist)
    assert good is not None and (good.pipeline_url, good.configured_url) == (v2, v1)
    assert Appliance.from_settings(settings).settings.pipeline_url == v2  # restart: v2
    changed = load_settings({**flags, "pipeline_url": v3}, environ={})
    assert Appliance.from_settings(changed).settings.pipeline_url == v3  # a newer PIPELINE_URL


def test_a_rollout_checks_signatures_as_the_start_does(example: Path, tmp_path: Path) -> None:
    """With PIPELINE_VERIFY_KEYS, a rollout to an unsigned version fails with the start-up's
    reason while the signed version serves on; a signed one is installed."""
    signing.generate_key_pair(tmp_path / "keys", None)
    sign = ("--sign-key", str(tmp_path / "keys/cosign.key"))
    layout = tmp_path / "layout"
    v1 = publish(example / "pipeline.yaml", layout=layout, extra=sign)["pipeline_url"]
    unsigned = publish(example / "pipeline.yaml", layout=layout)["pipeline_url"]
    v3 = publish(example / "pipeline.yaml", layout=layout, extra=sign)["pipeline_url"]
    flags = {
        "pipeline_url": v1,
        "persist_dir": tmp_path / "persist",
        "logging_enabled": False,
        "verify_keys": str(tmp_path / "keys/cosign.pub"),
    }
    appliance = Appliance.from_settings(load_settings(flags, environ={}))
    appliance.pipeline = load_pipeline(appliance.settings, echo=lambda line: None)
    try:
        appliance.switch_to(unsigned)
        wait(lambda: appliance.rollout_status()["state"] == "failed")
        assert "is not signed" in appliance.rollout_status()["reason"]
        assert appliance.pipeline.url == v1 and not appliance.pipeline.closed
        appliance.switch_to(v3)
        wait(lambda: appliance.rollout_status()["state"] == "current")
        assert appliance.pipeline.url == v3
    finally:
        stop(appliance)


def serving(url: str, persist: Path) -> Appliance:
    """An appliance serving `url` (loaded as the start-up would), logging off."""
    flags = {"pipeline_url": url, "persist_dir": persist, "logging_enabled": False}
    appliance = Appliance.from_settings(load_settings(flags, environ={}))
    appliance.pipeline = load_quietly(url, persist)
    return appliance


def test_a_version_that_fails_its_smoke_inference_is_refused(example: Path, tmp_path: Path) -> None:
    """A version that loads but cannot answer (here a Python step that raises) is caught by
    the smoke inference before the swap: the rollout fails with the step's reason and the
    current version serves on."""
    layout = tmp_path / "layout"
    v1 = publish(example / "pipeline.yaml", layout=layout)["pipeline_url"]
    smoky = tmp_path / "smoky"
    shutil.copytree(example, smoky)
    (smoky / "steps").mkdir()
    (smoky / "steps/refuse.py").write_text(
        "def wallaroo_json(data):\n    raise ValueError('this step answers nothing')\n"
    )
    spec = (smoky / "pipeline.yaml").read_text()
    (smoky / "pipeline.yaml").write_text(
        spec.replace("deployment:", "  - {python: refuse, file: steps/refuse.py}\ndeployment:")
    )
    v2 = publish(smoky / "pipeline.yaml", layout=layout)["pipeline_url"]
    appliance = serving(v1, tmp_path / "persist")
    try:
        appliance.switch_to(v2)
        wait(lambda: appliance.rollout_status()["state"] == "failed")
        assert "this step answers nothing" in appliance.rollout_status()["reason"]
        assert appliance.pipeline.url == v1 and not appliance.pipeline.closed
    finally:
        stop(appliance)
    assert LastGood.read(tmp_path / "persist") is None  # nothing was installed


def test_a_pull_that_fails_is_retried_until_the_version_is_there(
    example: Path, tmp_path: Path
) -> None:
    """The new version cannot be pulled (its layout is not there, as a registry that is down
    and a cache that never held it): the rollout fails with the reason, the current version
    serves on, and a later attempt installs it once it can be pulled."""
    v1 = publish(example / "pipeline.yaml", layout=tmp_path / "layout")["pipeline_url"]
    v2 = publish(example / "pipeline.yaml", layout=tmp_path / "other")["pipeline_url"]
    (tmp_path / "other").rename(tmp_path / "away")
    appliance = serving(v1, tmp_path / "persist")
    try:
        appliance.switch_to(v2)
        wait(lambda: appliance.rollout_status()["state"] == "failed")
        failed = appliance.rollout_status()
        assert str(tmp_path / "other") in failed["reason"] and failed["next_retry"] is not None
        assert appliance.pipeline.url == v1 and not appliance.pipeline.closed
        (tmp_path / "away").rename(tmp_path / "other")
        wait(lambda: appliance.rollout_status()["state"] == "current")
        assert appliance.pipeline.url == v2
    finally:
        stop(appliance)
