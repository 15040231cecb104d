"""`ops-sync`: run the ops center and administer it.

    ops-sync serve --data DIR --port N --admin-token TOKEN [--host NAME]
                   [--metadata postgresql://...] [--logs DIR | s3://bucket/prefix]
                   [--verify-key PUB.pem ...]
    ops-sync add-edge NAME --publish PIPELINE_URL [--tag T ...] [--json]
    ops-sync remove-edge NAME [--json]
    ops-sync list-edges [--publish-id N | --pipeline NAME] [--json]
    ops-sync logs PIPELINE [--partition EDGE] [--limit N] [--arrow FILE | --json | --ndjson FILE]
    ops-sync publishes [--register PIPELINE_URL] [--json]
    ops-sync rollout PIPELINE_URL (--edge NAME | --tag TAG [--percent N]) [--json]
    ops-sync rollout --status [--json]
    ops-sync assay create FILE.json | list | run NAME [--start T --end T] |
                   results NAME [--start T --end T --limit N] | pause | resume | delete NAME

Admin commands take `--opscenter URL --admin-token TOKEN --ca FILE` or `OPS_URL`,
`OPS_ADMIN_TOKEN`, `OPS_CA`. Exit status: 0 done, 1 refused or failed, 2 bad usage.
"""

from __future__ import annotations

import argparse
import io
import ipaddress
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from ops_sync.errors import SyncError
from ops_sync.identity import DEFAULT_TRUST_DOMAIN

DEFAULT_PORT = 8443


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(name) or default


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ops-sync", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the ops center (TLS)")
    serve.add_argument("--data", type=Path, default=_env("OPS_DATA"), help="data directory")
    serve.add_argument("--port", type=int, default=int(_env("OPS_PORT", str(DEFAULT_PORT)) or 0))
    serve.add_argument("--admin-token", default=_env("OPS_ADMIN_TOKEN"))
    serve.add_argument(
        "--host", default=_env("OPS_HOST", "127.0.0.1"), help="name edges reach us by"
    )
    serve.add_argument("--bind", default=_env("OPS_BIND"), help="listen address")
    serve.add_argument(
        "--trust-domain",
        default=_env("OPS_TRUST_DOMAIN", DEFAULT_TRUST_DOMAIN),
        help="SPIFFE trust domain of edge ids: spiffe://<it>/ns/deployments/edge/<edge id> "
        f"(env OPS_TRUST_DOMAIN, default {DEFAULT_TRUST_DOMAIN})",
    )
    serve.add_argument(
        "--accept-trust-domain",
        action="append",
        default=[d for d in (_env("OPS_ACCEPT_TRUST_DOMAINS", "") or "").split(",") if d],
        help="a former trust domain whose edge certificates still verify until renewed "
        "(repeatable; env OPS_ACCEPT_TRUST_DOMAINS, comma-separated)",
    )
    serve.add_argument(
        "--max-connections",
        type=int,
        default=int(_env("OPS_MAX_CONNECTIONS", "10000") or 10000),
        help="open connections at once (every edge keeps one); past it, 503",
    )
    serve.add_argument(
        "--metadata",
        default=_env("OPS_METADATA_URL"),
        help="metadata database: postgresql://user@host/db (default: SQLite in --data)",
    )
    serve.add_argument(
        "--logs",
        default=_env("OPS_LOGS_URL"),
        help="log tables: a directory or s3://bucket/prefix (default: --data/tables)",
    )
    serve.add_argument(
        "--retention-days",
        type=int,
        default=int(_env("OPS_RETENTION_DAYS", "0") or 0),
        help="delete log partitions older than this many days (0: keep)",
    )
    serve.add_argument(
        "--commit-interval",
        type=float,
        default=float(_env("OPS_COMMIT_INTERVAL", "0.25") or 0.25),
        help="seconds between log commits of one replica (uploads wait for theirs)",
    )
    serve.add_argument(
        "--upkeep-interval",
        type=float,
        default=float(_env("OPS_UPKEEP_INTERVAL", "60") or 60),
        help="seconds between compaction rounds",
    )
    serve.add_argument(
        "--verify-key",
        type=Path,
        action="append",
        default=[],
        help="a PEM public key file pinned in every EDGE_BUNDLE minted: the edge verifies its "
        "pipeline's signature with it (repeatable, for key rotation)",
    )
    serve.add_argument(
        "--assay-interval",
        type=float,
        default=float(_env("OPS_ASSAY_INTERVAL", "60") or 60),
        help="seconds between checks for scheduled assay windows that are due",
    )
    serve.add_argument("--ca-cert", type=Path, help="use this CA certificate (with --ca-key)")
    serve.add_argument("--ca-key", type=Path, help="the CA's private key file")
    serve.add_argument(
        "--clock-offset",
        type=float,
        default=float(_env("OPS_CLOCK_OFFSET", "0") or 0),
        help="seconds added to the clock (tests of the 24 h / 7 day rules)",
    )

    def connection(sub: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sub.add_argument("--opscenter", default=_env("OPS_URL"), help="https://host:port")
        sub.add_argument("--admin-token", default=_env("OPS_ADMIN_TOKEN"))
        sub.add_argument("--ca", type=Path, default=_env("OPS_CA"), help="the ops center CA")
        return sub

    def admin(name: str, help_text: str) -> argparse.ArgumentParser:
        return connection(commands.add_parser(name, help=help_text))

    add = admin("add-edge", "add an edge to a publish; prints its EDGE_BUNDLE")
    add.add_argument("name")
    add.add_argument("--publish", required=True, metavar="PIPELINE_URL")
    add.add_argument("--tag", action="append", default=[])
    add.add_argument("--json", action="store_true")
    remove = admin("remove-edge", "remove (revoke) an edge")
    remove.add_argument("name")
    remove.add_argument("--json", action="store_true")
    edges = admin("list-edges", "list enrolled edges (of one publish or pipeline when asked)")
    which = edges.add_mutually_exclusive_group()
    which.add_argument("--publish-id", type=int, metavar="N", help="a publish's id")
    which.add_argument("--pipeline", metavar="NAME", help="every publish of this pipeline")
    edges.add_argument("--json", action="store_true")
    pubs = admin("publishes", "list publishes, or register one")
    pubs.add_argument("--register", metavar="PIPELINE_URL")
    pubs.add_argument("--pipeline-name")
    pubs.add_argument("--pipeline-version")
    pubs.add_argument("--engine-url")
    pubs.add_argument("--json", action="store_true")
    roll = admin("rollout", "set the pipeline version edges should run, or show --status")
    roll.add_argument("pipeline_url", nargs="?", metavar="PIPELINE_URL", help="a publish's URL")
    target = roll.add_mutually_exclusive_group()
    target.add_argument("--edge", metavar="NAME")
    target.add_argument("--tag", metavar="TAG")
    roll.add_argument(
        "--percent", type=int, metavar="N", help="with --tag: a stable N%% of its edges"
    )
    roll.add_argument("--status", action="store_true", help="desired and running per edge")
    roll.add_argument("--json", action="store_true")
    logs = admin("logs", "read a pipeline's logs from every edge")
    logs.add_argument("pipeline")
    logs.add_argument("--partition", metavar="EDGE")
    logs.add_argument("--limit", type=int)
    logs.add_argument("--start", help="start_datetime (ISO 8601), with --end")
    logs.add_argument("--end", help="end_datetime (ISO 8601), with --start")
    logs.add_argument("--dataset", action="append")
    logs.add_argument("--dataset-exclude", action="append")
    logs.add_argument(
        "--valid",
        choices=["true", "false"],
        help="false: only rows with an anomaly (a validation was true); true: only rows without",
    )
    logs.add_argument(
        "--pipeline-version", help="one version's rows (default: the newest row's version)"
    )
    logs.add_argument("--separator", help="flatten JSON keys with this separator")
    out = logs.add_mutually_exclusive_group()
    out.add_argument("--arrow", type=Path, metavar="FILE", help="export to an Arrow file")
    out.add_argument("--ndjson", type=Path, metavar="FILE", help="export to an NDJSON file")
    out.add_argument("--json", action="store_true", help="print pandas-records JSON")
    out.add_argument(
        "--directory",
        type=Path,
        help="export_logs: one file per pipeline version into this folder "
        "(PREFIX-1.json, PREFIX-2.json, ...; the latest published version first)",
    )
    logs.add_argument("--file-prefix", help="export file names (default: the pipeline's name)")
    logs.add_argument(
        "--format",
        choices=["ndjson", "arrow"],
        default="ndjson",
        help="with --directory: NDJSON (.json) or Arrow (.arrow) files",
    )
    logs.add_argument("--data-size-limit", help="export size limit, e.g. '10 MiB'")
    assay = commands.add_parser("assay", help="drift detection over the synced logs (assays)")
    actions = assay.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="create an assay from a JSON definition")
    create.add_argument("definition", type=Path, help="the definition (JSON file, - for stdin)")
    actions.add_parser("list", help="list assays")
    for action, text in (
        ("run", "interactive run over --start..--end (stored too)"),
        ("results", "stored results, newest window first"),
        ("pause", "stop scheduled runs"),
        ("resume", "resume scheduled runs"),
        ("delete", "delete the assay and its results"),
        ("baseline", "the baseline's stats and bins"),
    ):
        sub = actions.add_parser(action, help=text)
        sub.add_argument("name")
        if action in ("run", "results"):
            sub.add_argument("--start", help="ISO 8601")
            sub.add_argument("--end", help="ISO 8601")
        if action == "results":
            sub.add_argument("--limit", type=int)
    for sub in actions.choices.values():
        connection(sub).add_argument("--json", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "serve":
            return _serve(args)
        return _admin(args)
    except SyncError as exc:
        print(f"ops-sync {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _serve(args: argparse.Namespace) -> int:
    try:
        from ops_sync import serve
    except ModuleNotFoundError as exc:  # deltalake: the `ops` extra, which the appliance lacks
        print(
            f"ops-sync serve: {exc.name} is not installed; the ops center needs its extra: "
            "pip install 'edge-appliance[ops]'",
            file=sys.stderr,
        )
        return 2

    if args.data is None or not args.admin_token:
        print(
            "ops-sync serve: --data and --admin-token (or OPS_ADMIN_TOKEN) are required",
            file=sys.stderr,
        )
        return 2
    if (args.ca_cert is None) != (args.ca_key is None):
        print("ops-sync serve: --ca-cert and --ca-key go together", file=sys.stderr)
        return 2
    verify_keys = None
    if args.verify_key:  # refused at start, as the edge would refuse it
        from edge.errors import ConfigError
        from edge.signing import public_pem

        try:
            verify_keys = public_pem(",".join(str(p) for p in args.verify_key), "--verify-key")
        except ConfigError as exc:
            print(f"ops-sync serve: {exc}", file=sys.stderr)
            return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    bind = args.bind or ("127.0.0.1" if _is_loopback(args.host) else "0.0.0.0")
    args.data.mkdir(parents=True, exist_ok=True)
    serve.run(
        args.data,
        args.admin_token,
        args.port,
        args.host,
        bind,
        trust_domain=args.trust_domain,
        accepted_domains=tuple(args.accept_trust_domain),
        clock_offset=args.clock_offset,
        ca_files=(args.ca_cert, args.ca_key) if args.ca_cert else None,
        max_connections=args.max_connections,
        metadata_url=args.metadata,
        logs_url=args.logs,
        commit_interval=args.commit_interval,
        retention_days=args.retention_days or None,
        upkeep_interval=args.upkeep_interval,
        verify_keys=verify_keys,
        assay_interval=args.assay_interval,
    )
    return 0


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _admin(args: argparse.Namespace) -> int:
    from ops_sync.client import AdminClient

    if not args.opscenter or not args.admin_token:
        need = "--opscenter and --admin-token (or OPS_URL, OPS_ADMIN_TOKEN) are required"
        print(f"ops-sync {args.command}: {need}", file=sys.stderr)
        return 2
    with AdminClient(args.opscenter, args.admin_token, args.ca) as client:
        if args.command == "logs":
            return _logs(client, args)
        if args.command == "rollout" and not args.status and not args.pipeline_url:
            print("ops-sync rollout: give PIPELINE_URL (or --status)", file=sys.stderr)
            return 2
        if args.command == "assay":
            return _assay(client, args)
        result: Any
        text: list[str]
        if args.command == "add-edge":
            result = client.add_edge(args.name, args.publish, args.tag)
            text = [
                f"Edge {args.name} added to publish {result['id']} ({result['pipeline_url']})",
                f"EDGE_BUNDLE={result['docker_run_variables']['EDGE_BUNDLE']}",
            ]
        elif args.command == "remove-edge":
            client.remove_edge(args.name)  # nothing comes back (HTTP 204)
            result = {"name": args.name, "removed": True}
            text = [f"Edge {args.name} removed"]
        elif args.command == "rollout" and args.status:
            result = [
                {k: e[k] for k in ("name", "tags", "desired", "running", "rollout")}
                for e in client.list_edges()
            ]
            text = _rollout_lines(result)
        elif args.command == "rollout":
            result = client.rollout(
                args.pipeline_url, edge=args.edge, tag=args.tag, percent=args.percent
            )
            picked = ", ".join(result["edges"]) or "no edge (none in the percent)"
            version, url = result["pipeline_version"], result["pipeline_url"]
            text = [f"Rollout of {version} ({url}) to {picked}"]
        elif args.command == "list-edges":
            result = client.list_edges(args.publish_id, args.pipeline)
            text = _edge_lines(result)
        elif args.register:
            fields = {
                "pipeline_url": args.register,
                "pipeline_name": args.pipeline_name,
                "pipeline_version": args.pipeline_version,
                "engine_url": args.engine_url,
            }
            result = client.register_publish(**{k: v for k, v in fields.items() if v})
            text = [f"Publish {result['id']}: {result['pipeline_url']}"]
        else:
            result = client.publishes()
            names = "id pipeline_version_id pipeline_name pipeline_url created_by created_at"
            columns = [*names.split(), "updated_at"]
            text = ["\t".join(c.upper() for c in columns)]
            text += ["\t".join(str(p.get(c)) for c in columns) for p in result]
    print(json.dumps(result, indent=2, sort_keys=True) if args.json else "\n".join(text))
    return 0


def _logs(client: Any, args: argparse.Namespace) -> int:
    params = {
        "limit": args.limit,
        "start_datetime": args.start,
        "end_datetime": args.end,
        "dataset": args.dataset,
        "dataset_exclude": args.dataset_exclude,
        "dataset_separator": args.separator,
        "partition": args.partition,
        "valid": args.valid,
        "pipeline_version": args.pipeline_version,
    }
    if args.directory:
        params["data_size_limit"] = args.data_size_limit
        files, warnings = client.export_logs(
            args.pipeline,
            args.directory,
            args.file_prefix,
            arrow=args.format == "arrow",
            **params,
        )
        for path in files:
            print(path)
    elif args.arrow or args.ndjson:
        params["data_size_limit"] = args.data_size_limit
        body, warnings = client.logs(args.pipeline, arrow=bool(args.arrow), export=True, **params)
        (args.arrow or args.ndjson).write_bytes(body)
    else:
        body, warnings = client.logs(args.pipeline, arrow=not args.json, **params)
        if args.json:
            sys.stdout.write(body.decode() + "\n")
        else:
            import polars as pl
            import pyarrow as pa

            table = pa.ipc.open_file(io.BytesIO(body)).read_all()
            with pl.Config(tbl_rows=50, tbl_cols=12, fmt_str_lengths=60):
                print(pl.from_arrow(table))
    for warning in warnings:
        print(warning, file=sys.stderr)
    return 0


def _edge_lines(edges: list[dict[str, Any]]) -> list[str]:
    columns = "id name tags pipeline_version pipeline_version_id cpus memory spiffe_id".split()
    columns += ["last_seen", "credentials"]
    rollout = ["desired", "running", "rollout"]
    lines = ["\t".join(c.upper() for c in columns + rollout) + "\tHEALTH"]
    for edge in edges:
        health = json.dumps(edge.get("health"), sort_keys=True)
        cells = [_cell(edge.get(c)) for c in columns] + _rollout_cells(edge)
        lines.append("\t".join(cells) + "\t" + health)
    return lines


def _rollout_cells(edge: dict[str, Any]) -> list[str]:
    """DESIRED, RUNNING (versions) and ROLLOUT (state, attempts, reason) of an edge."""
    desired, running = edge.get("desired") or {}, edge.get("running") or {}
    state = edge.get("rollout") or {}
    status = str(state.get("state"))
    if state.get("attempts"):
        status += f" (attempt {state['attempts']})"
    if state.get("reason"):
        status += f": {state['reason']}"
    return [
        _cell(desired.get("pipeline_version")),
        _cell(running.get("pipeline_version")),
        _cell(status),
    ]


def _cell(value: Any) -> str:
    """A table cell on one line: '-' for nothing, a list's items joined by commas, runs of
    whitespace (tabs and newlines of a reason an edge sent) as one space."""
    if value is None:
        return "-"
    text = ",".join(map(str, value)) if isinstance(value, list) else str(value)
    return " ".join(text.split()) or "-"


def _rollout_lines(edges: list[dict[str, Any]]) -> list[str]:
    lines = ["NAME\tTAGS\tDESIRED\tRUNNING\tROLLOUT"]
    for edge in edges:
        lines.append("\t".join([edge["name"], _cell(edge["tags"]), *_rollout_cells(edge)]))
    return lines


def _assay(client: Any, args: argparse.Namespace) -> int:
    result: Any
    if args.action == "create":
        text = sys.stdin.read() if str(args.definition) == "-" else args.definition.read_text()
        try:
            definition = json.loads(text)
        except ValueError as exc:
            print(f"ops-sync assay create: {args.definition} is not JSON: {exc}", file=sys.stderr)
            return 2
        result = client.create_assay(definition)
        lines = [f"Assay {result['name']} created; next run {result['next_run']}"]
    elif args.action == "list":
        result = client.assays()
        columns = "name pipeline column index metric threshold active last_run next_run".split()
        lines = ["\t".join(c.upper() for c in columns) + "\tALERT"]
        lines += [
            "\t".join(str(a.get(c)) for c in columns) + f"\t{a['status']['alert']}" for a in result
        ]
    elif args.action in ("run", "results"):
        if args.action == "run":
            result = client.run_assay(args.name, args.start, args.end)
        else:
            result = client.assay_results(args.name, args.start, args.end, args.limit)
        columns = "window_start window_end status score alert warning window_rows".split()
        lines = ["\t".join(c.upper() for c in columns)]
        lines += ["\t".join(str(r.get(c)) for c in columns) for r in result]
    elif args.action == "delete":
        client.delete_assay(args.name)
        result = {"name": args.name, "deleted": True}
        lines = [f"Assay {args.name} deleted"]
    elif args.action == "baseline":
        result = client.assay_baseline(args.name)
        lines = [json.dumps(result["baseline_stats"])]
        lines += [json.dumps(b) for b in result["baseline_bins"]]
    else:
        result = client.set_assay_active(args.name, args.action == "resume")
        lines = [f"Assay {args.name} {'active' if result['active'] else 'paused'}"]
    print(json.dumps(result, indent=2, sort_keys=True) if args.json else "\n".join(lines))
    return 0
