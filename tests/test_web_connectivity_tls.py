"""web_connectivity's TLS evidence for https inputs, against real TLS servers on loopback.

As web_connectivity 0.5 does, every address gets a flow (TCP connect and TLS handshake for the
name, one transaction each), and the GET's own handshake is recorded in its transaction; the
certificate chain the server sent is kept even when it does not validate.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from backend.helper_config import HelperConfig
from tests.loopback import FakeDNSServer, ServerThread, WebServer
from tests.loopback.certs import TestCA
from tests.loopback.control_helper import free_port_on, running_helper

CENSORSCOPE = [sys.executable, "-m", "probes.cli"]


@pytest.fixture(scope="module")
def tls_world() -> Iterator[dict[str, Any]]:
    ca = TestCA()
    port = free_port_on(["127.0.0.2", "127.0.0.9"])
    servers = ServerThread("wc-tls")
    try:
        servers.start(WebServer("127.0.0.2", port, ca=ca, title="Secure site"))
        # A server whose certificate names another host: verification fails for ours.
        servers.start(WebServer("127.0.0.9", port, ca=ca, cert_hosts=["other.test"]))
        zone = {"secure.test": ["127.0.0.2"], "wrongcert.test": ["127.0.0.9"]}
        dns = servers.start(FakeDNSServer("127.0.0.3", 0, zone))
        config = HelperConfig(resolver=dns.address, allow_private=True, ca_file=ca.ca_pem_path)
        with running_helper(config) as helper_url:
            yield {"port": port, "ca": ca, "dns": dns, "helper": helper_url}
    finally:
        servers.close()


def _measure(world: dict[str, Any], results: Path, host: str) -> dict[str, Any]:
    url = f"https://{host}:{world['port']}/"
    cmd = [
        *CENSORSCOPE, "run", "web_connectivity", "--input", url, "--results", str(results),
        "--no-progress", "--resolver", world["dns"].address, "--helper", world["helper"],
        "--ca-file", world["ca"].ca_pem_path, "--timeout", "10",
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    [path] = results.glob("raw/date=*/vantage=*/test_name=web_connectivity/*.jsonl")
    [line] = path.read_bytes().splitlines()
    keys: dict[str, Any] = json.loads(line)["test_keys"]
    return keys


def test_every_address_and_the_fetch_record_their_handshakes(
    tls_world: dict[str, Any], tmp_path: Path
) -> None:
    keys = _measure(tls_world, tmp_path, "secure.test")
    assert keys["blocking"] is False and keys["accessible"] is True
    flow, fetch = keys["tls_handshakes"]  # the address's flow, then the GET's
    for hs in (flow, fetch):
        assert hs["address"] == f"127.0.0.2:{tls_world['port']}"
        assert hs["server_name"] == "secure.test" and hs["failure"] is None
        assert hs["tls_version"].startswith("TLSv1")
        leaf = base64.b64decode(hs["peer_certificates"][0]["data"])
        assert leaf.startswith(b"\x30")  # DER
        assert "depth=0" in hs["tags"] and "fetch_body=true" in hs["tags"]
    assert flow["transaction_id"] != fetch["transaction_id"]
    [request] = keys["requests"]
    assert request["transaction_id"] == fetch["transaction_id"]
    connects = {c["transaction_id"] for c in keys["tcp_connect"]}
    assert {flow["transaction_id"], fetch["transaction_id"]} <= connects
    assert keys["x_blocking_flags"] == 32 and keys["dns_consistency"] == "consistent"


def test_a_failed_handshake_keeps_the_chain(tls_world: dict[str, Any], tmp_path: Path) -> None:
    keys = _measure(tls_world, tmp_path, "wrongcert.test")
    assert keys["http_experiment_failure"] == "ssl_invalid_hostname"
    assert keys["tls_handshakes"]
    for hs in keys["tls_handshakes"]:
        assert hs["address"] == f"127.0.0.9:{tls_world['port']}"
        assert hs["failure"] == "ssl_invalid_hostname"
        assert hs["peer_certificates"], "the chain the server sent is kept as evidence"
