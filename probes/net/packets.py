"""Packet-level evidence of a flow: TTL and IP-ID of the packets a censor may have forged.

Needs scapy (a dependency), libpcap (to compile BPF filters) and CAP_NET_RAW.
``capture_unavailable()`` says why capture cannot run, and callers then record
``packet_capture: "unavailable"`` and go on.
A capture is started *before* the flow's first packet (AsyncSniffer runs in its own thread;
``start`` returns once the socket is open) and stopped afterwards; the packets are then
summarised without blocking the event loop (``asyncio.to_thread``).

Why TTL and IP-ID: an injected RST or DNS answer is crafted by a box a few hops away, so its IP
TTL usually differs from the server's packets (e.g. the SYN-ACK) and its IP-ID does not follow
the server's sequence (GFW injections, Clayton et al. 2006; Weaver et al. 2009). Verdicts never
depend on these keys (they must not change with privileges); the shape of ``x_packets`` is in
docs/data-format.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from probes.net.addresses import format_host_port

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


@functools.cache
def capture_unavailable() -> str | None:
    """Why packets cannot be captured here (None: they can). Cached: it costs ~0.4 ms (a BPF
    compile) and does not change while the process runs."""
    try:
        import scapy.all  # noqa: F401
    except ImportError:
        return "scapy is not installed (bash scripts/install.sh)"
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
    return endpoints_filter([ip], [port], proto)


def endpoints_filter(ips: Sequence[str], ports: Sequence[int], proto: str = "tcp") -> str:
    """A BPF filter for the flows to any of ``ips`` on any of ``ports`` (both directions)."""
    hosts = " or ".join(f"{'ip6' if ':' in ip else 'ip'} host {ip}" for ip in ips)
    port_expr = " or ".join(f"{proto} port {port}" for port in ports)
    if len(ips) > 1:
        hosts = f"({hosts})"
    if len(ports) > 1:
        port_expr = f"({port_expr})"
    return f"{hosts} and {port_expr}"


def pcap_path(pcap_dir: str | None, nettest: str, name: str) -> str | None:
    """A fresh pcap file name under ``pcap_dir`` (created 0700), or None when no pcaps are kept."""
    if not pcap_dir:
        return None
    Path(pcap_dir).mkdir(mode=0o700, parents=True, exist_ok=True)
    safe = "".join(c if c.isalnum() or c in ".-" else "_" for c in name)[:80]
    return str(Path(pcap_dir) / f"{nettest}-{safe}-{time.time_ns()}.pcap")


def open_private(path: str) -> BinaryIO:
    """Open a pcap for writing, readable by its owner only (0600): a capture holds the probe's
    own addresses, which the scrubber removes from measurements but cannot remove from it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # an existing file keeps its mode through O_CREAT
        return os.fdopen(fd, "wb")
    except BaseException:
        os.close(fd)  # a capture per measurement: a leaked descriptor each would add up
        raise


def _write_pcap(wrpcap: Any, path: str, packets: Any) -> None:
    with open_private(path) as out:
        wrpcap(out, packets)


# How long `start` waits for the sniffer's socket before giving up on the capture.
START_TIMEOUT_S = 2.0
# Captures running at once in this process. Each holds a thread and ~3 file descriptors, and
# scapy's sniffer loop uses select(), which fails on descriptors above 1024: at web
# connectivity's concurrency 256 in the lab, uncapped captures broke it. Beyond this many, a
# measurement records packet_capture "unavailable" (with the reason) instead of waiting.
MAX_CAPTURES = 64
_active = 0
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
    iface: str | list[str] | None = None
    packets: list[Any] = field(default_factory=list)
    error: str | None = None  # the sniffer failed: the packets are incomplete
    _sniffer: Any = None

    async def start(self) -> None:
        """Start sniffing and return only once the socket is open (or raise OSError)."""
        import threading

        from scapy.all import AsyncSniffer

        ready = threading.Event()
        # prn appends as packets arrive (list.append is atomic), so a caller can look at the
        # flows while the capture still runs (e.g. to decide on a reference connect).
        self._sniffer = AsyncSniffer(
            filter=self.bpf, iface=self.iface, store=False, prn=self.packets.append,
            started_callback=ready.set, promisc=False,  # our own flows need no promiscuity
        )  # fmt: skip
        # start() spawns the sniffer's thread, which opens the socket then calls back.
        self._sniffer.start()
        if not await asyncio.to_thread(ready.wait, START_TIMEOUT_S):
            await self.stop()
            raise OSError("packet capture did not start")

    @property
    def running(self) -> bool:
        return self._sniffer is not None

    async def stop(self) -> list[Any]:
        if self._sniffer is None:
            return []
        sniffer, self._sniffer = self._sniffer, None
        try:
            await asyncio.sleep(DRAIN_S)
            if getattr(sniffer, "running", False):
                # stop() joins the sniffer's thread: off the event loop.
                await asyncio.to_thread(sniffer.stop)
        except asyncio.CancelledError:
            # Cancelled (an abandoned input): never leave the thread and its socket behind.
            with contextlib.suppress(Exception):  # scapy: "Not running" if already stopping
                sniffer.stop(join=False)
            raise
        except Exception as exc:  # the sniffer's thread died (scapy re-raises it on join)
            self.error = f"capture failed: {exc!r}"
        return self.packets


class FlowRecorder:
    """Packet evidence for one measurement's flows to some endpoints, or a note why there is none.

    ``async with FlowRecorder(ips, port, enabled=..., pcap=...) as rec`` captures the flows to
    any of ``ips`` on ``port`` (and on ``reference_port``, when given) while the body runs;
    afterwards ``rec.keys()`` gives the test keys to merge: ``packet_capture`` ("ok" or
    "unavailable") and, when captured, ``x_packets`` (see ``tcp_evidence``). When the endpoints
    are known only later (after DNS), create it without ``ips`` around the whole measurement
    and call ``start(ips, port)`` then ``stop()``: leaving the ``async with`` always stops it.
    """

    def __init__(
        self,
        ips: str | Sequence[str] = (),
        port: int = 0,
        *,
        enabled: bool = True,
        pcap: str | None = None,
        reference_port: int | None = None,
    ) -> None:
        self.ips = [ips] if isinstance(ips, str) else list(dict.fromkeys(ips))
        self.port, self.pcap, self.reference_port = port, pcap, reference_port
        self.unavailable = capture_unavailable() if enabled else "disabled"
        self.capture: Capture | None = None
        self.failure: str | None = None
        self.started = False

    @property
    def running(self) -> bool:
        return self.capture is not None

    async def __aenter__(self) -> FlowRecorder:
        if self.ips:
            await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self, ips: Sequence[str] | None = None, port: int | None = None) -> None:
        """Capture the flows to ``ips`` on ``port`` from now on (no-op when unavailable)."""
        if ips is not None:
            self.ips = list(dict.fromkeys(ips))
        self.port = port if port is not None else self.port
        global _active
        if self.unavailable is not None or not self.ips or self.started:
            return
        self.started = True
        if _active >= MAX_CAPTURES:
            self.failure = f"more than {MAX_CAPTURES} captures at once"
            return
        ports = [self.port] + ([self.reference_port] if self.reference_port else [])
        ifaces = sorted({i for ip in self.ips if (i := route_iface(ip))})
        iface: str | list[str] | None = ifaces[0] if len(ifaces) == 1 else ifaces or None
        self.capture = Capture(endpoints_filter(self.ips, ports), iface)
        _active += 1
        try:
            await self.capture.start()
        except OSError as exc:
            _active -= 1
            self.capture, self.failure = None, str(exc)

    async def stop(self) -> None:
        """Stop capturing (idempotent) and write the pcap, when one was asked for."""
        global _active
        capture = self.capture
        if capture is None or not capture.running:
            return
        try:
            packets = await capture.stop()
        finally:
            _active -= 1
        if capture.error:
            self.capture, self.failure = None, capture.error
            return
        if self.pcap:
            from scapy.utils import wrpcap

            try:
                await asyncio.to_thread(_write_pcap, wrpcap, self.pcap, packets)
            except OSError:
                self.pcap = None  # no x_pcap: the evidence above does not depend on the file

    async def unjudged_resets(self) -> list[str]:
        """Addresses that sent a RST on ``port`` with no SYN-ACK to compare it with (yet): the
        ones a reference connect to ``reference_port`` would help judge."""
        if self.capture is None:
            return []
        await asyncio.sleep(DRAIN_S)  # the sniffer's thread may still hold the RST
        found = tcp_evidence(list(self.capture.packets), self.ips, self.port)
        return sorted({r["src"] for r in found["resets"] if r["ttl_differs"] is None})

    def keys(self, *, detail: bool = False) -> dict[str, Any]:
        """``packet_capture`` (and why not, or ``x_packets`` and ``x_pcap``); {} when disabled
        or when there was no flow to capture (no address). With ``detail``, also
        ``x_packet_detail``: ``x_packets.evidence`` beside the verdict, never part of it."""
        if self.unavailable == "disabled" or (self.unavailable is None and not self.started):
            return {}
        if self.capture is None:
            return {"packet_capture": UNAVAILABLE,
                    "x_packet_capture_reason": self.unavailable or self.failure}  # fmt: skip
        evidence = tcp_evidence(self.capture.packets, self.ips, self.port)
        out: dict[str, Any] = {"packet_capture": "ok", "x_packets": evidence}
        if self.pcap:
            out["x_pcap"] = self.pcap
        if detail:
            out["x_packet_detail"] = evidence["evidence"]
        return out


def _canonical(ip: str) -> str:
    try:
        return str(ipaddress.ip_address(ip))
    except ValueError:
        return ip


def _entry(pkt: Any) -> dict[str, Any] | None:
    """TTL (hop limit), IP-ID, flags, ports and time of one captured TCP packet."""
    from scapy.layers.inet import IP, TCP
    from scapy.layers.inet6 import IPv6

    if TCP not in pkt:
        return None
    if IP in pkt:
        src, ttl, ip_id = pkt[IP].src, pkt[IP].ttl, pkt[IP].id
    elif IPv6 in pkt:
        src, ttl, ip_id = pkt[IPv6].src, pkt[IPv6].hlim, None  # IPv6 has no IP-ID
    else:
        return None
    tcp = pkt[TCP]
    return {"src": _canonical(src), "port": tcp.sport, "ttl": ttl, "ip_id": ip_id,
            "flags": str(tcp.flags), "sport": tcp.dport, "t": float(pkt.time)}  # fmt: skip


def tcp_evidence(
    packets: list[Any], server_ips: str | Sequence[str], port: int | None = None
) -> dict[str, Any]:
    """TTL/IP-ID of the servers' SYN-ACKs and RSTs, each RST judged against its baseline.

    A RST's baseline is the SYN-ACK of its own flow (same probe port), else the first SYN-ACK
    from the same address, else a *reference*: the first packet the same address sent from
    another port (a connect made for that purpose: its SYN-ACK, or the host's own RST of a
    closed port). A RST whose TTL differs from its baseline was forged on the path.
    """
    from scapy.layers.inet import TCP

    ips = {_canonical(ip) for ip in ([server_ips] if isinstance(server_ips, str) else server_ips)}
    flows: dict[tuple[str, int], dict[str, Any]] = {}
    first_synack: dict[str, dict[str, Any]] = {}
    references: dict[str, dict[str, Any]] = {}
    resets: list[dict[str, Any]] = []
    seen: set[tuple[Any, ...]] = set()
    for pkt in packets:
        entry = _entry(pkt)
        if entry is None or entry["src"] not in ips:
            continue
        # On loopback a packet is seen twice (sent, then received): keep one.
        key = (*(entry[k] for k in ("src", "port", "sport", "ttl", "ip_id", "flags")),
               pkt[TCP].seq, pkt[TCP].ack)  # fmt: skip
        if key in seen:
            continue
        seen.add(key)
        if port is not None and entry["port"] != port:
            references.setdefault(entry["src"], entry)
            continue
        flags = int(pkt[TCP].flags)
        if flags & 0x12 == 0x12:
            flows.setdefault((entry["src"], entry["sport"]), entry)
            first_synack.setdefault(entry["src"], entry)
        elif flags & 0x04:
            resets.append(entry)
    for rst in resets:
        base = (flows.get((rst["src"], rst["sport"])) or first_synack.get(rst["src"])
                or references.get(rst["src"]))  # fmt: skip
        rst["baseline_ttl"] = base["ttl"] if base else None
        rst["ttl_differs"] = None if base is None else rst["ttl"] != base["ttl"]
    ttl_differs = any(r["ttl_differs"] for r in resets)
    synacks = sorted(first_synack.values(), key=lambda e: e["t"])
    return {
        "endpoints": [format_host_port(i, port) if port else i for i in sorted(ips)],
        "synack": synacks[0] if synacks else None,
        "references": list(references.values()),
        "resets": resets,
        # The IP-IDs are kept as numbers, not judged: Linux sends a DF SYN-ACK with ID 0 and
        # its later packets with a per-flow counter, so one SYN-ACK says little on its own.
        "rst_ttl_differs": ttl_differs,
        "evidence": RST_INJECTED if ttl_differs else None,
    }
