"""tcp_connect and sni_blocking on loopback against real servers (tests/loopback's WebServer:
one that resets ClientHellos naming a blocked SNI, one that never answers, a closed port).

As root, an on-path "censor" forges RSTs with scapy (another TTL and IP-ID than the kernel's,
sent through a raw socket) for the packet-evidence tests; without CAP_NET_RAW they skip, and a
run with CAP_NET_RAW dropped checks the "unavailable" note."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from backend.helper import HelperConfig
from probes.net import packets
from probes.nettests.base import Nettest, ProbeContext
from probes.nettests.sni_blocking import ROUNDS, SNIBlocking
from probes.nettests.tcp_connect import TCPConnect, control_reached, endpoint_of
from tests import missing
from tests.loopback import FakeDNSServer, ServerThread, TestCA, WebServer, closed_port
from tests.loopback.control_helper import running_helper

HOST = "127.0.7.60"
BLOCKED = "blocked.test"
REPO = Path(__file__).resolve().parent.parent
# The forged RSTs' TTL and IP-ID: not what Linux sends on loopback (64, 0).
FORGED_TTL, FORGED_IP_ID = 50, 4242
needs_capture = missing.capture_skip_if(packets.capture_unavailable())


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
    assert keys["x_down_everywhere"] is False
    # Refused for the control too: the server is down everywhere, not blocked (false, as
    # web_connectivity's "website down").
    keys = await run(TCPConnect, f"{HOST}:{world.closed}", world)
    assert (keys["blocking"], keys["blocking_detail"], keys["x_down_everywhere"]) == (
        False, None, True)  # fmt: skip
    assert keys["tcp_connect"][0]["status"]["failure"] == "connection_refused"
    assert control_reached(keys["control"], f"{HOST}:{world.closed}") is False


@pytest.mark.anyio
async def test_tcp_connect_without_control_is_inconclusive(world: World) -> None:
    ctx = ProbeContext(timeout=3, options={"packet_capture": False})
    nettest = TCPConnect(ctx)
    await nettest.setup()
    keys = await nettest.measure(f"{HOST}:{world.closed}")
    assert (keys["blocking"], keys["x_down_everywhere"]) == (None, False)
    assert keys["control_failure"] == "no_control_helper" and "packet_capture" not in keys


@contextmanager
def forging_rsts(host: str, port: int) -> Iterator[None]:
    """An on-path censor: answers every SYN to host:port with a RST of its own (TTL 50, IP-ID
    4242), as the GFW's residual blocking does; the kernel's genuine answer still comes."""
    from scapy.all import AsyncSniffer
    from scapy.layers.inet import IP, TCP

    raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)

    def forge(syn: Any) -> None:
        rst = IP(src=host, dst=syn[IP].src, ttl=FORGED_TTL, id=FORGED_IP_ID) / TCP(
            sport=port, dport=syn[TCP].sport, flags="RA", seq=0, ack=syn[TCP].seq + 1
        )
        raw.sendto(bytes(rst), (syn[IP].src, 0))

    bpf = f"tcp and dst host {host} and dst port {port} and tcp[tcpflags] == tcp-syn"
    ready = threading.Event()
    sniffer = AsyncSniffer(
        iface="lo", filter=bpf, prn=forge, store=False, promisc=False, started_callback=ready.set
    )
    sniffer.start()
    # The sniffer's thread compiles the filter and opens its socket after start() returns: on a
    # loaded machine the probe's SYN could pass before it listens (CI saw no forged RST once).
    assert ready.wait(30), "the forging sniffer did not start"
    try:
        yield
    finally:
        sniffer.stop()
        raw.close()


@needs_capture
@pytest.mark.anyio
async def test_refused_with_a_forged_rst_beside_it(world: World, tmp_path: Path) -> None:
    """No SYN-ACK to compare with: a reference connect to port 80 of the same host gives the
    host's own TTL (its kernel's RST); the forged RST's TTL differs, the genuine one's not."""
    port = closed_port(HOST)
    with forging_rsts(HOST, port):
        keys = await run(TCPConnect, f"{HOST}:{port}", world, pcap_dir=str(tmp_path))
    assert keys["packet_capture"] == "ok" and Path(keys["x_pcap"]).stat().st_size > 0
    pkts = keys["x_packets"]
    assert (pkts["evidence"], keys["x_packet_detail"]) == ("tcp.rst_injected",) * 2
    assert pkts["synack"] is None and pkts["endpoints"] == [f"{HOST}:{port}"]
    [reference] = pkts["references"]
    assert (reference["port"], reference["flags"], reference["ttl"]) == (80, "RA", 64)
    judged = {(r["ttl"], r["ip_id"], r["ttl_differs"]) for r in pkts["resets"]}
    assert judged == {(64, 0, False), (FORGED_TTL, FORGED_IP_ID, True)}
    # The verdict never depends on packets: the helper was refused too.
    assert (keys["blocking"], keys["x_down_everywhere"]) == (False, True)


@needs_capture
@pytest.mark.anyio
async def test_genuine_refusal_and_open_port_show_no_forgery(world: World) -> None:
    keys = await run(TCPConnect, f"{HOST}:{world.closed}", world)
    pkts = keys["x_packets"]
    assert pkts["resets"] and pkts["references"] and pkts["evidence"] is None
    assert keys["x_packet_detail"] is None
    keys = await run(TCPConnect, f"{HOST}:{world.web.port}", world)
    pkts = keys["x_packets"]
    assert pkts["synack"]["ttl"] == 64 and pkts["references"] == [] and pkts["evidence"] is None


_UNPRIVILEGED = """
import asyncio, json, sys
from probes.nettests.base import ProbeContext
from probes.nettests.tcp_connect import TCPConnect

async def main():
    nettest = TCPConnect(ProbeContext(timeout=3))
    await nettest.setup()
    keys = [await nettest.measure(i) for i in sys.argv[1:]]
    print(json.dumps({"warnings": nettest.warnings, "keys": keys}))

asyncio.run(main())
"""


@pytest.mark.skipif(
    not (packets.has_net_raw() and shutil.which("setpriv")), reason="needs CAP_NET_RAW to drop"
)
def test_tcp_connect_without_capture_privileges(world: World) -> None:
    """CAP_NET_RAW dropped (as in a default container): every input is still measured, the
    capture is noted "unavailable" in each, and the run warns once."""
    inputs = [f"{HOST}:{world.web.port}", f"{HOST}:{world.closed}"]
    proc = subprocess.run(
        ["setpriv", "--bounding-set=-net_raw", sys.executable, "-c", _UNPRIVILEGED, *inputs],
        capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert [w for w in out["warnings"] if "packet capture" in w] == [
        "packet capture unavailable: needs root or CAP_NET_RAW"
    ]
    for keys in out["keys"]:
        assert keys["packet_capture"] == "unavailable" and keys["x_packet_capture_reason"]
        assert "x_packets" not in keys
    assert [k["tcp_connect"][0]["status"]["success"] for k in out["keys"]] == [True, False]


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


@pytest.mark.anyio
@pytest.mark.parametrize("nettest", ["sni_blocking", "tcp_connect"])
async def test_a_lost_dns_query_is_asked_again(world: World, nettest: str) -> None:
    """The first A query for each name is dropped (as 2% loss does): the retry resolves it."""
    seen: set[str] = set()
    lossy_thread = ServerThread("lossy-dns")

    def lose_first(query: Any) -> list[Any]:
        name = query.question[0].name.to_text()
        if name not in seen:
            seen.add(name)
            return []
        return [(0.0, lossy._answer(query, [HOST]))]

    lossy = lossy_thread.start(
        FakeDNSServer("127.0.7.58", 0, {BLOCKED: [HOST]}, handler=lose_first)
    )
    port = world.sni.port if nettest == "sni_blocking" else world.web.port
    cls, input_ = {
        "sni_blocking": (SNIBlocking, f"https://{BLOCKED}:{port}/"),
        "tcp_connect": (TCPConnect, f"{BLOCKED}:{port}"),
    }[nettest]
    try:
        ctx = ProbeContext(
            timeout=3,
            helpers=[world.helper_url],
            ca_file=world.ca_file,
            resolver=lossy.address,
            options={"packet_capture": False},
        )
        test = cls(ctx)
        await test.setup()
        try:
            keys = await test.measure(input_)
        finally:
            await test.close()
    finally:
        lossy_thread.close()
    # The query was sent again on its socket and the second send answered: one record.
    assert [(q["failure"], q["x_transmissions"]) for q in keys["queries"]] == [(None, 2)]
    if nettest == "sni_blocking":
        assert keys["endpoint"] == f"{HOST}:{port}"
        assert (keys["blocking"], keys["blocking_detail"]) == ("tls", "tls.sni_reset")
    else:
        assert keys["tcp_connect"][0]["ip"] == HOST and keys["blocking"] is False
