"""tcp_connect and sni_blocking on loopback against real servers (tests/loopback's WebServer:
one that resets ClientHellos naming a blocked SNI, one that never answers, a closed port)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from backend.helper import HelperConfig
from probes.nettests.base import Nettest, ProbeContext
from probes.nettests.sni_blocking import ROUNDS, SNIBlocking
from probes.nettests.tcp_connect import TCPConnect, control_reached, endpoint_of
from tests.loopback import FakeDNSServer, ServerThread, TestCA, WebServer, closed_port
from tests.loopback.control_helper import running_helper

HOST = "127.0.7.60"
BLOCKED = "blocked.test"


@dataclass
class World:
    sni: WebServer  # resets a ClientHello carrying BLOCKED
    silent: WebServer
    web: WebServer
    closed: int
    helper_url: str
    ca_file: str


@pytest.fixture(scope="module")
def world(test_ca: TestCA) -> Iterator[World]:
    thread = ServerThread("tcp-sni")
    try:
        sni = thread.start(WebServer(HOST, ca=test_ca, keyword=BLOCKED))
        silent = thread.start(WebServer(HOST, behaviour="silent"))
        web = thread.start(WebServer(HOST))
        dns = thread.start(FakeDNSServer("127.0.7.59", 0, {"site.test": [HOST]}))
        config = HelperConfig(resolver=dns.address, allow_private=True, timeout=2)
        with running_helper(config) as url:
            yield World(sni, silent, web, closed_port(HOST), url, test_ca.ca_pem_path)
    finally:
        thread.close()


async def run(cls: type[Nettest], input_: str, world: World, **options: Any) -> dict[str, Any]:
    ctx = ProbeContext(
        timeout=3, helpers=[world.helper_url], ca_file=world.ca_file, options=options
    )
    nettest = cls(ctx)
    await nettest.setup()
    try:
        return await nettest.measure(input_)
    finally:
        await nettest.close()


@pytest.mark.anyio
async def test_tcp_connect(world: World) -> None:
    keys = await run(TCPConnect, f"{HOST}:{world.web.port}", world)
    assert (keys["blocking"], keys["tcp_connect"][0]["status"]["success"]) == (False, True)
    # Refused for the control too: the server is down, not blocked.
    keys = await run(TCPConnect, f"{HOST}:{world.closed}", world)
    assert keys["blocking"] is None
    assert keys["tcp_connect"][0]["status"]["failure"] == "connection_refused"
    assert control_reached(keys["control"], f"{HOST}:{world.closed}") is False


def test_tcp_inputs() -> None:
    assert endpoint_of("[2001:db8::1]:853") == ("2001:db8::1", 853)
    assert endpoint_of("https://example.org/") == ("example.org", 443)
    assert TCPConnect.input_problem("example.org") is not None


@pytest.mark.anyio
async def test_sni_reset_is_blocking_when_control_sni_passes(world: World) -> None:
    endpoint = f"{HOST}:{world.sni.port}"
    keys = await run(SNIBlocking, BLOCKED, world, sni_endpoint=endpoint)
    assert (keys["blocking"], keys["blocking_detail"]) == ("tls", "tls.sni_reset")
    # Every round measured both names, control first.
    names = [h["server_name"] for h in keys["tls_handshakes"]]
    assert names == ["example.com", BLOCKED] * ROUNDS
    keys = await run(SNIBlocking, "free.test", world, sni_endpoint=endpoint)
    assert (keys["blocking"], keys["blocking_detail"]) == (False, None)
    assert keys["tls_comparison"]["outcome"] == "same"  # the helper saw the same key


@pytest.mark.anyio
async def test_sni_silence_everywhere_is_inconclusive(world: World) -> None:
    keys = await run(SNIBlocking, BLOCKED, world, sni_endpoint=f"{HOST}:{world.silent.port}")
    assert keys["blocking"] is None
    assert keys["tls_handshakes"][0]["failure"] == "generic_timeout_error"
