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
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

import httpx

from probes.net.addresses import is_bogon
from probes.net.addresses import parse_ip as parse_ip  # the helper's modules import it here
from probes.net.tcp import FORBIDDEN_CONNECT

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# The failure string a refused endpoint gets in the control response (documented in
# docs/deployment.md). The `x_` prefix marks it as ours, not OONI's vocabulary.
FORBIDDEN_FAILURE = FORBIDDEN_CONNECT

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


# A label the WHATWG URL standard reads as part of an IPv4 address ("ends in a number"):
# decimal, or hexadecimal after 0x. Browsers and getaddrinfo (inet_aton) read
# "2130706433", "0177.0.0.1" and "0x7f.1" as 127.0.0.1.
_NUMERIC_LABEL = re.compile(r"[0-9]+|0[xX][0-9a-fA-F]*")


def _whatwg_ipv4(host: str) -> ipaddress.IPv4Address | None:
    """The IPv4 address a numeric host stands for (WHATWG URL "IPv4 parser"), or None."""
    parts = host.split(".")
    if parts[-1] == "" and len(parts) > 1:
        parts.pop()
    if not 1 <= len(parts) <= 4 or not all(_NUMERIC_LABEL.fullmatch(p) for p in parts):
        return None
    numbers = []
    for part in parts:
        if part[:2].lower() == "0x":
            numbers.append(int(part[2:] or "0", 16))
        elif len(part) > 1 and part.startswith("0"):
            if not part.isdigit() or any(c in "89" for c in part):
                return None
            numbers.append(int(part, 8))
        else:
            numbers.append(int(part))
    *head, last = numbers
    if any(n > 255 for n in head) or last >= 256 ** (5 - len(numbers)):
        return None
    value = last
    for i, n in enumerate(head):
        value += n << (8 * (3 - i))
    return ipaddress.IPv4Address(value)


def _ends_in_number(host: str) -> bool:
    labels = host.split(".")
    if labels[-1] == "" and len(labels) > 1:
        labels.pop()
    return bool(_NUMERIC_LABEL.fullmatch(labels[-1]))


def canonical_host(url: str) -> str | None:
    """The host the helper's GET (httpx) connects to for ``url``, in one canonical form.

    This is the one reading of a URL's host that every check uses: httpx's, after its IDNA
    step (which turns the Unicode full stops U+3002, U+FF0E, U+FF61 into dots). An IP
    address comes back in ipaddress's form, numeric IPv4 spellings as the address they
    stand for; names lower-case in their ASCII (punycode) form. None when httpx cannot
    parse the URL, or the host ends in a number without being an IPv4 address: nothing a
    client could fetch.
    """
    try:
        host = httpx.URL(url).raw_host.decode("ascii")
    except (httpx.InvalidURL, ValueError, TypeError):
        return None
    if not host:
        return None
    ip = parse_ip(host) if ":" in host else None
    if ip is not None:
        return None if "%" in host else str(ip)
    if ":" in host:
        return None
    if _ends_in_number(host):
        v4 = _whatwg_ipv4(host)
        return None if v4 is None else str(v4)
    return host.lower()


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
