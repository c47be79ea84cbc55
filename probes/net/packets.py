"""Packet-level evidence of a flow: TTL and IP-ID of the packets a censor may have forged.

Optional: needs scapy (the ``packets`` extra) and CAP_NET_RAW. ``capture_unavailable()`` says
why capture cannot run, and callers then record ``packet_capture: "unavailable"`` and go on.
A capture is started *before* the flow's first packet (AsyncSniffer runs in its own thread;
``start`` returns once the socket is open) and stopped afterwards; the packets are then
summarised without blocking the event loop (``asyncio.to_thread``).

Why TTL and IP-ID: an injected RST or DNS answer is crafted by a box a few hops away, so its IP
TTL usually differs from the server's packets (e.g. the SYN-ACK) and its IP-ID does not follow
the server's sequence (GFW injections, Clayton et al. 2006; Weaver et al. 2009).
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass, field
from typing import Any

UNAVAILABLE = "unavailable"


def capture_unavailable() -> str | None:
    """Why packets cannot be captured here (None: they can)."""
    try:
        import scapy.all  # noqa: F401
    except ImportError:
        return "scapy is not installed (pip install 'censorscope[packets]')"
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        return "needs root or CAP_NET_RAW"
    try:
        from scapy.arch.common import compile_filter

        compile_filter("tcp")
    except Exception as exc:  # scapy raises its own exception type without libpcap
        return f"cannot compile BPF filters ({exc}); install libpcap"
    return None


def flow_filter(ip: str, port: int, proto: str = "tcp") -> str:
    """A BPF filter for one remote endpoint (both directions)."""
    family = "ip6" if ":" in ip else "ip"
    return f"{family} host {ip} and {proto} port {port}"


@dataclass
class Capture:
    """A running capture of one flow; ``packets`` after ``stop``."""

    bpf: str
    iface: str | None = None
    packets: list[Any] = field(default_factory=list)
    _sniffer: Any = None

    async def start(self) -> None:
        from scapy.all import AsyncSniffer

        self._sniffer = AsyncSniffer(filter=self.bpf, iface=self.iface, store=True)
        await asyncio.to_thread(self._sniffer.start)
        # AsyncSniffer opens its socket in its thread; wait until it is listening.
        for _ in range(200):
            if getattr(self._sniffer, "running", False):
                break
            await asyncio.sleep(0.005)

    async def stop(self) -> list[Any]:
        if self._sniffer is None:
            return []
        await asyncio.sleep(0.05)  # let in-flight packets reach the socket
        result = await asyncio.to_thread(self._sniffer.stop)
        self.packets = list(result or [])
        return self.packets


def tcp_evidence(packets: list[Any], server_ip: str) -> dict[str, Any]:
    """TTL/IP-ID of the server's SYN-ACK and of every RST from the server's address."""
    from scapy.layers.inet import IP, TCP

    synack: dict[str, Any] | None = None
    resets: list[dict[str, Any]] = []
    for pkt in packets:
        if IP not in pkt or TCP not in pkt or pkt[IP].src != server_ip:
            continue
        flags = int(pkt[TCP].flags)
        entry = {"ttl": pkt[IP].ttl, "ip_id": pkt[IP].id, "flags": str(pkt[TCP].flags)}
        if flags & 0x12 == 0x12 and synack is None:
            synack = entry
        elif flags & 0x04:
            resets.append(entry)
    injected = bool(synack and any(r["ttl"] != synack["ttl"] for r in resets))
    return {"synack": synack, "resets": resets, "rst_ttl_differs": injected}
