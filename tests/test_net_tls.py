from __future__ import annotations

import base64
import time

import pytest
from cryptography import x509

from probes.net.tls import has_chain_api, tls_handshake
from tests.loopback import WRONG_CERT_HOST, LoopbackSuite

pytestmark = pytest.mark.anyio


async def test_handshake_verifies_with_test_ca(loopback: LoopbackSuite) -> None:
    res = await tls_handshake(
        loopback.host,
        loopback.https.port,
        "site.example",
        timeout=5,
        t_zero=time.monotonic(),
        ca_file=loopback.ca.ca_pem_path,
        alpn=["h2", "http/1.1"],
    )
    assert res.failure is None and res.verified and res.verify_failure is None
    assert res.tls_version and res.tls_version.startswith("TLSv1.")
    assert res.cipher_suite and res.cipher_suite.startswith("TLS_")
    leaf = x509.load_der_x509_certificate(res.peer_certificates[0])
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "site.example" in names.get_values_for_type(x509.DNSName)
    assert res.leaf_spki_sha256 and len(res.leaf_spki_sha256) == 64
    rec = res.record
    assert rec["address"] == f"{loopback.host}:{loopback.https.port}"
    assert rec["server_name"] == "site.example" and rec["failure"] is None
    assert rec["no_tls_verify"] is False
    assert rec["peer_certificates"][0]["format"] == "base64"
    assert base64.b64decode(rec["peer_certificates"][0]["data"]) == res.peer_certificates[0]
    assert 0 <= rec["t0"] <= rec["t"]


async def test_unknown_authority_still_records_chain(loopback: LoopbackSuite) -> None:
    res = await tls_handshake(
        loopback.host, loopback.https.port, "site.example", timeout=5, t_zero=time.monotonic()
    )
    assert res.failure == "ssl_unknown_authority"
    assert res.verify_failure == "ssl_unknown_authority" and not res.verified
    assert res.peer_certificates, "evidence must be kept when verification fails"
    assert res.issuer and "censorscope loopback CA" in res.issuer
    assert res.record["peer_certificates"]
    assert res.record.get("x_chain_from_second_handshake", False) is (not has_chain_api())


async def test_wrong_hostname(loopback: LoopbackSuite) -> None:
    res = await tls_handshake(
        loopback.host,
        loopback.https_wrong_name.port,
        "site.example",
        timeout=5,
        t_zero=time.monotonic(),
        ca_file=loopback.ca.ca_pem_path,
    )
    assert res.failure == "ssl_invalid_hostname"
    leaf = x509.load_der_x509_certificate(res.peer_certificates[0])
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == [WRONG_CERT_HOST]


async def test_no_verify_mode(loopback: LoopbackSuite) -> None:
    res = await tls_handshake(
        loopback.host,
        loopback.https_wrong_name.port,
        "site.example",
        timeout=5,
        t_zero=time.monotonic(),
        verify=False,
    )
    assert res.failure is None and not res.verified
    assert res.record["no_tls_verify"] is True


async def test_reset_on_sni_keyword(loopback: LoopbackSuite) -> None:
    res = await tls_handshake(
        loopback.host,
        loopback.reset_https.port,
        f"{loopback.keyword}.example",
        timeout=5,
        t_zero=time.monotonic(),
        ca_file=loopback.ca.ca_pem_path,
    )
    assert res.failure == "connection_reset"
    assert res.peer_certificates == []
    ok = await tls_handshake(
        loopback.host,
        loopback.reset_https.port,
        "benign.example",
        timeout=5,
        t_zero=time.monotonic(),
        ca_file=loopback.ca.ca_pem_path,
    )
    assert ok.failure is None


async def test_timeout_when_server_never_answers(loopback: LoopbackSuite) -> None:
    res = await tls_handshake(
        loopback.host, loopback.silent.port, "x.example", timeout=0.2, t_zero=time.monotonic()
    )
    assert res.failure == "generic_timeout_error"


async def test_eof_when_server_closes_during_handshake(loopback: LoopbackSuite) -> None:
    res = await tls_handshake(
        loopback.host, loopback.closer.port, "x.example", timeout=5, t_zero=time.monotonic()
    )
    assert res.failure == "eof_error"


async def test_connection_refused(loopback: LoopbackSuite) -> None:
    res = await tls_handshake(
        loopback.host, loopback.closed_port, "x.example", timeout=5, t_zero=time.monotonic()
    )
    assert res.failure == "connection_refused"
    assert res.record["peer_certificates"] == []
