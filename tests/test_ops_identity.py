"""The CA, edge certificates and the one TLS context builder."""

from __future__ import annotations

import ssl
import stat
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ops_sync.errors import IdentityError
from ops_sync.identity import (
    EDGE_CERT_LIFETIME,
    CertificateAuthority,
    build_ssl_context,
    cert_pem,
    make_csr,
    new_key,
    spiffe_id,
)

EDGE_ID = "898bb58c-77c2-4164-b6cc-f004dc39e125"


def make_ca(tmp_path: Path, domain: str = "ops.test") -> CertificateAuthority:
    return CertificateAuthority.load_or_create(
        tmp_path / "ca.crt", tmp_path / "ca.key", domain, time.time()
    )


def test_ca_is_made_once_with_a_private_key_file(tmp_path: Path) -> None:
    ca = make_ca(tmp_path)
    assert stat.S_IMODE((tmp_path / "ca.key").stat().st_mode) == 0o600
    again = make_ca(tmp_path)
    assert again.pem == ca.pem == (tmp_path / "ca.crt").read_bytes()
    constraints = ca.cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert constraints.ca


def test_ca_refuses_a_key_that_is_not_its_own(tmp_path: Path) -> None:
    make_ca(tmp_path / "a")
    make_ca(tmp_path / "b")
    with pytest.raises(IdentityError, match="not the key"):
        CertificateAuthority.load_or_create(
            tmp_path / "a" / "ca.crt", tmp_path / "b" / "ca.key", "ops.test", time.time()
        )


def test_edge_certificate_carries_only_the_spiffe_identity(tmp_path: Path) -> None:
    ca = make_ca(tmp_path)
    now = time.time()
    cert = ca.issue_edge(make_csr(new_key(), "edge-a"), EDGE_ID, now)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    assert uris == [f"spiffe://ops.test/ns/deployments/edge/{EDGE_ID}"]
    assert uris[0] == spiffe_id("ops.test", EDGE_ID)
    life = cert.not_valid_after_utc.timestamp() - now
    assert abs(life - EDGE_CERT_LIFETIME) < 1
    identity = ca.verify_edge(cert)
    assert identity.edge_id == EDGE_ID


def test_verify_edge_rejects_other_cas_and_other_trust_domains(tmp_path: Path) -> None:
    ours, theirs = make_ca(tmp_path / "a"), make_ca(tmp_path / "b")
    foreign = theirs.issue_edge(make_csr(new_key(), "x"), EDGE_ID, time.time())
    with pytest.raises(IdentityError, match="not issued by this ops center"):
        ours.verify_edge(foreign)
    other_domain = CertificateAuthority(ours.cert, ours.key, "elsewhere.test")
    cert = other_domain.issue_edge(make_csr(new_key(), "x"), EDGE_ID, time.time())
    with pytest.raises(IdentityError, match="no edge of this trust domain"):
        ours.verify_edge(cert)


def test_bad_csrs_are_refused(tmp_path: Path) -> None:
    ca = make_ca(tmp_path)
    with pytest.raises(IdentityError, match="not a PEM"):
        ca.issue_edge(b"garbage", EDGE_ID, time.time())
    csr = x509.load_pem_x509_csr(make_csr(new_key(), "device-name"))
    der = csr.public_bytes(serialization.Encoding.DER).replace(b"device-name", b"device-nane")
    tampered = x509.load_der_x509_csr(der).public_bytes(serialization.Encoding.PEM)
    with pytest.raises(IdentityError, match="signature does not verify"):
        ca.issue_edge(tampered, EDGE_ID, time.time())


def test_one_builder_makes_server_and_client_contexts_that_talk(tmp_path: Path) -> None:
    import socket
    import threading

    ca = make_ca(tmp_path)
    server_cert, server_key = ca.issue_server(["127.0.0.1"], time.time())
    (tmp_path / "s.crt").write_bytes(server_cert)
    (tmp_path / "s.key").write_bytes(server_key)
    server = build_ssl_context(
        "server", ca_pem=ca.pem, cert_file=tmp_path / "s.crt", key_file=tmp_path / "s.key"
    )
    assert server.verify_mode == ssl.CERT_OPTIONAL
    edge_key = new_key()
    edge_cert = ca.issue_edge(make_csr(edge_key, "x"), EDGE_ID, time.time())
    from ops_sync.identity import key_pem

    (tmp_path / "e.crt").write_bytes(cert_pem(edge_cert))
    (tmp_path / "e.key").write_bytes(key_pem(edge_key))
    client = build_ssl_context(
        "client", ca_pem=ca.pem, cert_file=tmp_path / "e.crt", key_file=tmp_path / "e.key"
    )
    seen: list[bytes | None] = []
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def accept() -> None:
        conn, _ = listener.accept()
        with server.wrap_socket(conn, server_side=True) as tls:
            seen.append(tls.getpeercert(binary_form=True))
            tls.recv(1)

    thread = threading.Thread(target=accept)
    thread.start()
    with socket.create_connection(("127.0.0.1", port)) as raw:
        with client.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            tls.sendall(b"x")
    thread.join(5)
    listener.close()
    assert seen and x509.load_der_x509_certificate(seen[0]) == edge_cert


@pytest.mark.parametrize(
    "domain", ["spiffe://ops.test", "Ops.Test", "ops.test/ns", "ops.test:8443", "", ".ops.test"]
)
def test_a_trust_domain_must_be_a_spiffe_trust_domain_name(tmp_path: Path, domain: str) -> None:
    with pytest.raises(IdentityError, match="not a SPIFFE trust domain"):
        make_ca(tmp_path, domain)
    assert not (tmp_path / "ca.key").exists()  # no CA is made for it


def test_certificates_of_a_former_trust_domain_verify_while_accepted(tmp_path: Path) -> None:
    """Changing the trust domain (e.g. to the seed's `wallaroo.ai`) leaves enrolled edges
    working: their certificates verify while the former domain is accepted, and the next
    renewal issues the new domain's id."""
    before = make_ca(tmp_path, "ops-sync.local")
    old_cert = before.issue_edge(make_csr(new_key(), "x"), EDGE_ID, time.time())
    after = CertificateAuthority.load_or_create(
        tmp_path / "ca.crt", tmp_path / "ca.key", "wallaroo.ai", time.time(), ("ops-sync.local",)
    )
    identity = after.verify_edge(old_cert)
    assert identity.edge_id == EDGE_ID
    assert identity.spiffe_id == f"spiffe://ops-sync.local/ns/deployments/edge/{EDGE_ID}"
    renewed = after.issue_edge(make_csr(new_key(), "x"), EDGE_ID, time.time())
    assert after.verify_edge(renewed).spiffe_id == (
        f"spiffe://wallaroo.ai/ns/deployments/edge/{EDGE_ID}"
    )
    strict = CertificateAuthority(after.cert, after.key, "wallaroo.ai")  # the former one dropped
    with pytest.raises(IdentityError, match="no edge of this trust domain"):
        strict.verify_edge(old_cert)
