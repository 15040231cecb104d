"""Signed pipelines: `edge keygen`, `edge publish --sign-key` in cosign's key-based format, and
the appliance refusing (before any model is fetched or loaded) what PIPELINE_VERIFY_KEYS does not
vouch for, against the real registry and a local layout; and the ops center pinning the keys in
the EDGE_BUNDLE it mints.

No cosign binary can be had on this machine (Debian bookworm has no package and its Go 1.19 is
too old to build cosign 2), so the format is checked against SIGNATURE_SPEC's field names and
with `cryptography`'s ECDSA, independently of `edge.signing`."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from edge import signing
from edge.appliance import Appliance, load_pipeline
from edge.config import load_settings
from edge.errors import ConfigError, DigestMismatch, SignatureError
from edge.publish import publish as publish_in_process
from edge.registry import Reference
from edge.remote import RemoteRegistry
from tests.conftest import Registry, edge_cmd, publish
from tests.test_ops_support import ADMIN, REPO, OpsServer

JSON = {"Content-Type": "application/json; format=pandas-records"}
REPOSITORY = "signing-tests"


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two key pairs: `a` (unencrypted) and `b` (encrypted with "pw-b")."""
    root = tmp_path_factory.mktemp("keys")
    signing.generate_key_pair(root / "a", None)
    signing.generate_key_pair(root / "b", "pw-b")
    return {
        "a": root / "a/cosign.key",
        "a.pub": root / "a/cosign.pub",
        "b": root / "b/cosign.key",
        "b.pub": root / "b/cosign.pub",
    }


def key(keys: dict[str, Path], name: str) -> ec.EllipticCurvePrivateKey:
    return signing.load_private_key(keys[name], "pw-b" if name == "b" else None)


def push(example: Path, registry: Registry, sign_key: Any = None) -> dict[str, Any]:
    published, _ = publish_in_process(
        example / "pipeline.yaml",
        registry=registry.host,
        repository=REPOSITORY,
        username=registry.username,
        password=registry.password,
        progress=False,
        sign_key=sign_key,
    )
    return published.as_dict()


def load(url: str, persist: Path, verify_keys: str | None, registry: Registry | None = None):
    """The appliance's loader in process; returns (pipeline, the start-up lines)."""
    lines: list[str] = []
    flags: dict[str, Any] = {"pipeline_url": url, "persist_dir": persist}
    flags["verify_keys"] = verify_keys
    if registry is not None:
        flags.update(oci_username=registry.username, oci_password=registry.password)
    return load_pipeline(load_settings(flags, environ={}), echo=lines.append), lines


def refused(url: str, persist: Path, verify_keys: str, registry: Registry | None = None) -> str:
    """The refusal's message; and no model was fetched (nothing to load)."""
    with pytest.raises(SignatureError) as caught:
        load(url, persist, verify_keys, registry)
    assert not list(persist.glob("pipelines/*/models/*")), "a model was fetched"
    return str(caught.value)


def store(registry: Registry) -> RemoteRegistry:
    return RemoteRegistry(registry.host, registry.username, registry.password, None)


# ---------------------------------------------------------------------- keygen and publish


def test_keygen_writes_a_private_0600_encrypted_key_and_publish_needs_its_password(
    registry: Registry, example: Path, tmp_path: Path
) -> None:
    env = {**os.environ, "KEY_PW": "correct horse"}
    made = subprocess.run(
        edge_cmd("keygen", "--out", str(tmp_path / "k"), "--password-env", "KEY_PW"),
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    private, public = tmp_path / "k/cosign.key", tmp_path / "k/cosign.pub"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert private.read_text().startswith("-----BEGIN ENCRYPTED PRIVATE KEY-----")
    assert public.read_text().startswith("-----BEGIN PUBLIC KEY-----")
    assert "correct horse" not in made.stdout + made.stderr
    again = subprocess.run(
        edge_cmd("keygen", "--out", str(tmp_path / "k")), capture_output=True, text=True
    )
    assert again.returncode == 2 and "exists" in again.stderr  # never overwritten

    args = ("--sign-key", str(private))
    no_password = subprocess.run(
        edge_cmd("publish", str(example / "pipeline.yaml"), "--layout", str(tmp_path / "l"), *args),
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert no_password.returncode == 2
    assert "is encrypted: give its password with --password-env" in no_password.stderr
    assert not (tmp_path / "l").exists()  # refused before anything was written

    wrong = subprocess.run(
        edge_cmd("publish", str(example / "pipeline.yaml"), "--layout", str(tmp_path / "l"),
                 *args, "--password-env", "KEY_PW"),
        env={**env, "KEY_PW": "wrong"}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert wrong.returncode == 2 and "the password is wrong" in wrong.stderr
    assert "wrong" not in wrong.stderr.replace("the password is wrong", "")


def test_a_signed_publish_is_a_cosign_signature_in_the_registry(
    registry: Registry, example: Path, keys: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGNATURE_SPEC: tag `sha256-<hex>.sig`, one layer per signature holding the simple-signing
    payload, the base64 ECDSA P-256 signature in `dev.cosignproject.cosign/signature`."""
    monkeypatch.setenv("B_PW", "pw-b")
    published = publish(
        example / "pipeline.yaml", registry,
        extra=("--sign-key", str(keys["b"]), "--password-env", "B_PW"),
    )  # fmt: skip
    digest = published["manifest_digest"]
    repository = f"edge-tests/pipelines/{published['pipeline_name']}"
    tag = "sha256-" + digest.removeprefix("sha256:") + ".sig"
    assert published["signature"]["tag"] == tag
    auth = (registry.username, registry.password)
    base = f"http://{registry.host}/v2/{repository}"
    accept = {"Accept": "application/vnd.oci.image.manifest.v1+json"}
    manifest = httpx.get(f"{base}/manifests/{tag}", auth=auth, headers=accept).json()
    (layer,) = manifest["layers"]
    assert layer["mediaType"] == "application/vnd.dev.cosign.simplesigning.v1+json"
    body = httpx.get(f"{base}/blobs/{layer['digest']}", auth=auth).content
    assert hashlib.sha256(body).hexdigest() == layer["digest"].removeprefix("sha256:")
    assert json.loads(body) == {
        "critical": {
            "identity": {"docker-reference": f"{registry.host}/{repository}"},
            "image": {"docker-manifest-digest": digest},
            "type": "cosign container image signature",
        },
        "optional": None,
    }
    public = serialization.load_pem_public_key(keys["b.pub"].read_bytes())
    assert isinstance(public, ec.EllipticCurvePublicKey)
    signature = base64.b64decode(layer["annotations"]["dev.cosignproject.cosign/signature"])
    public.verify(signature, body, ec.ECDSA(hashes.SHA256()))  # raises if it does not verify
    config = httpx.get(f"{base}/blobs/{manifest['config']['digest']}", auth=auth).json()
    assert config["rootfs"]["diff_ids"] == [layer["digest"]]


# ---------------------------------------------------------------------- edge serve


def test_edge_serve_serves_a_signed_pipeline_and_refuses_an_unsigned_one(
    registry: Registry, example: Path, keys: dict[str, Path], start_edge: Any, tmp_path: Path
) -> None:
    signed = push(example, registry, key(keys, "a"))
    env = {"PIPELINE_VERIFY_KEYS": str(keys["a.pub"])}
    edge = start_edge(signed["pipeline_url"], registry, persist=tmp_path / "p1", env=env)
    assert f"Verifying signature of {signed['manifest_digest']}" in edge.output()
    assert "Signature verified (key sha256:" in edge.output()
    body = (example / "data/one-row.json").read_bytes()
    assert httpx.post(f"{edge.url}/pipelines/breast-cancer", content=body, headers=JSON)

    unsigned = push(example, registry)
    bad = start_edge(
        unsigned["pipeline_url"], registry, persist=tmp_path / "p2", env=env, wait_ready=False
    )
    entry = bad.load_error()
    assert "is not signed: no signature under tag sha256-" in entry["error"]
    assert httpx.get(f"{bad.url}/health/ready").status_code == 503
    assert "Starting engine" not in bad.output()  # no model loaded
    assert not list((tmp_path / "p2").glob("pipelines/*/models/*"))

    # without verify keys: served as before, and said once
    plain = start_edge(unsigned["pipeline_url"], registry, persist=tmp_path / "p3")
    assert plain.output().count("pipeline signatures are not verified") == 1


def test_a_verify_key_that_is_not_one_ends_the_start(keys: dict[str, Path], tmp_path: Path) -> None:
    rsa_pem = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    (tmp_path / "rsa.pub").write_bytes(rsa_pem)
    cases = {
        str(tmp_path / "missing.pub"): "cannot read public key file",
        str(tmp_path / "rsa.pub"): "is not an ECDSA P-256 public key",
        "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----": "is not a public key",
        f"{keys['a.pub']},{keys['a']}": "PEM block 1 is not a public key",  # a private key
    }
    for value, reason in cases.items():
        settings = load_settings(
            {"pipeline_url": "oci-layout:/nowhere", "persist_dir": tmp_path / "p"},
            environ={"PIPELINE_VERIFY_KEYS": value},
        )
        with pytest.raises(ConfigError, match="PIPELINE_VERIFY_KEYS") as caught:
            Appliance.from_settings(settings)
        assert reason in str(caught.value)


# ---------------------------------------------------------------------- each refusal


def test_signed_by_an_unknown_key_is_refused_and_a_rotated_key_list_accepts_it(
    registry: Registry, example: Path, keys: dict[str, Path], tmp_path: Path
) -> None:
    url = push(example, registry, key(keys, "b"))["pipeline_url"]
    reason = refused(url, tmp_path / "p1", str(keys["a.pub"]), registry)
    assert "is signed by an unknown key: none of its 1 signature(s) verifies" in reason
    both = keys["a.pub"].read_text() + keys["b.pub"].read_text()  # inline PEM, two keys
    pipeline, lines = load(url, tmp_path / "p2", both, registry)
    assert pipeline.name == "breast-cancer"
    assert lines.index("Fetching model layers") > lines.index(next(
        line for line in lines if line.startswith("Signature verified")
    ))  # fmt: skip
    pipeline.close()


def test_a_signature_copied_from_another_digest_is_refused(
    registry: Registry, example: Path, keys: dict[str, Path], tmp_path: Path
) -> None:
    first = push(example, registry, key(keys, "a"))
    second = push(example, registry, key(keys, "a"))
    ref = Reference.parse(second["pipeline_url"])
    client = store(registry)
    try:  # the first pipeline's signature, put under the second's .sig tag
        tag = signing.signature_tag
        body, _ = client.get_manifest(
            Reference(ref.registry, ref.repository, tag(first["manifest_digest"]))
        )
        client.put_manifest(
            Reference(ref.registry, ref.repository, tag(second["manifest_digest"])), body, {}
        )
    finally:
        client.close()
    reason = refused(second["pipeline_url"], tmp_path / "p", str(keys["a.pub"]), registry)
    assert f"the signature is for another digest ({first['manifest_digest']})" in reason


def test_a_retag_to_an_older_signed_digest_is_refused_unless_that_digest_is_pinned(
    registry: Registry, example: Path, keys: dict[str, Path], tmp_path: Path
) -> None:
    old = push(example, registry, key(keys, "a"))
    new = push(example, registry, key(keys, "a"))
    ref = Reference.parse(new["pipeline_url"])
    client = store(registry)
    try:  # the new version's tag moved back to the old (signed) manifest
        body, digest = client.get_manifest(Reference.parse(old["pipeline_url"]))
        client.put_manifest(ref, body, {})
    finally:
        client.close()
    assert digest == old["manifest_digest"]
    reason = refused(new["pipeline_url"], tmp_path / "p1", str(keys["a.pub"]), registry)
    assert f"tag {ref.tag} resolves to {digest}, which was signed as version" in reason
    assert "re-tag or rollback" in reason
    pinned = f"{ref.registry}/{ref.repository}@{digest}"
    pipeline, _ = load(pinned, tmp_path / "p2", str(keys["a.pub"]), registry)
    assert pipeline.definition.version == old["pipeline_version"]
    pipeline.close()


def test_a_payload_naming_another_reference_is_refused(
    registry: Registry, example: Path, keys: dict[str, Path], tmp_path: Path
) -> None:
    published = push(example, registry)
    ref = Reference.parse(published["pipeline_url"])
    digest = published["manifest_digest"]
    elsewhere = "127.0.0.1:1/other/pipelines/breast-cancer"
    client = store(registry)
    try:
        signing.attach(client, ref, digest, signing.sign(key(keys, "a"), elsewhere, digest))
    finally:
        client.close()
    reason = refused(published["pipeline_url"], tmp_path / "p", str(keys["a.pub"]), registry)
    assert f"the signature names {elsewhere!r}, not '{ref.registry}/{ref.repository}'" in reason


# ---------------------------------------------------------------------- a local layout, the cache


def test_a_signed_layout_is_verified_again_from_the_cache_and_a_changed_blob_refused(
    example: Path, keys: dict[str, Path], tmp_path: Path
) -> None:
    layout = tmp_path / "layout"
    published, _ = publish_in_process(
        example / "pipeline.yaml", layout=layout, progress=False, sign_key=key(keys, "a")
    )
    assert published.extra["signature"]["docker_reference"] == "oci-layout:breast-cancer"
    url, pub, persist = published.pipeline_url, str(keys["a.pub"]), tmp_path / "persist"
    untagged = f"oci-layout:{layout}"  # the latest pipeline, not its signature
    pipeline, _ = load(untagged, tmp_path / "p0", pub)
    pipeline.close()
    pipeline, _ = load(url, persist, pub)
    pipeline.close()

    shutil.move(layout, tmp_path / "moved")  # the layout is gone: the cache is served
    pipeline, lines = load(url, persist, pub)
    pipeline.close()
    assert any(line.startswith("Registry failed") for line in lines)
    assert "Fetched (from cache)" in lines and any(
        line.startswith("Signature verified") for line in lines
    )

    (model,) = persist.glob("pipelines/*/models/*")
    original = model.read_bytes()
    model.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    with pytest.raises(DigestMismatch, match="the cache is damaged"):
        load(url, persist, pub)
    model.write_bytes(original)

    (manifest_file,) = persist.glob("pipelines/*/manifest.json")
    manifest = json.loads(manifest_file.read_bytes())
    manifest["annotations"]["org.opencontainers.image.created"] = "2020-01-01T00:00:00Z"
    manifest_file.write_text(json.dumps(manifest))  # same config and layers, another digest
    with pytest.raises(SignatureError, match="the signature is for another digest"):
        load(url, persist, pub)


def test_an_unsigned_layout_and_a_cache_made_without_verification_are_refused(
    example: Path, keys: dict[str, Path], tmp_path: Path
) -> None:
    layout = tmp_path / "layout"
    published, _ = publish_in_process(example / "pipeline.yaml", layout=layout, progress=False)
    url, pub = published.pipeline_url, str(keys["a.pub"])
    assert "is not signed" in refused(url, tmp_path / "p1", pub)
    pipeline, _ = load(url, tmp_path / "p2", None)  # cached while verification was off
    pipeline.close()
    shutil.rmtree(layout)
    with pytest.raises(SignatureError, match="is not signed"):
        load(url, tmp_path / "p2", pub)


# ---------------------------------------------------------------------- the ops center's bundle


def test_a_bundle_pinning_a_verify_key_refuses_an_unsigned_pipeline(
    registry: Registry, example: Path, keys: dict[str, Path], tmp_path: Path, start_edge: Any
) -> None:
    bad = subprocess.run(
        [sys.executable, "-m", "ops_sync", "serve", "--data", str(tmp_path / "x"),
         "--admin-token", ADMIN, "--verify-key", str(keys["a"])],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert bad.returncode == 2 and "--verify-key file" in bad.stderr
    assert "PEM block 1 is not a public key" in bad.stderr

    server = OpsServer(tmp_path / "ops", extra=["--verify-key", str(keys["a.pub"])])
    server.start()
    try:
        url = push(example, registry)["pipeline_url"]
        env = {
            **os.environ,
            "OPS_URL": server.url,
            "OPS_ADMIN_TOKEN": ADMIN,
            "OPS_CA": str(server.ca),
        }
        done = subprocess.run(
            [sys.executable, "-m", "ops_sync", "add-edge", "edge-s", "--publish", url, "--json"],
            env=env, cwd=REPO, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        bundle = json.loads(done.stdout)["docker_run_variables"]["EDGE_BUNDLE"]
        lines = base64.b64decode(bundle).decode().splitlines()
        (pinned,) = [line for line in lines if line.startswith("export PIPELINE_VERIFY_KEYS=")]
        assert base64.b64decode(pinned.split("=", 1)[1]).decode() == keys["a.pub"].read_text()
        edge = start_edge(
            url, registry, persist=tmp_path / "edge", env={"EDGE_BUNDLE": bundle}, wait_ready=False
        )
        assert "is not signed" in edge.load_error()["error"]
        assert not list((tmp_path / "edge").glob("pipelines/*/models/*"))
    finally:
        server.stop()


def test_a_bundle_whose_pinned_keys_are_not_pem_is_refused_by_name(keys: dict[str, Path]) -> None:
    from ops_sync import protocol
    from ops_sync.errors import BundleError
    from ops_sync.link import LINK

    values = {
        "BUNDLE_VERSION": "1",
        "EDGE_NAME": "e",
        "JOIN_TOKEN": "join-secret",
        "OPSCENTER_HOST": "h:1",
    }
    pem = keys["a.pub"].read_text()
    good = {**values, "PIPELINE_VERIFY_KEYS": base64.b64encode(pem.encode()).decode()}
    assert LINK.read_bundle(protocol.encode(good))["PIPELINE_VERIFY_KEYS"] == pem
    for broken in ("not-base64!", base64.b64encode(b"hello").decode()):
        text = protocol.encode({**values, "PIPELINE_VERIFY_KEYS": broken})
        with pytest.raises(BundleError, match="EDGE_BUNDLE PIPELINE_VERIFY_KEYS") as caught:
            LINK.read_bundle(text)
        assert "join-secret" not in str(caught.value)  # the token is never quoted
