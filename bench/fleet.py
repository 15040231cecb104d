#!/usr/bin/env python3
"""Fleet benchmark (issue 20): N edges shipping logs to the ops center at once, for a minute.

What is real:
  - the servers: `python -m ops_sync serve` processes with TLS on free 127.0.0.1 ports.
    `--setup replicas`: `--replicas` (3) of them on one PostgreSQL metadata database (Debian's
    PostgreSQL 15, initdb into a temp dir, fsync off: `tests.fleet_support.PostgresServer`)
    and one Delta table in moto's S3 server (`MotoServer`, a separate process). Edges are
    spread over the replicas on the client side: edge i's bundle names replica i mod N as its
    OPSCENTER_HOST (`--spread balancer` puts the test suite's round-robin TCP balancer, run in
    its own process, in front instead). `--setup embedded`: one process, the defaults (SQLite
    in --data, a local table directory).
  - enrolment: a publish registered through the admin API (`POST /v1/publishes`), one
    `POST /v1/edges` per edge (add-edge: its EDGE_BUNDLE), and each edge's join done by the
    agent itself (device key made on the "device", CSR, token redeemed, certificate kept in its
    own persist dir).
  - the edge side: one unmodified `ops_sync.agent.SyncAgent` per edge, with its defaults
    (ship every 1 s, batches of up to 10,000 rows, heartbeat every 30 s, backoff): its
    httpx client and mutual TLS with its own certificate (one connection per edge), the
    headers and zstd Arrow IPC encoding of `ops_sync.protocol`, ack after the reply.
    The agents run in `--clients` worker processes (2), each one uvloop event loop (as in
    `edge serve`), so the client side shares the 2 cores with the servers: its CPU is
    measured and reported.
What is simulated:
  - the edge's log buffer. Each agent gets an in-memory `SimBuffer` in place of
    `edge.logbuffer.LogBuffer` (no SQLite on the client): it offers rows at the edge's rate
    (uniform `--rows-min`..`--rows-max` rows/s per edge, seeded), row i of the edge appearing at
    t0 + i / rate, and hands out `Batch`es of everything unacked, as `pending()` does; `ack()`
    moves its high-water mark. Rows are breast-cancer result-table rows (30 float inputs, one
    output, anomaly and metadata columns; `bench/sync.py`'s `rows_table`), sliced from one
    template table per worker with their own `time` values.
Measured (window = the `--duration` seconds after all edges joined; the drain after it is
reported apart): rows/s offered vs acknowledged, uploads/s, upload latency p50/p99 (the
agent's HTTP POST of a batch; and its `_send`, encode + POST), the backlog (offered rows not
yet acknowledged) every 5 s, CPU of every process group from /proc (servers, PostgreSQL,
moto, balancer, clients, and the rest of the machine), server CPU per upload, server RSS,
commit latency and uploads per commit from each replica's /metrics. After the drain: every
acknowledged row is in the table exactly once (DuckDB over deltalake's dataset: rows per
(partition, _epoch, _seq) against each edge's acknowledged high-water mark).
`--ramp`: instead of one steady run, steps of `--step` seconds raise the offered load (active
edges 1/8, 1/4, 1/2, all; then all at 2x and 4x rows) and each step says whether it kept up
and which resource was busiest.
Prints `name value unit` lines and a summary; `--out FILE` writes them as JSON.
Only 127.0.0.1 is contacted; every process started here is stopped by its PID.
Run (take the shared lock for runs over 30 s):
  flock /tmp/bench.lock /work/main/.venv/bin/python bench/fleet.py --setup both --out f.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ops_sync import protocol  # noqa: E402
from tests.test_ops_support import ADMIN, PIPELINE_URL, OpsServer  # noqa: E402

TICK = 5.0
TEMPLATE_ROWS = 10_000  # the agent's batch_rows: no batch is larger
TARGETS = {"rows_s": 50_000, "p99_s": 1.0}
RAMP = [(0.125, 1), (0.25, 1), (0.5, 1), (1.0, 1), (1.0, 2), (1.0, 4)]  # (edges, rows x)
LINES: list[dict[str, Any]] = []


def out(name: str, value: Any, unit: str = "-") -> None:
    LINES.append({"name": name, "value": value, "unit": unit})
    shown = f"{value:,.4g}" if isinstance(value, float) else value
    print(f"{name} {shown} {unit}", flush=True)


# ------------------------------------------------------------------ the simulated edges
class Schedule:
    """Steps of (seconds, share of edges active, rows multiplier) from t0."""

    def __init__(self, steps: list[list[float]]) -> None:
        self.steps = steps
        self.length = sum(s[0] for s in steps)

    def offered(self, index: int, edges: int, rate: float, elapsed: float) -> int:
        total, start = 0.0, 0.0
        for seconds, share, mult in self.steps:
            if elapsed <= start:
                break
            if index < share * edges:
                total += rate * mult * (min(elapsed, start + seconds) - start)
            start += seconds
        return int(total)


class SimBuffer:
    """In place of `edge.logbuffer.LogBuffer` for the agent: `pending`, `ack`, `stats`."""

    def __init__(self, worker: Worker, index: int, rate: float, epoch: str) -> None:
        self.worker, self.index, self.rate, self.epoch = worker, index, rate, epoch
        self.acked = 0

    def offered(self, now: float | None = None) -> int:
        w = self.worker
        if w.t0 is None:
            return 0
        elapsed = (now or time.time()) - w.t0
        return w.schedule.offered(self.index, w.edges_total, self.rate, elapsed)

    def pending(self, max_rows: int) -> list[Any]:
        from edge.logbuffer import Batch

        first = self.acked + 1
        last = min(self.offered(), self.acked + max_rows)
        if last < first:
            return []
        return [Batch(self.epoch, first, last, self.worker.rows(self, first, last))]

    def ack(self, epoch: str, last_seq: int) -> None:
        assert epoch == self.epoch
        self.acked = max(self.acked, last_seq)

    def stats(self) -> dict[str, Any]:
        offered = self.offered()
        return {
            "epoch": self.epoch,
            "rows": offered,
            "bytes": 0,
            "unsynced_rows": offered - self.acked,
            "oldest_unsynced": None,
            "dropped": {},
        }


class Worker:
    """One client process: its share of the edges, one event loop."""

    def __init__(self, config: dict[str, Any]) -> None:
        import pyarrow as pa

        from bench.sync import rows_table

        self.config = config
        self.schedule = Schedule(config["schedule"])
        self.edges_total = config["edges_total"]
        self.t0: float | None = None
        self.template = rows_table(TEMPLATE_ROWS, 0, "fleet")
        self.pa = pa
        self.latency: list[float] = []  # HTTP POST of a batch
        self.send_latency: list[float] = []  # encode + POST
        self.uploads = 0
        self.errors: dict[str, int] = {}
        self.examples: dict[str, str] = {}  # the first message of each error type
        self.buffers: list[SimBuffer] = []

    def rows(self, buffer: SimBuffer, first: int, last: int) -> Any:
        pa = self.pa
        assert self.t0 is not None
        seqs = np.arange(first, last + 1, dtype=np.float64)
        millis = (self.t0 * 1000 + seqs * 1000 / buffer.rate).astype(np.int64)
        times = pa.array(millis, pa.int64()).cast(pa.timestamp("ms", tz="UTC"))
        table = self.template.slice(0, last - first + 1)
        return table.set_column(0, "time", times)

    def agent_class(self) -> type:
        from ops_sync.agent import SyncAgent

        worker = self

        class TimedAgent(SyncAgent):  # the real agent; only timed and counted
            async def _post(self, path: str, **kwargs: Any) -> dict[str, Any]:
                started = time.perf_counter()
                reply = await super()._post(path, **kwargs)
                if path == protocol.LOGS_PATH:
                    worker.latency.append(time.perf_counter() - started)
                return reply

            async def _send(self, batch: Any) -> None:
                started = time.perf_counter()
                await super()._send(batch)
                worker.send_latency.append(time.perf_counter() - started)
                worker.uploads += 1

            def _note_error(self, exc: BaseException) -> None:
                super()._note_error(exc)
                name = type(exc).__name__
                if exc.__cause__ is not None:  # Unreachable: which transport error
                    name += f"/{type(exc.__cause__).__name__}"
                worker.errors[name] = worker.errors.get(name, 0) + 1
                worker.examples.setdefault(name, str(exc)[:300])

        return TimedAgent

    async def run(self) -> dict[str, Any]:
        cls = self.agent_class()
        root = Path(self.config["persist"])
        agents: list[Any] = []
        gate = asyncio.Semaphore(20)

        async def start(edge: dict[str, Any]) -> None:
            buffer = SimBuffer(self, edge["index"], edge["rate"], edge["epoch"])
            agent = cls(edge["bundle"], root / edge["name"], buffer, dict)
            async with gate:
                await agent.start()
            self.buffers.append(buffer)
            agents.append(agent)

        started = time.perf_counter()
        await asyncio.gather(*(start(e) for e in self.config["edges"]))
        joined = sum(1 for a in agents if a.status()["joined"])
        print(json.dumps({"joined": joined, "seconds": time.perf_counter() - started}), flush=True)
        line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        self.t0 = float(line)
        ticks = []
        end = self.t0 + self.schedule.length
        deadline = end + self.config["drain"]
        tick = 0
        while True:
            tick += 1
            await asyncio.sleep(max(0.0, self.t0 + tick * TICK - time.time()))
            now = time.time()
            offered = sum(b.offered(now) for b in self.buffers)
            acked = sum(b.acked for b in self.buffers)
            ticks.append(
                {
                    "t": now - self.t0,
                    "offered": offered,
                    "acked": acked,
                    "uploads": self.uploads,
                    "latency": self.latency,
                    "send_latency": self.send_latency,
                    "errors": dict(self.errors),
                }
            )
            self.latency, self.send_latency = [], []
            if now >= end and (acked >= offered or now >= deadline):
                break
        await asyncio.gather(*(a.stop() for a in agents))
        return {
            "ticks": ticks,
            "acked": {b.epoch: b.acked for b in self.buffers},
            "examples": self.examples,
            "joined": joined,
        }


def worker_main(config_path: str) -> int:
    logging.basicConfig(level=logging.ERROR)
    config = json.loads(Path(config_path).read_text())
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    result = asyncio.run(Worker(config).run())
    Path(config["result"]).write_text(json.dumps(result))
    print("done", flush=True)
    return 0


# ------------------------------------------------------------------ /proc
def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(d))
    return kids


def tree(pid: int, kids: dict[int, list[int]]) -> list[int]:
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo.extend(kids.get(p, []))
    return found


def cpu_rss(pids: list[int]) -> tuple[float, float]:
    """(CPU seconds, RSS MiB) summed over `pids`."""
    tick = os.sysconf("SC_CLK_TCK")
    cpu = rss = 0.0
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            cpu += (int(fields[11]) + int(fields[12])) / tick
            rss += int(fields[21]) * os.sysconf("SC_PAGE_SIZE") / 2**20
        except (OSError, IndexError, ValueError):
            continue
    return cpu, rss


def host_busy() -> float:
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + v[4]
    return (sum(v[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def sample(groups: dict[str, list[int]]) -> dict[str, Any]:
    kids = _children()
    snap: dict[str, Any] = {"wall": time.time(), "host": host_busy()}
    for name, roots in groups.items():
        pids = [p for r in roots for p in tree(r, kids)]
        snap[name] = cpu_rss(pids)
        if name == "servers":
            snap["server_rss_each"] = [cpu_rss(tree(r, kids))[1] for r in roots]
    return snap


def scrape(urls: list[str], ca: Path) -> dict[str, float] | None:
    """Sums over replicas of the commit histograms and ingest counters; None if a replica
    did not answer /metrics within 10 s (an overloaded server's thread pool is full)."""
    from ops_sync.identity import build_ssl_context

    keys = (
        "ops_commit_seconds_sum",
        "ops_commit_seconds_count",
        "ops_commit_batches_sum",
        "ops_rows_ingested_total",
        "ops_batches_ingested_total",
        "ops_duplicate_rows_total",
    )
    sums = dict.fromkeys(keys, 0.0)
    verify = build_ssl_context("client", ca_pem=ca.read_bytes())
    for url in urls:
        try:
            text = httpx.get(
                f"{url}/metrics",
                headers={"authorization": f"Bearer {ADMIN}"},
                verify=verify,
                timeout=10,
            ).text
        except httpx.HTTPError:
            return None
        for line in text.splitlines():
            name, _, value = line.partition(" ")
            if name in sums:
                sums[name] += float(value)
    return sums


# ------------------------------------------------------------------ one setup
class Setup:
    def __init__(self, kind: str, args: argparse.Namespace, work: Path) -> None:
        self.kind, self.args, self.work = kind, args, work
        self.servers: list[OpsServer] = []
        self.pg: Any = None
        self.moto: Any = None
        self.balancer: subprocess.Popen[bytes] | None = None
        self.balancer_port = 0

    def start(self) -> None:
        from ops_sync.identity import CertificateAuthority

        if self.kind == "embedded":
            server = OpsServer(self.work / "ops")
            server.data.mkdir(parents=True)
            server.start(timeout=60)
            self.servers = [server]
            self.table = f"{server.data}/tables/ccfraud"
            self.storage: dict[str, str] | None = None
            return
        from tests.fleet_support import MotoServer, PostgresServer

        self.pg = PostgresServer().start()
        self.moto = MotoServer().start()
        CertificateAuthority.load_or_create(
            self.work / "ca.crt", self.work / "ca.key", "ops-sync.local", time.time()
        )
        logs = f"s3://{self.moto.bucket}/fleet"
        flags = [
            "--metadata",
            self.pg.url,
            "--logs",
            logs,
            "--ca-cert",
            str(self.work / "ca.crt"),
            "--ca-key",
            str(self.work / "ca.key"),
        ]
        for i in range(self.args.replicas):
            server = OpsServer(self.work / f"replica-{i}", extra=flags, env=self.moto.env())
            server.data.mkdir(parents=True)
            server.start(timeout=60)
            self.servers.append(server)
        self.table, self.storage = f"{logs}/ccfraud", self.moto.env()
        if self.args.spread == "balancer":
            from tests.test_ops_support import free_port

            self.balancer_port = free_port()
            self.balancer = self._balancer([s.port for s in self.servers])

    def _balancer(self, ports: list[int]) -> subprocess.Popen[bytes]:
        """The test suite's `Balancer` in a process of its own (so its CPU is its own)."""
        code = (
            "import sys, threading; sys.path.insert(0, sys.argv[1]);"
            "import tests.fleet_support as fs;"
            "fs.free_port = lambda: int(sys.argv[3]);"
            "b = fs.Balancer(eval(sys.argv[2])); threading.Event().wait()"
        )
        proc = subprocess.Popen(
            [sys.executable, "-c", code, str(REPO), repr(ports), str(self.balancer_port)]
        )
        time.sleep(1.5)
        return proc

    def host_for(self, i: int) -> str:
        if self.balancer is not None:
            return f"127.0.0.1:{self.balancer_port}"
        return f"127.0.0.1:{self.servers[i % len(self.servers)].port}"

    def groups(self) -> dict[str, list[int]]:
        g: dict[str, list[int]] = {"servers": [s.process.pid for s in self.servers if s.process]}
        if self.pg is not None:
            g["postgres"] = [self.pg.process.pid]
            g["moto"] = [self.moto.process.pid]
        if self.balancer is not None:
            g["balancer"] = [self.balancer.pid]
        return g

    def stop(self) -> None:
        if self.balancer is not None:
            self.balancer.terminate()
            self.balancer.wait(10)
        for server in self.servers:
            server.stop()
        if self.moto is not None:
            self.moto.stop()
        if self.pg is not None:
            self.pg.stop()


def enrol(setup: Setup, n: int) -> list[dict[str, Any]]:
    """The publish, then add-edge for every edge: their bundles."""
    from ops_sync.client import AdminClient

    first = setup.servers[0]
    bundles = []
    with AdminClient(first.url, ADMIN, first.ca) as admin:
        admin.register_publish(pipeline_url=PIPELINE_URL)
        for i in range(n):
            record = admin.add_edge(f"edge-{i:04d}", PIPELINE_URL, ["fleet"])
            values = protocol.decode(record["docker_run_variables"]["EDGE_BUNDLE"])
            values["OPSCENTER_HOST"] = setup.host_for(i)
            bundles.append(values)
    return bundles


def run_setup(kind: str, args: argparse.Namespace, schedule: list[list[float]]) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix=f"fleet-{kind}-"))
    setup = Setup(kind, args, work)
    workers: list[subprocess.Popen[str]] = []
    try:
        started = time.perf_counter()
        setup.start()
        bundles = enrol(setup, args.edges)
        enrol_s = time.perf_counter() - started
        rng = np.random.default_rng(args.seed)
        rates = rng.uniform(args.rows_min, args.rows_max, args.edges)
        run_id = f"{int(time.time())}"
        edges = [
            {
                "index": i,
                "name": f"edge-{i:04d}",
                "rate": float(rates[i]),
                "epoch": f"fleet-{run_id}-{i}",
                "bundle": bundles[i],
            }
            for i in range(args.edges)
        ]
        schedule_len = sum(s[0] for s in schedule)
        results = []
        for w in range(args.clients):
            config = {
                "edges": edges[w :: args.clients],
                "edges_total": args.edges,
                "schedule": schedule,
                "drain": args.drain,
                "persist": str(work / "edges"),
                "result": str(work / f"worker-{w}.json"),
            }
            path = work / f"worker-{w}-config.json"
            path.write_text(json.dumps(config))
            results.append(Path(config["result"]))
            workers.append(
                subprocess.Popen(
                    [sys.executable, __file__, "--worker", str(path)],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                    cwd=REPO,
                )
            )
        joined, join_s = 0, 0.0
        for proc in workers:
            assert proc.stdout is not None
            reply = json.loads(proc.stdout.readline())
            joined += reply["joined"]
            join_s = max(join_s, reply["seconds"])
        groups = setup.groups()
        groups["clients"] = [p.pid for p in workers]
        urls = [s.url for s in setup.servers]
        t0 = time.time() + 1.0
        for proc in workers:
            assert proc.stdin is not None
            proc.stdin.write(f"{t0}\n")
            proc.stdin.flush()
        time.sleep(max(0.0, t0 - time.time()))
        samples = [{**sample(groups), "metrics": scrape(urls, setup.servers[0].ca)}]
        tick = 0
        while any(p.poll() is None for p in workers):
            tick += 1
            time.sleep(max(0.0, t0 + tick * TICK + 0.2 - time.time()))
            if time.time() - t0 <= schedule_len + 0.5:
                samples.append({**sample(groups), "metrics": scrape(urls, setup.servers[0].ca)})
        for proc in workers:
            proc.wait(60)
        worker_results = [json.loads(p.read_text()) for p in results]
        drained_metrics = scrape(urls, setup.servers[0].ca)
        check = verify(setup, worker_results)
        return {
            "kind": kind,
            "edges": args.edges,
            "joined": joined,
            "enrol_s": enrol_s,
            "join_s": join_s,
            "rates": rates.tolist(),
            "schedule": schedule,
            "samples": samples,
            "workers": worker_results,
            "drained_metrics": drained_metrics,
            "check": check,
        }
    finally:
        for proc in workers:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        setup.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def verify(setup: Setup, worker_results: list[dict[str, Any]]) -> dict[str, Any]:
    """Every acknowledged row in the table once: per edge epoch, against its high-water mark."""
    import duckdb
    import pyarrow as pa
    from deltalake import DeltaTable

    started = time.perf_counter()
    acked = {k: v for r in worker_results for k, v in r["acked"].items()}
    acks = pa.table({"epoch": list(acked), "acked": list(acked.values())})  # noqa: F841
    dataset = DeltaTable(setup.table, storage_options=setup.storage).to_pyarrow_dataset()  # noqa: F841
    files = len(DeltaTable(setup.table, storage_options=setup.storage).file_uris())
    sql = """
        WITH s AS (SELECT _epoch, _seq FROM dataset),
        per AS (
            SELECT a.epoch, a.acked,
                count(s._seq) FILTER (WHERE s._seq <= a.acked) AS held,
                count(DISTINCT s._seq) FILTER (WHERE s._seq <= a.acked) AS held_distinct,
                count(s._seq) AS total, count(DISTINCT s._seq) AS total_distinct
            FROM acks a LEFT JOIN s ON s._epoch = a.epoch GROUP BY 1, 2)
        SELECT sum(acked), sum(held), sum(held_distinct), sum(total), sum(total_distinct),
            sum(acked - held_distinct) FROM per
    """
    row = duckdb.sql(sql).fetchall()[0]
    acked_rows, held, held_distinct, total, total_distinct, lost = (int(x or 0) for x in row)
    return {
        "acked_rows": acked_rows,
        "stored_rows": total,
        "distinct_rows": total_distinct,
        "lost": lost,
        "duplicated": total - total_distinct,
        "stored_unacked": total_distinct - held_distinct,
        "files": files,
        "seconds": time.perf_counter() - started,
    }


# ------------------------------------------------------------------ figures
def window(samples: list[dict[str, Any]], a: int, b: int, cores: int) -> dict[str, Any]:
    """CPU shares (of one core) and commit figures between samples a and b."""
    s, e = samples[a], samples[b]
    wall = e["wall"] - s["wall"]
    shares = {}
    for name in s:
        if isinstance(s[name], tuple | list) and name != "server_rss_each":
            shares[name] = (e[name][0] - s[name][0]) / wall
    shares["host"] = (e["host"] - s["host"]) / wall
    shares["other"] = shares["host"] - sum(v for k, v in shares.items() if k != "host")
    scraped = [i for i in range(a, b + 1) if samples[i]["metrics"] is not None]
    m0 = samples[scraped[0]]["metrics"] if scraped else None
    m1 = samples[scraped[-1]]["metrics"] if scraped else None
    if m0 is None or m1 is None or scraped[0] == scraped[-1]:
        return {
            "wall": wall,
            "cpu": shares,
            "commits": None,
            "commit_s": None,
            "uploads_per_commit": None,
            "metrics_missed": b - a + 1 - len(scraped),
        }
    metrics_wall = samples[scraped[-1]]["wall"] - samples[scraped[0]]["wall"]
    commits = m1["ops_commit_seconds_count"] - m0["ops_commit_seconds_count"]
    return {
        "wall": wall,
        "cpu": shares,
        "metrics_missed": b - a + 1 - len(scraped),
        "commits": commits / metrics_wall,
        "commit_s": (m1["ops_commit_seconds_sum"] - m0["ops_commit_seconds_sum"]) / commits
        if commits
        else None,
        "uploads_per_commit": (m1["ops_commit_batches_sum"] - m0["ops_commit_batches_sum"])
        / commits
        if commits
        else None,
    }


def merge_ticks(result: dict[str, Any]) -> list[dict[str, Any]]:
    per = [w["ticks"] for w in result["workers"]]
    ticks = []
    for i in range(max(len(t) for t in per)):
        rows = [t[min(i, len(t) - 1)] for t in per]
        ticks.append(
            {
                "t": rows[0]["t"],
                "offered": sum(r["offered"] for r in rows),
                "acked": sum(r["acked"] for r in rows),
                "uploads": sum(r["uploads"] for r in rows),
                "latency": [x for t in per if i < len(t) for x in t[i]["latency"]],
                "send_latency": [x for t in per if i < len(t) for x in t[i]["send_latency"]],
                "errors": {k: v for r in rows for k, v in r["errors"].items()},
            }
        )
    return ticks


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def judge_span(ticks: list[dict[str, Any]], a: int, b: int) -> dict[str, Any]:
    """Offered vs acked between tick a (or t0 when a < 0) and tick b (inclusive)."""
    start = ticks[a] if a >= 0 else {"t": 0.0, "offered": 0, "acked": 0, "uploads": 0}
    end = ticks[b]
    seconds = end["t"] - start["t"]
    lat = [x for t in ticks[a + 1 : b + 1] for x in t["latency"]]
    send = [x for t in ticks[a + 1 : b + 1] for x in t["send_latency"]]
    offered = end["offered"] - start["offered"]
    acked = end["acked"] - start["acked"]
    backlog0 = start["offered"] - start["acked"]
    backlog1 = end["offered"] - end["acked"]
    return {
        "seconds": seconds,
        "offered_rows_s": offered / seconds,
        "ingested_rows_s": acked / seconds,
        "uploads_s": (end["uploads"] - start["uploads"]) / seconds,
        "p50_s": pct(lat, 50),
        "p99_s": pct(lat, 99),
        "send_p50_s": pct(send, 50),
        "send_p99_s": pct(send, 99),
        "backlog_start": backlog0,
        "backlog_end": backlog1,
        # the agent ships once a second: keeping up leaves ~1-2 s of rows unacked, so the
        # backlog may grow by up to 2.5 s of the offered rate (from 0 in a first step)
        "kept_up": backlog1 - backlog0 <= 2.5 * offered / max(seconds, 1e-9),
    }


def busiest(cpu: dict[str, float], cores: int, p99: float, commit_s: float | None) -> str:
    parts = sorted(((v, k) for k, v in cpu.items() if k != "host"), reverse=True)
    share = ", ".join(f"{k} {v:.0%}" for v, k in parts)
    if cpu["host"] >= 0.9 * cores:
        what = f"machine CPU ({cpu['host']:.0%} of {cores} cores busy: {share})"
    else:
        what = f"not CPU-bound ({cpu['host']:.0%} of {cores} cores: {share})"
    if commit_s is not None and commit_s > 0.5:
        what += f"; commit latency {commit_s:.2f} s"
    if p99 > TARGETS["p99_s"]:
        what += f"; upload p99 {p99:.2f} s"
    return what


def report(result: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    kind, cores = result["kind"], os.cpu_count() or 1
    pre = f"{kind}_"
    ticks = merge_ticks(result)
    samples = result["samples"]
    length = sum(s[0] for s in result["schedule"])
    n_window = int(round(length / TICK))
    n_window = min(n_window, len(ticks), len(samples) - 1)
    out(pre + "edges", result["edges"], "edges")
    out(pre + "edges_joined", result["joined"], "edges")
    out(pre + "enrol_s", result["enrol_s"], "s (servers up + add-edge for every edge)")
    out(pre + "join_s", result["join_s"], "s (every agent's join, 20 at a time per client)")
    summary: dict[str, Any] = {"kind": kind}
    if not args.ramp:
        whole = judge_span(ticks, -1, n_window - 1)
        span = judge_span(ticks, 0, n_window - 1)  # steady state: from the first tick on
        w = window(samples, 1, n_window, cores)
        out(pre + "offered", span["offered_rows_s"], "rows/s (steady: 5 s to the end)")
        out(pre + "ingested", span["ingested_rows_s"], "rows/s (acknowledged, same span)")
        out(pre + "ingested_whole_window", whole["ingested_rows_s"], "rows/s (from t0)")
        out(pre + "uploads", span["uploads_s"], "uploads/s")
        out(pre + "upload_p50", span["p50_s"] * 1000, "ms (agent's POST of a batch)")
        out(pre + "upload_p99", span["p99_s"] * 1000, "ms")
        out(pre + "send_p50", span["send_p50_s"] * 1000, "ms (encode + POST)")
        out(pre + "send_p99", span["send_p99_s"] * 1000, "ms")
        backlog = [t["offered"] - t["acked"] for t in ticks[:n_window]]
        out(pre + "backlog_every_5s", " ".join(str(b) for b in backlog), "rows")
        # the agent ships once a second: a fleet that keeps up holds ~1-2 s of rows unacked
        rate = span["offered_rows_s"]
        grow = backlog[-1] - backlog[0]
        flat = grow <= rate or backlog[-1] <= 2.5 * rate
        seconds_behind = backlog[-1] / max(rate, 1)
        out(pre + "backlog_trend", "flat" if flat else "growing", f"({grow:+d} rows over the run)")
        out(pre + "backlog_end_seconds", seconds_behind, "s of offered rows")
        for name, share in w["cpu"].items():
            out(pre + f"cpu_{name}", share * 100, "% of one core")
        uploads = span["uploads_s"] * span["seconds"]
        per = w["cpu"]["servers"] * w["wall"] / max(uploads, 1)
        out(pre + "server_cpu_per_upload", per * 1000, "ms (ops-sync serve processes)")
        if "postgres" in w["cpu"]:
            extra = (w["cpu"]["postgres"] + w["cpu"]["moto"]) * w["wall"] / max(uploads, 1)
            out(pre + "pg_s3_cpu_per_upload", extra * 1000, "ms (PostgreSQL + moto)")
        rss = [s["server_rss_each"] for s in samples]
        out(pre + "server_rss_max", max(max(r) for r in rss), "MiB (largest replica, any tick)")
        out(pre + "server_rss_end", sum(rss[n_window]), "MiB (all server processes)")
        if "moto" in samples[n_window]:
            out(pre + "moto_rss_end", samples[n_window]["moto"][1], "MiB")
        out(pre + "metrics_scrapes_missed", w["metrics_missed"], "of the 5-s /metrics scrapes")
        if w["commits"] is not None:
            out(pre + "commits", w["commits"], "commits/s (all replicas)")
            out(pre + "commit_mean", (w["commit_s"] or 0) * 1000, "ms (write + commit)")
            out(pre + "uploads_per_commit", w["uploads_per_commit"] or 0, "uploads")
        summary.update(span, cpu=w["cpu"], flat=flat, commit_s=w["commit_s"])
        summary["saturated"] = busiest(w["cpu"], cores, span["p99_s"], w["commit_s"])
    else:
        steps = []
        b = -1
        for i, (seconds, share, mult) in enumerate(result["schedule"]):
            a, b = b, min(b + int(round(seconds / TICK)), n_window - 1)
            if b <= a:
                break
            span = judge_span(ticks, a, b)
            w = window(samples, a + 1, b + 1, cores)
            verdict = "kept up" if span["kept_up"] else "SATURATED"
            what = busiest(w["cpu"], cores, span["p99_s"], w["commit_s"])
            steps.append({"step": i, "edges": share, "mult": mult, **span, **w, "what": what})
            out(
                pre + f"ramp_step{i}",
                f"edges={int(share * result['edges'])} rows_x={mult} "
                f"offered={span['offered_rows_s']:.0f} ingested={span['ingested_rows_s']:.0f} "
                f"uploads/s={span['uploads_s']:.0f} p99={span['p99_s'] * 1000:.0f}ms "
                f"backlog={span['backlog_start']}->{span['backlog_end']} "
                f"commit={(w['commit_s'] or 0) * 1000:.0f}ms {verdict}: {what}",
            )
        first = next((s for s in steps if not s["kept_up"]), None)
        summary["steps"] = steps
        summary["saturated_at"] = first["step"] if first else None
        summary["saturated"] = first["what"] if first else "nothing saturated"
        best = max((s["ingested_rows_s"] for s in steps), default=0)
        out(pre + "ramp_best_ingested", best, "rows/s")
        out(pre + "ramp_saturated", summary["saturated"], "")
    errors: dict[str, int] = {}
    for t in ticks:
        errors.update(t["errors"])
    out(pre + "agent_errors", json.dumps(errors), "(per type, last count)")
    examples = {k: v for w in result["workers"] for k, v in w.get("examples", {}).items()}
    for name, text in sorted(examples.items()):
        out(pre + "agent_error_example", f"{name}: {text}", "")
    drain = [t for t in ticks if t["t"] > length + 0.5]
    last = ticks[-1]
    out(pre + "drain_s", (last["t"] - length) if drain else 0.0, "s after the window")
    out(pre + "unacked_at_end", last["offered"] - last["acked"], "rows")
    c = result["check"]
    for key in ("acked_rows", "stored_rows", "distinct_rows", "lost", "duplicated"):
        out(pre + key, c[key], "rows")
    out(pre + "stored_unacked", c["stored_unacked"], "rows (stored, ack not seen: resent later)")
    out(pre + "table_files", c["files"], "files")
    out(pre + "check_s", c["seconds"], "s (DuckDB count over the table)")
    summary["check"] = c
    summary["errors"] = errors
    return summary


def verdicts(summary: dict[str, Any], args: argparse.Namespace) -> list[str]:
    k = summary["kind"]
    c = summary["check"]
    lines = [f"{'PASS' if c['lost'] == 0 == c['duplicated'] else 'MISS'} {k}: 0 lost, 0 dup"]
    if args.ramp:
        return lines + [f"INFO {k} ramp: saturated at step {summary['saturated_at']}"]
    all_in = summary["ingested_rows_s"] >= 0.99 * summary["offered_rows_s"] and summary["flat"]
    lines += [
        f"{'PASS' if all_in else 'MISS'} {k}: all offered ingested "
        f"({summary['ingested_rows_s']:,.0f} of {summary['offered_rows_s']:,.0f} rows/s)",
        f"{'PASS' if summary['ingested_rows_s'] >= TARGETS['rows_s'] else 'MISS'} {k}: "
        f">= {TARGETS['rows_s']:,} rows/s",
        f"{'PASS' if summary['p99_s'] <= TARGETS['p99_s'] else 'MISS'} {k}: upload p99 "
        f"{summary['p99_s']:.3f} s <= {TARGETS['p99_s']} s",
        f"{'PASS' if summary['flat'] else 'MISS'} {k}: flat backlog",
        f"INFO {k}: busiest: {summary['saturated']}",
    ]
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--edges", type=int, default=1000)
    parser.add_argument("--rows-min", type=float, default=10.0)
    parser.add_argument("--rows-max", type=float, default=100.0)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--setup", choices=["replicas", "embedded", "both"], default="both")
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--spread", choices=["client", "balancer"], default="client")
    parser.add_argument("--clients", type=int, default=2, help="client worker processes")
    parser.add_argument("--ramp", action="store_true", help="raise the load step by step")
    parser.add_argument("--step", type=float, default=20.0, help="seconds per ramp step")
    parser.add_argument("--drain", type=float, default=60.0, help="max seconds to drain")
    parser.add_argument("--seed", type=int, default=20)
    parser.add_argument("--keep", action="store_true", help="keep the temp dirs")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.worker:
        return worker_main(args.worker)
    if args.ramp:
        schedule = [[args.step, share, mult] for share, mult in RAMP]
    else:
        schedule = [[args.duration, 1.0, 1.0]]
    kinds = ["replicas", "embedded"] if args.setup == "both" else [args.setup]
    commit = subprocess.run(
        ["git", "describe", "--always", "--dirty"], capture_output=True, text=True, cwd=REPO
    ).stdout.strip()
    out("commit", commit)
    out("cpu_count", os.cpu_count() or 0, "cores")
    out("loadavg_before", os.getloadavg()[0], "")
    summaries, raw = [], []
    for kind in kinds:
        result = run_setup(kind, args, schedule)
        raw.append(result)
        summaries.append(report(result, args))
    print("\nsummary")
    lines = [v for s in summaries for v in verdicts(s, args)]
    for line in lines:
        print(line)
    if args.out:
        slim = [{k: v for k, v in r.items() if k not in ("workers", "rates")} for r in raw]
        for r, full in zip(slim, raw, strict=True):
            r["ticks"] = [
                {k: v for k, v in t.items() if "latency" not in k} for t in merge_ticks(full)
            ]
        body = {"args": vars(args) | {"out": str(args.out)}, "lines": LINES, "summary": lines}
        body["summaries"], body["raw"] = summaries, slim
        args.out.write_text(json.dumps(body, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
