"""web_connectivity --http3 on loopback: an HTTPS site that advertises HTTP/3 (Alt-Svc) and an
aioquic HTTP/3 server on the same address and port; the page is fetched again over HTTP/3
only when asked, and a site whose QUIC is dropped shows the failure without changing the
verdict. Also the Alt-Svc reading and the HTTP/3 GET on their own."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dns.message
import dns.rdatatype
import dns.rrset
import pytest

from backend.helper_config import HelperConfig
from probes.net.http3 import alt_svc_h3, http3_get, https_rr_h3
from probes.net.https_records import https_query_name
from tests.loopback import FakeDNSServer, ServerThread, WebServer
from tests.loopback.certs import TestCA
from tests.loopback.control_helper import free_port_on, running_helper
from tests.loopback.quic import PAGE, QuicSite

CENSORSCOPE = [sys.executable, "-m", "probes.cli"]
H3_HOST, NO_QUIC_HOST, RR_HOST = "127.0.64.2", "127.0.64.3", "127.0.64.4"


def test_alt_svc_h3() -> None:
    assert alt_svc_h3('h3=":443"; ma=86400') == "443"
    assert alt_svc_h3('h3-29=":443", h3=":8443"; ma=60') == "8443"
    assert alt_svc_h3('h2=":443"') is None
    assert alt_svc_h3('h3="cdn.example:443"') is None  # another host: not this address
    assert alt_svc_h3("clear") is None and alt_svc_h3("") is None


@pytest.fixture(scope="module")
def world() -> Iterator[dict[str, Any]]:
    ca = TestCA()
    port = free_port_on([H3_HOST, NO_QUIC_HOST, RR_HOST])
    servers = ServerThread("wc-http3")
    try:
        advert = f'h3=":{port}"; ma=60'
        servers.start(WebServer(H3_HOST, port, ca=ca, alt_svc=advert))
        servers.start(QuicSite(H3_HOST, ca, ["h3.test"], port=port))
        servers.start(WebServer(NO_QUIC_HOST, port, ca=ca, alt_svc=advert))  # no QUIC server
        # rr.test: no Alt-Svc, h3 offered in its HTTPS record (RFC 9460, under _PORT._https).
        servers.start(WebServer(RR_HOST, port, ca=ca))
        servers.start(QuicSite(RR_HOST, ca, ["rr.test"], port=port))
        zone = {"h3.test": [H3_HOST], "noquic.test": [NO_QUIC_HOST], "rr.test": [RR_HOST]}

        def answer(query: dns.message.Message) -> list[tuple[float, Any]]:
            q = query.question[0]
            name = q.name.to_text().rstrip(".")
            reply = dns.message.make_response(query)
            if q.rdtype == dns.rdatatype.HTTPS and name == f"_{port}._https.rr.test":
                text = f"1 . alpn=h3,h2 port={port}"
                reply.answer.append(dns.rrset.from_text(q.name, 60, "IN", "HTTPS", text))
            elif q.rdtype == dns.rdatatype.A and name in zone:
                reply.answer.append(dns.rrset.from_text(q.name, 60, "IN", "A", zone[name][0]))
            return [(0.0, reply)]

        dns_server = servers.start(FakeDNSServer("127.0.64.53", 0, handler=answer))
        config = HelperConfig(
            resolver=dns_server.address, allow_private=True, ca_file=ca.ca_pem_path
        )
        with running_helper(config) as helper_url:
            yield {"port": port, "ca": ca, "dns": dns_server, "helper": helper_url}
    finally:
        servers.close()


@pytest.mark.anyio
async def test_http3_get(world: dict[str, Any]) -> None:
    url = f"https://h3.test:{world['port']}/"
    found = await http3_get(
        H3_HOST, world["port"], url, timeout=5, t_zero=0.0, ca_file=world["ca"].ca_pem_path
    )
    assert (found.failure, found.status_code, found.body) == (None, 200, PAGE)
    assert found.quic_handshake["negotiated_protocol"] == "h3"
    assert found.record(url, "x")["title"] == "quic site"


def _measure(world: dict[str, Any], results: Path, host: str, *extra: str) -> dict[str, Any]:
    url = f"https://{host}:{world['port']}/"
    cmd = [
        *CENSORSCOPE, "run", "web_connectivity", "--input", url, "--results", str(results),
        "--no-progress", "--resolver", world["dns"].address, "--helper", world["helper"],
        "--ca-file", world["ca"].ca_pem_path, "--timeout", "10", *extra,
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    [path] = results.glob("raw/date=*/vantage=*/test_name=web_connectivity/*.jsonl")
    [line] = path.read_bytes().splitlines()
    keys: dict[str, Any] = json.loads(line)["test_keys"]
    return keys


def test_http3_only_when_asked(world: dict[str, Any], tmp_path: Path) -> None:
    keys = _measure(world, tmp_path / "off", "h3.test")
    assert keys["blocking"] is False and "x_http3_request" not in keys
    keys = _measure(world, tmp_path / "on", "h3.test", "--http3")
    assert keys["blocking"] is False
    h3 = keys["x_http3_request"]
    assert h3["failure"] is None and h3["status_code"] == 200
    assert h3["body_length"] == len(PAGE) and h3["alt_svc"].startswith("h3=")
    assert h3["address"] == f"{H3_HOST}:{world['port']}"
    assert h3["quic_handshake"]["network"] == "udp"


def test_http3_failure_is_recorded_not_judged(world: dict[str, Any], tmp_path: Path) -> None:
    keys = _measure(world, tmp_path, "noquic.test", "--http3")
    assert keys["blocking"] is False  # the HTTPS fetch worked: the verdict is about it
    assert keys["x_http3_request"]["failure"] == "generic_timeout_error"


def test_https_rr_h3() -> None:
    import base64

    def queries(*records: str) -> list[dict[str, Any]]:
        msg = dns.message.make_response(dns.message.make_query("a.test", "HTTPS"))
        for text in records:
            msg.answer.append(dns.rrset.from_text("a.test.", 60, "IN", "HTTPS", text))
        return [{"raw_response": base64.b64encode(msg.to_wire()).decode()}]

    assert https_rr_h3(queries("1 . alpn=h3,h2")) == "443"
    assert https_rr_h3(queries("2 . alpn=h2", "1 . alpn=h3 port=8443")) == "8443"
    assert https_rr_h3(queries("1 . alpn=h2")) is None
    assert https_rr_h3(queries("1 cdn.example. alpn=h3")) is None  # another host
    assert https_rr_h3(queries("0 cdn.example.")) is None  # alias mode
    assert https_rr_h3([{"raw_response": "not base64!"}, {}]) is None
    assert https_query_name("a.test", 443) == "a.test"
    assert https_query_name("a.test", 8443) == "_8443._https.a.test"


def test_http3_from_the_https_record(world: dict[str, Any], tmp_path: Path) -> None:
    keys = _measure(world, tmp_path, "rr.test", "--http3")
    h3 = keys["x_http3_request"]
    assert h3["discovered_by"] == "https-rr" and h3["alt_svc"] == ""
    assert h3["failure"] is None and h3["status_code"] == 200
    assert h3["queries"][0]["query_type"] == "HTTPS"
