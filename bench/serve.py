#!/usr/bin/env python3
"""Serving benchmark: `edge serve` vs raw onnxruntime (and MLServer), in one run.

In one run, on the example pipeline (examples/breast-cancer: scaler + logistic regression,
30 float features, ONNX input "X"), this
  (a) builds the model in a temp dir, publishes it to a local OCI layout (`edge publish
      --layout`), and times raw onnxruntime on the same model in a child process (1 intra-op
      thread like the peer; 2 threads too, for reference) for 1 row and 10,000 rows;
  (b) for each CONFIG_CPUS value (default 1 and 2) and logging on (default) / `--no-logging`,
      starts `python -m edge serve` as a real process with a fresh persist dir (all four up
      at once), waits on GET /health/ready, checks its answers (1 row and 10k rows, JSON and
      Arrow) against raw onnxruntime, then drives each in turn, phase by phase (so background
      load on a shared machine falls on every configuration alike), with wrk (-t1 -c1 and
      -t1 -c8, 10 s each, after a 3 s c=8 warm-up; one single-row pandas-records body) and
      with 20 timed 10,000-row requests over keep-alive (Arrow IPC file in and out;
      pandas-records JSON in and out), and reads the VmRSS summed over each server's process
      tree idle after load and after the bench;
  (b') unless --no-bare, starts bench/bare_starlette.py (a bare Starlette handler around the
      same ONNX file, no logging) as one more server on its own port, checks its 1-row answer
      against raw onnxruntime, and drives it in the same interleaved single-row wrk phases
      (c=1 and c=8; it has no 10,000-row phases and no logging), the calibration of issue 14's
      "c=8 req/s >= 0.85x the bare handler's";
  (b'') with --baseline PATH (another source tree, e.g. a worktree of an older commit), runs
      every edge serve configuration from PATH too (PYTHONPATH=PATH), named base_<config>,
      each right after its current twin in the same interleaved phases, with the same answer
      checks, on this tree's layout if the baseline can serve it (tried by starting one) or
      else on a layout its own `edge publish` writes;
  (c) runs the MLServer peer bench (../shared/peers/mlserver, config pw0) so the ratios are
      measured in the same run, or falls back to its published figures, labelled as such;
  (d) prints `name value unit` lines, then a summary: every figure as a ratio to raw
      onnxruntime and to MLServer, the cost of logging in %, PASS/MISS/N/A against issue
      14's targets (current tree only) and, with --baseline, current ÷ baseline per figure
      with the ones worse beyond the run's noise flagged; writes the summary as JSON to --out.

Only 127.0.0.1 is contacted. Every process started here is stopped by its PID.
Run: /work/venv/bin/python bench/serve.py [--out FILE] [--cpus 1,2] [--no-mlserver] [--no-bare]
     [--baseline PATH [--baseline-label TEXT]]
"""

from __future__ import annotations

import argparse
import collections
import http.client
import json
import operator
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
EXAMPLE = REPO / "examples" / "breast-cancer"
LUA = HERE / "post.lua"
PEER = Path("/work/shared/peers/mlserver")
PEER_VENV = Path("/tmp/peer-mlserver/venv")
PIPELINE = "breast-cancer"
INFER_PATH = f"/pipelines/{PIPELINE}"
JSON_TYPE = "application/json; format=pandas-records"
ARROW_TYPE = "application/vnd.apache.arrow.file"
N_BIG = 10_000

# MLServer 1.7.1, parallel_workers 0 (its best config), measured on this machine kind
# (../shared/peers/mlserver/README.md, run 1). Used only when the peer cannot run here.
MLSERVER_PUBLISHED = {
    "c1_p50_us": 559.0,
    "c1_p90_us": 636.0,
    "c1_p99_us": 853.0,
    "c1_req_per_s": 1749.4,
    "c8_p50_us": 3534.0,
    "c8_p90_us": 4201.0,
    "c8_p99_us": 7318.0,
    "c8_req_per_s": 2170.5,
    "c1_server_cpu_us_per_req": 528.6,
    "c8_server_cpu_us_per_req": 457.7,
    "10k_median_ms": 19.86,
    "10k_rows_per_s": 503490.0,
    "rss_after_load_mib": 180.6,
    "rss_after_bench_mib": 202.7,
    "pss_after_load_mib": 155.4,
    "startup_to_ready_s": 0.908,
}

LINES: list[tuple[str, Any, str]] = []


def fmt(v: Any) -> str:
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int | np.integer):
        return str(int(v))
    if isinstance(v, float | np.floating):
        v = float(v)
        if v != v:
            return "nan"
        return f"{v:.1f}" if abs(v) >= 100 else f"{v:.3f}"
    return str(v)


def out(name: str, value: Any, unit: str = "-") -> None:
    if isinstance(value, np.generic):
        value = value.item()
    LINES.append((name, value, unit))
    print(f"{name} {fmt(value)} {unit}", flush=True)


def note(msg: str) -> None:
    print(f"# {msg}", flush=True)


# ---------------------------------------------------------------- processes
def _children_map() -> dict[int, list[int]]:
    m: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        m.setdefault(ppid, []).append(int(d))
    return m


def process_tree(pid: int) -> list[int]:
    m = _children_map()
    res, stack = [pid], [pid]
    while stack:
        for c in m.get(stack.pop(), []):
            res.append(c)
            stack.append(c)
    return [p for p in res if os.path.exists(f"/proc/{p}")]


def tree_memory_kib(pid: int) -> tuple[int, int, int]:
    """(VmRSS, Pss, processes) summed over the process tree."""
    rss = pss = 0
    pids = process_tree(pid)
    for p in pids:
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        rss += int(line.split()[1])
            with open(f"/proc/{p}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        pss += int(line.split()[1])
        except OSError:
            pass
    return rss, pss, len(pids)


def tree_cpu_s(pid: int) -> float:
    tck = os.sysconf("SC_CLK_TCK")
    total = 0
    for p in process_tree(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime + stime
        except (OSError, IndexError, ValueError):
            pass
    return total / tck


def thread_count(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return 0


def cpu_snapshot() -> tuple[float, float]:
    """(seconds of CPU busy on the whole host, seconds used by this bench and its waited-for
    children). The difference over an interval is what other work on the machine took."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    busy = (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")
    t = os.times()
    return busy, t.user + t.system + t.children_user + t.children_system


def other_cpu_pct(before: tuple[float, float], after: tuple[float, float], wall: float) -> float:
    """Share of the host's CPU capacity used by processes that are not this bench's."""
    other = (after[0] - before[0]) - (after[1] - before[1])
    return max(0.0, 100 * other / (wall * (os.cpu_count() or 1)))


def fsync_probe(folder: Path, n: int = 200) -> tuple[float, float]:
    """Median and p90 µs of one 4 KiB write + fsync in `folder` (where the persist dirs live):
    the floor under a request that waits for its own durable commit."""
    path = folder / "fsync-probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    ts = []
    try:
        for _ in range(n):
            os.write(fd, b"x" * 4096)
            t0 = time.perf_counter_ns()
            os.fsync(fd)
            ts.append((time.perf_counter_ns() - t0) / 1000)
    finally:
        os.close(fd)
        path.unlink()
    return float(np.median(ts)), float(np.percentile(ts, 90))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tree_env(base: dict[str, str] | None = None, root: Path = REPO) -> dict[str, str]:
    """The environment with a tree's root (this script's, or --baseline's) first on
    PYTHONPATH, so `python -m edge` runs the edge package of that tree, whichever interpreter
    (and editable install) runs it."""
    env = dict(os.environ if base is None else base)
    env["PYTHONPATH"] = os.pathsep.join([str(root), *filter(None, [env.get("PYTHONPATH")])])
    return env


def edge_package(root: Path) -> str:
    """Where `python -m edge` run from `root` with tree_env(root=root) finds the edge package;
    raises SystemExit unless it is that tree's."""
    where = subprocess.run(
        [sys.executable, "-c", "import edge; print(edge.__file__)"],
        cwd=root,
        env=tree_env(root=root),
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout.strip()
    if not where or not Path(where).resolve().is_relative_to(root.resolve()):
        raise SystemExit(f"python -m edge would not run this tree's edge ({root}): {where}")
    return str(Path(where).parent)


def logbuffer_imports(root: Path) -> str | None:
    """None if the tree's edge.logbuffer imports (the server can log), else the error."""
    probe = subprocess.run(
        [sys.executable, "-c", "import edge.logbuffer"],
        cwd=root,
        env=tree_env(root=root),
        capture_output=True,
        text=True,
        timeout=60,
    )
    if probe.returncode == 0:
        return None
    return (probe.stderr.strip().splitlines() or ["?"])[-1]


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, 30 s to exit, then SIGKILL."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def tail(path: Path, n: int = 40) -> str:
    try:
        return b"".join(path.read_bytes().splitlines(True)[-n:]).decode(errors="replace")
    except OSError:
        return ""


# ---------------------------------------------------------------- model, data, publish
def build_model(work: Path) -> dict[str, Any]:
    """examples/breast-cancer/make_model.py into work/model, published to work/layout."""
    model_dir = work / "model"
    subprocess.run(
        [sys.executable, str(EXAMPLE / "make_model.py"), str(model_dir)],
        check=True,
        stdout=subprocess.DEVNULL,
        timeout=120,
    )
    shutil.copy(EXAMPLE / "pipeline.yaml", model_dir / "pipeline.yaml")
    published = publish(model_dir / "pipeline.yaml", work / "layout", REPO)
    out("pipeline_url", published["pipeline_url"], "-")
    out("pipeline_version", published["pipeline_version"], "-")
    return {
        "dir": model_dir,
        "onnx": model_dir / "models" / "breast-cancer.onnx",
        "rows_npy": model_dir / "data" / "10k-rows.npy",
        "url": published["pipeline_url"],
    }


def publish(spec: Path, layout: Path, root: Path) -> dict[str, Any]:
    """`python -m edge publish SPEC --layout DIR --json` with the edge of the tree at `root`."""
    pub = subprocess.run(
        [sys.executable, "-m", "edge", "publish", str(spec), "--layout", str(layout), "--json"],
        capture_output=True,
        text=True,
        cwd=root,
        env=tree_env(root=root),
        timeout=120,
    )
    if pub.returncode != 0 or "{" not in pub.stdout:
        raise RuntimeError(
            f"edge publish ({root}) exited with {pub.returncode}: "
            + (pub.stderr.strip() or pub.stdout.strip())[-800:]
        )
    return json.loads(pub.stdout[pub.stdout.index("{") :])


def make_bodies(model: dict[str, Any], work: Path) -> dict[str, Any]:
    """Request bodies. JSON uses the data set's own decimals (17.99, like the peer's bodies),
    which parse to exactly the float32 rows the model is checked against."""
    import pyarrow as pa
    from sklearn.datasets import load_breast_cancer

    x64 = np.resize(load_breast_cancer(return_X_y=True)[0], (N_BIG, 30))
    x32 = np.load(model["rows_npy"])
    if not np.array_equal(x64.astype(np.float32), x32):
        raise SystemExit("the data set's decimals do not give the model's float32 rows")
    one = json.dumps([{"tensor": x64[0].tolist()}], separators=(",", ":")).encode()
    big = json.dumps([{"tensor": r} for r in x64.tolist()], separators=(",", ":")).encode()
    tensor = pa.FixedSizeListArray.from_arrays(pa.array(x32.reshape(-1)), 30)
    table = pa.table({"tensor": tensor})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    arrow_big = sink.getvalue().to_pybytes()
    one_file = work / "body_1row.json"
    one_file.write_bytes(one)
    out("body_1row_bytes", len(one), "B")
    out("body_10k_json_bytes", len(big), "B")
    out("body_10k_arrow_bytes", len(arrow_big), "B")
    return {"one": one, "one_file": one_file, "big_json": big, "big_arrow": arrow_big, "x32": x32}


# ---------------------------------------------------------------- raw onnxruntime
def raw_child(model_path: str, rows_path: str, threads: int, expect_path: str) -> None:
    """Runs in its own process (only numpy + onnxruntime imported): times InferenceSession.run
    like the peer, saves the outputs for the answer checks, reports its own VmRSS."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(model_path, sess_options=opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    x10k = np.load(rows_path)
    x1 = x10k[:1]

    def timed(fn: Any, warm: int, n: int, max_s: float) -> tuple[float, float, int]:
        for _ in range(warm):
            fn()
        ts = []
        deadline = time.perf_counter() + max_s
        for _ in range(n):
            t0 = time.perf_counter_ns()
            fn()
            ts.append(time.perf_counter_ns() - t0)
            if time.perf_counter() > deadline:
                break
        a = np.array(ts, dtype=np.float64) / 1000.0
        return float(np.median(a)), float(np.percentile(a, 99)), len(ts)

    med1, p99_1, n1 = timed(lambda: sess.run(None, {name: x1}), 500, 20000, 5.0)
    medb, p99b, nb = timed(lambda: sess.run(None, {name: x10k}), 5, 300, 10.0)
    label1, proba1 = sess.run(None, {name: x1})
    labelb, probab = sess.run(None, {name: x10k})
    np.savez(expect_path, label1=label1, proba1=proba1, label10k=labelb, proba10k=probab)
    rss = 0
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
    print(
        json.dumps(
            {
                "1row_us": med1,
                "1row_p99_us": p99_1,
                "1row_samples": n1,
                "10k_us": medb,
                "10k_p99_us": p99b,
                "10k_samples": nb,
                "rss_kib": rss,
                "input": name,
            }
        )
    )


def bench_raw(model: dict[str, Any], work: Path, threads: int) -> dict[str, Any]:
    expect = work / f"expect_t{threads}.npz"
    r = subprocess.run(
        [
            sys.executable,
            str(Path(__file__).resolve()),
            "--raw-child",
            str(model["onnx"]),
            str(model["rows_npy"]),
            str(threads),
            str(expect),
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    d = json.loads(r.stdout.strip().splitlines()[-1])
    pre = "raw_ort" if threads == 1 else f"raw_ort_t{threads}"
    out(f"{pre}_1row_median", d["1row_us"], "us")
    out(f"{pre}_1row_p99", d["1row_p99_us"], "us")
    out(f"{pre}_1row_calls_per_s", 1e6 / d["1row_us"], "calls/s")
    out(f"{pre}_10k_median", d["10k_us"], "us")
    out(f"{pre}_10k_p99", d["10k_p99_us"], "us")
    out(f"{pre}_10k_rows_per_s", N_BIG * 1e6 / d["10k_us"], "rows/s")
    out(f"{pre}_process_rss", d["rss_kib"] / 1024, "MiB")
    with np.load(expect) as z:
        d["expect"] = {k: z[k] for k in z.files}
    return d


# ---------------------------------------------------------------- HTTP client side
def http_req(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 30.0,
) -> tuple[int, bytes]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def answers_from_json(raw: bytes) -> tuple[np.ndarray, np.ndarray]:
    records = json.loads(raw)
    label = np.array([r["out"]["label"] for r in records])
    proba = np.array([r["out"]["probabilities"] for r in records], dtype=np.float64)
    return label, proba


def answers_from_arrow(raw: bytes) -> tuple[np.ndarray, np.ndarray]:
    import pyarrow as pa

    table = pa.ipc.open_file(pa.py_buffer(raw)).read_all()
    label = table.column("out.label").to_numpy()
    probs = table.column("out.probabilities").combine_chunks()
    proba = probs.flatten().to_numpy().astype(np.float64).reshape(len(probs), -1)
    return label, proba


def same_answers(got: tuple[np.ndarray, np.ndarray], label: np.ndarray, proba: np.ndarray) -> bool:
    return bool(
        np.array_equal(got[0].ravel(), label.ravel())
        and got[1].shape == proba.shape
        and np.allclose(got[1], proba, rtol=1e-5, atol=1e-6)
    )


def run_wrk(port: int, conns: int, duration: int, body_file: Path, pid: int) -> dict[str, float]:
    url = f"http://127.0.0.1:{port}{INFER_PATH}"
    cmd = ["wrk", "-t1", f"-c{conns}", f"-d{duration}s", "--timeout", "5s", "-s", str(LUA), url]
    env = dict(os.environ, WRK_BODY_FILE=str(body_file), WRK_CONTENT_TYPE=JSON_TYPE)
    cpu0 = tree_cpu_s(pid)
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=duration + 60)
    cpu1 = tree_cpu_s(pid)
    vals: dict[str, float] = {}
    for line in r.stdout.splitlines():
        if line.startswith("WRK "):
            _, k, v = line.split()
            vals[k] = float(v)
    if r.returncode != 0 or "requests" not in vals:
        raise RuntimeError(f"wrk failed rc={r.returncode}\n{r.stdout}\n{r.stderr}")
    vals["req_per_s"] = vals["requests"] / (vals["duration_us"] / 1e6)
    vals["server_cpu_us_per_req"] = (cpu1 - cpu0) * 1e6 / max(vals["requests"], 1)
    vals["errors"] = sum(vals[k] for k in vals if k.startswith("errors_"))
    return vals


def big_requests(
    port: int, body: bytes, headers: dict[str, str], n: int, warm: int, max_s: float
) -> tuple[np.ndarray, bytes]:
    """`warm` + `n` POSTs of one 10k-row body on one keep-alive connection; times in ms."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        ts = []
        first = b""
        deadline = time.perf_counter() + max_s
        for i in range(warm + n):
            t0 = time.perf_counter_ns()
            conn.request("POST", INFER_PATH, body=body, headers=headers)
            r = conn.getresponse()
            data = r.read()
            elapsed = (time.perf_counter_ns() - t0) / 1e6
            if r.status != 200:
                raise RuntimeError(f"10k request -> HTTP {r.status}: {data[:300]!r}")
            if i == 0:
                first = data
            if i >= warm:
                ts.append(elapsed)
                if time.perf_counter() > deadline:
                    break
        return np.array(ts), first
    finally:
        conn.close()


# ---------------------------------------------------------------- our server
class Server:
    """One `python -m edge serve` process with its own port and persist dir: this tree's edge,
    or with `tree` another source tree's (--baseline; its name then starts with `prefix`)."""

    what = "edge serve"
    big_phases = True  # the 10,000-row phases (Arrow and JSON) run on it

    def __init__(
        self,
        url: str,
        cpus: int,
        logging_on: bool,
        work: Path,
        extra_env: dict[str, str] | None = None,
        tree: Path = REPO,
        prefix: str = "",
    ) -> None:
        self.name = f"{prefix}cpus{cpus}_log{'on' if logging_on else 'off'}"
        self.tree = tree
        self.cpus: int | None = cpus
        self.logging_on = logging_on
        self.port = free_port()
        self.persist = work / f"persist-{self.name}"
        if self.persist.exists():
            shutil.rmtree(self.persist)
        self.log_path = work / f"serve-{self.name}.log"
        self.url = url
        self.extra_env = extra_env or {}
        self.result: dict[str, Any] = {
            "cpus": cpus,
            "logging": logging_on,
            "tree": str(tree),
            "checks": {},
        }
        self.answered_rows = 0
        self._stopped = False
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def label(self) -> str:
        """Prefix of this server's output lines."""
        return f"edge_{self.name}"

    def describe(self) -> str:
        logging = "on" if self.logging_on else "off"
        where = "" if self.tree == REPO else f", tree {self.tree}"
        return f"edge serve (CONFIG_CPUS={self.cpus}, logging {logging}{where})"

    def command(self) -> list[str]:
        cmd = [
            sys.executable,
            "-m",
            "edge",
            "serve",
            "--port",
            str(self.port),
            "--host",
            "127.0.0.1",
            "--persist-dir",
            str(self.persist),
        ]
        if not self.logging_on:
            cmd.append("--no-logging")
        return cmd

    def environment(self) -> dict[str, str]:
        env = tree_env(
            dict(os.environ, PIPELINE_URL=self.url, CONFIG_CPUS=str(self.cpus)), self.tree
        )
        for k in ("DEBUG", "EDGE_BUNDLE", "EDGE_LOGGING", "PORT", "HOST", "PERSIST_DIR"):
            env.pop(k, None)
        env["GRPC_PORT"] = "0"  # several servers at once; bench/v2.py gives its own a port
        env.update(self.extra_env)
        return env

    def ready(self) -> bool:
        st, _ = http_req(self.port, "GET", "/health/ready", timeout=2.0)
        return st == 200

    def start(self, ready_timeout: float) -> float:
        cmd, env = self.command(), self.environment()
        t0 = time.perf_counter()
        self._logf = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            cmd,
            cwd=self.tree,
            env=env,
            stdout=self._logf,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = t0 + ready_timeout
        while time.perf_counter() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.what} exited with {self.proc.returncode}:\n{tail(self.log_path)}"
                )
            try:
                if self.ready():
                    return time.perf_counter() - t0
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"{self.what} not ready after {ready_timeout}s:\n{tail(self.log_path)}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        if self.proc is None or self._stopped:
            return
        self._stopped = True
        stop_process(self.proc)
        self._logf.close()
        note(f"{self.name}: server stopped (pid {self.proc.pid}, exit {self.proc.returncode})")


class BareServer(Server):
    """bench/bare_starlette.py on the same ONNX file: Starlette + uvicorn (uvloop, httptools)
    + orjson + one InferenceSession (1 intra-op thread), nothing of ours. The calibration a
    server of ours is judged against in the same run; single-row phases only."""

    what = "bare_starlette.py"
    big_phases = False

    def __init__(self, onnx: Path, work: Path) -> None:
        self.name = "bare"
        self.tree = REPO
        self.cpus, self.logging_on = None, False
        self.onnx = onnx
        self.port = free_port()
        self.log_path = work / "serve-bare.log"
        self.extra_env: dict[str, str] = {}
        self.result = {"server": "bare_starlette", "cpus": None, "logging": False, "checks": {}}
        self.answered_rows = 0
        self._stopped = False
        self.proc = None

    @property
    def label(self) -> str:
        return "bare"

    def describe(self) -> str:
        return "bare Starlette handler (bench/bare_starlette.py, no logging)"

    def command(self) -> list[str]:
        script = HERE / "bare_starlette.py"
        return [sys.executable, str(script), "--port", str(self.port), "--model", str(self.onnx)]

    def environment(self) -> dict[str, str]:
        return dict(os.environ)

    def ready(self) -> bool:
        # the session is built before uvicorn binds, so any answer on the route (405 to a GET:
        # the route is POST only) means the handler can serve
        st, _ = http_req(self.port, "GET", INFER_PATH, timeout=2.0)
        return st in (200, 405)


def profile_start(pid: int, path: Path, seconds: int) -> subprocess.Popen[bytes] | None:
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not os.path.exists(spy):
        note("py-spy not found: pip install py-spy (profile skipped)")
        return None
    return subprocess.Popen(
        [
            spy,
            "record",
            "-p",
            str(pid),
            "-d",
            str(seconds),
            "-r",
            "200",
            "--nonblocking",
            "--threads",
            "-f",
            "raw",
            "-o",
            str(path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


IDLE_LEAVES = (
    "Condition.wait ",
    "Event.wait ",
    "Queue.get ",
    "SimpleQueue.get ",
    "BaseSelector.select ",
    "EpollSelector.select ",
)


def profile_report(
    path: Path, top: int = 15
) -> tuple[dict[str, float], list[tuple[str, float, float]]]:
    """From py-spy raw (collapsed) stacks: each thread's share of busy samples, and the top
    functions by own busy samples (self %) with their inclusive %. Samples whose leaf is a
    wait (Condition.wait, ...) are idle and left out. A leaf of `Runner.run` is the event loop
    inside C (uvloop/httptools, including its epoll wait)."""
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    threads: collections.Counter[str] = collections.Counter()
    total = 0
    try:
        text = path.read_text()
    except OSError:
        return {}, []
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        thread = "?"
        if frames and frames[0].startswith("thread ("):
            thread = frames.pop(0).split(":", 1)[-1].strip() or "?"
        frames = [f.strip() for f in frames if f.strip() and not f.startswith("process ")]
        if not frames or frames[-1].startswith(IDLE_LEAVES):
            continue
        total += n
        threads[thread] += n
        own[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
    if not total:
        return {}, []
    shares = {t: 100 * c / total for t, c in threads.most_common()}
    return shares, [(f, 100 * c / total, 100 * incl[f] / total) for f, c in own.most_common(top)]


BIG_KINDS = (
    ("arrow", {"Content-Type": ARROW_TYPE, "Accept": ARROW_TYPE}),
    ("json", {"Content-Type": JSON_TYPE, "Accept": JSON_TYPE}),
)
WRK_FIGURES = (
    ("req_per_s", "req/s"),
    ("p50_us", "us"),
    ("p90_us", "us"),
    ("p99_us", "us"),
    ("max_us", "us"),
    ("requests", "req"),
    ("errors_status", "req"),
    ("errors", "req"),
    ("server_cpu_us_per_req", "us"),
)


def start_server(srv: Server, bodies: dict[str, Any], raw: dict[str, Any], timeout: float) -> None:
    """Start, wait for ready, read idle memory, check the 1-row answer."""
    name, res = srv.label, srv.result
    note(f"{srv.name}: starting {srv.describe()} on 127.0.0.1:{srv.port}; log {srv.log_path}")
    res["startup_to_ready_s"] = srv.start(timeout)
    out(f"{name}_startup_to_ready", res["startup_to_ready_s"], "s")
    time.sleep(0.5)
    rss, pss, nproc = tree_memory_kib(srv.pid)
    res["rss_after_load_mib"], res["pss_after_load_mib"] = rss / 1024, pss / 1024
    out(f"{name}_processes", nproc, "procs")
    out(f"{name}_threads_after_load", thread_count(srv.pid), "threads")
    out(f"{name}_rss_after_load", rss / 1024, "MiB")
    out(f"{name}_pss_after_load", pss / 1024, "MiB")
    st, resp = http_req(srv.port, "POST", INFER_PATH, bodies["one"], {"Content-Type": JSON_TYPE})
    if st != 200:
        raise RuntimeError(f"1-row request -> HTTP {st}: {resp[:300]!r}")
    exp = raw["expect"]
    ok = same_answers(answers_from_json(resp), exp["label1"], exp["proba1"])
    res["checks"]["1row_json"] = ok
    srv.answered_rows += 1
    rss1, _, _ = tree_memory_kib(srv.pid)
    res["rss_after_first_request_mib"] = rss1 / 1024
    out(f"{name}_rss_after_first_request", rss1 / 1024, "MiB")
    out(f"{name}_check_1row_json", "ok" if ok else "MISMATCH", "-")


def baseline_layout(
    baseline: dict[str, Any] | None, model: dict[str, Any], work: Path, timeout: float
) -> str | None:
    """The PIPELINE_URL the --baseline servers get. Tried by starting one baseline `edge serve`
    (CONFIG_CPUS=1, --no-logging) on the layout this tree published: if it gets ready (it loads
    the pipeline before that, and exits if it cannot), that layout; otherwise the pipeline is
    published again with the baseline tree's `python -m edge publish` (its own example
    pipeline.yaml when it has one) into a separate layout. None if that fails too."""
    if not baseline:
        return None
    tree = baseline["tree"]
    probe = Server(model["url"], 1, False, work, tree=tree, prefix="base_layout_probe_")
    note(f"baseline: can {tree} read this tree's layout? starting {probe.describe()}")
    try:
        probe.start(timeout)
        baseline["layout"] = "shared"
        baseline["url"] = model["url"]
        out("baseline_layout", "shared", "-")
        note("baseline: reads this tree's layout; its servers use the same one")
        return model["url"]
    except Exception as exc:
        why = (str(exc).strip().splitlines() or ["?"])[-1]
        baseline["layout_probe_error"] = why
        note(f"baseline: cannot serve this tree's layout ({why}); publishing with its own edge")
    finally:
        probe.stop()
    base_dir = work / "model-base"
    shutil.copytree(model["dir"], base_dir)
    spec = tree / "examples" / "breast-cancer" / "pipeline.yaml"
    if spec.exists():
        shutil.copy(spec, base_dir / "pipeline.yaml")
    baseline["spec"] = str(spec if spec.exists() else EXAMPLE / "pipeline.yaml")
    try:
        published = publish(base_dir / "pipeline.yaml", work / "layout-base", tree)
    except RuntimeError as exc:
        baseline["layout"] = "failed"
        out("baseline_layout", "failed", "-")
        note(f"baseline: its own publish failed too, no base_* configurations: {exc}")
        return None
    baseline["layout"] = "own"
    baseline["url"] = published["pipeline_url"]
    out("baseline_layout", "own", "-")
    out("baseline_pipeline_url", published["pipeline_url"], "-")
    return published["pipeline_url"]


def rotate(servers: list[Server], round_no: int) -> list[Server]:
    k = round_no % len(servers)
    return servers[k:] + servers[:k]


def measure(
    servers: list[Server], bodies: dict[str, Any], raw: dict[str, Any], args: argparse.Namespace
) -> None:
    """All servers are up; each phase runs on every server in turn (rotating the order each
    round), so background load on a shared machine falls on all configurations alike. The
    10,000-row phases skip servers without them (the bare handler)."""
    big = [srv for srv in servers if srv.big_phases]
    for srv in servers:
        w = run_wrk(srv.port, 8, args.warmup, bodies["one_file"], srv.pid)  # not reported
        srv.answered_rows += int(w["requests"])
    wrk_runs: dict[tuple[str, int], list[dict[str, float]]] = collections.defaultdict(list)
    big_times: dict[tuple[str, str], list[np.ndarray]] = collections.defaultdict(list)
    exp = raw["expect"]
    for rnd in range(args.rounds):
        for conns in (1, 8):
            for srv in rotate(servers, rnd):
                spy = None
                if args.profile and conns == 8 and rnd == 0:
                    spy = profile_start(srv.pid, args.profile / f"{srv.name}_c8.txt", args.duration)
                w = run_wrk(srv.port, conns, args.duration, bodies["one_file"], srv.pid)
                if spy is not None:
                    spy.wait(timeout=60)
                wrk_runs[(srv.name, conns)].append(w)
                srv.answered_rows += int(w["requests"])
        for kind, headers in BIG_KINDS:
            body = bodies[f"big_{kind}"]
            for srv in rotate(big, rnd) if big else []:
                spy = None
                if args.profile and kind == "arrow" and rnd == 0:
                    spy = profile_start(srv.pid, args.profile / f"{srv.name}_10k_{kind}.txt", 4)
                ts, first = big_requests(srv.port, body, headers, args.big_requests, 2, 60.0)
                if spy is not None:
                    spy.wait(timeout=60)
                big_times[(srv.name, kind)].append(ts)
                srv.answered_rows += N_BIG * (len(ts) + 2)
                if rnd == 0:
                    decode = answers_from_arrow if kind == "arrow" else answers_from_json
                    ok = same_answers(decode(first), exp["label10k"], exp["proba10k"])
                    srv.result["checks"][f"10k_{kind}"] = ok
                    srv.result[f"10k_{kind}_response_bytes"] = len(first)
                    out(f"{srv.label}_check_10k_{kind}", "ok" if ok else "MISMATCH", "-")

    for srv in servers:
        name, res, label_ = srv.name, srv.result, srv.label
        # each round's own figure, for the per-round spread (the before/after table's noise)
        per_round: dict[str, list[float]] = res.setdefault("rounds", {})
        for conns in (1, 8):
            runs = wrk_runs[(name, conns)]
            for k in ("req_per_s", "p50_us", "p99_us", "server_cpu_us_per_req"):
                per_round[f"c{conns}_{k}"] = [float(w[k]) for w in runs]
            requests = sum(w["requests"] for w in runs)
            merged = {
                # rounds > 1: req/s over all rounds; percentiles are the median of the rounds'
                "req_per_s": requests / (sum(w["duration_us"] for w in runs) / 1e6),
                "p50_us": float(np.median([w["p50_us"] for w in runs])),
                "p90_us": float(np.median([w["p90_us"] for w in runs])),
                "p99_us": float(np.median([w["p99_us"] for w in runs])),
                "max_us": max(w["max_us"] for w in runs),
                "requests": requests,
                "errors_status": sum(w["errors_status"] for w in runs),
                "errors": sum(w["errors"] for w in runs),
                "server_cpu_us_per_req": sum(
                    w["server_cpu_us_per_req"] * w["requests"] for w in runs
                )
                / max(requests, 1),
            }
            for k, unit in WRK_FIGURES:
                res[f"c{conns}_{k}"] = merged[k]
                label = {"errors_status": "non2xx", "errors": "errors_all"}.get(k, k)
                label = label.removesuffix("_us")
                value = int(merged[k]) if unit == "req" else merged[k]
                out(f"{label_}_c{conns}_{label}", value, unit)
        for kind, _ in BIG_KINDS if srv.big_phases else ():
            per_round[f"10k_{kind}_rows_per_s"] = [
                N_BIG * 1e3 / float(np.median(t)) for t in big_times[(name, kind)]
            ]
            ts = np.concatenate(big_times[(name, kind)])
            med = float(np.median(ts))
            res[f"10k_{kind}_median_ms"] = med
            res[f"10k_{kind}_rows_per_s"] = N_BIG * 1e3 / med
            out(f"{label_}_10k_{kind}_median", med, "ms")
            out(f"{label_}_10k_{kind}_min", float(ts.min()), "ms")
            out(f"{label_}_10k_{kind}_max", float(ts.max()), "ms")
            out(f"{label_}_10k_{kind}_rows_per_s", res[f"10k_{kind}_rows_per_s"], "rows/s")
            out(f"{label_}_10k_{kind}_samples", len(ts), "req")
            out(f"{label_}_10k_{kind}_response_bytes", res[f"10k_{kind}_response_bytes"], "B")
        res["checks"]["no_non2xx"] = res["c1_errors"] == 0 and res["c8_errors"] == 0

    time.sleep(1.0)  # idle again: the writer's checkpoint, the thread pools settle
    for srv in servers:
        finish_server(srv)


def finish_server(srv: Server) -> None:
    """Memory after the bench, and whether every answered row is in the log buffer."""
    name, res = srv.label, srv.result
    rss, pss, _ = tree_memory_kib(srv.pid)
    res["rss_after_bench_mib"], res["pss_after_bench_mib"] = rss / 1024, pss / 1024
    out(f"{name}_rss_after_bench", rss / 1024, "MiB")
    out(f"{name}_pss_after_bench", pss / 1024, "MiB")
    out(f"{name}_threads_after_bench", thread_count(srv.pid), "threads")
    if not srv.logging_on:
        return
    # wrk does not count the requests in flight when it stops, so the buffer may hold a few
    # more rows than were counted as answered
    st, health = http_req(srv.port, "GET", "/health")
    buf = json.loads(health).get("log_buffer") or {}
    keys = ("rows", "batches", "bytes", "file_bytes", "commits", "appends", "rejected", "failed")
    res["log"] = {k: buf.get(k) for k in (*keys, "dropped", "last_error")}
    res["log"]["answered_rows_counted"] = srv.answered_rows
    logged = buf.get("rows") or 0
    ok = bool(logged >= srv.answered_rows and not buf.get("rejected") and not buf.get("failed"))
    res["checks"]["every_answer_logged"] = ok
    out(f"{name}_log_rows", logged, "rows")
    out(f"{name}_log_answered_rows_counted", srv.answered_rows, "rows")
    out(f"{name}_log_commits", buf.get("commits"), "commits")
    out(f"{name}_log_appends", buf.get("appends"), "appends")
    appends_per_commit = (buf.get("appends") or 0) / max(buf.get("commits") or 1, 1)
    out(f"{name}_log_appends_per_commit", appends_per_commit, "appends/commit")
    out(f"{name}_log_file_bytes", buf.get("file_bytes"), "B")
    out(f"{name}_check_every_answer_logged", "ok" if ok else "MISSING", "-")


# ---------------------------------------------------------------- MLServer peer
def mlserver_ready(want: bool | None) -> bool:
    if want is False:
        return False
    if (PEER_VENV / "bin" / "mlserver").exists():
        return True
    if not (PEER / "setup.sh").exists():
        return False
    note("setting up the MLServer peer (bash setup.sh, ~40 s)")
    r = subprocess.run(
        ["bash", str(PEER / "setup.sh")], capture_output=True, text=True, timeout=600
    )
    if r.returncode != 0:
        note(f"MLServer peer setup failed: {r.stderr[-500:]}")
        return False
    return (PEER_VENV / "bin" / "mlserver").exists()


def bench_mlserver(args: argparse.Namespace) -> dict[str, Any] | None:
    note("MLServer peer: bash /work/shared/peers/mlserver/bench.sh --configs pw0")
    cmd = [
        "bash",
        str(PEER / "bench.sh"),
        "--configs",
        "pw0",
        "--duration",
        str(args.duration),
        "--warmup",
        str(args.warmup),
        "--big-requests",
        str(args.big_requests),
    ]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        note("MLServer peer bench timed out")
        return None
    vals: dict[str, Any] = {}
    for line in r.stdout.splitlines():
        parts = line.split()
        if len(parts) == 3 and not line.startswith("#") and not line.startswith(" "):
            try:
                vals[parts[0]] = float(parts[1])
            except ValueError:
                vals[parts[0]] = parts[1]
    if r.returncode != 0 or "mlserver_pw0_c8_req_per_s" not in vals:
        note(f"MLServer peer bench failed rc={r.returncode}: {(r.stdout + r.stderr)[-800:]}")
        return None
    p = "mlserver_pw0_"
    m = {
        "c1_p50_us": vals[p + "c1_p50"],
        "c1_p90_us": vals[p + "c1_p90"],
        "c1_p99_us": vals[p + "c1_p99"],
        "c1_req_per_s": vals[p + "c1_req_per_s"],
        "c8_p50_us": vals[p + "c8_p50"],
        "c8_p90_us": vals[p + "c8_p90"],
        "c8_p99_us": vals[p + "c8_p99"],
        "c8_req_per_s": vals[p + "c8_req_per_s"],
        "c1_server_cpu_us_per_req": vals[p + "c1_server_cpu_per_req"],
        "c8_server_cpu_us_per_req": vals[p + "c8_server_cpu_per_req"],
        "10k_median_ms": vals[p + "10k_median"] / 1000,
        "10k_rows_per_s": vals[p + "10k_rows_per_s"],
        "rss_after_load_mib": vals[p + "rss_after_load"],
        "rss_after_bench_mib": vals[p + "rss_after_bench"],
        "pss_after_load_mib": vals[p + "pss_after_load"],
        "startup_to_ready_s": vals[p + "startup_to_ready"],
        "checks_ok": vals.get(p + "check_1row") == "ok" and vals.get(p + "check_10k") == "ok",
        "peer_raw_ort_1row_us": vals.get("raw_ort_1row_median"),
        "peer_raw_ort_10k_us": vals.get("raw_ort_10k_median"),
        "c1_non2xx": vals.get(p + "c1_errors"),
        "c8_non2xx": vals.get(p + "c8_errors"),
    }
    for k, v in m.items():
        if isinstance(v, float | int) and not isinstance(v, bool):
            out(f"mlserver_{k}", v, "-")
    return m


# ---------------------------------------------------------------- summary
def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or not b:
        return None
    return a / b


def rfmt(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:.3g}x" if x < 10 else f"{x:.0f}x"


def vfmt(x: float | None, unit: str) -> str:
    if x is None:
        return "-"
    if unit in ("req/s", "rows/s", "calls/s"):
        return f"{x / 1e6:.2f}M" if x >= 1e6 else (f"{x / 1e3:.0f}k" if x >= 1e4 else f"{x:.0f}")
    if unit == "µs":
        return f"{x:.0f}" if x >= 100 else f"{x:.1f}"
    if unit == "ms":
        return f"{x:.2f}" if x < 10 else f"{x:.1f}"
    return f"{x:.1f}"


def summarize(
    configs: dict[str, dict[str, Any]],
    raw: dict[str, Any],
    raw2: dict[str, Any] | None,
    mls: dict[str, Any],
    mls_source: str,
    cpus_list: list[int],
    baseline: dict[str, Any] | None = None,
    rounds: int = 1,
) -> dict[str, Any]:
    raw_1row_us = raw["1row_us"]
    raw_10k_ms = raw["10k_us"] / 1000
    raw_rows_s = N_BIG * 1e6 / raw["10k_us"]
    raw_calls_s = 1e6 / raw_1row_us
    raw_rss = raw["rss_kib"] / 1024
    # (key in config result, label, unit, raw equivalent, MLServer key)
    figures = [
        ("c1_p50_us", "single row c=1 p50", "µs", raw_1row_us, "c1_p50_us"),
        ("c1_p90_us", "single row c=1 p90", "µs", raw_1row_us, "c1_p90_us"),
        ("c1_p99_us", "single row c=1 p99", "µs", raw["1row_p99_us"], "c1_p99_us"),
        ("c1_req_per_s", "single row c=1 req/s", "req/s", raw_calls_s, "c1_req_per_s"),
        ("c8_p50_us", "single row c=8 p50", "µs", raw_1row_us, "c8_p50_us"),
        ("c8_p90_us", "single row c=8 p90", "µs", raw_1row_us, "c8_p90_us"),
        ("c8_p99_us", "single row c=8 p99", "µs", raw["1row_p99_us"], "c8_p99_us"),
        ("c8_req_per_s", "single row c=8 req/s", "req/s", raw_calls_s, "c8_req_per_s"),
        (
            "c8_server_cpu_us_per_req",
            "server CPU per req c=8",
            "µs",
            raw_1row_us,
            "c8_server_cpu_us_per_req",
        ),
        ("10k_arrow_median_ms", "10k rows Arrow median", "ms", raw_10k_ms, "10k_median_ms"),
        ("10k_arrow_rows_per_s", "10k rows Arrow rows/s", "rows/s", raw_rows_s, "10k_rows_per_s"),
        ("10k_json_median_ms", "10k rows JSON median", "ms", raw_10k_ms, "10k_median_ms"),
        ("10k_json_rows_per_s", "10k rows JSON rows/s", "rows/s", raw_rows_s, "10k_rows_per_s"),
        ("rss_after_load_mib", "RSS idle after load", "MiB", raw_rss, "rss_after_load_mib"),
        ("rss_after_bench_mib", "RSS after bench", "MiB", raw_rss, "rss_after_bench_mib"),
        ("startup_to_ready_s", "start-up to ready", "s", None, "startup_to_ready_s"),
    ]
    names = list(configs)
    lines = []
    lines.append("")
    lines.append(
        f"## Summary (cell: value, ÷raw ORT, ÷MLServer; ratio = ours/theirs; "
        f"MLServer figures {mls_source})"
    )
    lines.append("")
    head = ["figure", *names, "raw ORT (1 thr)", f"MLServer pw0 ({mls_source})"]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(head))
    table_json = []
    for key, label, unit, raw_v, mkey in figures:
        row = [f"{label} ({unit})"]
        entry: dict[str, Any] = {
            "figure": key,
            "unit": unit,
            "raw_ort": raw_v,
            "mlserver": mls.get(mkey),
            "configs": {},
        }
        for n in names:
            v = configs[n].get(key)
            rr, rm = ratio(v, raw_v), ratio(v, mls.get(mkey))
            entry["configs"][n] = {"value": v, "over_raw": rr, "over_mlserver": rm}
            row.append("-" if v is None else f"{vfmt(v, unit)} ({rfmt(rr)} raw, {rfmt(rm)} MLS)")
        row.append(vfmt(raw_v, unit))
        row.append(vfmt(mls.get(mkey), unit))
        lines.append("| " + " | ".join(row) + " |")
        table_json.append(entry)
    lines.append("")
    other = [c.get("host_other_cpu_pct") for c in configs.values()]
    lines.append(
        "CPU taken by other work on the host (share of all cores; a noise indicator): "
        + (
            f"while our servers were measured {other[0]:.0f}%"
            if other and other[0] is not None
            else ""
        )
        + (
            f", while MLServer was measured {mls['host_other_cpu_pct']:.0f}%"
            if mls.get("host_other_cpu_pct") is not None
            else ""
        )
    )
    if raw2:
        lines.append("")
        lines.append(
            f"raw ORT with 2 intra-op threads (reference): 1 row "
            f"{raw2['1row_us']:.1f} µs, 10k rows {raw2['10k_us'] / 1000:.2f} ms "
            f"({N_BIG * 1e6 / raw2['10k_us'] / 1e6:.2f}M rows/s)"
        )

    # logging cost, per CONFIG_CPUS
    cost_json: dict[str, Any] = {}
    lines.append("")
    lines.append("## Cost of logging (on vs --no-logging, same CONFIG_CPUS; + = logging slower)")
    lines.append("")
    lines.append("| figure | " + " | ".join(f"CONFIG_CPUS={c}" for c in cpus_list) + " |")
    lines.append("|---|" + "---|" * len(cpus_list))
    cost_figs = [
        ("c1_req_per_s", "c=1 req/s", True),
        ("c1_p50_us", "c=1 p50", False),
        ("c8_req_per_s", "c=8 req/s", True),
        ("c8_p99_us", "c=8 p99", False),
        ("10k_arrow_rows_per_s", "10k Arrow rows/s", True),
        ("10k_json_rows_per_s", "10k JSON rows/s", True),
    ]
    for key, label, higher_better in cost_figs:
        row = [label]
        for c in cpus_list:
            on, off = configs.get(f"cpus{c}_logon", {}), configs.get(f"cpus{c}_logoff", {})
            a, b = on.get(key), off.get(key)
            if a is None or b is None or not b:
                row.append("-")
                continue
            cost = (1 - a / b) * 100 if higher_better else (a / b - 1) * 100
            cost_json.setdefault(f"cpus{c}", {})[key] = cost
            row.append(f"{cost:+.1f}% ({vfmt(a, '')} vs {vfmt(b, '')})")
        lines.append("| " + " | ".join(row) + " |")

    # issue 14's targets, judged on the logging-on configs (what ships)
    bare = configs.get("bare")
    verdicts = []
    lines.append("")
    lines.append(
        f"## Targets (issue 14), with logging on; MLServer figures {mls_source}, "
        f"bare handler {'same run' if bare else 'not measured'} (MB read as MiB)"
    )
    lines.append("")
    lines.append("| target | need | " + " | ".join(f"CONFIG_CPUS={c}" for c in cpus_list) + " |")
    lines.append("|---|---|" + "---|" * len(cpus_list))

    def fig(key: str) -> Any:
        return lambda r, _: r[key]

    def log_cost(key: str) -> Any:
        return lambda _, c: c[key]

    # (target, comparison, limit, ours from (logging-on figures, logging cost),
    #  (what ours is divided by, its value) or None for an absolute limit, unit of ours)
    mls_by = "MLServer"
    targets: list[tuple[str, str, float, Any, tuple[str, float | None] | None, str]] = [
        (
            "single-row p50 c=1 ÷ MLServer's",
            "<=",
            0.4,
            fig("c1_p50_us"),
            (mls_by, mls.get("c1_p50_us")),
            "µs",
        ),
        (
            "single-row req/s c=8 ÷ MLServer's",
            ">=",
            2.5,
            fig("c8_req_per_s"),
            (mls_by, mls.get("c8_req_per_s")),
            "req/s",
        ),
        (
            "single-row p99 c=8 ÷ MLServer's",
            "<=",
            1,
            fig("c8_p99_us"),
            (mls_by, mls.get("c8_p99_us")),
            "µs",
        ),
        ("server CPU per request c=8 (µs)", "<=", 300, fig("c8_server_cpu_us_per_req"), None, "µs"),
        (
            "single-row req/s c=8 ÷ bare handler's",
            ">=",
            0.85,
            fig("c8_req_per_s"),
            ("bare", bare.get("c8_req_per_s") if bare else None),
            "req/s",
        ),
        (
            "10k Arrow rows/s ÷ MLServer's (V2 JSON)",
            ">=",
            6,
            fig("10k_arrow_rows_per_s"),
            (mls_by, mls.get("10k_rows_per_s")),
            "rows/s",
        ),
        (
            "10k pandas-records JSON rows/s ÷ MLServer's",
            ">=",
            1,
            fig("10k_json_rows_per_s"),
            (mls_by, mls.get("10k_rows_per_s")),
            "rows/s",
        ),
        ("logging cost, c=8 req/s (%)", "<=", 10, log_cost("c8_req_per_s"), None, "%"),
        (
            "logging cost, 10k Arrow rows/s (%)",
            "<=",
            15,
            log_cost("10k_arrow_rows_per_s"),
            None,
            "%",
        ),
        ("RSS idle after load (MiB)", "<=", 120, fig("rss_after_load_mib"), None, "MiB"),
        ("RSS after the bench (MiB)", "<=", 180, fig("rss_after_bench_mib"), None, "MiB"),
        # the older floors (issue 3), kept for continuity
        ("floor (issue 3): single-row p50 c=1 (µs)", "<=", 1500, fig("c1_p50_us"), None, "µs"),
        (
            "floor (issue 3): 10k Arrow rows/s ÷ raw ORT's",
            ">=",
            0.85,
            fig("10k_arrow_rows_per_s"),
            ("raw ORT", raw_rows_s),
            "rows/s",
        ),
        (
            "floor (issue 3): RSS idle after load (MiB)",
            "<=",
            150,
            fig("rss_after_load_mib"),
            None,
            "MiB",
        ),
    ]
    compare = {"<": operator.lt, "<=": operator.le, ">=": operator.ge}
    for label, op, limit, get, over, unit in targets:
        need = f"{op} {limit:g}" + ("x" if over else "")
        row = [label, need]
        for c in cpus_list:
            cfg = configs.get(f"cpus{c}_logon")
            try:
                ours = get(cfg, cost_json.get(f"cpus{c}", {})) if cfg else None
            except (KeyError, TypeError):
                ours = None
            theirs = over[1] if over else None
            v = ratio(ours, theirs) if over else ours
            verdict = "N/A" if v is None else "PASS" if compare[op](v, limit) else "MISS"
            if v is None:
                why = "no logging-on config" if cfg is None else "figure missing"
                if cfg is not None and unit == "%" and f"cpus{c}_logoff" not in configs:
                    why = "no --no-logging config"
                if over and theirs is None:
                    why = f"no {over[0]} figure"
                row.append(f"N/A ({why})")
            elif over:
                row.append(
                    f"{v:.3g}x {verdict} ({vfmt(ours, unit)} vs {over[0]} {vfmt(theirs, unit)})"
                )
            else:
                row.append(f"{vfmt(v, unit)} {verdict}")
            verdicts.append(
                {
                    "target": label,
                    "need": need,
                    "cpus": c,
                    "value": v,
                    "ours": ours,
                    "theirs": theirs,
                    "over": over[0] if over else None,
                    "verdict": verdict,
                }
            )
        lines.append("| " + " | ".join(row) + " |")
    if bare:
        lines.append("")
        lines.append(
            f"Bare handler (same run): c=1 p50 {vfmt(bare.get('c1_p50_us'), 'µs')} µs, c=8 "
            f"{vfmt(bare.get('c8_req_per_s'), 'req/s')} req/s, server CPU per request c=8 "
            f"{vfmt(bare.get('c8_server_cpu_us_per_req'), 'µs')} µs, RSS "
            f"{vfmt(bare.get('rss_after_load_mib'), 'MiB')} MiB idle after load, "
            f"{vfmt(bare.get('rss_after_bench_mib'), 'MiB')} MiB after the bench."
        )

    ba_json = before_after(configs, baseline, rounds, lines) if baseline else None

    checks = {n: cfg.get("checks", {}) for n, cfg in configs.items()}
    lines.append("")
    lines.append("## Checks")
    for n, ch in checks.items():
        lines.append(f"- {n}: " + ", ".join(f"{k}={'ok' if v else 'FAIL'}" for k, v in ch.items()))
    if mls_source == "measured":
        lines.append(
            "- MLServer answers vs its raw ORT: " + ("ok" if mls.get("checks_ok") else "FAIL")
        )
    print("\n".join(lines), flush=True)
    return {
        "table": table_json,
        "logging_cost_pct": cost_json,
        "verdicts": verdicts,
        "checks": checks,
        "before_after": ba_json,
        "text": "\n".join(lines),
    }


# (key in config result, label, unit, higher is better)
BEFORE_AFTER = (
    ("c1_p50_us", "c=1 p50", "µs", False),
    ("c1_p99_us", "c=1 p99", "µs", False),
    ("c8_req_per_s", "c=8 req/s", "req/s", True),
    ("c8_p99_us", "c=8 p99", "µs", False),
    ("c8_server_cpu_us_per_req", "server CPU per req c=8", "µs", False),
    ("10k_arrow_rows_per_s", "10k Arrow rows/s", "rows/s", True),
    ("10k_json_rows_per_s", "10k JSON rows/s", "rows/s", True),
    ("rss_after_load_mib", "RSS idle after load", "MiB", False),
    ("rss_after_bench_mib", "RSS after bench", "MiB", False),
)
WORSE_PCT = 10.0  # a figure worse than the baseline's by more than this may be flagged


def before_after(
    configs: dict[str, dict[str, Any]], baseline: dict[str, Any], rounds: int, lines: list[str]
) -> dict[str, Any]:
    """Current ÷ baseline for each figure and configuration that ran from both trees. WORSE when
    the current tree is worse by more than WORSE_PCT and, with --rounds >= 2, also outside the
    per-round spread (its best round worse than the baseline's worst round); RSS is read once
    per server, so it has no spread and is judged on WORSE_PCT alone."""
    label = baseline["label"]
    pairs = [n for n in configs if not n.startswith("base_") and f"base_{n}" in configs]
    lines.append("")
    lines.append(
        f"## Before/after: current ÷ baseline {label} ({baseline['tree']}, layout "
        f"{baseline.get('layout', '?')}); req/s and rows/s: > 1 is better, the others: < 1 is "
        f"better; WORSE = worse by > {WORSE_PCT:g}%"
        + (" and outside the per-round spread" if rounds >= 2 else " (1 round: no spread)")
    )
    lines.append("")
    if not pairs:
        lines.append("No configuration ran from both trees.")
        return {"label": label, "tree": str(baseline["tree"]), "figures": [], "worse": []}
    lines.append("| figure | " + " | ".join(pairs) + " |")
    lines.append("|---|" + "---|" * len(pairs))
    figures, worse = [], []
    for key, flabel, unit, higher_better in BEFORE_AFTER:
        row = [f"{flabel} ({unit})"]
        entry: dict[str, Any] = {"figure": key, "unit": unit, "configs": {}}
        for n in pairs:
            cur, base = configs[n], configs[f"base_{n}"]
            a, b = cur.get(key), base.get(key)
            r = ratio(a, b)
            if r is None:
                row.append("-")
                entry["configs"][n] = {"current": a, "baseline": b, "ratio": None}
                continue
            worse_pct = (1 - r) * 100 if higher_better else (r - 1) * 100
            ra = cur.get("rounds", {}).get(key) or []
            rb = base.get("rounds", {}).get(key) or []
            spread = rounds >= 2 and len(ra) >= 2 and len(rb) >= 2
            if spread:
                outside = max(ra) < min(rb) if higher_better else min(ra) > max(rb)
            else:
                outside = True  # one round, or a figure read once (RSS): the % rule alone
            flag = worse_pct > WORSE_PCT and outside
            cell = f"{r:.3g}x ({vfmt(a, unit)} vs {vfmt(b, unit)})"
            if spread:
                cell = (
                    f"{r:.3g}x ({vfmt(a, unit)} [{vfmt(min(ra), unit)}-{vfmt(max(ra), unit)}] "
                    f"vs {vfmt(b, unit)} [{vfmt(min(rb), unit)}-{vfmt(max(rb), unit)}])"
                )
            row.append(cell + (" WORSE" if flag else ""))
            entry["configs"][n] = {
                "current": a,
                "baseline": b,
                "ratio": r,
                "worse_pct": worse_pct,
                "rounds_current": ra,
                "rounds_baseline": rb,
                "outside_spread": outside if spread else None,
                "worse": flag,
            }
            if flag:
                worse.append(f"{n} {flabel}")
        lines.append("| " + " | ".join(row) + " |")
        figures.append(entry)
    lines.append("")
    lines.append(
        "Worse than the baseline beyond the noise: " + (", ".join(worse) if worse else "none")
    )
    return {
        "label": label,
        "tree": str(baseline["tree"]),
        "layout": baseline.get("layout"),
        "rounds": rounds,
        "worse_pct": WORSE_PCT,
        "figures": figures,
        "worse": worse,
    }


def versions() -> None:
    import importlib.metadata as md

    for pkg in (
        "onnxruntime",
        "numpy",
        "pyarrow",
        "polars",
        "orjson",
        "starlette",
        "uvicorn",
        "uvloop",
        "httptools",
        "scikit-learn",
        "skl2onnx",
    ):
        try:
            out(f"version_{pkg}", md.version(pkg), "-")
        except md.PackageNotFoundError:
            out(f"version_{pkg}", "absent", "-")
    out("version_python", platform.python_version(), "-")
    try:
        w = subprocess.run(["wrk", "-v"], capture_output=True, text=True, timeout=10)
        out("version_wrk", (w.stdout + w.stderr).split()[1], "-")
    except (OSError, IndexError):
        out("version_wrk", "absent", "-")
    try:
        head = subprocess.run(
            ["git", "log", "-1", "--format=%h %s"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "edge"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        out("git_head", head.split()[0] if head else "?", "-")
        out("git_edge_dirty", "yes" if dirty else "no", "-")
    except OSError:
        pass
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip().replace(" ", "_")
                break
    out("host_cpu", cpu, "-")
    out("host_cores", os.cpu_count(), "cores")
    out("host_loadavg_1m", os.getloadavg()[0], "-")


def git_short_head(tree: Path) -> str:
    try:
        r = subprocess.run(
            ["git", "-C", str(tree), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except OSError:
        return tree.name
    return r.stdout.strip() if r.returncode == 0 and r.stdout.strip() else tree.name


def git_edge_dirty(tree: Path) -> str:
    try:
        r = subprocess.run(
            ["git", "-C", str(tree), "status", "--porcelain", "--", "edge"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except OSError:
        return "?"
    return "?" if r.returncode else ("yes" if r.stdout.strip() else "no")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--out",
        type=Path,
        default=Path(tempfile.gettempdir())
        / "edge-bench"
        / time.strftime("serve-%Y%m%d-%H%M%S.json"),
        help="write the summary (and every figure) as JSON here",
    )
    ap.add_argument("--cpus", default="1,2", help="CONFIG_CPUS values to run, comma list")
    ap.add_argument("--logging", default="on,off", help="on,off | on | off")
    ap.add_argument(
        "--mlserver",
        dest="mlserver",
        action="store_const",
        const=True,
        help="run the MLServer peer bench (default: if its venv exists or setup.sh can make it)",
    )
    ap.add_argument(
        "--no-mlserver",
        dest="mlserver",
        action="store_const",
        const=False,
        help="use MLServer's published figures instead",
    )
    ap.add_argument(
        "--no-bare",
        action="store_true",
        help="leave out the bare Starlette handler (bench/bare_starlette.py, single-row phases)",
    )
    ap.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    ap.add_argument("--warmup", type=int, default=3, help="seconds of wrk warm-up per server")
    ap.add_argument("--big-requests", type=int, default=20, help="timed 10k-row requests")
    ap.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="repeat every phase this many times, interleaved across the configurations",
    )
    ap.add_argument("--ready-timeout", type=float, default=60)
    ap.add_argument(
        "--profile",
        type=Path,
        help="record py-spy (raw stacks) into this folder during the c=8 and 10k "
        "Arrow runs and print the hot spots (perturbs those figures)",
    )
    ap.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for the server (experiments, e.g. MALLOC_ARENA_MAX=2); repeatable",
    )
    ap.add_argument(
        "--baseline",
        type=Path,
        metavar="PATH",
        help="another source tree (e.g. a git worktree of an older commit): every edge serve "
        "configuration also runs from it (PYTHONPATH=PATH), named base_<config>, in the same "
        "interleaved phases; the summary adds a before/after table",
    )
    ap.add_argument(
        "--baseline-label",
        metavar="TEXT",
        help="label of --baseline in the summary (default: its git rev-parse --short HEAD)",
    )
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (logs, persist dirs)")
    ap.add_argument("--raw-child", nargs=4, help=argparse.SUPPRESS)
    ap.add_argument(
        "--v2",
        action="store_true",
        help="the Open Inference Protocol phases against MLServer's V2 REST and gRPC instead "
        "(bench/v2.py; its own options follow --v2)",
    )
    if "--v2" in sys.argv[1:]:
        import v2

        return v2.main([a for a in sys.argv[1:] if a != "--v2"])
    args = ap.parse_args()
    if args.raw_child:
        m, rows, threads, expect = args.raw_child
        raw_child(m, rows, int(threads), expect)
        return 0
    if shutil.which("wrk") is None:
        raise SystemExit("wrk missing: apt-get install wrk")
    cpus_list = [int(c) for c in args.cpus.split(",") if c.strip()]
    modes = [m.strip() for m in args.logging.split(",") if m.strip()]
    extra_env = dict(kv.split("=", 1) for kv in args.server_env)
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)

    baseline: dict[str, Any] | None = None
    if args.baseline:
        tree = args.baseline.resolve()
        if not (tree / "edge" / "__init__.py").exists():
            raise SystemExit(f"--baseline {tree}: no edge package there")
        if tree == REPO.resolve():
            raise SystemExit(f"--baseline {tree} is this tree")
        baseline = {"tree": tree, "label": args.baseline_label or git_short_head(tree)}

    t_start = time.perf_counter()
    note(f"run started {time.strftime('%Y-%m-%d %H:%M:%S')}")
    versions()
    if baseline:
        out("baseline_tree", str(baseline["tree"]), "-")
        out("baseline_label", baseline["label"], "-")
        out("baseline_git_head", git_short_head(baseline["tree"]), "-")
        out("baseline_git_edge_dirty", git_edge_dirty(baseline["tree"]), "-")
    for k, v in extra_env.items():
        out(f"server_env_{k}", v, "-")
    work = Path(tempfile.mkdtemp(prefix="edge-bench-"))
    note(f"work dir {work}")
    run_snap = cpu_snapshot()
    try:
        # can the server log at all? (edge/logbuffer/ is being finished in parallel)
        if "on" in modes and (err := logbuffer_imports(REPO)):
            note(f"edge.logbuffer does not import; running only --no-logging: {err}")
            modes = [m for m in modes if m != "on"] or ["off"]
        out("edge_package", edge_package(REPO), "-")
        base_modes = modes
        if baseline:
            out("baseline_edge_package", edge_package(baseline["tree"]), "-")
            if "on" in modes and (err := logbuffer_imports(baseline["tree"])):
                note(f"baseline: edge.logbuffer does not import; no base_*_logon: {err}")
                base_modes = [m for m in modes if m != "on"]
        fs_med, fs_p90 = fsync_probe(work)
        out("host_fsync_4k_median", fs_med, "us")
        out("host_fsync_4k_p90", fs_p90, "us")
        model = build_model(work)
        bodies = make_bodies(model, work)
        raw = bench_raw(model, work, 1)
        raw2 = bench_raw(model, work, 2) if any(c > 1 for c in cpus_list) else None
        configs: dict[str, dict[str, Any]] = {}
        failed: list[str] = []
        base_url = baseline_layout(baseline, model, work, args.ready_timeout)
        servers: list[Server] = []
        for cpus in cpus_list:
            for mode in modes:
                servers.append(Server(model["url"], cpus, mode == "on", work, extra_env))
                # each baseline configuration next to its current one, so the two are measured
                # back to back in every phase (the rotation keeps them adjacent)
                if base_url and mode in base_modes:
                    servers.append(
                        Server(
                            base_url,
                            cpus,
                            mode == "on",
                            work,
                            extra_env,
                            tree=baseline["tree"],
                            prefix="base_",
                        )
                    )
                elif baseline:
                    failed.append(f"base_cpus{cpus}_log{mode}")
        if not args.no_bare:
            servers.append(BareServer(model["onnx"], work))
        snap, t0 = cpu_snapshot(), time.perf_counter()
        try:
            up = []
            for srv in servers:
                try:
                    start_server(srv, bodies, raw, args.ready_timeout)
                    up.append(srv)
                except Exception as exc:  # report and go on with the other configurations
                    failed.append(srv.name)
                    note(f"{srv.name} FAILED to start: {exc}")
                    srv.stop()
            if up:
                measure(up, bodies, raw, args)
            configs = {srv.name: srv.result for srv in up}
        finally:
            for srv in servers:
                srv.stop()
        pct = other_cpu_pct(snap, cpu_snapshot(), time.perf_counter() - t0)
        out("edge_host_other_cpu", pct, "%")
        for res in configs.values():
            res["host_other_cpu_pct"] = pct
        mls = None
        mls_source = "published"
        if mlserver_ready(args.mlserver):
            snap, t0 = cpu_snapshot(), time.perf_counter()
            mls = bench_mlserver(args)
            if mls is not None:
                mls_source = "measured"
                mls["host_other_cpu_pct"] = other_cpu_pct(
                    snap, cpu_snapshot(), time.perf_counter() - t0
                )
                out("mlserver_host_other_cpu", mls["host_other_cpu_pct"], "%")
        if mls is None:
            note("MLServer figures: the PUBLISHED ones (peer README run 1), not this run")
            mls = dict(MLSERVER_PUBLISHED)
        out("mlserver_source", mls_source, "-")
        if args.profile:
            for f in sorted(args.profile.glob("*.txt")):
                shares, hot = profile_report(f)
                note(
                    f"py-spy {f.name}: busy samples by thread: "
                    + ", ".join(f"{t} {p:.0f}%" for t, p in shares.items())
                )
                note("  own %  incl %  function (busy samples only)")
                for fn, own, incl in hot:
                    note(f"  {own:5.1f}% {incl:5.1f}%  {fn}")
        out("bench_wall_time", time.perf_counter() - t_start, "s")
        out(
            "host_other_cpu_whole_run",
            other_cpu_pct(run_snap, cpu_snapshot(), time.perf_counter() - t_start),
            "%",
        )
        out("host_loadavg_1m_end", os.getloadavg()[0], "-")
        summary = summarize(configs, raw, raw2, mls, mls_source, cpus_list, baseline, args.rounds)
        doc = {
            "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "command": " ".join([sys.executable, *sys.argv]),
            "lines": [{"name": n, "value": v, "unit": u} for n, v, u in LINES],
            "raw_ort": {k: v for k, v in raw.items() if k != "expect"},
            "raw_ort_t2": {k: v for k, v in raw2.items() if k != "expect"} if raw2 else None,
            "configs": configs,
            "mlserver": {"source": mls_source, **mls},
            "failed_configs": failed,
            "baseline": {k: str(v) for k, v in baseline.items()} if baseline else None,
            **summary,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(doc, indent=1, default=str))
        note(f"summary json: {args.out}")
        bad_checks = [
            f"{n}:{k}" for n, ch in summary["checks"].items() for k, v in ch.items() if not v
        ]
        if failed or bad_checks:
            note(f"FAILED configs: {failed}; failed checks: {bad_checks}")
            return 1
        return 0
    finally:
        if args.keep:
            note(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
