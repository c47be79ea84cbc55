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

import pytest

from backend.helper_config import HelperConfig
from probes.net.http3 import alt_svc_h3, http3_get
from tests.loopback import FakeDNSServer, ServerThread, WebServer
from tests.loopback.certs import TestCA
from tests.loopback.control_helper import free_port_on, running_helper
from tests.loopback.quic import PAGE, QuicSite

CENSORSCOPE = [sys.executable, "-m", "probes.cli"]
H3_HOST, NO_QUIC_HOST = "127.0.64.2", "127.0.64.3"


def test_alt_svc_h3() -> None:
    assert alt_svc_h3('h3=":443"; ma=86400') == "443"
    assert alt_svc_h3('h3-29=":443", h3=":8443"; ma=60') == "8443"
    assert alt_svc_h3('h2=":443"') is None
    assert alt_svc_h3('h3="cdn.example:443"') is None  # another host: not this address
    assert alt_svc_h3("clear") is None and alt_svc_h3("") is None


@pytest.fixture(scope="module")
def world() -> Iterator[dict[str, Any]]:
    ca = TestCA()
    port = free_port_on([H3_HOST, NO_QUIC_HOST])
    servers = ServerThread("wc-http3")
    try:
        advert = f'h3=":{port}"; ma=60'
        servers.start(WebServer(H3_HOST, port, ca=ca, alt_svc=advert))
        servers.start(QuicSite(H3_HOST, ca, ["h3.test"], port=port))
        servers.start(WebServer(NO_QUIC_HOST, port, ca=ca, alt_svc=advert))  # no QUIC server
        zone = {"h3.test": [H3_HOST], "noquic.test": [NO_QUIC_HOST]}
        dns = servers.start(FakeDNSServer("127.0.64.53", 0, zone))
        config = HelperConfig(resolver=dns.address, allow_private=True, ca_file=ca.ca_pem_path)
        with running_helper(config) as helper_url:
            yield {"port": port, "ca": ca, "dns": dns, "helper": helper_url}
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
