"""The helper's address guard: which addresses it may connect to on a stranger's behalf.

Anyone on the internet can ask the control helper to connect somewhere. Without a guard the
helper would be an open proxy into the operator's own network (metadata services, routers,
databases on loopback). So, unless the operator says otherwise, it refuses every address that
is not globally routable unicast: the IANA special-purpose registries for IPv4 and IPv6
(RFC 6890 and successors), plus multicast and the IPv6 forms that embed an IPv4 address
(mapped, 6to4, Teredo, NAT64), which would otherwise smuggle a private IPv4 address past a
check that only looks at the IPv6 one.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field

from probes.net.addresses import is_bogon

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# The failure string a refused endpoint gets in the control response (documented in
# docs/deployment.md). The `x_` prefix marks it as ours, not OONI's vocabulary.
FORBIDDEN_FAILURE = "x_forbidden_address"

# IANA IPv4 special-purpose address registry, plus multicast and the limited broadcast.
_V4_SPECIAL = tuple(
    ipaddress.IPv4Network(n)
    for n in (
        "0.0.0.0/8",  # "this network" (RFC 791); 0.0.0.0 reaches the local host on Linux
        "10.0.0.0/8",  # private (RFC 1918)
        "100.64.0.0/10",  # carrier-grade NAT shared space (RFC 6598)
        "127.0.0.0/8",  # loopback (RFC 1122)
        "169.254.0.0/16",  # link-local, home of cloud metadata services (RFC 3927)
        "172.16.0.0/12",  # private (RFC 1918)
        "192.0.0.0/24",  # IETF protocol assignments (RFC 6890)
        "192.0.2.0/24",  # documentation TEST-NET-1 (RFC 5737)
        "192.31.196.0/24",  # AS112-v4 (RFC 7535)
        "192.52.193.0/24",  # AMT (RFC 7450)
        "192.88.99.0/24",  # deprecated 6to4 relay anycast (RFC 7526)
        "192.168.0.0/16",  # private (RFC 1918)
        "192.175.48.0/24",  # direct delegation AS112 (RFC 7534)
        "198.18.0.0/15",  # benchmarking (RFC 2544)
        "198.51.100.0/24",  # documentation TEST-NET-2 (RFC 5737)
        "203.0.113.0/24",  # documentation TEST-NET-3 (RFC 5737)
        "224.0.0.0/4",  # multicast (RFC 5771)
        "240.0.0.0/4",  # reserved, includes 255.255.255.255 broadcast (RFC 1112)
    )
)

# IANA IPv6 special-purpose address registry, plus multicast. Prefixes that embed an IPv4
# address (mapped, NAT64) are handled by `_embedded_v4` instead, so their IPv4 part is judged
# on its own; Teredo (inside 2001::/23) and 6to4 are obsolete and simply refused.
_V6_SPECIAL = tuple(
    ipaddress.IPv6Network(n)
    for n in (
        "::/128",  # unspecified
        "::1/128",  # loopback
        "::/96",  # deprecated IPv4-compatible addresses
        "100::/64",  # discard-only (RFC 6666)
        "2001::/23",  # IETF protocol assignments (RFC 2928), includes Teredo's 2001::/32
        "2001:db8::/32",  # documentation (RFC 3849)
        "2002::/16",  # 6to4, deprecated (RFC 7526); it could tunnel to any IPv4 address
        "3fff::/20",  # documentation (RFC 9637)
        "5f00::/16",  # segment routing SIDs (RFC 9602)
        "fc00::/7",  # unique local addresses (RFC 4193)
        "fe80::/10",  # link-local (RFC 4291)
        "fec0::/10",  # deprecated site-local (RFC 3879)
        "ff00::/8",  # multicast (RFC 4291)
    )
)

_NAT64 = (
    ipaddress.IPv6Network("64:ff9b::/96"),  # well-known NAT64 prefix (RFC 6052)
    ipaddress.IPv6Network("64:ff9b:1::/48"),  # local-use NAT64 prefix (RFC 8215)
)


def _embedded_v4(addr: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for, if it is one of the embedding forms."""
    if addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    if any(addr in net for net in _NAT64):
        return ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
    return None


def parse_ip(text: str) -> IPAddress | None:
    """Parse an IP literal, with or without IPv6 brackets and zone, or return None."""
    text = text.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    text = text.split("%", 1)[0]  # a zone id only matters on the link, which we refuse anyway
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def is_special(ip: str | IPAddress) -> bool:
    """True for any address that is not globally routable unicast (or that is not an IP)."""
    addr = parse_ip(ip) if isinstance(ip, str) else ip
    if addr is None:
        return True  # not an address at all: never connect to it
    if is_bogon(str(addr)):
        return True  # whatever the probe calls a bogon, the helper never connects to
    if isinstance(addr, ipaddress.IPv6Address):
        inner = _embedded_v4(addr)
        if inner is not None:
            return is_special(inner)
        return any(addr in net for net in _V6_SPECIAL) or not addr.is_global
    return any(addr in net for net in _V4_SPECIAL) or not addr.is_global


@dataclass(frozen=True)
class AddressGuard:
    """Decides whether the helper may connect to an address.

    `allow_private` switches the guard off (the lab, a private deployment). `exempt` lists
    networks allowed despite being special, so a lab can open its own "internet" subnet
    without opening the operator's whole private space.
    """

    allow_private: bool = False
    exempt: tuple[IPNetwork, ...] = field(default_factory=tuple)

    @classmethod
    def build(cls, allow_private: bool, exempt: Iterable[str] = ()) -> AddressGuard:
        """Build a guard from CIDR strings; raises ValueError naming a bad network."""
        nets: list[IPNetwork] = []
        for text in exempt:
            try:
                nets.append(ipaddress.ip_network(text, strict=False))
            except ValueError as exc:
                raise ValueError(f"bad exempt network {text!r}: {exc}") from exc
        return cls(allow_private=allow_private, exempt=tuple(nets))

    def allows(self, ip: str | IPAddress) -> bool:
        """True when the helper may connect to `ip`."""
        addr = parse_ip(ip) if isinstance(ip, str) else ip
        if addr is None:
            return False
        if self.allow_private:
            return True
        if any(addr.version == net.version and addr in net for net in self.exempt):
            return True
        return not is_special(addr)
