"""ARM64 parity: the appliance in an arm64 root under QEMU answers as it does on x86-64
(opt-in, EDGE_TEST_ARM64=1; CI turns it on; packaging/arm64/parity.sh)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import free_port

REPO = Path(__file__).resolve().parent.parent


# ---- ARM64 parity under QEMU (opt-in) -------------------------------------------------------


def _wait_ready(url: str, process: subprocess.Popen[bytes], timeout: float) -> None:
    import time

    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, f"the server behind {url} exited early"
        try:
            if httpx.get(f"{url}/health/ready", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    raise TimeoutError(f"{url} not ready after {timeout} s")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@pytest.mark.arm64
@pytest.mark.timeout(2400)
@pytest.mark.skipif(
    os.environ.get("EDGE_TEST_ARM64") != "1",
    reason="opt-in: EDGE_TEST_ARM64=1 (root; ~20 min cold, ~1 min warm; packaging/arm64/)",
)
def test_arm64_parity(tmp_path: Path) -> None:
    """The appliance in an arm64 root under QEMU answers as it does on x86-64."""
    import httpx
    import numpy as np

    if os.geteuid() != 0:
        pytest.skip("the arm64 root needs root (mounts, chroot, binfmt_misc)")
    script = REPO / "packaging" / "arm64" / "parity.sh"
    env = {**os.environ, "PYTHON": sys.executable}
    prepared = subprocess.run(
        ["bash", str(script), "prepare"], env=env, capture_output=True, text=True, timeout=1800
    )
    assert prepared.returncode == 0, prepared.stderr[-4000:]
    assert "arm64 root ok: aarch64" in prepared.stdout

    folder = tmp_path / "example"
    folder.mkdir()
    shutil.copy(REPO / "examples" / "breast-cancer" / "pipeline.yaml", folder / "pipeline.yaml")
    subprocess.run(
        [sys.executable, str(REPO / "examples" / "breast-cancer" / "make_model.py"), str(folder)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    layout = tmp_path / "layout"
    published = subprocess.run(
        [sys.executable, "-m", "edge", "publish", str(folder / "pipeline.yaml")]
        + ["--layout", str(layout), "--json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert published.returncode == 0, published.stderr
    pipeline_url = json.loads(published.stdout)["pipeline_url"]
    version = pipeline_url.rsplit(":", 1)[1]

    x86_port, arm_port = free_port(), free_port()
    x86_env = {k: v for k, v in os.environ.items() if not k.startswith(("OCI_", "EDGE_BUNDLE"))}
    x86_env.update(PIPELINE_URL=pipeline_url, CONFIG_CPUS="1", GRPC_PORT="0")
    x86 = subprocess.Popen(
        [sys.executable, "-m", "edge", "serve", "--host", "127.0.0.1", "--port", str(x86_port)]
        + ["--persist-dir", str(tmp_path / "persist-x86")],
        env=x86_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    arm_log = (tmp_path / "arm64.log").open("wb")
    arm = subprocess.Popen(
        ["bash", str(script), "serve", str(layout), version, str(arm_port)],
        env=env,
        stdout=arm_log,
        stderr=subprocess.STDOUT,
    )
    try:
        x86_url, arm_url = f"http://127.0.0.1:{x86_port}", f"http://127.0.0.1:{arm_port}"
        _wait_ready(x86_url, x86, 120)
        _wait_ready(arm_url, arm, 600)
        for path in ("/pipelines", "/models"):
            assert (
                httpx.get(arm_url + path, timeout=30).json()
                == httpx.get(x86_url + path, timeout=30).json()
            )
        rows = json.loads((folder / "data" / "10k-rows.json").read_text())[:200]
        headers = {"Content-Type": "application/json; format=pandas-records"}
        answers = []
        for url in (x86_url, arm_url):
            response = httpx.post(
                f"{url}/pipelines/breast-cancer", json=rows, headers=headers, timeout=120
            )
            assert response.status_code == 200, response.text
            answers.append(response.json())
        x86_records, arm_records = answers
        assert len(x86_records) == len(arm_records) == len(rows)
        for mine, theirs in zip(x86_records, arm_records, strict=True):
            assert mine["in"] == theirs["in"]
            assert set(mine["out"]) == set(theirs["out"])
            for name, value in mine["out"].items():
                np.testing.assert_allclose(
                    np.asarray(theirs["out"][name], dtype=np.float64),
                    np.asarray(value, dtype=np.float64),
                    rtol=1e-5,
                    atol=1e-6,
                )
            assert mine["anomaly"] == theirs["anomaly"]
    finally:
        _stop(arm)
        _stop(x86)
        arm_log.close()
    mounts = Path("/proc/mounts").read_text()
    assert "/srv/parity" not in mounts and "edge-arm64/root/proc" not in mounts
    leftovers = subprocess.run(
        ["pgrep", "-f", f"edge serve --host 127.0.0.1 --port {arm_port}"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert leftovers.stdout.strip() == "", "the arm64 server outlived its script"
