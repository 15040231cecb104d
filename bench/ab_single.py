#!/usr/bin/env python3
"""Single-row pandas-records requests, A/B in many short rounds: `edge serve` of two (or
more) source trees, logging on, CONFIG_CPUS=1, wrk `-t1` at one concurrency, the order
alternating each round. For changes smaller than bench/serve.py's two rounds can tell apart
on a noisy machine: it reports each tree's median over the rounds and, for two trees, the
median of the paired per-round ratios (with every round's).

    python bench/ab_single.py before=/path/to/worktree now=. --conns 8 --rounds 10
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench import serve  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("trees", nargs="+", help="name=path")
    ap.add_argument("--conns", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--duration", type=int, default=4, help="seconds per wrk run")
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="edge-bench-ab-"))
    model = serve.build_model(work)
    body = serve.make_bodies(model, work)["one_file"]
    servers: dict[str, serve.Server] = {}
    try:
        for spec in args.trees:
            name, _, path = spec.partition("=")
            srv = serve.Server(
                model["url"], 1, True, work, tree=Path(path).resolve(), prefix=f"{name}_"
            )
            srv.start(60)
            servers[name] = srv
        for srv in servers.values():
            serve.run_wrk(srv.port, args.conns, 3, body, srv.pid)  # warm-up
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in servers}
        for rnd in range(args.rounds):
            order = list(servers.items())
            for name, srv in order if rnd % 2 == 0 else order[::-1]:
                runs[name].append(serve.run_wrk(srv.port, args.conns, args.duration, body, srv.pid))
        for name, got in runs.items():
            rate = statistics.median(r["req_per_s"] for r in got)
            cpu = statistics.median(r["server_cpu_us_per_req"] for r in got)
            p50 = statistics.median(r["p50_us"] for r in got)
            print(
                f"{name}: c={args.conns} median {rate:.0f} req/s, {cpu:.0f} µs CPU per request, "
                f"p50 {p50:.0f} µs; rounds: " + " ".join(f"{r['req_per_s']:.0f}" for r in got)
            )
        if len(runs) == 2:
            (first, a), (second, b) = runs.items()
            ratios = [y["req_per_s"] / x["req_per_s"] for x, y in zip(a, b, strict=True)]
            print(
                f"{second} ÷ {first}, paired per round: median {statistics.median(ratios):.3f}x "
                f"(" + " ".join(f"{r:.2f}" for r in ratios) + ")"
            )
    finally:
        for srv in servers.values():
            srv.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
