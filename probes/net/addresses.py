"""IP address helpers: bogon detection and host:port parsing.

Bogons matter because censors often answer DNS queries for blocked names with
private, loopback or otherwise unroutable addresses (OONI flags these as
``dns.bogon``). The ranges come from the IANA special-purpose address
registries; loopback counts as bogon, as in probe-cli's netxlite/bogon.go.
"""

from __future__ import annotations

import ipaddress

# IANA IPv4 Special-Purpose Address Registry (RFC 6890 and updates), plus multicast
# (RFC 5771) and the RFC 1112 "reserved" block, which are not routable unicast either.
IPV4_BOGON_NETWORKS: tuple[ipaddress.IPv4Network, ...] = tuple(
    ipaddress.IPv4Network(n)
    for n in (
        "0.0.0.0/8",  # "this network", RFC 791
        "10.0.0.0/8",  # private-use, RFC 1918
        "100.64.0.0/10",  # shared address space (CGN), RFC 6598
        "127.0.0.0/8",  # loopback, RFC 1122
        "169.254.0.0/16",  # link local, RFC 3927
        "172.16.0.0/12",  # private-use, RFC 1918
        "192.0.0.0/24",  # IETF protocol assignments, RFC 6890
        "192.0.2.0/24",  # documentation TEST-NET-1, RFC 5737
        "192.88.99.0/24",  # deprecated 6to4 relay anycast, RFC 7526
        "192.168.0.0/16",  # private-use, RFC 1918
        "198.18.0.0/15",  # benchmarking, RFC 2544
        "198.51.100.0/24",  # documentation TEST-NET-2, RFC 5737
        "203.0.113.0/24",  # documentation TEST-NET-3, RFC 5737
        "224.0.0.0/4",  # multicast, RFC 5771
        "240.0.0.0/4",  # reserved, RFC 1112 (includes 255.255.255.255 broadcast)
    )
)

# IANA IPv6 Special-Purpose Address Registry (RFC 6890 and updates).
IPV6_BOGON_NETWORKS: tuple[ipaddress.IPv6Network, ...] = tuple(
    ipaddress.IPv6Network(n)
    for n in (
        "::/128",  # unspecified, RFC 4291
        "::1/128",  # loopback, RFC 4291
        "::ffff:0:0/96",  # IPv4-mapped, RFC 4291 (judged by the embedded v4 below)
        "64:ff9b:1::/48",  # local-use IPv4/IPv6 translation, RFC 8215
        "100::/64",  # discard-only, RFC 6666
        "2001::/23",  # IETF protocol assignments, RFC 2928
        "2001:db8::/32",  # documentation, RFC 3849
        "fc00::/7",  # unique local, RFC 4193
        "fe80::/10",  # link-local unicast, RFC 4291
        "fec0::/10",  # deprecated site-local, RFC 3879
        "ff00::/8",  # multicast, RFC 4291
    )
)


def parse_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """Parse an IP literal, with or without IPv6 brackets and zone, or return None (the helper's
    guard and the scrubber read addresses the same way)."""
    text = text.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    text = text.split("%", 1)[0]  # a zone id only matters on the link
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def is_ip(text: str) -> bool:
    """True when ``text`` is a literal IPv4 or IPv6 address (no brackets, no port)."""
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def is_bogon(ip: str) -> bool:
    """True for addresses that should never be a public server's (see module docstring).

    A string that is not an IP address is not a bogon: callers decide what that means.
    """
    try:
        addr = ipaddress.ip_address(ip.strip("[]"))
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return is_bogon(str(addr.ipv4_mapped))
        return any(addr in net for net in IPV6_BOGON_NETWORKS)
    return any(addr in net for net in IPV4_BOGON_NETWORKS)


def parse_host_port(text: str, default_port: int) -> tuple[str, int]:
    """Split "host", "host:port", "v4:port", "v6", "[v6]" or "[v6]:port".

    A bare IPv6 address (several colons, no brackets) takes the default port.
    Raises ValueError on a malformed port or bracket.
    """
    text = text.strip()
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"unbalanced bracket in {text!r}")
        host, rest = text[1:end], text[end + 1 :]
        if not rest:
            return host, default_port
        if not rest.startswith(":"):
            raise ValueError(f"unexpected text after ']' in {text!r}")
        return host, _port(rest[1:], text)
    if text.count(":") == 1:
        host, port = text.split(":")
        return host, _port(port, text)
    return text, default_port


def format_host_port(host: str, port: int) -> str:
    """Inverse of parse_host_port: brackets IPv6 literals ("[::1]:443")."""
    if ":" in host:
        return f"[{host}]:{port}"
    return f"{host}:{port}"


def _port(text: str, whole: str) -> int:
    try:
        port = int(text)
    except ValueError as exc:
        raise ValueError(f"bad port in {whole!r}") from exc
    if not 0 <= port <= 65535:
        raise ValueError(f"port out of range in {whole!r}")
    return port
