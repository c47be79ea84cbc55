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
from pathlib import Path
from typing import Any

UNAVAILABLE = "unavailable"
RST_INJECTED = "tcp.rst_injected"


CAP_NET_RAW = 13  # linux/capability.h


def has_net_raw() -> bool:
    """Whether this process may open packet sockets: CAP_NET_RAW in its effective set (root in
    a container may lack it; an unprivileged binary may have it as a file capability)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> CAP_NET_RAW & 1)
    except (OSError, ValueError):
        pass
    return hasattr(os, "geteuid") and os.geteuid() == 0


def capture_unavailable() -> str | None:
    """Why packets cannot be captured here (None: they can)."""
    try:
        import scapy.all  # noqa: F401
    except ImportError:
        return "scapy is not installed (pip install 'censorscope[packets]')"
    if not has_net_raw():
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


# How long `start` waits for the sniffer's socket before giving up on the capture.
START_TIMEOUT_S = 2.0
# After the flow, packets still in flight (a RST racing the close) get this long to arrive.
DRAIN_S = 0.05


def route_iface(ip: str) -> str | None:
    """The interface the kernel would send to ``ip`` through (the vantage's own, in a netns)."""
    from scapy.all import conf

    try:
        iface = conf.route6.route(ip)[0] if ":" in ip else conf.route.route(ip)[0]
    except Exception:  # scapy's route lookup raises bare exceptions on odd tables
        return None
    return str(iface) if iface else None


@dataclass
class Capture:
    """A running capture of one flow; ``packets`` after ``stop``."""

    bpf: str
    iface: str | None = None
    packets: list[Any] = field(default_factory=list)
    _sniffer: Any = None

    async def start(self) -> None:
        """Start sniffing and return only once the socket is open (or raise OSError)."""
        import threading

        from scapy.all import AsyncSniffer

        ready = threading.Event()
        self._sniffer = AsyncSniffer(
            filter=self.bpf, iface=self.iface, store=True, started_callback=ready.set
        )
        # start() spawns the sniffer's thread, which opens the socket then calls back.
        self._sniffer.start()
        if not await asyncio.to_thread(ready.wait, START_TIMEOUT_S):
            await self.stop()
            raise OSError("packet capture did not start")

    async def stop(self) -> list[Any]:
        if self._sniffer is None:
            return []
        sniffer, self._sniffer = self._sniffer, None
        await asyncio.sleep(DRAIN_S)
        if getattr(sniffer, "running", False):
            # stop() joins the sniffer's thread: off the event loop.
            result = await asyncio.to_thread(sniffer.stop)
        else:
            result = sniffer.results
        self.packets = list(result or [])
        return self.packets


class FlowRecorder:
    """Packet evidence for one measurement's flows to one endpoint, or a note why there is none.

    ``async with FlowRecorder(ip, port, enabled=..., pcap=...) as rec`` captures while the body
    runs; afterwards ``rec.keys()`` gives the test keys to merge: ``packet_capture`` ("ok" or
    "unavailable") and, when captured, ``x_packets`` (TTL/IP-ID of the SYN-ACK and the RSTs).
    """

    def __init__(self, ip: str, port: int, *, enabled: bool = True, pcap: str | None = None):
        self.ip, self.port, self.pcap = ip, port, pcap
        self.unavailable = capture_unavailable() if enabled else "disabled"
        self.capture: Capture | None = None
        self.failure: str | None = None

    async def __aenter__(self) -> FlowRecorder:
        if self.unavailable is None:
            self.capture = Capture(flow_filter(self.ip, self.port), route_iface(self.ip))
            try:
                await self.capture.start()
            except OSError as exc:
                self.capture, self.failure = None, str(exc)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.capture is not None:
            packets = await self.capture.stop()
            if self.pcap:
                from scapy.utils import wrpcap

                await asyncio.to_thread(wrpcap, self.pcap, packets)

    def keys(self) -> dict[str, Any]:
        if self.unavailable == "disabled":
            return {}
        if self.capture is None:
            return {"packet_capture": UNAVAILABLE,
                    "x_packet_capture_reason": self.unavailable or self.failure}  # fmt: skip
        evidence = tcp_evidence(self.capture.packets, self.ip)
        out: dict[str, Any] = {"packet_capture": "ok", "x_packets": evidence}
        if self.pcap:
            out["x_pcap"] = self.pcap
        return out


def tcp_evidence(packets: list[Any], server_ip: str) -> dict[str, Any]:
    """TTL/IP-ID of the server's SYN-ACK and of every RST from the server's address."""
    from scapy.layers.inet import IP, TCP

    synack: dict[str, Any] | None = None
    resets: list[dict[str, Any]] = []
    for pkt in packets:
        if IP not in pkt or TCP not in pkt or pkt[IP].src != server_ip:
            continue
        flags = int(pkt[TCP].flags)
        entry = {"ttl": pkt[IP].ttl, "ip_id": pkt[IP].id, "flags": str(pkt[TCP].flags),
                 "sport": pkt[TCP].dport, "t": float(pkt.time)}  # fmt: skip
        if flags & 0x12 == 0x12:
            if synack is None:
                synack = entry
        elif flags & 0x04:
            resets.append(entry)
    ttl_differs = bool(synack and any(r["ttl"] != synack["ttl"] for r in resets))
    return {
        "synack": synack,
        "resets": resets,
        # The IP-IDs are kept as numbers, not judged: Linux sends a DF SYN-ACK with ID 0 and
        # its later packets with a per-flow counter, so one SYN-ACK says little on its own.
        "rst_ttl_differs": ttl_differs,
        "evidence": RST_INJECTED if ttl_differs else None,
    }
