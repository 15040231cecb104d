#!/usr/bin/env python3
"""Open Inference Protocol benchmark: `edge serve` and MLServer over the same protocol, in one
run (`python bench/v2.py`, or `python bench/serve.py --v2`).

On the example model (examples/breast-cancer, input "X" [N,30] FP32), this
  (a) builds and publishes the model (bench/serve.py's `build_model`), and gives the same ONNX
      file to MLServer 1.7.1 (the peer's custom runtime, staged and started the way
      ../shared/peers/mlserver/bench.py does: parallel_workers 0, its best configuration);
  (b) starts `edge serve` (CONFIG_CPUS=1, logging on) with GRPC_PORT on a free port, and
      MLServer with its HTTP and gRPC ports, both up at once; checks every answer below
      against raw onnxruntime;
  (c) round by round, alternating which server goes first, measures on each:
      - V2 JSON single row (the peer's body: `{"inputs":[{"name":"X","shape":[1,30],
        "datatype":"FP32","data":[...]}]}`), wrk -t1 -c1 and -c8 with bench/post.lua;
      - 10,000 rows as V2 JSON over one keep-alive connection (2 warm-ups + N timed), and for
        us also the binary tensor extension (MLServer has no binary extension);
      - gRPC ModelInfer, single row in raw_input_contents (as tritonclient sends it), with
        h2load (nghttp2-client) at 8 connections x 1 stream and at 1 connection x 8 streams;
  (d) prints `name value unit` lines and a summary with ratios to MLServer and PASS/MISS
      against the targets; writes the summary as JSON to --out.

Only 127.0.0.1 is contacted. Every process started here is stopped by its PID.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import serve  # noqa: E402  (bench/serve.py: processes, model, wrk parsing)

PEER = serve.PEER
PEER_VENV = serve.PEER_VENV
MODEL = serve.PIPELINE
V2_PATH = f"/v2/models/{MODEL}/infer"
GRPC_PATH = "/inference.GRPCInferenceService/ModelInfer"
TARGETS = (  # (figure, ours, theirs, need)
    ("V2 JSON single row c=8 req/s", "json_c8_req_per_s", "json_c8_req_per_s", 2.5),
    (
        "10k rows binary (ours) vs V2 JSON (MLServer) rows/s",
        "10k_binary_rows_per_s",
        "10k_json_rows_per_s",
        8.0,
    ),
    ("gRPC single row c=8 req/s (8 connections)", "grpc_c8_req_per_s", "grpc_c8_req_per_s", 2.0),
)


# ---------------------------------------------------------------- bodies
def bodies(work: Path, x64: np.ndarray, x32: np.ndarray) -> dict[str, Any]:
    def v2(rows: np.ndarray) -> bytes:
        tensor = {"name": "X", "shape": list(rows.shape), "datatype": "FP32"}
        tensor["data"] = rows.ravel().tolist()
        return json.dumps({"inputs": [tensor]}, separators=(",", ":")).encode()

    one = work / "v2_1row.json"
    one.write_bytes(v2(x64[:1]))
    raw = x32.tobytes()
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "X",
                    "shape": [len(x32), 30],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": len(raw)},
                }
            ],
            "parameters": {"binary_data_output": True},
        },
        separators=(",", ":"),
    ).encode()
    grpc_file = work / "grpc_1row.bin"
    grpc_file.write_bytes(grpc_frame(x32[:1]))
    serve.out("v2_body_1row_bytes", one.stat().st_size, "B")
    return {
        "one_file": one,
        "big_json": v2(x64),
        "big_binary": header + raw,
        "big_binary_header": len(header),
        "grpc_file": grpc_file,
    }


def grpc_message(rows: np.ndarray) -> bytes:
    sys.path.insert(0, str(serve.REPO))
    from edge.v2 import grpc_predict_v2_pb2 as pb

    request = pb.ModelInferRequest(model_name=MODEL)
    request.inputs.add(name="X", datatype="FP32", shape=list(rows.shape))
    request.raw_input_contents.append(np.ascontiguousarray(rows, "<f4").tobytes())
    data: bytes = request.SerializeToString()
    return data


def grpc_frame(rows: np.ndarray) -> bytes:
    """One gRPC message on the wire: not compressed, 4-byte big-endian length, message."""
    message = grpc_message(rows)
    return b"\x00" + struct.pack(">I", len(message)) + message


def grpc_answer(port: int, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    import grpc

    from edge.v2 import grpc_predict_v2_pb2 as pb

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(
            GRPC_PATH,
            request_serializer=lambda b: b,
            response_deserializer=pb.ModelInferResponse.FromString,
        )
        answer = call(grpc_message(rows), timeout=30)
    names = [o.name for o in answer.outputs]
    label = np.frombuffer(answer.raw_output_contents[names.index("label")], "<i8")
    proba = np.frombuffer(answer.raw_output_contents[names.index("probabilities")], "<f4")
    return label, proba.reshape(-1, 2).astype(np.float64)


def v2_answer(raw: bytes, header_length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    if header_length is None:
        doc, binary = json.loads(raw), b""
    else:
        doc, binary = json.loads(raw[:header_length]), raw[header_length:]
    found: dict[str, np.ndarray] = {}
    offset = 0
    for output in doc["outputs"]:
        kind = {"INT64": "<i8", "FP32": "<f4"}[output["datatype"]]
        size = (output.get("parameters") or {}).get("binary_data_size")
        if size is None:
            value = np.asarray(output["data"], dtype=kind)
        else:
            value = np.frombuffer(binary[offset : offset + size], kind)
            offset += size
        found[output["name"]] = value.reshape(output["shape"])
    return found["label"], found["probabilities"].astype(np.float64)


# ---------------------------------------------------------------- MLServer
class MLServer:
    """MLServer 1.7.1 with the peer's custom runtime, staged as the peer's bench.py does."""

    name = "mlserver"

    def __init__(self, work: Path, onnx: Path) -> None:
        self.port, self.grpc_port, metrics = (serve.free_port() for _ in range(3))
        self.dir = work / "mlserver"
        repo = self.dir / "model-repo"
        shutil.copytree(PEER / "model-repo", repo, ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy(onnx, repo / MODEL / "model.onnx")
        settings = json.loads((repo / "settings.json").read_text())
        settings.update(
            host="127.0.0.1",
            http_port=self.port,
            grpc_port=self.grpc_port,
            metrics_port=metrics,
            parallel_workers=0,
            debug=False,
            metrics_endpoint=None,
        )
        (repo / "settings.json").write_text(json.dumps(settings, indent=2))
        self.repo = repo
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float) -> float:
        t0 = time.perf_counter()
        self._log = open(self.dir / "mlserver.log", "wb")
        self.proc = subprocess.Popen(
            [str(PEER_VENV / "bin" / "mlserver"), "start", str(self.repo)],
            cwd=self.dir,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        while time.perf_counter() < t0 + timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlserver exited:\n{serve.tail(self.dir / 'mlserver.log')}")
            try:
                if (
                    serve.http_req(self.port, "GET", f"/v2/models/{MODEL}/ready", timeout=2)[0]
                    == 200
                ):
                    return time.perf_counter() - t0
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError("mlserver not ready")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        if self.proc is not None:
            serve.stop_process(self.proc)
            self._log.close()


class Ceiling:
    """bench/grpc_ceiling.py: grpc.aio with a canned answer (gRPC phases only)."""

    name = "grpc_ceiling"

    def __init__(self, work: Path) -> None:
        self.grpc_port = serve.free_port()
        self.log = work / "grpc_ceiling.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float) -> float:
        t0 = time.perf_counter()
        script = Path(__file__).resolve().parent / "grpc_ceiling.py"
        self._log = open(self.log, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, str(script), str(self.grpc_port)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        time.sleep(2.0)
        if self.proc.poll() is not None:
            raise RuntimeError(f"grpc_ceiling exited:\n{serve.tail(self.log)}")
        return time.perf_counter() - t0

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        if self.proc is not None:
            serve.stop_process(self.proc)
            self._log.close()


class Edge(serve.Server):
    name = "edge"

    def __init__(self, url: str, work: Path) -> None:
        grpc_port = serve.free_port()
        super().__init__(url, 1, True, work, {"GRPC_PORT": str(grpc_port)})
        self.name = "edge"
        self.grpc_port = grpc_port


# ---------------------------------------------------------------- load
def run_wrk(port: int, conns: int, duration: int, body: Path, pid: int) -> dict[str, float]:
    url = f"http://127.0.0.1:{port}{V2_PATH}"
    cmd = [
        "wrk",
        "-t1",
        f"-c{conns}",
        f"-d{duration}s",
        "--timeout",
        "5s",
        "-s",
        str(serve.LUA),
        url,
    ]
    env = dict(os.environ, WRK_BODY_FILE=str(body), WRK_CONTENT_TYPE="application/json")
    cpu0 = serve.tree_cpu_s(pid)
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=duration + 60)
    cpu1 = serve.tree_cpu_s(pid)
    vals = {
        k: float(v)
        for line in done.stdout.splitlines()
        if line.startswith("WRK ")
        for _, k, v in [line.split()]
    }
    if done.returncode != 0 or "requests" not in vals:
        raise RuntimeError(f"wrk failed: {done.stdout}\n{done.stderr}")
    vals["req_per_s"] = vals["requests"] / (vals["duration_us"] / 1e6)
    vals["cpu_us_per_req"] = (cpu1 - cpu0) * 1e6 / max(vals["requests"], 1)
    return vals


def run_h2load(
    port: int, conns: int, streams: int, duration: int, body: Path, pid: int
) -> dict[str, float]:
    url = f"http://127.0.0.1:{port}{GRPC_PATH}"
    cmd = [
        "h2load",
        "-c",
        str(conns),
        "-m",
        str(streams),
        "-D",
        str(duration),
        "--warm-up-time=1",
        "-d",
        str(body),
        "-H",
        "content-type: application/grpc",
        "-H",
        "te: trailers",
        url,
    ]
    cpu0 = serve.tree_cpu_s(pid)
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60)
    cpu1 = serve.tree_cpu_s(pid)
    text = done.stdout
    rate = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", text)
    counts = re.search(
        r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded, "
        r"(\d+) failed, (\d+) errored",
        text,
    )
    mean = re.search(r"time for request:\s+\S+\s+\S+\s+(\S+)", text)
    if done.returncode != 0 or rate is None or counts is None:
        raise RuntimeError(f"h2load failed: {text}\n{done.stderr}")
    requests = float(counts.group(3))
    return {
        "req_per_s": float(rate.group(1)),
        "requests": requests,
        "failed": float(counts.group(4)) + float(counts.group(5)),
        "mean_us": _us(mean.group(1)) if mean else float("nan"),
        "cpu_us_per_req": (cpu1 - cpu0) * 1e6 / max(requests, 1),
    }


def _us(text: str) -> float:
    for unit, scale in (("us", 1.0), ("ms", 1e3), ("s", 1e6)):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * scale
    return float("nan")


def big(port: int, body: bytes, headers: dict[str, str], n: int) -> tuple[np.ndarray, bytes, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        times, first, first_headers = [], b"", None
        for i in range(n + 2):
            t0 = time.perf_counter_ns()
            conn.request("POST", V2_PATH, body=body, headers=headers)
            reply = conn.getresponse()
            data = reply.read()
            if reply.status != 200:
                raise RuntimeError(f"10k request -> {reply.status}: {data[:300]!r}")
            if i == 0:
                first, first_headers = data, reply.headers
            if i >= 2:
                times.append((time.perf_counter_ns() - t0) / 1e6)
        return np.array(times), first, first_headers
    finally:
        conn.close()


# ---------------------------------------------------------------- the run
def measure(
    servers: list[Any], data: dict[str, Any], expect: dict[str, Any], args: argparse.Namespace
) -> dict[str, dict[str, Any]]:
    results: dict[str, dict[str, Any]] = {s.name: {"checks": {}} for s in servers}
    runs: dict[tuple[str, str], list[dict[str, float]]] = {}
    bigs: dict[tuple[str, str], list[np.ndarray]] = {}
    for srv in servers:  # warm-up, and the answer checks
        if srv.name == Ceiling.name:
            continue
        run_wrk(srv.port, 8, args.warmup, data["one_file"], srv.pid)
        checks = results[srv.name]["checks"]
        status, raw = serve.http_req(
            srv.port,
            "POST",
            V2_PATH,
            data["one_file"].read_bytes(),
            {"Content-Type": "application/json"},
        )
        checks["1row_json"] = status == 200 and serve.same_answers(
            v2_answer(raw), expect["label1"], expect["proba1"]
        )
        grpc_port = srv.grpc_port
        checks["1row_grpc"] = serve.same_answers(
            grpc_answer(grpc_port, expect["x32"][:1]), expect["label1"], expect["proba1"]
        )
    for rnd in range(args.rounds):
        order = servers if rnd % 2 == 0 else servers[::-1]
        for conns in (1, 8):
            for srv in order:
                if srv.name == Ceiling.name:
                    continue
                w = run_wrk(srv.port, conns, args.duration, data["one_file"], srv.pid)
                runs.setdefault((srv.name, f"json_c{conns}"), []).append(w)
        for kind in ("json", "binary"):
            for srv in order:
                if (kind == "binary" and srv.name != "edge") or srv.name == Ceiling.name:
                    continue
                headers = {"Content-Type": "application/json"}
                body = data["big_json"]
                if kind == "binary":
                    body, headers = (
                        data["big_binary"],
                        {"Inference-Header-Content-Length": str(data["big_binary_header"])},
                    )
                ts, first, first_headers = big(srv.port, body, headers, args.big_requests)
                bigs.setdefault((srv.name, kind), []).append(ts)
                if rnd == 0:
                    length = first_headers.get("inference-header-content-length")
                    got = v2_answer(first, int(length) if length else None)
                    results[srv.name]["checks"][f"10k_{kind}"] = serve.same_answers(
                        got, expect["label10k"], expect["proba10k"]
                    )
                    results[srv.name][f"10k_{kind}_response_bytes"] = len(first)
        for conns, streams in ((8, 1), (1, 8)):
            for srv in order:
                h = run_h2load(
                    srv.grpc_port, conns, streams, args.duration, data["grpc_file"], srv.pid
                )
                runs.setdefault((srv.name, f"grpc_c{conns}x{streams}"), []).append(h)
    for (name, phase), got in runs.items():
        res = results[name]
        requests = sum(r["requests"] for r in got)
        rates = [r["req_per_s"] for r in got]
        key = "grpc_c8" if phase == "grpc_c8x1" else phase
        res[f"{key}_req_per_s"] = float(np.mean(rates))
        res[f"{key}_req_per_s_runs"] = rates
        res[f"{key}_cpu_us_per_req"] = sum(r["cpu_us_per_req"] * r["requests"] for r in got) / max(
            requests, 1
        )
        if phase.startswith("json"):
            res[f"{key}_p50_us"] = float(np.median([r["p50_us"] for r in got]))
            res[f"{key}_p99_us"] = float(np.median([r["p99_us"] for r in got]))
            res[f"{key}_non2xx"] = sum(r["errors_status"] for r in got)
        else:
            res[f"{key}_failed"] = sum(r["failed"] for r in got)
        units = {"req_per_s": "req/s", "cpu_us_per_req": "us", "p50_us": "us", "p99_us": "us"}
        for k, unit in units.items():
            if f"{key}_{k}" in res:
                serve.out(f"{name}_{key}_{k}", res[f"{key}_{k}"], unit)
    for (name, kind), got in bigs.items():
        ts = np.concatenate(got)
        med = float(np.median(ts))
        results[name][f"10k_{kind}_median_ms"] = med
        results[name][f"10k_{kind}_rows_per_s"] = serve.N_BIG * 1e3 / med
        serve.out(f"{name}_10k_{kind}_median", med, "ms")
        serve.out(f"{name}_10k_{kind}_rows_per_s", serve.N_BIG * 1e3 / med, "rows/s")
    return results


def logged_check(edge: Edge) -> dict[str, Any]:
    _, health = serve.http_req(edge.port, "GET", "/health")
    buffer = json.loads(health).get("log_buffer") or {}
    return {
        "rows": buffer.get("rows"),
        "rejected": buffer.get("rejected"),
        "failed": buffer.get("failed"),
    }


def summary(results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    ours, theirs = results.get("edge", {}), results.get("mlserver", {})
    verdicts = []
    for label, mine, peer, need in TARGETS:
        a, b = ours.get(mine), theirs.get(peer)
        ratio = a / b if a and b else None
        verdict = "PASS" if ratio is not None and ratio >= need else "MISS"
        verdicts.append(
            {
                "target": label,
                "ours": a,
                "mlserver": b,
                "ratio": ratio,
                "need": need,
                "verdict": verdict,
            }
        )
        print(
            f"{verdict} {label}: ours {a:.0f}, MLServer {b:.0f}, ratio {ratio:.2f}x (need {need}x)"
            if ratio
            else f"MISS {label}: not measured",
            flush=True,
        )
    return verdicts


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--out",
        type=Path,
        default=Path(tempfile.gettempdir()) / "edge-bench" / time.strftime("v2-%Y%m%d-%H%M%S.json"),
    )
    ap.add_argument("--duration", type=int, default=10, help="seconds per wrk / h2load run")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--big-requests", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=2, help="phases repeated, order alternating")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args(argv)
    for tool, package in (("wrk", "wrk"), ("h2load", "nghttp2-client")):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} missing: apt-get install {package}")
    if not serve.mlserver_ready(None):
        raise SystemExit("the MLServer peer is needed: bash ../shared/peers/mlserver/setup.sh")
    serve.note(f"v2 run started {time.strftime('%Y-%m-%d %H:%M:%S')}")
    work = Path(tempfile.mkdtemp(prefix="edge-bench-v2-"))
    servers: list[Any] = []
    snap, t0 = serve.cpu_snapshot(), time.perf_counter()
    try:
        model = serve.build_model(work)
        from sklearn.datasets import load_breast_cancer

        x64 = np.resize(load_breast_cancer(return_X_y=True)[0], (serve.N_BIG, 30))
        x32 = np.load(model["rows_npy"])
        data = bodies(work, x64, x32)
        raw = serve.bench_raw(model, work, 1)
        expect = {**raw["expect"], "x32": x32}
        edge, peer = Edge(model["url"], work), MLServer(work, model["onnx"])
        servers = [edge, peer, Ceiling(work)]
        for srv in servers:
            serve.out(f"{srv.name}_startup_to_ready", srv.start(60), "s")
        results = measure(servers, data, expect, args)
        results["edge"]["log"] = logged_check(edge)
        serve.out(
            "host_other_cpu",
            serve.other_cpu_pct(snap, serve.cpu_snapshot(), time.perf_counter() - t0),
            "%",
        )
    finally:
        for srv in servers:
            srv.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    for name, res in results.items():
        for check, ok in res["checks"].items():
            serve.out(f"{name}_check_{check}", "ok" if ok else "MISMATCH", "-")
    verdicts = summary(results)
    ceiling = results.get(Ceiling.name, {}).get("grpc_c8_req_per_s")
    mls = results.get("mlserver", {}).get("grpc_c8_req_per_s")
    if ceiling and mls:
        print(
            f"# gRPC ceiling (grpc.aio, canned answer): {ceiling:.0f} req/s at c=8, "
            f"{ceiling / mls:.2f}x MLServer's",
            flush=True,
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {"results": results, "targets": verdicts, "lines": serve.LINES}, indent=1, default=str
        )
    )
    serve.note(f"summary: {args.out}")
    failed = any(not ok for res in results.values() for ok in res["checks"].values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
