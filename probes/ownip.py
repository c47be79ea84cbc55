"""The probe's own addresses, so the scrubber can keep them out of every measurement.

We do not ask a remote service for our public IP (that would itself be a measurement and a
leak); we take every non-loopback address configured on this host's interfaces, which on a
directly connected vantage includes the public one, plus those the operator lists in the config
and those learned during a run (e.g. an echo server reflecting our source address).
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import socket
import struct
from pathlib import Path

SIOCGIFADDR = 0x8915  # linux/sockios.h: get the IPv4 address of an interface


def _ipv4_addresses() -> set[str]:
    found: set[str] = set()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _index, name in socket.if_nameindex():
            with contextlib.suppress(OSError):
                packed = struct.pack("256s", name.encode()[:15])
                raw = fcntl.ioctl(sock.fileno(), SIOCGIFADDR, packed)
                found.add(socket.inet_ntoa(raw[20:24]))
    return found


def _ipv6_addresses() -> set[str]:
    found: set[str] = set()
    path = Path("/proc/net/if_inet6")
    with contextlib.suppress(OSError):
        for line in path.read_text().splitlines():
            hex_addr = line.split()[0]
            found.add(str(ipaddress.IPv6Address(bytes.fromhex(hex_addr))))
    return found


def local_addresses() -> list[str]:
    """Every address on this host's interfaces except loopback and link-local."""
    result = []
    for text in _ipv4_addresses() | _ipv6_addresses():
        addr = ipaddress.ip_address(text)
        if addr.is_loopback or addr.is_link_local or addr.is_unspecified:
            continue
        result.append(str(addr))
    return sorted(result)
