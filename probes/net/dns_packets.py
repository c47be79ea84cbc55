"""IP TTL and IP-ID of every DNS answer a run receives, from one run-wide raw socket.

Why: an on-path injector (the GFW) crafts its forged answer a few hops from the probe, so the
forged datagram's IP TTL differs from the genuine resolver's, and its IP-ID follows the
injector's counter, not the resolver host's (Anonymous, "Towards a Comprehensive Picture of the
Great Firewall's DNS Censorship", FOCI 2014; Duan et al., "Hold-On", 2012). Two answers to one
query whose IP TTLs differ were not sent by one host over one path.

How: a raw IPv4 socket (``socket(AF_INET, SOCK_RAW, IPPROTO_UDP)``) gets a copy of every UDP
datagram the host receives, IP header included (raw(7)); a classic BPF program attached to it
keeps only datagrams from the resolvers' ports, so the rest of the host's traffic costs nothing.
The socket is read by the event loop, like the queries' own sockets; each packet is kept only
while the query socket it is addressed to (our local port) is open, and is matched to the
datagram that socket read by its payload. The kernel hands a datagram to raw sockets before it
queues it on the UDP socket (ip_local_deliver_finish), so draining the raw socket when a query
ends finds every packet of that query. One socket for the whole run, opened before the first
query: no per-query sniffer, no scapy dissection (a few microseconds per answer).

Needs CAP_NET_RAW (``capture_unavailable`` says why not, and the caller records
``packet_capture: "unavailable"``). IPv4 only: raw IPv6 sockets never show the IPv6 header
(the hop limit would need IPV6_RECVHOPLIMIT ancillary data; not done yet).
"""

from __future__ import annotations

import asyncio
import ctypes
import socket
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from probes.net.packets import has_net_raw, open_private

SO_ATTACH_FILTER = getattr(socket, "SO_ATTACH_FILTER", 26)
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
# Answers arrive in bursts of thousands at high concurrency; the default 208 KB holds ~200.
RCVBUF_BYTES = 16 << 20
MAX_BPF_PORTS = 64
_IP_HEADER = struct.Struct("!BBHHHBBH4s4s")
_PCAP_HEADER = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 101)  # LINKTYPE_RAW
_PCAP_RECORD = struct.Struct("<IIII")


@dataclass(slots=True)
class Packet:
    """What one captured answer says about how it travelled."""

    ttl: int
    ip_id: int
    t: float  # time.monotonic() at capture
    payload: bytes  # the UDP payload: the DNS message


def capture_unavailable() -> str | None:
    """Why answers cannot be captured here (None: they can)."""
    if not hasattr(socket, "AF_PACKET"):
        return "raw sockets with BPF filters need Linux"
    if not has_net_raw():
        return "needs root or CAP_NET_RAW"
    return None


def _bpf(ports: list[int]) -> bytes:
    """Classic BPF over an IPv4 packet: accept unfragmented UDP whose source port is listed.

    ldh [6]; jset #0x1fff (a fragment) -> drop; ldxb 4*([0]&0xf); ldh [x+0]; jeq each port.
    """
    n = len(ports)
    ins = [
        (0x28, 0, 0, 6),  # ldh [6]: flags and fragment offset
        (0x45, n + 2, 0, 0x1FFF),  # jset: a fragment -> drop
        (0xB1, 0, 0, 0),  # ldxb 4*([0]&0xf): IP header length
        (0x48, 0, 0, 0),  # ldh [x+0]: UDP source port
    ]
    for i, port in enumerate(ports):
        ins.append((0x15, n - i, 0, port))  # jeq port -> accept
    ins += [(0x06, 0, 0, 0), (0x06, 0, 0, 0x40000)]  # drop; accept (up to 256 KB)
    return b"".join(struct.pack("HBBI", *i) for i in ins)


def _attach_filter(sock: socket.socket, ports: list[int]) -> None:
    program = _bpf(ports)
    buf = ctypes.create_string_buffer(program)
    fprog = struct.pack("HL", len(program) // 8, ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


def parse_ipv4_udp(packet: bytes) -> tuple[str, int, int, int, int, bytes] | None:
    """(source, source port, destination port, TTL, IP-ID, payload) of an IPv4/UDP packet."""
    if len(packet) < 28 or packet[0] >> 4 != 4:
        return None
    ihl = (packet[0] & 0xF) * 4
    _, _, _, ip_id, _, ttl, proto, _, src, _ = _IP_HEADER.unpack_from(packet)
    if proto != socket.IPPROTO_UDP or len(packet) < ihl + 8:
        return None
    sport, dport, length = struct.unpack_from("!HHH", packet, ihl)
    payload = packet[ihl + 8 : min(len(packet), ihl + length)]
    return socket.inet_ntoa(src), sport, dport, ttl, ip_id, payload


class DNSCapture:
    """A run-wide capture of the answers from ``servers`` (``(ip, port)`` pairs, IPv4 kept).

    ``start()`` before the first query; for each query ``begin(local_port)`` when its socket
    is open and ``finish(local_port, entries, datagrams)`` when it closes, which adds ``ip_ttl``
    and ``ip_id`` to each x_responses entry whose datagram was captured; ``close()`` at the end.
    With ``pcap`` every captured answer is also written there (LINKTYPE_RAW).
    """

    def __init__(self, servers: list[tuple[str, int]], pcap: str | None = None) -> None:
        self.servers = {(ip, port) for ip, port in servers if ":" not in ip}
        self.pcap = pcap
        self.sock: socket.socket | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.open_ports: dict[int, list[Packet]] = {}
        self.captured = 0
        self._pcap_file: BinaryIO | None = None

    def start(self) -> None:
        """Open the raw socket and read it from the running loop; raises OSError."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP)
        try:
            sock.setblocking(False)
            ports = sorted({port for _, port in self.servers})
            if len(ports) <= MAX_BPF_PORTS:
                _attach_filter(sock, ports)
            self._grow_buffer(sock)
            _drain(sock)  # what queued before the filter was attached
            if self.pcap:
                Path(self.pcap).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                self._pcap_file = open_private(self.pcap)  # closed in close()
                self._pcap_file.write(_PCAP_HEADER)
            self.loop = asyncio.get_running_loop()
            self.loop.add_reader(sock.fileno(), self._read)
        except BaseException:
            sock.close()
            raise
        self.sock = sock

    @staticmethod
    def _grow_buffer(sock: socket.socket) -> None:
        for option in (SO_RCVBUFFORCE, socket.SO_RCVBUF):
            try:
                sock.setsockopt(socket.SOL_SOCKET, option, RCVBUF_BYTES)
                return
            except OSError:
                continue

    def _read(self) -> None:
        if self.sock is None:
            return
        for packet in _drain(self.sock):
            self._keep(packet)

    def _keep(self, raw: bytes) -> None:
        parsed = parse_ipv4_udp(raw)
        if parsed is None:
            return
        src, sport, dport, ttl, ip_id, payload = parsed
        kept = self.open_ports.get(dport)
        if kept is None or (src, sport) not in self.servers:
            return
        now = time.monotonic()
        kept.append(Packet(ttl, ip_id, now, payload))
        self.captured += 1
        if self._pcap_file is not None:
            wall = time.time()
            sec, usec = int(wall), int((wall % 1) * 1e6)
            self._pcap_file.write(_PCAP_RECORD.pack(sec, usec, len(raw), len(raw)) + raw)

    def begin(self, local_port: int) -> None:
        """Keep packets to ``local_port`` from now on (a new query's socket)."""
        self.open_ports[local_port] = []

    def finish(
        self, local_port: int, entries: list[dict[str, Any]], datagrams: list[bytes]
    ) -> None:
        """Stop keeping packets to ``local_port``; annotate ``entries`` (one per datagram)."""
        self._read()  # whatever the kernel queued before the query's socket closed
        packets = self.open_ports.pop(local_port, [])
        for entry, data in zip(entries, datagrams, strict=False):
            for i, packet in enumerate(packets):
                if packet.payload == data:
                    entry["ip_ttl"], entry["ip_id"] = packet.ttl, packet.ip_id
                    del packets[i]
                    break

    def close(self) -> None:
        if self.sock is not None:
            if self.loop is not None and not self.loop.is_closed():
                self.loop.remove_reader(self.sock.fileno())
            self.sock.close()
            self.sock = None
        if self._pcap_file is not None:
            self._pcap_file.close()
            self._pcap_file = None


def _drain(sock: socket.socket) -> list[bytes]:
    out = []
    while True:
        try:
            out.append(sock.recv(65535))
        except (BlockingIOError, InterruptedError):
            return out
        except OSError:
            return out
