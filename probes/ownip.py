"""The probe's own addresses, so the scrubber can keep them out of every measurement.

We take every address of every interface (getifaddrs through psutil: all IPv4 addresses of an
interface, not only the first one SIOCGIFADDR returns, and every IPv6 address, link-local ones
too, whose EUI-64 form carries the MAC), plus those the operator lists in the config and those
learned during a run (the whoami and STUN sources of probes/vantage.py, an echo server
reflecting our source address). Only loopback and unspecified addresses are left out.
"""

from __future__ import annotations

import ipaddress
import socket

import psutil


def local_addresses() -> list[str]:
    """Every address on this host's interfaces except loopback and unspecified ones."""
    found: set[str] = set()
    for entries in psutil.net_if_addrs().values():
        for entry in entries:
            if entry.family not in (socket.AF_INET, socket.AF_INET6):
                continue
            try:
                addr = ipaddress.ip_address(entry.address.split("%")[0])
            except ValueError:
                continue
            if addr.is_loopback or addr.is_unspecified:
                continue
            found.add(str(addr))
    return sorted(found)
