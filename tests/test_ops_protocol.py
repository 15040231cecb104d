"""EDGE_BUNDLE: the seed's own samples decode; ours round-trip; errors never show the token."""

from __future__ import annotations

import base64

import pytest

from edge.errors import ConfigError
from ops_sync import protocol as bundle
from ops_sync.errors import BundleError

# The seed's "Edge Bundle Token TTL" sample and its docker run sample, verbatim.
SEED_BUNDLE = (
    "ZXhwb3J0IEJVTkRMRV9WRVJTSU9OPTEKZXhwb3J0IEVER0VfTkFNRT14Z2ItY2NmcmF1ZC1lZGdlLXRlc3QKZXhwb3J0"
    "IEpPSU5fVE9LRU49MzE0OGFkYTUtMjg1YS00ZmNhLWIzYjgtYjUwYTQ4ZDc1MTFiCmV4cG9ydCBPUFNDRU5URVJfSE9T"
    "VD1kb2MtdGVzdC5lZGdlLndhbGxhcm9vY29tbXVuaXR5Lm5pbmphCmV4cG9ydCBQSVBFTElORV9VUkw9Z2hjci5pby93"
    "YWxsYXJvb2xhYnMvZG9jLXNhbXBsZXMvcGlwZWxpbmVzL2VkZ2UtcGlwZWxpbmU6ZjM4OGMxMDktOGQ1Ny00ZWQyLTk4"
    "MDYtYWExM2Y4NTQ1NzZiCmV4cG9ydCBXT1JLU1BBQ0VfSUQ9NQ=="
)
SEED_DOCKER_BUNDLE = (
    "ZXhwb3J0IEJVTkRMRV9WRVJTSU9OPTEKZXhwb3J0IEVER0VfTkFNRT1lZGdlLWNjZnJhdWQtb2JzZXJ2YWJpbGl0eXlh"
    "aWcKZXhwb3J0IEpPSU5fVE9LRU49MjZmYzFjYjgtMjUxMi00YmU3LTk0ZGUtNjQ2NGI1MGQ2MzhiCmV4cG9ydCBPUFND"
    "RU5URVJfSE9TVD1kb2MtdGVzdC5lZGdlLndhbGxhcm9vY29tbXVuaXR5Lm5pbmphCmV4cG9ydCBQSVBFTElORV9VUkw9"
    "Z2hjci5pby93YWxsYXJvb2xhYnMvZG9jLXNhbXBsZXMvcGlwZWxpbmVzL2VkZ2Utb2JzZXJ2YWJpbGl0eS1waXBlbGlu"
    "ZTozYjQ5ZmJhOC05NGQ4LTRmY2EtYWVjYy1jNzUyNTdmZDE2YzYKZXhwb3J0IFdPUktTUEFDRV9JRD03"
)


def test_seed_sample_bundle_decodes_to_the_documented_values() -> None:
    assert bundle.decode(SEED_BUNDLE) == {
        "BUNDLE_VERSION": "1",
        "EDGE_NAME": "xgb-ccfraud-edge-test",
        "JOIN_TOKEN": "3148ada5-285a-4fca-b3b8-b50a48d7511b",
        "OPSCENTER_HOST": "doc-test.edge.wallaroocommunity.ninja",
        "PIPELINE_URL": (
            "ghcr.io/wallaroolabs/doc-samples/pipelines/edge-pipeline:"
            "f388c109-8d57-4ed2-9806-aa13f854576b"
        ),
        "WORKSPACE_ID": "5",
    }


def test_seed_docker_sample_decodes_and_both_reencode_byte_for_byte() -> None:
    values = bundle.decode(SEED_DOCKER_BUNDLE)
    assert values["EDGE_NAME"] == "edge-ccfraud-observabilityyaig"
    assert values["WORKSPACE_ID"] == "7"
    assert bundle.encode(values) == SEED_DOCKER_BUNDLE
    assert bundle.encode(bundle.decode(SEED_BUNDLE)) == SEED_BUNDLE


def test_our_extra_key_keeps_the_seed_shape() -> None:
    pem = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    values = {**bundle.decode(SEED_BUNDLE), bundle.CA_KEY: base64.b64encode(pem).decode()}
    text = base64.b64decode(bundle.encode(values)).decode()
    lines = text.split("\n")
    assert all(line.startswith("export ") and "=" in line for line in lines)
    assert lines[:6] == base64.b64decode(SEED_BUNDLE).decode().split("\n")
    assert bundle.ca_pem(bundle.decode(bundle.encode(values))) == pem


def test_tolerates_whitespace_quotes_comments_and_missing_padding() -> None:
    text = '# minted\nexport BUNDLE_VERSION=1\nexport EDGE_NAME="e1"\n\nexport JOIN_TOKEN=abc\n'
    text += "export OPSCENTER_HOST=127.0.0.1:8443"
    encoded = base64.b64encode(text.encode()).decode().rstrip("=")
    wrapped = "\n".join(encoded[i : i + 20] for i in range(0, len(encoded), 20))
    assert bundle.decode(wrapped)["EDGE_NAME"] == "e1"


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("", "empty"),
        ("not base64 at all!", "not base64"),
        (base64.b64encode(b"\xff\xfe\x00").decode(), "not base64 of text"),
        (base64.b64encode(b"export JOIN_TOKEN=SECRET-TOKEN-1\nwhat is this").decode(), "line 2"),
        (base64.b64encode(b"export JOIN_TOKEN=SECRET-TOKEN-1").decode(), "lacks BUNDLE_VERSION"),
        (
            base64.b64encode(b"export JOIN_TOKEN=SECRET-TOKEN-1\nexport JOIN_TOKEN=x").decode(),
            "twice",
        ),
    ],
)
def test_malformed_bundles_say_what_is_wrong_without_the_token(text: str, fragment: str) -> None:
    with pytest.raises(BundleError) as caught:
        bundle.decode(text)
    assert isinstance(caught.value, ConfigError)  # `edge serve` stops with a start-up error
    assert fragment in str(caught.value)
    assert "SECRET-TOKEN-1" not in str(caught.value)


def test_encode_refuses_values_a_shell_would_misread() -> None:
    values = bundle.decode(SEED_BUNDLE)
    with pytest.raises(BundleError, match="EDGE_NAME"):
        bundle.encode({**values, "EDGE_NAME": "two words"})
    with pytest.raises(BundleError, match="JOIN_TOKEN"):
        bundle.encode({k: v for k, v in values.items() if k != "JOIN_TOKEN"})


def test_a_batch_reads_back_from_either_body_and_the_frame_is_smaller() -> None:
    from tests.test_ops_support import result_table

    table = result_table(55, 1_790_000_000_000)
    framed, buffers = bundle.encode_batch(table), bundle.encode_batch(table, None)
    assert bundle.decode_batch(framed).equals(table)
    assert bundle.decode_batch(buffers, None).equals(table)
    assert bundle.decode_batch(buffers, "identity").equals(table)
    assert len(framed) < len(buffers)


@pytest.mark.parametrize(
    ("offered", "reads"),
    [
        ("zstd", "zstd"),
        ("gzip, ZSTD", "zstd"),
        ("zstd;q=0.5", "zstd"),
        ("zstd;q=0", None),
        ("zstd; q=0.000", None),
        ("zstd;q=bad", None),
        ("gzip, br", None),
        ("", None),
    ],
)
def test_the_agent_reads_which_batch_coding_a_reply_accepts(
    offered: str, reads: str | None
) -> None:
    assert bundle.accepts_coding({"accept-encoding": offered}) == reads
