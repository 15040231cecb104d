"""The ops center's operations, without HTTP: admin, join, renew, heartbeat, log upload.

`server.py` parses requests and calls these; they raise `ops_sync.errors` and never know a
status code. Every edge operation starts from `authenticate(cert)`: the edge's identity, publish
and partition come from its certificate and our records, never from what it sends.
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge.httpio import Fields, bounded_int
from ops_sync import protocol, rollout
from ops_sync.assays.service import Assays
from ops_sync.errors import (
    AdminAuthRequired,
    BadRequest,
    CertificateRequired,
    CredentialsExpired,
    EdgeRemoved,
    IdentityError,
    NotFound,
    StoreError,
)
from ops_sync.identity import (
    DEFAULT_TRUST_DOMAIN,
    EDGE_CERT_LIFETIME,
    CertificateAuthority,
    EdgeIdentity,
    cert_pem,
    csr_public_key,
    fingerprint,
    load_cert,
    not_after,
    spiffe_id,
)
from ops_sync.logstore import LogStore, Upload
from ops_sync.metrics import Metrics
from ops_sync.protocol import token_digest
from ops_sync.store import Store

SILENCE_LIMIT = 7 * 24 * 3600.0
# Names are matched whole (`fullmatch`: `$` would let a trailing newline through).
EDGE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
PIPELINE_NAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")  # DNS-style, as edge.spec
PIPELINE_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
# a pipeline URL goes into the EDGE_BUNDLE's shell lines: no spaces, quotes or shell syntax
PIPELINE_URL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,1023}")
WORKSPACE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # goes into the bundle too
DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
PIPELINE_REF = re.compile(r"/pipelines/(?P<name>[a-z0-9][a-z0-9-]*):(?P<version>[\w.-]+)\Z")
DROP_COUNT_MAX = 2**62  # drop counters are int64 in the store (summed over epochs)
UPKEEP_LEASE = 600.0  # seconds a replica holds the compaction lease for


class OpsCenter:
    """Metadata, log files and the CA under one data directory."""

    def __init__(
        self,
        data_dir: Path,
        admin_token: str,
        public_host: str,
        *,
        trust_domain: str = DEFAULT_TRUST_DOMAIN,
        accepted_domains: tuple[str, ...] = (),
        clock: Callable[[], float] = time.time,
        ca_files: tuple[Path, Path] | None = None,
        metadata_url: str | None = None,
        logs_url: str | None = None,
        commit_interval: float = 0.25,
        verify_keys: str | None = None,
    ) -> None:
        if not admin_token:
            raise AdminAuthRequired("the ops center needs an admin token to start")
        self.clock = clock
        self.public_host = public_host
        self.verify_keys = verify_keys  # PEM public keys pinned in every bundle minted
        self._admin = hashlib.sha256(admin_token.encode()).digest()
        self.metrics = Metrics()
        self.store = Store(metadata_url or data_dir / "ops.db")
        self.logs = LogStore(
            logs_url or data_dir / "tables",
            self.store,
            metrics=self.metrics,
            commit_interval=commit_interval,
        )
        self.assays = Assays(self.store, self.logs, clock)
        cert_file, key_file = ca_files or (data_dir / "ca.crt", data_dir / "ca.key")
        # The CA's validity is a TLS matter: real time, whatever the (test) clock says.
        self.ca = CertificateAuthority.load_or_create(
            cert_file, key_file, trust_domain, time.time(), accepted_domains
        )
        if ca_files:
            (data_dir / "ca.crt").write_bytes(self.ca.pem)

    def close(self) -> None:
        self.logs.close()
        self.store.close()

    def readiness(self) -> dict[str, str]:
        """ "ok" or what is wrong, for the metadata database and the log store."""
        checks: dict[str, str] = {}
        for name, check in (("metadata", self.store.ping), ("logs", self.logs.check)):
            try:
                check()
                checks[name] = "ok"
            except StoreError as exc:
                checks[name] = str(exc)
        return checks

    def upkeep(self, owner: str, retention_days: int | None) -> dict[str, int]:
        """One round of compaction and retention, by the replica holding the upkeep lease."""
        now = self.clock()
        if not self.store.take_lease("upkeep", owner, now, UPKEEP_LEASE):
            return {}
        compacted = self.logs.compact()
        deleted = self.logs.expire(retention_days, now)
        return {"compacted": compacted, "deleted": deleted}

    @functools.lru_cache(maxsize=4096)  # noqa: B019 (one center per process, kept till exit)
    def _verified(self, peer_cert: str) -> EdgeIdentity:
        """Parse and check a client certificate once; edges present the same one for days."""
        return self.ca.verify_edge(load_cert(peer_cert.encode()))

    # -- admin -----------------------------------------------------------------------------
    def check_admin(self, authorization: str | None) -> None:
        presented = (authorization or "").removeprefix("Bearer ").strip()
        digest = hashlib.sha256(presented.encode()).digest()
        if not presented or not hmac.compare_digest(digest, self._admin):
            raise AdminAuthRequired("admin calls need `Authorization: Bearer <admin token>`")

    def register_publish(self, body: dict[str, Any]) -> dict[str, Any]:
        """Register a publish record (`edge publish`'s); every field is checked here."""
        fields = Fields(body, "publish", BadRequest)
        url = fields.text("pipeline_url", pattern=PIPELINE_URL, hint=_URL_HINT)
        assert url is not None
        match = PIPELINE_REF.search(url)
        name = fields.text("pipeline_name", required=False, pattern=PIPELINE_NAME, hint=_DNS)
        version = fields.text("pipeline_version", required=False, pattern=PIPELINE_VERSION)
        name = name or (match.group("name") if match else None)
        version = version or (match.group("version") if match else None)
        if not name or not version:
            raise BadRequest(
                "pipeline_name and pipeline_version are needed when pipeline_url is not "
                "<registry>/<repo>/pipelines/<name>:<version>"
            )
        if not PIPELINE_NAME.fullmatch(name):
            raise BadRequest(f"publish: pipeline name {name!r} is not valid{_DNS}")
        helm = fields.mapping("helm")
        if helm is None and fields.text("helm_chart_url", required=False):
            helm = {
                "url": fields.text("helm_chart_url", required=False),
                "reference": fields.text("helm_chart_reference", required=False),
                "version": fields.text("helm_chart_version", required=False),
            }
        record = {
            "pipeline_url": url,
            "pipeline_name": name,
            "pipeline_version": version,
            "engine_url": fields.text("engine_url", required=False),
            "helm": helm,
            "engine_config": fields.mapping("engine_config"),
            "workspace_id": fields.text(
                "workspace_id", required=False, max_len=64, pattern=WORKSPACE_ID, hint=_WS_HINT
            ),
            "created_by": fields.text("created_by", required=False, max_len=254),
            "manifest_digest": fields.text(
                "manifest_digest", required=False, pattern=DIGEST, hint=" (sha256:<64 hex>)"
            ),
        }
        return self.store.register_publish(record, self.clock())

    def publish(self, body: dict[str, Any]) -> dict[str, Any]:
        """Register a publish (`register_publish`) and return it in the seed's shape."""
        return _publish_record(self.register_publish(body))

    def add_edge(
        self,
        name: str,
        pipeline_url: str,
        tags: list[str],
        additional_properties: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Enrol an edge on a publish; return the publish record with its EDGE_BUNDLE."""
        if not EDGE_NAME.fullmatch(name):
            raise BadRequest(f"edge name {name!r}: use letters, digits, '.', '_', '-' (max 63)")
        try:
            publish = self.store.publish_by_url(pipeline_url)
        except NotFound:
            publish = self.register_publish({"pipeline_url": pipeline_url})
        token = secrets.token_urlsafe(32)
        values = {
            "BUNDLE_VERSION": "1",
            "EDGE_NAME": name,
            "JOIN_TOKEN": token,
            "OPSCENTER_HOST": self.public_host,
            "PIPELINE_URL": publish["pipeline_url"],
            "WORKSPACE_ID": publish["workspace_id"],
            protocol.CA_KEY: _b64(self.ca.pem),
        }
        if self.verify_keys:
            values[protocol.VERIFY_KEYS_KEY] = _b64(self.verify_keys.encode())
        edge_bundle = protocol.encode(values)  # before the edge is stored: a bad value stores none
        edge = self.store.add_edge(
            name, publish["id"], list(tags), token_digest(token), self.clock(),
            additional_properties,
        )  # fmt: skip
        return {
            **_publish_record(publish),
            "docker_run_variables": {"EDGE_BUNDLE": edge_bundle},
            "edge": self._edge_view(edge),
        }

    def remove_edge(self, name: str) -> None:
        """Revoke an edge; like the seed's `remove_edge`, nothing is returned."""
        self.store.remove_edge(name, self.clock())

    def list_edges(
        self, publish_id: int | None = None, pipeline: str | None = None
    ) -> list[dict[str, Any]]:
        """Enrolled edges: all, one publish's, or those of one pipeline's publishes."""
        return [self._edge_view(e) for e in self.store.edges(publish_id, pipeline)]

    def rollout(self, body: dict[str, Any]) -> dict[str, Any]:
        """Set the desired version (a registered publish's URL) of one edge, or of a tag's
        edges (a stable `percent` of them); each learns it at its next heartbeat."""
        fields = Fields(body, "rollout", BadRequest)
        url = fields.text("pipeline_url", pattern=PIPELINE_URL, hint=_URL_HINT)
        edge = fields.text("edge", required=False, max_len=63)
        tag = fields.text("tag", required=False, max_len=128)
        percent = fields.integer("percent", 1, 100)
        assert url is not None
        try:
            publish = self.store.publish_by_url(url)
        except NotFound:
            raise NotFound(
                f"rollout: no publish is registered for {url}; publish it with `edge publish "
                "--opscenter` (or `ops-sync publishes --register URL`) first"
            ) from None
        chosen = rollout.choose(self.store.edges(), edge, tag, percent)
        others = sorted(e["name"] for e in chosen if e["pipeline_name"] != publish["pipeline_name"])
        if others:  # its rows would be refused: an edge's logs belong to its own pipeline
            raise BadRequest(
                f"rollout: {url} is pipeline {publish['pipeline_name']!r}, but edge(s) "
                f"{', '.join(others[:5])} serve another pipeline; roll out a version of their "
                "own pipeline, or add them again for this one"
            )
        now = self.clock()
        self.store.set_desired([e["id"] for e in chosen], publish["id"], now)
        return {
            "pipeline_url": publish["pipeline_url"],
            "pipeline_version": publish["pipeline_version"],
            "digest": publish["manifest_digest"],
            "set_at": _iso(now),
            "edges": [e["name"] for e in chosen],
        }

    def publishes(self) -> list[dict[str, Any]]:
        return [_publish_record(p) for p in self.store.publishes()]

    def _edge_view(self, edge: dict[str, Any]) -> dict[str, Any]:
        now = self.clock()
        if edge["removed_at"] is not None:
            credentials = "revoked"
        elif edge["joined_at"] is None:
            credentials = "not joined"
        elif now - (edge["last_seen"] or 0) > SILENCE_LIMIT:
            credentials = "expired"
        else:
            credentials = "valid"
        cpus, memory = _resources(edge["engine_config"])
        return {
            "id": edge["id"],
            "name": edge["name"],
            "tags": edge["tags"],
            "cpus": cpus,
            "memory": memory,
            "publish_id": edge["publish_id"],
            "pipeline_name": edge["pipeline_name"],
            "pipeline_version": edge["pipeline_version"],
            "pipeline_version_id": edge["pipeline_version_id"],
            "additional_properties": edge["additional_properties"],
            "spiffe_id": spiffe_id(self.ca.trust_domain, edge["id"]),
            "created_at": _iso(edge["created_at"]),
            "joined_at": _iso(edge["joined_at"]),
            "last_seen": _iso(edge["last_seen"]),
            "credentials": credentials,
            "health": edge["health"],
            "dropped": edge["dropped"],
            **rollout.views(edge),
        }

    # -- edge ------------------------------------------------------------------------------
    def join(self, token: str, csr: bytes) -> dict[str, Any]:
        """Redeem a join token for a certificate over the CSR's key (token consumed)."""
        if not token:
            raise BadRequest("the join request carries no token")
        key_fp = fingerprint(csr_public_key(csr))
        now = self.clock()

        def issue(edge: dict[str, Any]) -> dict[str, Any]:
            cert = self.ca.issue_edge(csr, edge["id"], now)
            return {
                "edge_id": edge["id"],
                "edge_name": edge["name"],
                "spiffe_id": spiffe_id(self.ca.trust_domain, edge["id"]),
                "certificate": cert_pem(cert).decode(),
                "ca_certificate": self.ca.pem.decode(),
                "not_after": not_after(cert),
            }

        joined = self.store.redeem(token_digest(token), key_fp, now, issue)
        self.store.touch(joined["edge_id"], now, cert_not_after=joined["not_after"])
        return joined

    def authenticate(self, peer_cert: str | None) -> dict[str, Any]:
        """The enrolled, live edge a verified client certificate names."""
        if not peer_cert:
            raise CertificateRequired("edge calls need the client certificate from the join")
        try:
            identity = self._verified(peer_cert)
            edge = self.store.edge(identity.edge_id)
        except (IdentityError, NotFound) as exc:
            raise CertificateRequired(f"the client certificate is not usable: {exc}") from exc
        now = self.clock()
        if edge["removed_at"] is not None:
            raise EdgeRemoved(f"edge {edge['name']!r} was removed; add it again for a new bundle")
        silent = now - (edge["last_seen"] or edge["created_at"])
        if now > identity.not_after or silent > SILENCE_LIMIT:
            raise CredentialsExpired(
                f"edge {edge['name']!r} has been silent for more than 7 days (or its certificate "
                "expired); remove and add it again for a new bundle"
            )
        edge["key_fingerprint"] = identity.key_fingerprint
        return edge

    def renew(self, edge: dict[str, Any], csr: bytes) -> dict[str, Any]:
        """A fresh 7-day certificate for the same device key."""
        if fingerprint(csr_public_key(csr)) != edge["key_fingerprint"]:
            raise BadRequest("the renewal CSR must use the key of the presented certificate")
        now = self.clock()
        cert = self.ca.issue_edge(csr, edge["id"], now, EDGE_CERT_LIFETIME)
        self.store.touch(edge["id"], now, cert_not_after=not_after(cert))
        return {
            "certificate": cert_pem(cert).decode(),
            "not_after": not_after(cert),
            "spiffe_id": spiffe_id(self.ca.trust_domain, edge["id"]),  # the current domain's
        }

    def heartbeat(self, edge: dict[str, Any], report: dict[str, Any]) -> dict[str, Any]:
        now = self.clock()
        buffer = report.get("buffer")
        buffer = buffer if isinstance(buffer, dict) else {}
        dropped = buffer.get("dropped")
        epoch = buffer.get("epoch")
        drops = None
        if isinstance(dropped, dict) and isinstance(epoch, str) and protocol.EPOCH.fullmatch(epoch):
            counts = {
                reason: bounded_int(
                    count, f"heartbeat: dropped {reason!r}", 0, DROP_COUNT_MAX, BadRequest
                )
                for reason, count in dropped.items()
                if isinstance(reason, str) and len(reason) <= 64
            }
            drops = (epoch, counts)
        self.store.heartbeat(edge["id"], now, report, drops)  # and the dashboard's history
        return {
            "ok": True,
            "edge_id": edge["id"],
            "server_time": now,
            "desired": rollout.desired_view(edge),  # the edge rolls it out when it differs
        }

    def begin_upload(
        self,
        edge: dict[str, Any],
        batch: protocol.BatchRange,
        body: bytes,
        coding: str | None = None,
        limit: int = protocol.MAX_BODY,
    ) -> Upload:
        """Decode (`protocol.decode_batch`: `coding` is the body's Content-Encoding, `limit`
        its decoded size at most) and check the batch, and queue it for its table's next
        commit (the route then waits for it on the event loop, `ops_sync.server.committed`)."""
        table = protocol.decode_batch(body, coding, limit)
        return self.logs.submit(
            edge, batch.epoch, batch.first_seq, batch.last_seq, table, self.clock()
        )

    def finish_upload(self, batch: protocol.BatchRange, upload: Upload) -> dict[str, Any]:
        """The ack, once the commit holding `upload` is done (a StoreError if it is not)."""
        result = self.logs.outcome(upload)
        return {
            "epoch": batch.epoch,
            "first_seq": batch.first_seq,
            "last_seq": batch.last_seq,
            "stored": result.stored,
            "duplicates": result.duplicates,
        }


_DNS = " (lower-case letters, digits and '-', at most 63)"
_WS_HINT = " (letters, digits, '.', '_', '-': it goes into the EDGE_BUNDLE)"
_URL_HINT = " (a pipeline URL: no spaces, quotes or shell characters)"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _iso(seconds: float | None) -> str | None:
    return dt.datetime.fromtimestamp(seconds, dt.UTC).isoformat() if seconds else None


def _publish_record(publish: dict[str, Any]) -> dict[str, Any]:
    """A publish in the seed's shape (`wallaroo.pipeline_publish`)."""
    return {
        "id": publish["id"],
        "pipeline_name": publish["pipeline_name"],
        "pipeline_version": publish["pipeline_version"],
        "pipeline_version_name": publish["pipeline_version"],
        "pipeline_version_id": publish["pipeline_version_id"],
        "pipeline_url": publish["pipeline_url"],
        "engine_url": publish["engine_url"],
        "helm": publish["helm"],
        "engine_config": publish["engine_config"],
        "workspace_id": publish["workspace_id"],
        "status": "Published",
        "user_images": [],
        "error": None,
        "docker_run_variables": {},
        "created_by": publish["created_by"],
        "manifest_digest": publish["manifest_digest"],
        "created_at": _iso(publish["created_at"]),
        "updated_at": _iso(publish["updated_at"]),
    }


def _resources(engine_config: dict[str, Any] | None) -> tuple[float | None, str | None]:
    """The engine's cpus and memory from a publish's engine config (the seed's shape,
    `engine.resources.limits`, or the flat `cpus` / `memory`); None where it names none."""
    config = engine_config if isinstance(engine_config, dict) else {}
    engine = config.get("engine")
    resources = engine.get("resources") if isinstance(engine, dict) else None
    limits = resources.get("limits") if isinstance(resources, dict) else None
    limits = limits if isinstance(limits, dict) else {}
    cpus = limits.get("cpu", config.get("cpus"))
    memory = limits.get("memory", config.get("memory"))
    number = isinstance(cpus, int | float) and not isinstance(cpus, bool)
    return (float(cpus) if number and cpus is not None else None), (
        str(memory) if memory is not None else None
    )
