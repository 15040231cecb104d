"""`edge serve | publish | keygen | pull | infer | logs` (also `python -m edge ...`)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from edge.config import load_settings
from edge.errors import ConfigError, EdgeError

log = logging.getLogger("edge")
BANNER = "Edge Engine - Standalone mode"  # the seed's first start-up line, in our name


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        return int(args.run(args) or 0)
    except EdgeError as exc:
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
    serve.add_argument(
        "--grpc-port",
        type=int,
        help="env GRPC_PORT: the Open Inference Protocol over gRPC (default 8081; 0: off)",
    )
    serve.add_argument("--max-body-bytes", type=int, help="env MAX_BODY_BYTES")
    serve.add_argument("--max-connections", type=int, help="env MAX_CONNECTIONS (default 256)")
    serve.add_argument("--log-buffer-bytes", type=int, help="env LOG_BUFFER_BYTES")
    serve.add_argument(
        "--log-fsync-interval",
        type=float,
        help="env LOG_FSYNC_INTERVAL: seconds between fsyncs of the inference log (default "
        "0.1; 0 = fsync before every answer)",
    )
    serve.add_argument(
        "--pull-retry-max",
        type=float,
        help="env PULL_RETRY_MAX: longest wait in s between pipeline pull retries (default 60)",
    )
    serve.add_argument(
        "--verify-keys",
        help="env PIPELINE_VERIFY_KEYS: PEM public keys (the text, or comma-separated files) "
        "the pipeline must be signed with",
    )
    serve.add_argument(
        "--sync-heartbeat-interval",
        type=float,
        help="env SYNC_HEARTBEAT_INTERVAL: s between heartbeats to the ops center, which "
        "answer with the desired pipeline version (default 30)",
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
    publish.add_argument(
        "--no-convert",
        action="store_true",
        help="publish scikit-learn, XGBoost, PyTorch and Keras models for their own runtimes "
        "instead of converting them to ONNX",
    )
    publish.add_argument(
        "--engine-image",
        default=os.environ.get("EDGE_IMAGE") or None,
        help="the engine image the chart runs and Engine URL names: REPOSITORY (tagged with the "
        "engine version and variant) or REPOSITORY:TAG / REPOSITORY@sha256:... as it is (env "
        "EDGE_IMAGE; default: the chart's own repository)",
    )
    publish.add_argument(
        "--sign-key",
        type=Path,
        help="sign the pipeline with this ECDSA P-256 private key (PEM, from `edge keygen`)",
    )
    publish.add_argument(
        "--password-env",
        metavar="VAR",
        help="the environment variable holding the --sign-key's password (encrypted keys)",
    )
    publish.add_argument("--opscenter", help="register the publish with this ops center URL")
    publish.add_argument("--json", action="store_true", help="print one JSON object")
    publish.set_defaults(run=_publish)

    keygen = sub.add_parser("keygen", help="make a key pair for signing pipelines")
    keygen.add_argument("--out", type=Path, required=True, help="directory for cosign.key/.pub")
    keygen.add_argument(
        "--password-env",
        metavar="VAR",
        help="encrypt cosign.key with the password in this environment variable",
    )
    keygen.set_defaults(run=_keygen)

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
    logs.add_argument(
        "--valid",
        choices=["true", "false"],
        help="false: only rows with an anomaly (a validation was true); true: only rows without",
    )
    logs.add_argument(
        "--pipeline-version", help="one version's rows (default: the loaded pipeline's)"
    )
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


def _http_protocol() -> Any:
    """uvicorn's httptools protocol sending a response's head and body in one write
    (`edge.wire`), or h11 where httptools is missing."""
    if not _has("httptools"):
        return "h11"
    from edge.wire import Protocol

    return Protocol


def _serve(args: argparse.Namespace) -> int:
    from edge import memory

    memory.configure()  # before any import starts a thread

    import uvicorn

    from edge.appliance import Appliance, say
    from edge.server import create_app

    flags = {k: v for k, v in vars(args).items() if k not in ("command", "run")}
    settings = load_settings(flags)
    _setup_logging(settings.debug)
    say(BANNER)
    appliance = Appliance.from_settings(settings)
    if settings.debug:
        log.debug("settings %s", appliance.settings.redacted())
    config = uvicorn.Config(
        create_app(appliance),
        host=settings.host,
        port=settings.port,
        log_level="debug" if settings.debug else "warning",
        access_log=settings.debug,
        loop="uvloop" if _has("uvloop") else "asyncio",
        http=_http_protocol(),
        lifespan="on",
        limit_concurrency=settings.max_connections,  # past it, 503 (the SDK retries)
        timeout_keep_alive=30,
    )
    server = uvicorn.Server(config)

    def stop(exc: Exception) -> None:
        server.should_exit = True

    appliance.on_fatal = stop
    _stop_on_sigterm(server)
    server.run()
    return 2 if appliance.failed else 0


def _stop_on_sigterm(server: Any) -> None:
    """SIGTERM (`docker stop`, Kubernetes) is a requested stop: `edge serve` shuts down and
    exits 0. uvicorn handles the signal while it serves and re-raises it once it has shut down;
    under the default handler that kills the process (exit 143, reported as a failure). This
    handler is what the re-raise reaches, and it asks for the shutdown itself should the signal
    come before uvicorn's own handler is in place."""

    def stop(signum: int, frame: Any) -> None:
        server.should_exit = True

    signal.signal(signal.SIGTERM, stop)


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _publish(args: argparse.Namespace) -> int:
    from edge.chart import check_image_reference
    from edge.publish import publish

    if args.engine_image:  # refused before anything is pushed
        check_image_reference(args.engine_image)
    sign_key = None
    if args.sign_key:  # read (and its password checked) before anything is pushed
        from edge.signing import load_private_key

        sign_key = load_private_key(args.sign_key, _password(args.password_env))
    published, definition = publish(
        args.spec,
        registry=args.registry,
        repository=args.repository,
        layout=args.layout,
        username=os.environ.get("OCI_USERNAME") or None,
        password=os.environ.get("OCI_PASSWORD") or None,
        insecure=args.insecure,
        convert=not args.no_convert,
        sign_key=sign_key,
    )
    variant = _variant(definition)
    published.extra["engine_url"] = _engine_url(args.engine_image, definition, variant)
    published.extra["created_by"] = _publisher()
    if args.registry and not args.no_chart:
        published.extra.update(_push_chart(args, published, definition, variant))
    if args.opscenter:
        from edge.appliance import sync_plugin

        plugin = sync_plugin()
        if plugin is None:
            raise ConfigError("--opscenter needs the ops center package (ops_sync) installed")
        plugin.register_publish(args.opscenter, published.as_dict())
    if args.json:
        print(json.dumps(published.as_dict(), indent=1))
    else:
        print("\n".join(published.lines()))
    return 0


def _password(variable: str | None) -> str | None:
    """The password in environment variable `variable` (never given on the command line)."""
    if not variable:
        return None
    password = os.environ.get(variable)
    if not password:
        raise ConfigError(f"--password-env {variable}: that environment variable is not set")
    return password


def _keygen(args: argparse.Namespace) -> int:
    from edge.signing import fingerprint, generate_key_pair, load_public_keys

    private, public = generate_key_pair(args.out, _password(args.password_env))
    (key,) = load_public_keys(str(public))
    print(f"Private key written to {private} (mode 0600)")
    print(f"Public key written to {public} ({fingerprint(key)})")
    return 0


def _publisher() -> str:
    """Who publishes (the seed's `created_by`): EDGE_PUBLISHER, else the login name."""
    import getpass

    try:
        return os.environ.get("EDGE_PUBLISHER") or getpass.getuser()
    except (KeyError, OSError):  # no login name (a container's numeric user)
        return "unknown"


def _engine_url(engine_image: str | None, definition: Any, variant: str | None) -> str:
    """The publish's Engine URL: the image the chart runs (`--engine-image`, EDGE_IMAGE)."""
    from edge import chart

    return chart.engine_image(_chart_engine(definition), variant=variant, image=engine_image)


def _variant(definition: Any) -> str | None:
    """The image variant the pipeline's runtimes need (None: the cpu image)."""
    from edge.runtimes import image_variants

    variants = image_variants(m.runtime for m in definition.models.values())
    if len(variants) > 1:
        print(
            f"warning: the pipeline's runtimes need the {' and '.join(variants)} image variants "
            f"and no published image holds both; the chart names {variants[0]!r}: build an image "
            "with both extras and publish with --engine-image",
            file=sys.stderr,
        )
    return variants[0] if variants else None


def _chart_engine(definition: Any, placement: dict[str, Any] | None = None) -> dict[str, Any]:
    """The chart's engine values (cpus, memory, gpus, arch) from the pipeline's deployment,
    with the spec's replica_count and deployment_label (`placement`)."""
    d = definition.deployment
    return {"cpus": d.cpus, "memory": d.memory, "gpus": d.gpus, "arch": d.arch, **(placement or {})}


def _push_chart(
    args: argparse.Namespace, published: Any, definition: Any, variant: str | None
) -> dict[str, Any]:
    import tempfile

    from edge import chart

    with tempfile.TemporaryDirectory() as scratch:
        tgz = chart.build_chart(
            definition.name,
            published.pipeline_url,
            definition.version,
            _chart_engine(definition, published.placement),
            Path(scratch),
            image=args.engine_image,
            variant=variant,
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
        "helm_chart_url": f"oci://{ref.url}",
        "helm_chart_reference": f"{ref.url}@{ref.reference}",
        "helm_chart_version": ref.version,
    }


def _pull(args: argparse.Namespace) -> int:
    from edge.appliance import say
    from edge.cache import fetch_pipeline
    from edge.signing import load_public_keys

    keys = os.environ.get("PIPELINE_VERIFY_KEYS")
    local = fetch_pipeline(
        args.pipeline_url,
        Path(args.persist_dir),
        os.environ.get("OCI_USERNAME") or None,
        os.environ.get("OCI_PASSWORD") or None,
        echo=say,
        registry=os.environ.get("OCI_REGISTRY") or None,
        verify_keys=load_public_keys(keys) if keys else None,
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
    if args.valid is not None:
        params.append(("valid", args.valid))
    if args.pipeline_version:
        params.append(("pipeline_version", args.pipeline_version))
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
