"""Minimal IPv4/IPv6 + TCP/UDP parsing and building for the censor.

Written by hand (not scapy) because a forged packet must be built and sent in microseconds to
win the race against the real one; scapy's send() costs tens of milliseconds.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from dataclasses import dataclass

TCP, UDP = 6, 17
FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10


class PacketError(ValueError):
    """A packet too short or of an unsupported kind to parse."""


@dataclass(frozen=True)
class Packet:
    """The fields of one IP packet that the censor decides on."""

    version: int
    src: str
    dst: str
    proto: int
    sport: int
    dport: int
    seq: int = 0
    ack: int = 0
    flags: int = 0
    payload: bytes = b""
    ttl: int = 64


def checksum(data: bytes) -> int:
    """RFC 1071 Internet checksum."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def parse(raw: bytes) -> Packet:
    """Parse an IPv4 or IPv6 packet carrying TCP or UDP (no IPv6 extension headers)."""
    if not raw:
        raise PacketError("empty packet")
    version = raw[0] >> 4
    if version == 4:
        if len(raw) < 20:
            raise PacketError("short IPv4 header")
        ihl = (raw[0] & 0x0F) * 4
        total = struct.unpack("!H", raw[2:4])[0]
        ttl, proto = raw[8], raw[9]
        src = socket.inet_ntop(socket.AF_INET, raw[12:16])
        dst = socket.inet_ntop(socket.AF_INET, raw[16:20])
        body = raw[ihl:total]
    elif version == 6:
        if len(raw) < 40:
            raise PacketError("short IPv6 header")
        plen = struct.unpack("!H", raw[4:6])[0]
        proto, ttl = raw[6], raw[7]
        src = socket.inet_ntop(socket.AF_INET6, raw[8:24])
        dst = socket.inet_ntop(socket.AF_INET6, raw[24:40])
        body = raw[40 : 40 + plen]
    else:
        raise PacketError(f"IP version {version}")
    if proto == TCP:
        if len(body) < 20:
            raise PacketError("short TCP header")
        sport, dport, seq, ack, off_flags = struct.unpack("!HHIIH", body[:14])
        off = (off_flags >> 12) * 4
        return Packet(
            version, src, dst, proto, sport, dport, seq, ack, off_flags & 0x3F, body[off:], ttl
        )
    if proto == UDP:
        if len(body) < 8:
            raise PacketError("short UDP header")
        sport, dport = struct.unpack("!HH", body[:4])
        return Packet(version, src, dst, proto, sport, dport, payload=body[8:], ttl=ttl)
    raise PacketError(f"protocol {proto}")


def _pseudo(version: int, src: str, dst: str, proto: int, length: int) -> bytes:
    if version == 4:
        return (
            socket.inet_pton(socket.AF_INET, src)
            + socket.inet_pton(socket.AF_INET, dst)
            + struct.pack("!BBH", 0, proto, length)
        )
    return (
        socket.inet_pton(socket.AF_INET6, src)
        + socket.inet_pton(socket.AF_INET6, dst)
        + struct.pack("!I3xB", length, proto)
    )


def _ip(version: int, src: str, dst: str, proto: int, body: bytes, ttl: int, ip_id: int) -> bytes:
    if version == 4:
        header = struct.pack(
            "!BBHHHBBH4s4s",
            0x45,
            0,
            20 + len(body),
            ip_id & 0xFFFF,
            0x4000,
            ttl,
            proto,
            0,
            socket.inet_pton(socket.AF_INET, src),
            socket.inet_pton(socket.AF_INET, dst),
        )
        header = header[:10] + struct.pack("!H", checksum(header)) + header[12:]
        return header + body
    header = struct.pack(
        "!IHBB16s16s",
        6 << 28,
        len(body),
        proto,
        ttl,
        socket.inet_pton(socket.AF_INET6, src),
        socket.inet_pton(socket.AF_INET6, dst),
    )
    return header + body


def build_tcp(
    src: str,
    dst: str,
    sport: int,
    dport: int,
    seq: int,
    ack: int,
    flags: int,
    payload: bytes = b"",
    *,
    ttl: int = 64,
    ip_id: int = 0,
    window: int = 0,
) -> bytes:
    """A complete IP+TCP packet with correct checksums."""
    version = ipaddress.ip_address(src).version
    tcp = (
        struct.pack(
            "!HHIIHHHH",
            sport,
            dport,
            seq & 0xFFFFFFFF,
            ack & 0xFFFFFFFF,
            (5 << 12) | flags,
            window,
            0,
            0,
        )
        + payload
    )
    csum = checksum(_pseudo(version, src, dst, TCP, len(tcp)) + tcp)
    tcp = tcp[:16] + struct.pack("!H", csum) + tcp[18:]
    return _ip(version, src, dst, TCP, tcp, ttl, ip_id)


def build_udp(
    src: str, dst: str, sport: int, dport: int, payload: bytes, *, ttl: int = 64, ip_id: int = 0
) -> bytes:
    """A complete IP+UDP packet with correct checksums."""
    version = ipaddress.ip_address(src).version
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    csum = checksum(_pseudo(version, src, dst, UDP, len(udp)) + udp) or 0xFFFF
    udp = udp[:6] + struct.pack("!H", csum) + udp[8:]
    return _ip(version, src, dst, UDP, udp, ttl, ip_id)


class RawSender:
    """Raw IPPROTO_RAW sockets (header included) for both families."""

    def __init__(self) -> None:
        self._v4 = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        self._v6 = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_RAW)
        self.failures = 0

    def send(self, packet: bytes) -> bool:
        """Send; False (counted) when the kernel refuses, e.g. EPERM from a firewall drop."""
        version = packet[0] >> 4
        try:
            if version == 4:
                dst = socket.inet_ntop(socket.AF_INET, packet[16:20])
                self._v4.sendto(packet, (dst, 0))
            else:
                dst = socket.inet_ntop(socket.AF_INET6, packet[24:40])
                self._v6.sendto(packet, (dst, 0))
        except OSError:
            # A DROP rule on OUTPUT, a full buffer or a vanished route must not kill the censor:
            # the forged packet is lost, as it would be on a real network.
            self.failures += 1
            return False
        return True

    def close(self) -> None:
        self._v4.close()
        self._v6.close()
