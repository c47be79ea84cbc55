"""probes.net.packets: filters, a live capture on loopback, and the clean "unavailable" answer."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from probes.net import packets
from tests import missing

REPO = Path(__file__).resolve().parent.parent


def test_filter() -> None:
    assert packets.flow_filter("2001:db8::1", 443) == "ip6 host 2001:db8::1 and tcp port 443"
    assert packets.endpoints_filter(["192.0.2.1", "2001:db8::1"], [80, 443]) == (
        "(ip host 192.0.2.1 or ip6 host 2001:db8::1) and (tcp port 80 or tcp port 443)"
    )


@missing.capture_skip_if(packets.capture_unavailable())
@pytest.mark.anyio
async def test_too_many_captures_degrade_to_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past MAX_CAPTURES at once a measurement gets the "unavailable" note, not a crash (scapy's
    select() loop breaks on descriptors above 1024)."""
    monkeypatch.setattr(packets, "MAX_CAPTURES", 0)
    async with packets.FlowRecorder("127.0.0.1", 9) as rec:
        pass
    assert rec.keys() == {"packet_capture": packets.UNAVAILABLE,
                          "x_packet_capture_reason": "more than 0 captures at once"}  # fmt: skip
    assert packets._active == 0


def test_unavailable_is_a_reason_or_none() -> None:
    reason = packets.capture_unavailable()
    assert reason is None or (isinstance(reason, str) and reason)


_FLOW = """
import asyncio, json, sys
from probes.net.packets import FlowRecorder

async def main():
    async def serve(reader, writer):
        writer.write(b"hello")
        await writer.drain()
        writer.close()
    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pcap = sys.argv[1] if len(sys.argv) > 1 else None
    async with FlowRecorder("127.0.0.1", port, pcap=pcap) as rec:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        data = await reader.read()
        writer.close()
    server.close()
    print(json.dumps({"data": data.decode(), **rec.keys()}))

asyncio.run(main())
"""


def _flow(*prefix: str, pcap: str | None = None) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [*prefix, sys.executable, "-c", _FLOW, *([pcap] if pcap else [])],
        capture_output=True, text=True, env=env, umask=0,
        timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


@missing.capture_skip_if(packets.capture_unavailable())
def test_capture_on_loopback() -> None:
    """Started before the first packet: the SYN-ACK of the flow is in the capture."""
    keys = _flow()
    assert keys["data"] == "hello" and keys["packet_capture"] == "ok"
    synack = keys["x_packets"]["synack"]
    assert synack and synack["ttl"] == 64 and keys["x_packets"]["resets"] == []


@pytest.mark.skipif(packets.capture_unavailable() is not None, reason="needs root and scapy")
def test_pcap_is_private(tmp_path: Path) -> None:
    """A capture holds the probe's own addresses: 0600 whatever the umask (0 here) and even
    when the file was there before with a wider mode."""
    from scapy.utils import rdpcap

    pcap = tmp_path / "flow.pcap"
    pcap.write_bytes(b"")
    pcap.chmod(0o644)
    keys = _flow(pcap=str(pcap))
    assert keys["x_pcap"] == str(pcap) and rdpcap(str(pcap))
    assert stat.S_IMODE(pcap.stat().st_mode) == 0o600
    fresh = tmp_path / "dir" / "x.pcap"
    assert packets.pcap_path(str(fresh.parent), "t", "x") is not None
    assert stat.S_IMODE(fresh.parent.stat().st_mode) == 0o700


@pytest.mark.skipif(
    not (packets.has_net_raw() and shutil.which("setpriv")), reason="needs CAP_NET_RAW to drop"
)
def test_unprivileged_degrades_cleanly() -> None:
    """Without CAP_NET_RAW (dropped from the bounding set, as in a default container) the flow
    still runs and the capture is noted as unavailable."""
    keys = _flow("setpriv", "--bounding-set=-net_raw")
    assert keys["data"] == "hello"
    assert keys["packet_capture"] == packets.UNAVAILABLE and keys["x_packet_capture_reason"]
    assert "x_packets" not in keys


def test_open_private_closes_its_descriptor_when_it_cannot_restrict_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(_fd: int, _mode: int) -> None:
        raise PermissionError("fchmod refused")

    before = len(os.listdir("/proc/self/fd"))
    monkeypatch.setattr(packets.os, "fchmod", refuse)
    for _ in range(5):
        with pytest.raises(PermissionError):
            packets.open_private(str(tmp_path / "x.pcap"))
    assert len(os.listdir("/proc/self/fd")) == before
