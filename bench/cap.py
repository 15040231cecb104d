#!/usr/bin/env python3
"""Past the log buffer's cap: 10,000-row Arrow requests, back to back, into a small buffer.

A device that cannot sync fills its buffer; from then on every logged table makes the writer
trim older ones (`edge.logbuffer.retention`: inputs first, then outputs, then whole rows).
If the writer falls behind, its queue fills and requests get 503s. This starts `edge serve`
(the example pipeline, CONFIG_CPUS=1, logging on, `LOG_BUFFER_BYTES=--cap`) and sends
`--batches` batches of `--batch` requests on one connection. Per batch it prints the median
latency and the server's CPU per request; at the end the buffer's drop counters and how many
requests were refused. With `--baseline TREE` the same runs on another source tree (e.g. a
git worktree of an older commit), alternating, so both see the same machine.
Only 127.0.0.1 is contacted.
Run: python bench/cap.py [--cap 67108864] [--batches 10] [--batch 20] [--baseline TREE]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import serve as bench  # noqa: E402  (bench/serve.py: processes, model, request bodies)


def run(tree: Path, label: str, args: argparse.Namespace, work: Path, model: dict) -> None:
    bodies = bench.make_bodies(model, work)
    env = {"LOG_BUFFER_BYTES": str(args.cap)}
    server = bench.Server(model["url"], 1, True, work, env, tree=tree, prefix=f"{label}_")
    server.start(60.0)
    refused = 0
    try:
        _, headers = bench.BIG_KINDS[0]
        for batch in range(args.batches):
            cpu0, t0 = bench.tree_cpu_s(server.pid), time.perf_counter()
            try:
                times, _ = bench.big_requests(
                    server.port, bodies["big_arrow"], headers, args.batch, 0, 120.0
                )
            except RuntimeError as exc:  # a non-200 answer ends the run
                refused += 1
                bench.out(f"{label}_refused_in_batch_{batch}", str(exc)[:160], "-")
                break
            cpu = (bench.tree_cpu_s(server.pid) - cpu0) / len(times) * 1e3
            wall = (time.perf_counter() - t0) / len(times) * 1e3
            bench.out(f"{label}_batch_{batch}_p50", f"{np.median(times):.2f}", "ms")
            bench.out(f"{label}_batch_{batch}_cpu_per_request", f"{cpu:.2f}", "ms")
            bench.out(f"{label}_batch_{batch}_wall_per_request", f"{wall:.2f}", "ms")
        status, body = bench.http_req(server.port, "GET", "/metrics")
        for line in body.decode().splitlines():
            if line.startswith(("edge_log_buffer_dropped{", "edge_log_buffer_bytes ")):
                bench.out(f"{label}_{line.split(' ')[0]}", line.split(" ")[-1], "-")
        bench.out(f"{label}_refused", refused, "req")
    finally:
        server.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cap", type=int, default=64 << 20, help="LOG_BUFFER_BYTES (bytes)")
    ap.add_argument("--batches", type=int, default=10)
    ap.add_argument("--batch", type=int, default=20, help="requests per batch")
    ap.add_argument("--baseline", type=Path, help="another source tree, run alternately")
    ap.add_argument("--rounds", type=int, default=1)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="edge-cap-") as folder:
        work = Path(folder)
        model = bench.build_model(work)
        trees = [(bench.REPO, "edge")]
        if args.baseline is not None:
            trees.append((args.baseline.resolve(), "base"))
        for round_ in range(args.rounds):
            for tree, label in trees if round_ % 2 == 0 else trees[::-1]:
                run(tree, f"{label}_r{round_}", args, work, model)
    print(json.dumps({"cap": args.cap, "batches": args.batches, "batch": args.batch}))


if __name__ == "__main__":
    main()
