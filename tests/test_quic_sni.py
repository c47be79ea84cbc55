"""quic_sni on loopback: a real aioquic HTTP/3 server, and in front of it a UDP relay that
censors QUIC with the lab censor's own Initial decryption (tests/loopback/quic.py), per 4-tuple
or per (client, server, port) triple; plus the Initial reader against aioquic's packets and
RFC 9001's test vector, and the lab censor's decisions on built packets."""

from __future__ import annotations

import os
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection

from lab import scenario as scenario_mod
from lab.censor import Censor
from lab.packets import build_udp
from lab.quic_censor import QuicFilter
from lab.quic_initial import client_initial_keys, initial_sni, open_initial
from probes.nettests.base import ProbeContext
from probes.nettests.quic_sni import QuicSNI
from probes.nettests.quic_sni_analysis import ROUNDS, SNI_BLOCKED, analyze
from tests.loopback import ServerThread, TestCA, WebServer
from tests.loopback.quic import QuicCensorRelay, QuicSite

HOST = "127.0.63.1"
SITE = "site.test"
OTHER = "other.test"  # served, never blocked


def client_initial(sni: str) -> bytes:
    """The first datagram aioquic's client sends for a connection with this SNI."""
    config = QuicConfiguration(is_client=True, alpn_protocols=["h3"], server_name=sni)
    conn = QuicConnection(configuration=config)
    conn.connect(("192.0.2.1", 443), now=time.time())
    return conn.datagrams_to_send(now=time.time())[0][0]


def test_initial_keys_match_rfc9001_appendix_a() -> None:
    key, iv, hp = client_initial_keys(bytes.fromhex("8394c8f03e515708"))
    assert key.hex() == "1f369613dd76d5467730efcbe3b1a22d"
    assert iv.hex() == "fa044b2f42a3fd3b46fb255c"
    assert hp.hex() == "9f50449e04a0e810283a1e9933adedd2"


def test_sni_read_from_aioquic_initials() -> None:
    for name in ("blocked.example", "a.b.c.example", "x" * 60 + ".example"):
        datagram = client_initial(name)
        assert initial_sni(datagram) == name
        assert open_initial(datagram).packet_number == 0
    damaged = bytearray(client_initial("blocked.example"))
    damaged[100] ^= 0xFF  # AES-GCM's tag no longer matches
    assert initial_sni(bytes(damaged)) is None
    assert initial_sni(b"\x40" + bytes(40)) is None  # a short-header packet
    assert initial_sni(b"GET / HTTP/1.1\r\n\r\n") is None


@pytest.mark.parametrize("scope", ["flow", "triple"])
def test_filter_residual_scope(scope: str) -> None:
    qf = QuicFilter({"blocked.example"}, residual_seconds=10.0, scope=scope)
    flow = ("10.0.0.2", 50000, "11.0.0.9", 443)
    other_port = ("10.0.0.2", 50001, "11.0.0.9", 443)
    assert qf.from_client(other_port, client_initial("open.example"), 0.0) == "pass"
    assert qf.from_client(flow, client_initial("www.blocked.example"), 1.0) == "quic_sni"
    assert qf.from_client(flow, client_initial("open.example"), 2.0) == "quic_residual"
    assert not qf.from_server(flow, 2.0)
    fresh = ("10.0.0.2", 50002, "11.0.0.9", 443)
    expected = "quic_residual" if scope == "triple" else "pass"
    assert qf.from_client(fresh, client_initial("open.example"), 3.0) == expected
    assert qf.from_client(fresh, client_initial("open.example"), 12.0) == "pass"  # expired
    assert qf.from_client(("10.0.0.2", 50003, "11.0.0.9", 8443), b"\x00" * 30, 3.0) == "pass"


def test_lab_censor_drops_blocked_quic_initials() -> None:
    scen = scenario_mod.parse(
        {
            "censor": {"quic_blocked_sni": ["blocked.example"], "quic_residual_seconds": 5.0},
            "domain": [{"name": "blocked.example"}, {"name": "open.example"}],
        }
    )
    assert scen.censor.quic_servers and scen.censor.quic_residual_scope == "triple"
    censor = Censor(scen)
    server = scen.domain("blocked.example").a
    up = build_udp("10.77.1.2", server, 50000, 443, client_initial("blocked.example"))
    d = censor.decide(up, 0.0)
    assert (d.accept, d.reason) == (False, "quic_sni")
    other = build_udp("10.77.1.2", server, 50001, 443, client_initial("open.example"))
    assert censor.decide(other, 1.0).reason == "quic_residual"  # the triple is blocked
    answer = build_udp(server, "10.77.1.2", 443, 50001, b"\xc0" + bytes(60))
    assert not censor.decide(answer, 1.0).accept
    assert censor.decide(other, 6.0).accept  # the window is over
    opened = build_udp("10.77.1.2", scen.domain("open.example").a, 50002, 443,
                       client_initial("open.example"))  # fmt: skip
    assert censor.decide(opened, 6.0).accept
    exempt = build_udp("10.77.2.2", server, 50000, 443, client_initial("blocked.example"))
    assert censor.decide(exempt, 7.0).accept  # the open vantage is not censored
    text = scen.to_toml()
    assert "quic_blocked_sni" in text
    assert scenario_mod.parse(tomllib.loads(text)).censor == scen.censor


@dataclass
class World:
    site: QuicSite
    ca_file: str
    thread: ServerThread

    def relay(self, **kwargs: Any) -> QuicCensorRelay:
        return self.thread.start(QuicCensorRelay(HOST, (HOST, self.site.port), [SITE], **kwargs))


@pytest.fixture(scope="module")
def world(test_ca: TestCA) -> Iterator[World]:
    thread = ServerThread("quic-sni")
    try:
        site = thread.start(QuicSite(HOST, test_ca, [SITE, OTHER]))
        yield World(site, test_ca.ca_pem_path, thread)
    finally:
        thread.close()


async def run(input_: str, endpoint: str, world: World, state: Path, **options: Any) -> Any:
    ctx = ProbeContext(
        timeout=10,
        ca_file=world.ca_file,
        options={"sni_endpoint": endpoint, "state_dir": str(state), **options},
    )
    nettest = QuicSNI(ctx)
    await nettest.setup()
    try:
        return await nettest.measure(input_)
    finally:
        await nettest.close()


def roles(keys: dict[str, Any]) -> list[tuple[str, str | None]]:
    return [(a["x_role"], a["failure"]) for a in keys["quic_handshakes"]]


@pytest.mark.anyio
async def test_open_endpoint(world: World, tmp_path: Path) -> None:
    keys = await run(f"https://{SITE}/", f"{HOST}:{world.site.port}", world, tmp_path)
    assert (keys["blocking"], keys["blocking_detail"]) == (False, None)
    assert roles(keys) == [("control", None), ("target", None)]
    ports = {a["x_source_port"] for a in keys["quic_handshakes"]}
    assert len(ports) == 2 and None not in ports  # each handshake from its own port
    target = keys["quic_handshakes"][1]
    assert target["negotiated_protocol"] == "h3" and target["peer_certificates"]
    assert target["network"] == "udp" and not target["no_tls_verify"]


@pytest.mark.anyio
async def test_sni_blocked_per_flow(world: World, tmp_path: Path) -> None:
    relay = world.relay(scope="flow")
    keys = await run(SITE, f"{HOST}:{relay.port}", world, tmp_path)
    assert (keys["blocking"], keys["blocking_detail"]) == ("quic", SNI_BLOCKED)
    assert roles(keys) == [("control", None), ("target", "generic_timeout_error")] * ROUNDS
    assert keys["x_residual_blocking"] is False
    assert relay.decisions.count("quic_sni") == ROUNDS
    # The other name through the same censor: not blocked.
    keys = await run(OTHER, f"{HOST}:{relay.port}", world, tmp_path)
    assert (keys["blocking"], keys["blocking_detail"]) == (False, None)


@pytest.mark.anyio
async def test_sni_blocked_per_triple_needs_tcp_to_work(
    world: World, test_ca: TestCA, tmp_path: Path
) -> None:
    relay = world.relay(scope="triple")
    keys = await run(SITE, f"{HOST}:{relay.port}", world, tmp_path / "no-tcp")
    # The endpoint went dark after the target, and nothing answers over TCP: path down?
    assert roles(keys) == [("control", None), ("target", "generic_timeout_error"),
                           ("control", "generic_timeout_error")]  # fmt: skip
    assert keys["blocking"] is None and keys["x_tcp_check"]["failure"] is not None
    relay = world.relay(scope="triple")
    world.thread.start(WebServer(HOST, relay.port, ca=test_ca))  # HTTPS on the same port
    keys = await run(SITE, f"{HOST}:{relay.port}", world, tmp_path / "tcp")
    assert (keys["blocking"], keys["blocking_detail"]) == ("quic", SNI_BLOCKED)
    assert keys["x_residual_blocking"] is True and keys["x_tcp_check"]["failure"] is None
    assert keys["quic_handshakes"][2]["x_residual"] is True  # after the trigger: labelled


@pytest.mark.anyio
async def test_residual_taint_labels_the_next_input(world: World, tmp_path: Path) -> None:
    relay = world.relay(scope="triple")
    endpoint = f"{HOST}:{relay.port}"
    first = await run(SITE, endpoint, world, tmp_path)
    assert first["blocking"] is None  # no TCP server here: see the test above
    # A new run (a new process) reads the saved taint: the endpoint is still blocked, and a
    # failure of the other name there is residual, never a verdict.
    second = await run(OTHER, endpoint, world, tmp_path)
    assert second["x_residual"] is True
    assert roles(second) == [("control", "generic_timeout_error")]
    assert second["blocking"] is None and "residual" in second["x_verdict_why"]
    assert (tmp_path / "quic-taints.json").exists()


@pytest.mark.anyio
async def test_quic_blocked_whatever_the_name_is_inconclusive(world: World, tmp_path: Path) -> None:
    relay = world.relay(drop_all=True)
    keys = await run(SITE, f"{HOST}:{relay.port}", world, tmp_path)
    assert roles(keys) == [("control", "generic_timeout_error")]
    assert keys["blocking"] is None  # no QUIC server, or all of QUIC blocked: no control


def test_analysis_counts_only_timeouts() -> None:
    control = {"x_role": "control", "failure": None}
    closed = {"x_role": "target", "failure": "ssl_failed_handshake"}
    assert analyze({"quic_handshakes": [control, closed] * ROUNDS}).blocking is None
    wrong_name = {"x_role": "target", "failure": "ssl_invalid_hostname"}
    assert analyze({"quic_handshakes": [control, wrong_name]}).blocking is False
    timeout = {"x_role": "target", "failure": "generic_timeout_error"}
    assert analyze({"quic_handshakes": [control, timeout]}).blocking is None  # one round
    assert analyze({"quic_handshakes": []}).blocking is None
    assert analyze({"quic_handshakes": "junk"}).blocking is None


def test_run_and_analysis_rederive_quic_sni(world: World, tmp_path: Path) -> None:
    """`censorscope run quic_sni` stores the measurement; the analysis loads its handshakes as
    quic observations and judges it again with the same rules (the stored verdict kept)."""
    import subprocess
    import sys

    from analysis.load import load
    from analysis.verdicts import VERDICT_COLUMNS, Classifier

    relay = world.relay(scope="flow")
    results = tmp_path / "results"
    argv = [sys.executable, "-m", "probes", "run", "quic_sni", "--input", SITE,
            "--input", OTHER, "--sni-endpoint", f"{HOST}:{relay.port}",
            "--ca-file", world.ca_file, "--results", str(results), "--timeout", "10",
            "--no-progress"]  # fmt: skip
    env = {**os.environ, "XDG_STATE_HOME": str(tmp_path / "state")}
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode in (0, 3), proc.stderr[-2000:]  # 3: no control helper
    loaded = load(results=[results], classifier=Classifier(), classifier_columns=VERDICT_COLUMNS)
    m = loaded.measurements.set_index("input")
    assert m.loc[SITE, "blocking"] == "quic" and m.loc[SITE, "orig_blocking"] == "quic"
    assert m.loc[SITE, "blocking_detail"] == SNI_BLOCKED
    assert m.loc[OTHER, "blocking"] == "false"
    assert set(m["verdict_source"]) == {"rederived"}
    obs = loaded.observations
    quic = obs[obs["kind"] == "quic"]
    assert len(quic) == 2 * ROUNDS + 2 and set(quic["server_name"]) == {SITE, OTHER, "example.com"}
    # analyze, report and publish take them like any other nettest's.
    cli = [sys.executable, "-m", "probes"]
    steps = [("analyze", "out"), ("report", "r.html"), ("publish", "pub")]
    for argv in ([step, "--results", str(results), "--out", str(tmp_path / out)]
                 for step, out in steps):  # fmt: skip
        done = subprocess.run([*cli, *argv], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"{argv[0]}: {done.stderr[-2000:]}"
    import pandas as pd

    findings = pd.read_csv(tmp_path / "out" / "findings.csv").set_index("target")
    assert findings.loc[SITE, "test_name"] == "quic_sni" and findings.loc[SITE, "blocked"] == 1
    assert findings.loc[OTHER, "finding"] == "accessible everywhere"
    assert "site.test" in (tmp_path / "r.html").read_text()
    published = pd.read_csv(tmp_path / "pub" / "findings.csv").set_index("target")
    assert published.loc[SITE, "blocked"] == 1  # one measurement: suggestive, not a finding


def test_helper_discovers_h3_as_oohelperd() -> None:
    from backend.helper_quic import discovered_h3_endpoint

    url = "https://example.org/"
    assert discovered_h3_endpoint('h3=":443"; ma=86400', url) == "example.org:443"
    assert discovered_h3_endpoint('h3-29=":443", h3="alt.example:8443"', url) == (
        "alt.example:8443"
    )
    assert discovered_h3_endpoint('h2=":443"', url) == ""
    assert discovered_h3_endpoint("", url) == ""
    # Go's net.JoinHostPort(URL.Host, port) brackets a host that carries a port.
    assert discovered_h3_endpoint('h3=":8443"', "https://example.org:8443/") == (
        "[example.org:8443]:8443"
    )


@pytest.mark.anyio
async def test_helper_makes_quic_handshakes_when_h3_is_advertised(test_ca: TestCA) -> None:
    """Our helper, like oohelperd, makes a QUIC handshake with the name to each endpoint when
    the probe sets x_quic_enabled and the site's first response advertises h3."""
    from backend.helper import HelperConfig
    from probes.nettests.control import ControlClient
    from tests.loopback import FakeDNSServer
    from tests.loopback.control_helper import running_helper

    host = "127.0.63.2"
    thread = ServerThread("quic-helper")
    try:
        web = thread.start(WebServer(host, ca=test_ca))
        web.alt_svc = f'h3=":{web.port}"; ma=60'
        thread.start(QuicSite(host, test_ca, [SITE], port=web.port))
        dns = thread.start(FakeDNSServer("127.0.63.53", 0, {SITE: [host]}))
        config = HelperConfig(
            resolver=dns.address, allow_private=True, timeout=3, ca_file=test_ca.ca_pem_path
        )
        endpoint = f"{host}:{web.port}"
        with running_helper(config) as url:
            client = ControlClient([url], timeout=10, ca_file=None)
            try:
                assert await client.choose() is None
                on = await client.measure(f"https://{SITE}:{web.port}/", [endpoint], {}, quic=True)
                off = await client.measure(f"https://{SITE}:{web.port}/", [endpoint], {})
            finally:
                await client.aclose()
    finally:
        thread.close()
    assert on.failure is None and off.failure is None
    assert on.control["quic_handshake"] == {
        endpoint: {"server_name": SITE, "status": True, "failure": None}
    }
    assert on.control["http_request"]["discovered_h3_endpoint"] == (
        f"[{SITE}:{web.port}]:{web.port}"
    )
    assert off.control["quic_handshake"] == {}


def test_analysis_all_blocked_needs_the_helper() -> None:
    dark = {"x_role": "control", "failure": "generic_timeout_error"}
    keys: dict[str, Any] = {"endpoint": "192.0.2.7:443", "quic_handshakes": [dark]}
    assert analyze(keys).blocking is None
    keys["control"] = {"quic_handshake": {"192.0.2.7:443": {"status": False}}}
    assert analyze(keys).blocking is None  # the helper failed too: no QUIC server there
    keys["control"] = {"quic_handshake": {"192.0.2.7:443": {"status": True, "failure": None}}}
    found = analyze(keys)
    assert (found.blocking, found.blocking_detail) == ("quic", "quic.all_blocked")
    keys["x_residual"] = True  # still blocked from an earlier trigger: never a verdict
    assert analyze(keys).blocking is None


@pytest.mark.anyio
async def test_inputs_to_one_endpoint_never_overlap(
    world: World, test_ca: TestCA, tmp_path: Path
) -> None:
    """Two names to one endpoint at once through a per-triple censor: the blocked name's
    trigger must not land inside the other's rounds (that would read as SNI blocking)."""
    import asyncio

    relay = world.relay(scope="triple")
    world.thread.start(WebServer(HOST, relay.port, ca=test_ca))
    ctx = ProbeContext(
        timeout=10,
        ca_file=world.ca_file,
        options={"sni_endpoint": f"{HOST}:{relay.port}", "state_dir": str(tmp_path)},
    )
    nettest = QuicSNI(ctx)
    await nettest.setup()
    try:
        blocked, other = await asyncio.gather(nettest.measure(SITE), nettest.measure(OTHER))
    finally:
        await nettest.close()
    assert (blocked["blocking"], blocked["blocking_detail"]) == ("quic", SNI_BLOCKED)
    # Measured before the trigger (open), or after it on the residually blocked triple
    # (labelled, no verdict): never blocked itself.
    assert other["blocking"] is False or (other["blocking"] is None and other["x_residual"])
    spans = [(a["t0"], a["t"]) for k in (blocked, other) for a in k["quic_handshakes"]]
    first, second = sorted([blocked, other], key=lambda k: k["quic_handshakes"][0]["t0"])
    assert first["quic_handshakes"][-1]["t"] <= second["quic_handshakes"][0]["t0"], spans


@pytest.mark.anyio
async def test_ipv6_handshake(test_ca: TestCA) -> None:
    """Over IPv6 too (aioquic matches a path by the 4-tuple address an AF_INET6 socket
    reports: a 2-tuple peer would never complete)."""
    import socket

    from probes.net.quic import quic_handshake

    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback here")
    thread = ServerThread("quic-v6")
    try:
        site = thread.start(QuicSite("::1", test_ca, [SITE]))
        found = await quic_handshake(
            "::1", site.port, SITE, timeout=5, t_zero=0.0, ca_file=test_ca.ca_pem_path
        )
    finally:
        thread.close()
    assert found.failure is None and found.record["address"] == f"[::1]:{site.port}"
