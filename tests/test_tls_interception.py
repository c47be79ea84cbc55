"""tls_interception on loopback: a real TLS server re-signs the probe's connections for chosen
names with a second ("interceptor") CA, while the control helper sees the genuine certificate
(see tests/loopback/interceptor.py for how the two paths are told apart on one host)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from backend.helper import HelperConfig
from probes.nettests.base import ProbeContext
from probes.nettests.tls_compare import OTHER_INVALID, OTHER_VALID, SAME, UNKNOWN, compare
from probes.nettests.tls_interception import TLSInterception, target_of
from tests.loopback import FakeDNSServer, ServerThread, TestCA, WebServer
from tests.loopback.control_helper import running_helper
from tests.loopback.interceptor import InterceptingTLSServer

HOST, RESET_HOST = "127.0.7.50", "127.0.7.51"
ZONE = {"watched.test": [HOST], "free.test": [HOST], "reset.test": [RESET_HOST]}


@dataclass
class World:
    dns: FakeDNSServer
    helper_url: str
    port: int
    server: InterceptingTLSServer
    ca_file: str


@pytest.fixture(scope="module")
def world(test_ca: TestCA, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    interceptor = TestCA(tmp_path_factory.mktemp("interceptor-ca"))
    thread = ServerThread("tls-interception")
    try:
        server = thread.start(
            InterceptingTLSServer(
                HOST, 0, real=test_ca, interceptor=interceptor, intercept=["watched.test"]
            )
        )
        # Resets every ClientHello naming "reset.test" (a keyword in the SNI).
        reset = thread.start(WebServer(RESET_HOST, server.port, ca=test_ca, keyword="reset.test"))
        assert reset.port == server.port
        dns = thread.start(FakeDNSServer("127.0.7.49", 0, ZONE))
        config = HelperConfig(
            resolver=dns.address, allow_private=True, ca_file=test_ca.ca_pem_path, timeout=3
        )
        with running_helper(config) as url:
            yield World(dns, url, server.port, server, test_ca.ca_pem_path)
    finally:
        thread.close()


async def measure(world: World, input_: str, *, helper: bool = True) -> dict[str, Any]:
    ctx = ProbeContext(
        timeout=5,
        resolver=world.dns.address,
        helpers=[world.helper_url] if helper else [],
        ca_file=world.ca_file,
    )
    nettest = TLSInterception(ctx)
    await nettest.setup()
    try:
        return await nettest.measure(input_)
    finally:
        await nettest.close()


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("name", "helper", "expected"),
    [
        ("watched.test", True, ("tls", "tls.intercepted")),
        ("free.test", True, (False, None)),
        # Reset for the control too (one host on loopback): down everywhere, not censorship.
        ("reset.test", True, (None, None)),
        ("watched.test", False, (None, None)),  # no control: nothing to compare with
    ],
)
async def test_verdicts(world: World, name: str, helper: bool, expected: tuple[Any, Any]) -> None:
    keys = await measure(world, f"https://{name}:{world.port}/", helper=helper)
    assert (keys["blocking"], keys["blocking_detail"]) == expected, keys["tls_comparisons"]


@pytest.mark.anyio
async def test_both_chains_are_kept_and_interception_is_confirmed(world: World) -> None:
    before = world.server.intercepted
    keys = await measure(world, f"https://watched.test:{world.port}/")
    endpoint = f"{HOST}:{world.port}"
    assert keys["x_intercepted_endpoints"] == [endpoint]
    # Measured twice before it counts, and the server really re-signed both times.
    assert len(keys["tls_comparisons"]) == 2 and world.server.intercepted - before == 2
    seen = keys["tls_comparisons"][0][endpoint]
    assert seen["outcome"] == OTHER_INVALID
    assert seen["probe_leaf_spki_sha256"] != seen["control_leaf_spki_sha256"]
    assert seen["probe_issuer"] != seen["control_issuer"]
    handshake = keys["tls_handshakes"][0]
    assert handshake["failure"] == "ssl_unknown_authority" and handshake["peer_certificates"]
    assert keys["control"]["x_tls_certificates"][endpoint]["verified"] is True


def test_compare_rules() -> None:
    probe = {"x_leaf_spki_sha256": "aa", "x_issuer": "CN=A", "x_verified": True}
    assert compare(probe, {"leaf_spki_sha256": "aa", "verified": True}).outcome == SAME
    # Another key that validates to the public roots: a CDN's regional certificate.
    assert compare(probe, {"leaf_spki_sha256": "bb", "verified": True}).outcome == OTHER_VALID
    unvalidated = {**probe, "x_verified": False}
    assert compare(unvalidated, {"leaf_spki_sha256": "bb", "verified": True}).intercepted
    assert compare(unvalidated, {"leaf_spki_sha256": "bb", "verified": False}).outcome == UNKNOWN
    assert compare(probe, None).outcome == UNKNOWN


def test_inputs(tmp_path: Path) -> None:
    assert target_of("https://Example.org:8443/x") == ("example.org", 8443)
    assert target_of("example.org") == ("example.org", 443)
    assert TLSInterception.input_problem("https://1.2.3.4/") is not None
