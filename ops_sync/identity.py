"""The certificate authority, edge CSRs and certificates, SPIFFE-style ids, TLS contexts.

The ops center owns one CA (made on first start, key file 0600, or loaded from files). An edge
makes its key pair on the device and sends only a CSR; the CA signs a 7-day client certificate
whose one URI SAN is `spiffe://<trust-domain>/ns/deployments/edge/<edge-uuid>` (the seed's
`list_edges` shows `wallaroo.ai/ns/deployments/edge/<id>`: its trust domain and this path).
That URI is the edge's identity everywhere after the join. The trust domain is the ops center's
`--trust-domain` (default `ops-sync.local`); certificates issued under a former one still verify
while it is listed in `accepted_domains`, and renewals move each edge to the current one.
`build_ssl_context` is the one place TLS is set up, for the server and for clients alike.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import os
import re
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ops_sync.errors import IdentityError

EDGE_CERT_LIFETIME = 7 * 24 * 3600.0
CA_LIFETIME = 10 * 365 * 24 * 3600.0
CLOCK_SKEW = 300.0
DEFAULT_TRUST_DOMAIN = "ops-sync.local"
_EDGE_PATH = "/ns/deployments/edge/"
# SPIFFE's trust domain: lower-case letters, digits, '.', '-', '_' (no scheme, port or path)
TRUST_DOMAIN = re.compile(r"[a-z0-9._-]{1,255}")
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


@dataclass(frozen=True)
class EdgeIdentity:
    """Who a verified client certificate says is calling."""

    edge_id: str
    spiffe_id: str
    not_after: float
    key_fingerprint: str


def check_trust_domain(trust_domain: str) -> str:
    """`trust_domain` when it is a SPIFFE trust domain name, else an `IdentityError` saying so."""
    if not TRUST_DOMAIN.fullmatch(trust_domain) or trust_domain.strip(".") != trust_domain:
        raise IdentityError(
            f"trust domain {trust_domain!r} is not a SPIFFE trust domain: lower-case letters, "
            "digits, '.', '-' and '_' only, without spiffe:// or a path (e.g. example.org)"
        )
    return trust_domain


def spiffe_id(trust_domain: str, edge_id: str) -> str:
    return f"spiffe://{trust_domain}{_EDGE_PATH}{edge_id}"


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def load_key(pem: bytes) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise IdentityError("the key file does not hold an EC private key")
    return key


def make_csr(key: ec.EllipticCurvePrivateKey, name: str) -> bytes:
    """A CSR proving possession of `key`; the CA ignores its subject and sets its own."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name[:64] or "edge")])
    csr = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM)


def fingerprint(public_key: PublicKeyTypes) -> str:
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def load_cert(data: bytes) -> x509.Certificate:
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError as exc:
        raise IdentityError("not an X.509 certificate") from exc


def not_after(cert: x509.Certificate) -> float:
    return cert.not_valid_after_utc.timestamp()


def write_private(path: Path, data: bytes) -> None:
    """Write a secret file atomically with mode 0600 (never world- or group-readable)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def build_ssl_context(
    side: Literal["server", "client"],
    *,
    ca_pem: bytes | None = None,
    cert_file: Path | None = None,
    key_file: Path | None = None,
) -> ssl.SSLContext:
    """The one TLS setup. Server: our cert, client certs optional but verified against our CA
    (join and admin calls have none; edge routes demand one). Client: trust only `ca_pem`
    when given (the pin), else the system store; present `cert_file` when given."""
    if side == "server":
        if cert_file is None or key_file is None or ca_pem is None:
            raise IdentityError("a server TLS context needs a certificate, key and CA")
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert_file, key_file)
        ctx.load_verify_locations(cadata=ca_pem.decode("ascii"))
        ctx.verify_mode = ssl.CERT_OPTIONAL
    else:
        cadata = ca_pem.decode("ascii") if ca_pem else None
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=cadata)
        if cert_file is not None:
            ctx.load_cert_chain(cert_file, key_file)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def _when(seconds: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(seconds, dt.UTC)


class CertificateAuthority:
    """Signs edge and server certificates; verifies edge certificates it signed."""

    def __init__(
        self,
        cert: x509.Certificate,
        key: ec.EllipticCurvePrivateKey,
        trust_domain: str,
        accepted_domains: tuple[str, ...] = (),
    ) -> None:
        self.cert = cert
        self.key = key
        self.trust_domain = check_trust_domain(trust_domain)
        # former trust domains whose certificates still verify (a migration: see the module doc)
        self.accepted_domains = tuple(check_trust_domain(d) for d in accepted_domains)
        self.pem = cert_pem(cert)

    @classmethod
    def load_or_create(
        cls,
        cert_path: Path,
        key_path: Path,
        trust_domain: str,
        now: float,
        accepted_domains: tuple[str, ...] = (),
    ) -> CertificateAuthority:
        """Load the CA from its files, or make one (key 0600) when neither file exists."""
        if cert_path.exists() or key_path.exists():
            try:
                cert = load_cert(cert_path.read_bytes())
                key = load_key(key_path.read_bytes())
            except (OSError, ValueError) as exc:
                raise IdentityError(f"cannot load the CA from {cert_path} and {key_path}") from exc
            if fingerprint(cert.public_key()) != fingerprint(key.public_key()):
                raise IdentityError(f"{key_path} is not the key of {cert_path}")
            return cls(cert, key, trust_domain, accepted_domains)
        check_trust_domain(trust_domain)  # before a CA is made for it
        key = new_key()
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"ops-sync CA {trust_domain}")])
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_when(now - CLOCK_SKEW))
            .not_valid_after(_when(now + CA_LIFETIME))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        key_path.parent.mkdir(parents=True, exist_ok=True)
        write_private(key_path, key_pem(key))
        cert_path.write_bytes(cert_pem(cert))
        return cls(cert, key, trust_domain, accepted_domains)

    def _builder(
        self, public_key: ec.EllipticCurvePublicKey, cn: str, now: float, life: float
    ) -> x509.CertificateBuilder:
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(_when(now - CLOCK_SKEW))
            .not_valid_after(_when(now + life))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), False
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), False)
        )

    def issue_edge(
        self, csr_pem: bytes, edge_id: str, now: float, lifetime: float = EDGE_CERT_LIFETIME
    ) -> x509.Certificate:
        """Sign a client certificate for `edge_id` over the CSR's key (its subject is ignored)."""
        public_key = csr_public_key(csr_pem)
        uri = x509.UniformResourceIdentifier(spiffe_id(self.trust_domain, edge_id))
        return (
            self._builder(public_key, edge_id, now, lifetime)
            .add_extension(x509.SubjectAlternativeName([uri]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False)
            .sign(self.key, hashes.SHA256())
        )

    def issue_server(self, hosts: list[str], now: float) -> tuple[bytes, bytes]:
        """A server certificate (PEM) and key (PEM) for `hosts` (names or IP addresses)."""
        key = new_key()
        names: list[x509.GeneralName] = []
        for host in dict.fromkeys(hosts):
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        cert = (
            self._builder(key.public_key(), hosts[0], now, CA_LIFETIME / 10)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
            .sign(self.key, hashes.SHA256())
        )
        return cert_pem(cert), key_pem(key)

    def verify_edge(self, cert: x509.Certificate) -> EdgeIdentity:
        """Check that we signed `cert` for an edge; return who it names (expiry is the caller's)."""
        try:
            cert.verify_directly_issued_by(self.cert)
        except (ValueError, TypeError, InvalidSignature) as exc:
            raise IdentityError("the client certificate was not issued by this ops center") from exc
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound as exc:
            raise IdentityError("the client certificate has no SPIFFE id") from exc
        prefixes = [
            f"spiffe://{domain}{_EDGE_PATH}"
            for domain in (self.trust_domain, *self.accepted_domains)
        ]
        for uri in san.get_values_for_type(x509.UniformResourceIdentifier):
            for prefix in prefixes:
                edge_id = uri.removeprefix(prefix)
                if uri.startswith(prefix) and _UUID.match(edge_id):
                    return EdgeIdentity(
                        edge_id=edge_id,
                        spiffe_id=uri,
                        not_after=not_after(cert),
                        key_fingerprint=fingerprint(cert.public_key()),
                    )
        raise IdentityError("the client certificate names no edge of this trust domain")


def csr_public_key(csr_pem: bytes) -> ec.EllipticCurvePublicKey:
    """The key of a well-formed, self-signed CSR (EC P-256 or larger)."""
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError as exc:
        raise IdentityError("the CSR is not a PEM certificate signing request") from exc
    if not csr.is_signature_valid:
        raise IdentityError("the CSR's signature does not verify")
    key = csr.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.key_size < 256:
        raise IdentityError("the CSR must carry an EC key of at least 256 bits")
    return key
