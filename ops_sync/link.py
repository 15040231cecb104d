"""The appliance's link to the ops center: what `edge serve` and `edge publish` load through
the `edge_appliance.sync` entry point (pyproject.toml), so that edge never imports ops_sync.

It reads the EDGE_BUNDLE, builds the sync agent that runs beside the appliance, and registers
a publish with the ops center's admin API.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge.appliance import PipelineSwitch
from edge.logbuffer import LogBuffer
from ops_sync import protocol
from ops_sync.agent import SyncAgent
from ops_sync.errors import AdminAuthRequired


class OpsCenterLink:
    """`edge.appliance.SyncPlugin`, implemented by the ops center package."""

    def read_bundle(self, text: str) -> dict[str, str]:
        """The bundle's keys; PIPELINE_VERIFY_KEYS (pinned verify keys) as PEM text."""
        values = protocol.decode(text)
        keys = protocol.verify_keys_pem(values)
        if keys is not None:
            values[protocol.VERIFY_KEYS_KEY] = keys
        return values

    def companion(
        self,
        bundle: dict[str, str],
        persist_dir: Path,
        buffer: LogBuffer,
        health: Callable[[], dict[str, Any]],
        switch: PipelineSwitch | None = None,
        heartbeat_interval: float = 30.0,
    ) -> SyncAgent:
        return SyncAgent(
            bundle,
            persist_dir,
            buffer,
            health,
            heartbeat_interval=heartbeat_interval,
            switch=switch,
        )

    def register_publish(self, opscenter: str, record: dict[str, Any]) -> dict[str, Any]:
        """Register a publish (`edge publish --opscenter URL`'s record); the admin token and
        the ops center's CA come from `OPS_ADMIN_TOKEN` / `OPS_CA`."""
        from ops_sync.client import AdminClient

        token = os.environ.get("OPS_ADMIN_TOKEN")
        ca_file = Path(os.environ["OPS_CA"]) if os.environ.get("OPS_CA") else None
        if not token:
            raise AdminAuthRequired("set OPS_ADMIN_TOKEN to register a publish with the ops center")
        with AdminClient(opscenter, token, ca_file) as client:
            return client.register_publish(**record)


LINK = OpsCenterLink()
