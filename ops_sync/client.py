"""The admin API's client (used by the CLI and by `edge publish --opscenter`).

Every call has a finite timeout; the server is verified against the ops center CA (`ca_file`,
the `ca.crt` `ops-sync serve` writes) or the system store. Error replies come back as the
`ops_sync.errors` class the server named, so callers catch the same types on both sides.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from ops_sync.errors import REFUSALS, SyncError, Unreachable
from ops_sync.identity import build_ssl_context

TIMEOUT = httpx.Timeout(30.0, connect=5.0)


def check(response: httpx.Response) -> httpx.Response:
    """Return a 2xx reply; raise the error class the server named for anything else."""
    if response.is_success:
        return response
    try:
        body = response.json()
        message, reason = str(body["error"]), str(body.get("reason", ""))
    except (ValueError, KeyError, TypeError):
        message, reason = f"HTTP {response.status_code} from {response.url}", ""
    raise REFUSALS.get(reason, SyncError)(message)


def _caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, kind):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def warnings_of(response: httpx.Response) -> list[str]:
    return response.headers.get_list("x-ops-warning")


class AdminClient:
    def __init__(
        self,
        url: str,
        admin_token: str,
        ca_file: Path | None = None,
        *,
        transport: httpx.BaseTransport | None = None,
        timeout: httpx.Timeout = TIMEOUT,
    ) -> None:
        ca_pem = ca_file.read_bytes() if ca_file else None
        verify = build_ssl_context("client", ca_pem=ca_pem)
        self._http = httpx.Client(
            base_url=url.rstrip("/"),
            headers={"authorization": f"Bearer {admin_token}"},
            verify=verify,
            timeout=timeout,
            transport=transport,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return check(self._http.request(method, path, **kwargs))
        except httpx.TransportError as exc:
            if _caused_by(exc, ssl.SSLCertVerificationError):
                raise Unreachable(
                    f"cannot verify the certificate of {self._http.base_url}: pass the ops "
                    "center's CA (DATA/ca.crt from `ops-sync serve`) with --ca or OPS_CA"
                ) from exc
            raise Unreachable(
                f"the ops center at {self._http.base_url} did not answer: {exc}"
            ) from exc

    def register_publish(self, **record: Any) -> dict[str, Any]:
        """Register a publish: pipeline_url (and pipeline_name, pipeline_version, engine_url,
        helm, engine_config, workspace_id when known)."""
        result: dict[str, Any] = self._call("POST", "/v1/publishes", json=record).json()
        return result

    def publishes(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._call("GET", "/v1/publishes").json()["publishes"]
        return result

    def add_edge(
        self,
        name: str,
        pipeline_url: str,
        tags: list[str] | None = None,
        additional_properties: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"name": name, "pipeline_url": pipeline_url, "tags": tags or []}
        if additional_properties is not None:
            body["additional_properties"] = additional_properties
        result: dict[str, Any] = self._call("POST", "/v1/edges", json=body).json()
        return result

    def remove_edge(self, name: str) -> None:
        """Revoke an edge. Returns nothing (HTTP 204), as the seed's `remove_edge`."""
        self._call("DELETE", f"/v1/edges/{name}")

    def rollout(
        self,
        pipeline_url: str,
        *,
        edge: str | None = None,
        tag: str | None = None,
        percent: int | None = None,
    ) -> dict[str, Any]:
        """Set the desired version of one edge or of a tag's edges (a stable `percent`)."""
        body = {"pipeline_url": pipeline_url, "edge": edge, "tag": tag, "percent": percent}
        body = {k: v for k, v in body.items() if v is not None}
        reply = self._call("POST", "/v1/rollouts", json=body)
        result: dict[str, Any] = reply.json()
        return result

    def list_edges(
        self, publish_id: int | None = None, pipeline: str | None = None
    ) -> list[dict[str, Any]]:
        """Enrolled edges: all, one publish's (`publish_id`) or one pipeline's publishes'."""
        query = {k: v for k, v in (("publish_id", publish_id), ("pipeline", pipeline)) if v}
        response = self._call("GET", "/v1/edges", params=query)
        result: list[dict[str, Any]] = response.json()["edges"]
        return result

    def logs(
        self, pipeline: str, *, arrow: bool = False, export: bool = False, **params: Any
    ) -> tuple[bytes, list[str]]:
        """Logs as pandas-records JSON (or NDJSON when exporting) or an Arrow file, and the
        warnings. `params`: limit, start_datetime, end_datetime, dataset, dataset_exclude,
        dataset_separator, partition, data_size_limit (export only)."""
        query = {k: v for k, v in params.items() if v is not None}
        headers = {"accept": "application/vnd.apache.arrow.file"} if arrow else {}
        path = f"/v1/pipelines/{pipeline}/logs" + ("/export" if export else "")
        response = self._call("GET", path, params=query, headers=headers)
        return response.content, warnings_of(response)

    def export_logs(
        self,
        pipeline: str,
        directory: Path,
        file_prefix: str | None = None,
        *,
        arrow: bool = False,
        **params: Any,
    ) -> tuple[list[Path], list[str]]:
        """The seed's `export_logs`: the pipeline's logs as files in `directory` (made if
        missing), one per pipeline version that has rows, the latest published first:
        `{file_prefix}-1.json`, `-2.json`, ... (NDJSON; `.arrow` files with `arrow`).
        `file_prefix` defaults to the pipeline's name; `params` as for `logs` (limit, times,
        datasets, partition, valid, data_size_limit: each applies to each file). With
        `pipeline_version`, that version's file only. The files written, and the warnings."""
        import io

        import pyarrow as pa

        chosen = params.pop("pipeline_version", None)
        if chosen:
            versions = [str(chosen)]
        else:
            published = [p for p in self.publishes() if p.get("pipeline_name") == pipeline]
            published.sort(key=lambda p: p["id"], reverse=True)
            versions = list(dict.fromkeys(str(p["pipeline_version"]) for p in published))
        directory.mkdir(parents=True, exist_ok=True)
        written: list[Path] = []
        warnings: list[str] = []
        for version in versions:
            body, notes = self.logs(
                pipeline, arrow=arrow, export=True, pipeline_version=version, **params
            )
            if arrow:
                empty = pa.ipc.open_file(io.BytesIO(body)).read_all().num_rows == 0
            else:
                empty = not body.strip()
            if empty:
                continue
            warnings += [w for w in notes if w not in warnings]
            path = directory / f"{file_prefix or pipeline}-{len(written) + 1}"
            path = path.with_name(path.name + (".arrow" if arrow else ".json"))
            path.write_bytes(body)
            written.append(path)
        return written, warnings

    # -- assays ----------------------------------------------------------------------------
    def create_assay(self, definition: dict[str, Any]) -> dict[str, Any]:
        """Create an assay (`ops_sync.assays.definition` says what a definition holds)."""
        result: dict[str, Any] = self._call("POST", "/v1/assays", json=definition).json()
        return result

    def assays(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._call("GET", "/v1/assays").json()["assays"]
        return result

    def assay(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", f"/v1/assays/{quote(name)}").json()
        return result

    def run_assay(
        self, name: str, start: str | None = None, end: str | None = None
    ) -> list[dict[str, Any]]:
        """An interactive run over start..end (ISO 8601); its results, oldest window first."""
        body = {k: v for k, v in (("start", start), ("end", end)) if v}
        response = self._call("POST", f"/v1/assays/{quote(name)}/run", json=body)
        result: list[dict[str, Any]] = response.json()["results"]
        return result

    def assay_results(
        self,
        name: str,
        start: str | None = None,
        end: str | None = None,
        limit: int | None = None,
        *,
        arrow: bool = False,
    ) -> Any:
        """Stored results, newest window first: a list of dicts, or Arrow file bytes."""
        query = {k: v for k, v in (("start", start), ("end", end), ("limit", limit)) if v}
        headers = {"accept": "application/vnd.apache.arrow.file"} if arrow else {}
        path = f"/v1/assays/{quote(name)}/results"
        response = self._call("GET", path, params=query, headers=headers)
        return response.content if arrow else response.json()["results"]

    def assay_baseline(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", f"/v1/assays/{quote(name)}/baseline").json()
        return result

    def set_assay_active(self, name: str, active: bool) -> dict[str, Any]:
        """Resume (`active`) or pause an assay's scheduled runs."""
        action = "resume" if active else "pause"
        result: dict[str, Any] = self._call("POST", f"/v1/assays/{quote(name)}/{action}").json()
        return result

    def delete_assay(self, name: str) -> None:
        self._call("DELETE", f"/v1/assays/{quote(name)}")
