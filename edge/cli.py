"""`edge serve | publish | pull | infer | logs` (also `python -m edge ...`)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
from pathlib import Path
from typing import Any

from edge.config import Settings, load_settings
from edge.errors import ConfigError, EdgeError
from ops_sync.errors import SyncError

log = logging.getLogger("edge")


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        return int(args.run(args) or 0)
    except (EdgeError, SyncError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edge", description=__doc__)
    sub = parser.add_subparsers(dest="command")

    serve = sub.add_parser("serve", help="pull the pipeline and serve it on HTTP")
    serve.add_argument("--pipeline-url", help="env PIPELINE_URL")
    serve.add_argument("--oci-registry", help="env OCI_REGISTRY")
    serve.add_argument("--oci-username", help="env OCI_USERNAME")
    serve.add_argument("--oci-password", help="env OCI_PASSWORD (prefer the environment)")
    serve.add_argument(
        "--oci-insecure",
        action="store_const",
        const=True,
        help="plain http to the registry (env OCI_INSECURE)",
    )
    serve.add_argument("--cpus", type=int, help="env CONFIG_CPUS")
    serve.add_argument("--debug", action="store_const", const=True, help="env DEBUG")
    serve.add_argument("--edge-bundle", help="env EDGE_BUNDLE (prefer the environment)")
    serve.add_argument("--persist-dir", help="env PERSIST_DIR (default /persist)")
    serve.add_argument("--port", type=int, help="env PORT (default 8080)")
    serve.add_argument("--host", help="env HOST (default 0.0.0.0)")
    serve.add_argument("--max-body-bytes", type=int, help="env MAX_BODY_BYTES")
    serve.add_argument("--log-buffer-bytes", type=int, help="env LOG_BUFFER_BYTES")
    serve.add_argument(
        "--log-fsync-interval",
        type=float,
        help="env LOG_FSYNC_INTERVAL: seconds between fsyncs of the inference log (default "
        "0.1; 0 = fsync before every answer)",
    )
    serve.add_argument(
        "--no-logging",
        dest="logging_enabled",
        action="store_const",
        const=False,
        help="do not log inferences (benchmarks only)",
    )
    serve.set_defaults(run=_serve)

    publish = sub.add_parser("publish", help="pack a pipeline spec and push it")
    publish.add_argument("spec", type=Path, help="pipeline spec YAML")
    publish.add_argument("--registry", help="HOST[:PORT] of the OCI registry")
    publish.add_argument("--repository", default="", help="repository path in the registry")
    publish.add_argument("--layout", type=Path, help="write to a local OCI image layout DIR")
    publish.add_argument(
        "--insecure", action="store_const", const=True, help="plain http to the registry"
    )
    publish.add_argument("--no-chart", action="store_true", help="do not push a Helm chart")
    publish.add_argument("--opscenter", help="register the publish with this ops center URL")
    publish.add_argument("--json", action="store_true", help="print one JSON object")
    publish.set_defaults(run=_publish)

    pull = sub.add_parser("pull", help="pull a pipeline into the persist directory")
    pull.add_argument("pipeline_url")
    pull.add_argument("--persist-dir", default=os.environ.get("PERSIST_DIR", "./persist"))
    pull.set_defaults(run=_pull)

    infer = sub.add_parser("infer", help="send a file to a running appliance")
    infer.add_argument("file", type=Path, help=".json (pandas records) or .arrow file")
    infer.add_argument("--url", default="http://127.0.0.1:8080", help="appliance URL")
    infer.add_argument("--pipeline", required=True)
    infer.add_argument("--arrow", type=Path, help="write the result as Arrow to this file")
    infer.set_defaults(run=_infer)

    logs = sub.add_parser("logs", help="read the appliance's inference log buffer")
    logs.add_argument("--url", default="http://127.0.0.1:8080", help="appliance URL")
    logs.add_argument("--limit", type=int, default=100)
    logs.add_argument("--start", help="ISO date-time (with --end)")
    logs.add_argument("--end", help="ISO date-time (with --start)")
    logs.add_argument("--dataset", action="append")
    logs.add_argument("--arrow", type=Path, help="write Arrow to this file instead of JSON")
    logs.set_defaults(run=_logs)
    return parser


def _setup_logging(debug: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("httpx", "httpcore", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if debug else logging.WARNING)


def _say(text: str) -> None:
    print(text, flush=True)


def _serve(args: argparse.Namespace) -> int:
    import anyio
    import uvicorn

    from edge.server import AppState, create_app

    flags = {k: v for k, v in vars(args).items() if k not in ("command", "run")}
    settings = load_settings(flags)
    _setup_logging(settings.debug)
    bundle = _read_bundle(settings)
    if bundle:
        settings = _with(settings, partition=bundle["EDGE_NAME"])
        if not settings.pipeline_url:
            settings = _with(settings, pipeline_url=bundle.get("PIPELINE_URL"))
    if not settings.pipeline_url:
        raise ConfigError(
            "PIPELINE_URL is not set: give the pipeline's URL from `edge publish` "
            "(HOST/REPOSITORY/pipelines/NAME:VERSION or oci-layout:DIR[:TAG])"
        )
    if settings.debug:
        log.debug("settings %s", settings.redacted())
    settings.persist_dir.mkdir(parents=True, exist_ok=True)
    state = AppState(
        max_body_bytes=settings.max_body_bytes,
        limiter=anyio.CapacityLimiter(settings.cpus),  # model runs at once, off the loop
    )
    config = uvicorn.Config(
        create_app(state),
        host=settings.host,
        port=settings.port,
        log_level="debug" if settings.debug else "warning",
        access_log=settings.debug,
        loop="uvloop" if _has("uvloop") else "asyncio",
        http="httptools" if _has("httptools") else "h11",
        lifespan="on",
    )
    server = uvicorn.Server(config)
    failure: list[str] = []

    def fail(exc: Exception) -> None:
        """A start-up failure ends the process (exit code 2) with its reason."""
        state.status, state.error = "Error", str(exc)
        failure.append(str(exc))
        print(f"error: {exc}", file=sys.stderr, flush=True)
        if not isinstance(exc, EdgeError | SyncError):
            log.exception("start-up failed")
        server.should_exit = True

    def load() -> None:
        try:
            state.pipeline = _load_pipeline(settings)
            state.status = "Running"
            _say(f"Engine ready: pipeline {state.pipeline.name} on port {settings.port}")
        except Exception as exc:  # any failure to load ends the process with its reason
            fail(exc)

    loader = threading.Thread(target=load, name="pipeline-loader", daemon=True)

    def start_loading() -> None:
        if not failure:  # the sync may have refused the bundle already
            loader.start()

    if settings.logging_enabled:
        from edge.logbuffer import LogBuffer

        state.buffer = LogBuffer(
            settings.persist_dir / "logbuffer.db",
            max_bytes=settings.log_buffer_bytes,
            keep_synced_bytes=settings.log_buffer_bytes // 4,  # for `GET /logs` after a sync
            fsync_interval=settings.log_fsync_interval,
        )
        state.buffer.start()
        state.on_shutdown.append(state.buffer.close)
    if bundle:
        if state.buffer is None:
            raise ConfigError("EDGE_BUNDLE needs inference logging on (EDGE_LOGGING=true)")

        async def start_sync() -> None:
            try:  # joins once (redeems the token), then syncs in the background
                await _start_agent(state, bundle, settings)
            except Exception as exc:  # refused token, removed edge, unwritable key: say why
                fail(exc)

        state.on_startup.append(start_sync)
    state.on_startup.append(start_loading)
    state.on_shutdown.append(lambda: state.pipeline.close() if state.pipeline else None)
    server.run()
    if loader.is_alive():  # exiting while native code loads a model can abort the process
        loader.join(timeout=60)
    return 2 if failure else 0


def _start_agent(state: Any, bundle: dict[str, str], settings: Settings) -> Any:
    from edge.server import health_report
    from ops_sync.agent import SyncAgent

    state.agent = SyncAgent(
        bundle, settings.persist_dir, state.buffer, lambda: health_report(state)
    )
    state.on_shutdown.insert(0, state.agent.stop)
    return state.agent.start()


def _load_pipeline(settings: Settings) -> Any:
    from edge.cache import fetch_pipeline
    from edge.pipeline import Pipeline
    from edge.runtimes import RuntimeContext, load_runtime

    assert settings.pipeline_url
    local = fetch_pipeline(
        settings.pipeline_url,
        settings.persist_dir,
        settings.oci_username,
        settings.oci_password,
        settings.oci_insecure,
        echo=_say,
    )
    definition = local.definition
    _say("Starting engine")
    context = RuntimeContext(
        threads=settings.cpus,
        gpus=definition.deployment.gpus,
        work_dir=_empty_dir(local.directory / "work"),  # last start's unzipped models go
    )
    runtimes = {
        name: load_runtime(definition.models[name], path, context)
        for name, path in local.model_paths.items()
    }
    validator = None
    if definition.validations:
        from edge.validations import load_validations

        validator = load_validations(definition.validations, definition.polars_version)
    return Pipeline(definition, runtimes, settings.partition, validator)


def _empty_dir(path: Path) -> Path:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def _read_bundle(settings: Settings) -> dict[str, str] | None:
    if not settings.edge_bundle:
        return None
    from ops_sync.bundle import decode

    return decode(settings.edge_bundle)


def _with(settings: Settings, **changes: Any) -> Settings:
    from dataclasses import replace

    return replace(settings, **changes)


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _publish(args: argparse.Namespace) -> int:
    from edge.publish import publish

    published, definition = publish(
        args.spec,
        registry=args.registry,
        repository=args.repository,
        layout=args.layout,
        username=os.environ.get("OCI_USERNAME") or None,
        password=os.environ.get("OCI_PASSWORD") or None,
        insecure=args.insecure,
    )
    if args.registry and not args.no_chart:
        published.extra.update(_push_chart(args, published, definition))
    if args.opscenter:
        from ops_sync.cli import register_publish

        register_publish(args.opscenter, published.as_dict())
    if args.json:
        print(json.dumps(published.as_dict(), indent=1))
    else:
        print("\n".join(published.lines()))
    return 0


def _push_chart(args: argparse.Namespace, published: Any, definition: Any) -> dict[str, Any]:
    import tempfile

    from edge import chart

    tensorflow = any(m.runtime == "tensorflow" for m in definition.models.values())
    with tempfile.TemporaryDirectory() as scratch:
        tgz = chart.build_chart(
            definition.name,
            published.pipeline_url,
            definition.version,
            published.engine_config,
            Path(scratch),
            tensorflow=tensorflow,
        )
        ref = chart.push_chart(
            tgz,
            args.registry,
            args.repository,
            os.environ.get("OCI_USERNAME") or None,
            os.environ.get("OCI_PASSWORD") or None,
            args.insecure,
        )
    return {
        "engine_url": chart.engine_image(published.engine_config, tensorflow=tensorflow),
        "helm_chart_url": f"oci://{ref.url}",
        "helm_chart_reference": f"{ref.url}@{ref.reference}",
        "helm_chart_version": ref.version,
    }


def _pull(args: argparse.Namespace) -> int:
    from edge.cache import fetch_pipeline

    local = fetch_pipeline(
        args.pipeline_url,
        Path(args.persist_dir),
        os.environ.get("OCI_USERNAME") or None,
        os.environ.get("OCI_PASSWORD") or None,
        echo=_say,
    )
    print(json.dumps({"directory": str(local.directory), "version": local.definition.version}))
    return 0


def _infer(args: argparse.Namespace) -> int:
    import httpx

    from edge.codecs import ARROW_FILE_TYPE, JSON_TYPE

    body = args.file.read_bytes()
    arrow_in = args.file.suffix in (".arrow", ".feather")
    headers = {"Content-Type": ARROW_FILE_TYPE if arrow_in else JSON_TYPE}
    if args.arrow:
        headers["Accept"] = ARROW_FILE_TYPE
    reply = httpx.post(
        f"{args.url}/pipelines/{args.pipeline}",
        content=body,
        headers=headers,
        timeout=httpx.Timeout(60.0, connect=5.0),
    )
    if reply.status_code != 200:
        print(reply.text, file=sys.stderr)
        return 1
    if args.arrow:
        args.arrow.write_bytes(reply.content)
    else:
        print(reply.text)
    return 0


def _logs(args: argparse.Namespace) -> int:
    import httpx

    params: list[tuple[str, str | int | float | bool | None]] = [("limit", args.limit)]
    if args.start or args.end:
        params += [("start_datetime", args.start or ""), ("end_datetime", args.end or "")]
    params += [("dataset", d) for d in args.dataset or []]
    headers = {"Accept": "application/vnd.apache.arrow.file"} if args.arrow else {}
    reply = httpx.get(
        f"{args.url}/logs", params=params, headers=headers, timeout=httpx.Timeout(60.0, connect=5.0)
    )
    if reply.status_code != 200:
        print(reply.text, file=sys.stderr)
        return 1
    if warning := reply.headers.get("x-edge-warning"):
        print(warning, file=sys.stderr)
    if args.arrow:
        args.arrow.write_bytes(reply.content)
    else:
        print(reply.text)
    return 0
