"""The edge's credentials on disk: its key, its certificate, the pinned CA, what it redeemed.

    <persist>/ops_sync/edge.key    device key (EC P-256), made here, never sent; mode 0600
    <persist>/ops_sync/edge.crt    the current 7-day certificate; mode 0600
    <persist>/ops_sync/ca.crt      the ops center CA returned by the join
    <persist>/ops_sync/state.json  edge id, SPIFFE id, sha256 of the redeemed join token

`state.json` is what makes a restart never redeem again: the bundle's token is "already
redeemed" when its sha256 matches. A different token (a new bundle) means a new join.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from ops_sync.errors import IdentityError
from ops_sync.identity import key_pem, load_cert, load_key, new_key, not_after, write_private


@dataclass
class Credentials:
    """What a joined edge holds; `cert_not_after` in epoch seconds."""

    edge_id: str
    edge_name: str
    spiffe_id: str
    token_sha256: str
    cert_not_before: float
    cert_not_after: float


class CredentialFiles:
    def __init__(self, persist_dir: Path) -> None:
        self.dir = persist_dir / "ops_sync"
        self.key = self.dir / "edge.key"
        self.cert = self.dir / "edge.crt"
        self.ca = self.dir / "ca.crt"
        self.state = self.dir / "state.json"

    def device_key(self) -> ec.EllipticCurvePrivateKey:
        """The device key, made (0600) on first use; kept across joins and renewals."""
        if self.key.exists():
            return load_key(self.key.read_bytes())
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)
        key = new_key()
        write_private(self.key, key_pem(key))
        return key

    def load(self) -> Credentials | None:
        """The stored credentials, or None when this device never completed a join."""
        if not (self.state.exists() and self.cert.exists() and self.key.exists()):
            return None
        try:
            state: dict[str, Any] = json.loads(self.state.read_text())
            cert = load_cert(self.cert.read_bytes())
            return Credentials(
                edge_id=state["edge_id"],
                edge_name=state["edge_name"],
                spiffe_id=state["spiffe_id"],
                token_sha256=state["token_sha256"],
                cert_not_before=cert.not_valid_before_utc.timestamp(),
                cert_not_after=not_after(cert),
            )
        except (OSError, ValueError, KeyError, IdentityError) as exc:
            raise IdentityError(
                f"the stored credentials in {self.dir} are unreadable: {exc}"
            ) from exc

    def save_join(self, joined: dict[str, Any], token_sha256: str) -> Credentials:
        self.save_cert(joined["certificate"].encode())
        self.ca.write_bytes(joined["ca_certificate"].encode())
        state = {
            "edge_id": joined["edge_id"],
            "edge_name": joined["edge_name"],
            "spiffe_id": joined["spiffe_id"],
            "token_sha256": token_sha256,
        }
        write_private(self.state, json.dumps(state, indent=2).encode())
        credentials = self.load()
        assert credentials is not None
        return credentials

    def save_spiffe_id(self, spiffe_id: str) -> None:
        """A renewal under a new trust domain: the id the new certificate carries."""
        state: dict[str, Any] = json.loads(self.state.read_text())
        if state.get("spiffe_id") != spiffe_id:
            state["spiffe_id"] = spiffe_id
            write_private(self.state, json.dumps(state, indent=2).encode())

    def save_cert(self, pem: bytes) -> None:
        load_cert(pem)  # refuse to store something that is not a certificate
        write_private(self.cert, pem)
