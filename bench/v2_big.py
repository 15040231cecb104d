#!/usr/bin/env python3
"""10,000-row Open Inference Protocol requests in binary (issue 15's large target), A/B:
`edge serve` of one or more source trees, interleaved round by round, beside a bare uvicorn
handler that reads the same body, runs onnxruntime and answers in binary (no logging, no
checks: what this machine can do with nothing of ours in the way).

    python bench/v2_big.py now=. before=/path/to/other/worktree before_off=/path:off

Each `name=tree` serves that tree's `edge/` (":off" after the path: `--no-logging`), with
CONFIG_CPUS=1 and a log buffer cap large enough that no trim runs. Per round and server:
the median of `--requests` back-to-back requests on one connection (as bench/v2.py's 10k
phase sends them), and the server's CPU per request. Every answer is checked against raw
onnxruntime once per server. Run it under `flock /tmp/bench.lock`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench import serve, v2  # noqa: E402


def bare_app(model: str) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    feed = session.get_inputs()[0].name

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        length = int(dict(scope["headers"])[b"inference-header-content-length"])
        chunks, more = [], True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        shape = json.loads(body[:length])["inputs"][0]["shape"]
        rows = np.frombuffer(body, np.float32, offset=length).reshape(shape)
        label, proba = (np.asarray(a) for a in session.run(names, {feed: rows}))
        proba = proba.astype(np.float32)
        raws = [label.tobytes(), proba.tobytes()]
        outputs = [
            {
                "name": n,
                "datatype": d,
                "shape": list(a.shape),
                "parameters": {"binary_data_size": len(r)},
            }
            for n, d, a, r in (
                ("label", "INT64", label, raws[0]),
                ("probabilities", "FP32", proba, raws[1]),
            )
        ]
        head = json.dumps({"model_name": "bare", "outputs": outputs}).encode()
        payload = head + b"".join(raws)
        headers = [
            (b"content-type", b"application/octet-stream"),
            (b"inference-header-content-length", str(len(head)).encode()),
            (b"content-length", str(len(payload)).encode()),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": payload})

    return app


def serve_bare(model: str, port: int) -> None:
    import uvicorn

    config = uvicorn.Config(
        bare_app(model), host="127.0.0.1", port=port, loop="uvloop", http="httptools",
        log_level="warning", access_log=False,
    )  # fmt: skip
    asyncio.run(uvicorn.Server(config).serve())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("trees", nargs="+", help="name=path (':off' after the path: no logging)")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--requests", type=int, default=30, help="per round and server")
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="edge-bench-v2big-"))
    model = serve.build_model(work)
    from sklearn.datasets import load_breast_cancer

    x64 = np.resize(load_breast_cancer(return_X_y=True)[0], (serve.N_BIG, 30))
    x32 = np.load(model["rows_npy"])
    data = v2.bodies(work, x64, x32)
    expect = serve.bench_raw(model, work, 1)["expect"]
    headers = {"Inference-Header-Content-Length": str(data["big_binary_header"])}
    port = serve.free_port()
    bare = subprocess.Popen(
        [sys.executable, __file__, "--bare", str(model["onnx"]), str(port)],
        start_new_session=True,
    )
    servers: dict[str, tuple[int, int]] = {"bare": (port, bare.pid)}
    edges: list[serve.Server] = []
    try:
        for spec in args.trees:
            name, _, path = spec.partition("=")
            off = path.endswith(":off")
            tree = Path(path.removesuffix(":off")).resolve()
            extra = {"GRPC_PORT": "0", "LOG_BUFFER_BYTES": str(8 << 30)}
            srv = serve.Server(model["url"], 1, not off, work, extra, tree=tree, prefix=f"{name}_")
            srv.start(60)
            edges.append(srv)
            servers[name] = (srv.port, srv.pid)
        deadline = time.monotonic() + 30
        while True:
            try:
                v2.big(port, data["big_binary"], headers, 1)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        medians: dict[str, list[float]] = {k: [] for k in servers}
        cpu: dict[str, list[float]] = {k: [] for k in servers}
        mismatched = []
        for name, (p, _) in servers.items():
            _, first, reply = v2.big(p, data["big_binary"], headers, 3)
            length = reply.get("inference-header-content-length")
            got = v2.v2_answer(first, int(length) if length else None)
            ok = serve.same_answers(got, expect["label10k"], expect["proba10k"])
            serve.out(f"{name}_answers_match_raw_ort", "ok" if ok else "MISMATCH")
            if not ok:
                mismatched.append(name)
        if mismatched:
            raise SystemExit(f"answers differ from raw onnxruntime: {mismatched}; not timed")
        for rnd in range(args.rounds):
            order = list(servers.items())
            for name, (p, pid) in order if rnd % 2 == 0 else order[::-1]:
                cpu0 = serve.tree_cpu_s(pid)
                times, _, _ = v2.big(p, data["big_binary"], headers, args.requests)
                cpu[name].append((serve.tree_cpu_s(pid) - cpu0) * 1e3 / (args.requests + 2))
                medians[name].append(float(np.median(times)))
        for name in servers:
            rounds = " ".join(f"{m:.2f}" for m in medians[name])
            cpus = " ".join(f"{c:.2f}" for c in cpu[name])
            print(f"{name:12s} median ms per round: {rounds}   server CPU ms/request: {cpus}")
    finally:
        bare.terminate()
        for srv in edges:
            srv.stop()
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--bare":
        serve_bare(sys.argv[2], int(sys.argv[3]))
        sys.exit(0)
    sys.exit(main())
