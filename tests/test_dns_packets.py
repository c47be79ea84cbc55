"""Packet evidence for DNS answers (probes.net.dns_packets) against real servers on loopback.

As root, a server sends a forged answer with IP TTL 37 before the genuine one (TTL 64): the
run-wide raw-socket capture must put each answer's TTL and IP-ID beside it and the analysis
must call the query dns.injected, even when both answers carry the same address. Without
CAP_NET_RAW the run must go on and say, once, that capture is unavailable.
"""

from __future__ import annotations

import os
import shutil
import socket
import stat
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from probes.net.dns import DNSResult, resolve
from probes.net.dns_packets import DNSCapture, _bpf, capture_unavailable, parse_ipv4_udp
from probes.nettests.base import ProbeContext
from probes.nettests.dns_consistency import DNSConsistency
from probes.store import ResultsStore
from tests.loopback import FakeDNSServer, ServerThread
from tests.loopback.dns_ttl_injector import DEFAULT_TTL, TTLInjectingDNS

ZONE = {"site.test": ["127.0.7.10"]}
needs_raw = pytest.mark.skipif(
    capture_unavailable() is not None, reason=f"packet capture: {capture_unavailable()}"
)


def _ipv4_udp(src: str, sport: int, dport: int, ttl: int, ip_id: int, payload: bytes) -> bytes:
    header = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 28 + len(payload), ip_id, 0, ttl, 17, 0,
        socket.inet_aton(src), socket.inet_aton("127.0.0.1"),
    )  # fmt: skip
    return header + struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def test_parse_ipv4_udp_reads_ttl_id_and_payload() -> None:
    packet = _ipv4_udp("127.0.0.3", 53, 40000, 37, 4242, b"\x12\x34dns")
    assert parse_ipv4_udp(packet) == ("127.0.0.3", 53, 40000, 37, 4242, b"\x12\x34dns")
    assert parse_ipv4_udp(packet[:20]) is None
    assert parse_ipv4_udp(b"\x60" + packet[1:]) is None  # not IPv4


def test_bpf_program_shape() -> None:
    program = _bpf([53, 5353])
    assert len(program) % 8 == 0 and len(program) // 8 == 4 + 2 + 2
    # The last instruction accepts, the one before drops.
    assert struct.unpack("HBBI", program[-8:]) == (0x06, 0, 0, 0x40000)
    assert struct.unpack("HBBI", program[-16:-8]) == (0x06, 0, 0, 0)


async def _resolve_captured(
    server: TTLInjectingDNS, capture: DNSCapture, listen_window: float
) -> DNSResult:
    """Resolve site.test at ``server`` with ``capture`` running around the query."""
    capture.start()
    try:
        return await resolve(
            "site.test", resolver=server.address, t_zero=time.monotonic(),
            listen_window=listen_window, capture=capture,
        )  # fmt: skip
    finally:
        capture.close()


@needs_raw
@pytest.mark.anyio
async def test_answers_carry_their_ip_ttl_and_id() -> None:
    with TTLInjectingDNS("127.0.0.3") as server:
        capture = DNSCapture([(server.host, server.port)])
        res = await _resolve_captured(server, capture, 0.2)
    assert [r["addrs"] for r in res.extra_responses] == [["10.10.34.35"], ["127.0.7.10"]]
    assert [r["ip_ttl"] for r in res.extra_responses] == [37, DEFAULT_TTL]
    assert all(isinstance(r["ip_id"], int) for r in res.extra_responses)
    assert capture.captured == 2
    assert not capture.open_ports  # nothing kept once the query is over


@needs_raw
@pytest.mark.anyio
async def test_capture_ignores_other_servers() -> None:
    with TTLInjectingDNS("127.0.0.3") as server:
        capture = DNSCapture([("127.0.0.3", 1)])  # not this server's port
        res = await _resolve_captured(server, capture, 0.1)
    assert res.extra_responses and not any("ip_ttl" in r for r in res.extra_responses)


async def _measure(resolver: str, control: str, **options: Any) -> dict[str, Any]:
    ctx = ProbeContext(
        timeout=5,
        options={
            "dns_resolvers": [resolver], "control_resolver": control,
            "listen_window": 0.2, "bogon_exempt": ["127.0.7.0/24"], **options,
        },
    )  # fmt: skip
    nettest = DNSConsistency(ctx)
    await nettest.setup()
    try:
        return await nettest.measure("site.test")
    finally:
        await nettest.close()


@needs_raw
@pytest.mark.anyio
@pytest.mark.parametrize("same_answer", [False, True], ids=["forged_address", "same_address"])
async def test_differing_ttls_are_injection_evidence(same_answer: bool) -> None:
    thread = ServerThread("ttl-control")
    try:
        control = thread.start(FakeDNSServer("127.0.7.1", 0, ZONE))
        with TTLInjectingDNS("127.0.7.3", same_answer=same_answer) as server:
            keys = await _measure(f"udp://{server.address}", control.address)
    finally:
        thread.close()
    assert keys["packet_capture"] == "ok"
    (query,) = keys["queries"]
    assert [r["ip_ttl"] for r in query["x_responses"]] == [37, DEFAULT_TTL]
    ttl_evidence = [e for e in keys["dns_evidence"] if "IP TTLs" in e["detail"]]
    assert ttl_evidence == [
        {"kind": "dns.injected", "resolver": server.address,
         "detail": f"answers' IP TTLs differ: 37,{DEFAULT_TTL}"},
    ]  # fmt: skip
    assert (keys["blocking"], keys["blocking_detail"]) == ("dns", "dns.injected")
    # The control resolver's one answer is captured too, and proves nothing on its own.
    assert [r["ip_ttl"] for r in keys["control_queries"][0]["x_responses"]] == [DEFAULT_TTL]


@needs_raw
@pytest.mark.anyio
async def test_one_sender_is_no_evidence_and_capture_can_be_switched_off() -> None:
    thread = ServerThread("ttl-truthful")
    try:
        truthful = thread.start(FakeDNSServer("127.0.7.1", 0, ZONE))
        keys = await _measure(f"udp://{truthful.address}", truthful.address)
        off = await _measure(f"udp://{truthful.address}", truthful.address, packet_capture=False)
    finally:
        thread.close()
    assert keys["packet_capture"] == "ok" and keys["blocking"] is False
    assert [r["ip_ttl"] for r in keys["queries"][0]["x_responses"]] == [DEFAULT_TTL]
    assert "packet_capture" not in off and off["blocking"] is False
    assert not any("ip_ttl" in r for r in off["queries"][0]["x_responses"])


@pytest.mark.skipif(shutil.which("setpriv") is None or os.geteuid() != 0, reason="needs setpriv")
def test_without_cap_net_raw_the_run_goes_on_and_says_so_once(tmp_path: Path) -> None:
    """As root with CAP_NET_RAW dropped from every set (setpriv), as in a locked-down container."""
    thread = ServerThread("ttl-unprivileged")
    try:
        truthful = thread.start(FakeDNSServer("127.0.7.1", 0, ZONE))
        cmd = [
            "setpriv", "--inh-caps=-net_raw", "--ambient-caps=-net_raw", "--bounding-set=-net_raw",
            sys.executable, "-c", "from probes.cli import main; main()", "run", "dns_consistency",
            "--input", "site.test", "--input", "other.site.test",
            "--dns-resolver", f"udp://{truthful.address}", "--control-resolver", truthful.address,
            "--bogon-exempt", "127.0.7.0/24", "--listen-window", "0.1",
            "--results", str(tmp_path), "--no-progress", "--timeout", "5",
        ]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    finally:
        thread.close()
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("packet capture unavailable") == 1, proc.stderr
    lines = list(ResultsStore(tmp_path).iter_measurements(test_names={"dns_consistency"}))
    assert len(lines) == 2
    for m in lines:
        keys = m.test_keys or {}
        assert keys["packet_capture"] == "unavailable"
        assert "CAP_NET_RAW" in keys["x_packet_capture_reason"]
        assert not any("ip_ttl" in r for q in keys["queries"] for r in q["x_responses"])


@needs_raw
@pytest.mark.anyio
async def test_the_run_wide_pcap_holds_the_answers(tmp_path: Path) -> None:
    from scapy.layers.inet import IP, UDP
    from scapy.utils import rdpcap

    thread = ServerThread("ttl-pcap")
    try:
        control = thread.start(FakeDNSServer("127.0.7.1", 0, ZONE))
        with TTLInjectingDNS("127.0.7.3") as server:
            keys = await _measure(
                f"udp://{server.address}", control.address, pcap_dir=str(tmp_path / "pcaps")
            )
    finally:
        thread.close()
    packets = rdpcap(keys["x_pcap"])
    # It holds the probe's addresses: readable by its owner only.
    assert stat.S_IMODE(Path(keys["x_pcap"]).stat().st_mode) == 0o600
    # The probe's query got the forged and the genuine answer, the control's query one.
    assert sorted((p[IP].ttl, p[UDP].sport) for p in packets) == sorted(
        [(37, server.port), (DEFAULT_TTL, server.port), (DEFAULT_TTL, control.port)]
    )


@pytest.mark.anyio
async def test_nothing_to_capture_without_an_ipv4_udp_resolver() -> None:
    ctx = ProbeContext(options={"dns_resolvers": ["tcp://127.0.0.1:53"]})
    nettest = DNSConsistency(ctx)
    await nettest.setup()
    await nettest.close()
    assert nettest.capture is None and not any("packet" in w for w in nettest.warnings)
    assert nettest.capture_keys["packet_capture"] == "unavailable"
