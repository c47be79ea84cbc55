"""The lab's address plan, in one place so topology, servers, censor and docs agree.

Service addresses are public-looking (11.0.0.0/8, 2a0c:cafe::/32) because the probe flags
bogon answers; they exist only inside the lab's namespaces, which never get a route to the
host's network. Vantage and transit links use private ranges: the probe never judges them.
"""

from __future__ import annotations

import ipaddress

PREFIX = "cs-"
NS_INTERNET = "cs-internet"
NS_CENSOR = "cs-censor"
NS_VP_CN = "cs-vp-cn"
NS_VP_OPEN = "cs-vp-open"
NAMESPACES = (NS_INTERNET, NS_CENSOR, NS_VP_CN, NS_VP_OPEN)

# Links: (namespace A, interface A, address A, namespace B, interface B, address B).
TRANSIT_V4 = ("10.77.0.1/24", "10.77.0.2/24")  # censor <-> internet
TRANSIT_V6 = ("fd00:77::1/64", "fd00:77::2/64")
CN_V4 = ("10.77.1.1/24", "10.77.1.2/24")  # censor <-> cn vantage
CN_V6 = ("fd00:77:1::1/64", "fd00:77:1::2/64")
OPEN_V4 = ("10.77.2.1/24", "10.77.2.2/24")  # censor <-> open vantage
OPEN_V6 = ("fd00:77:2::1/64", "fd00:77:2::2/64")

CN_SUBNET_V4 = "10.77.1.0/24"
CN_SUBNET_V6 = "fd00:77:1::/64"
OPEN_SUBNET_V4 = "10.77.2.0/24"
OPEN_SUBNET_V6 = "fd00:77:2::/64"

# Everything the "internet" answers on: local routes (AnyIP), so any address in these ranges
# is served without configuring it one by one.
INTERNET_LOCAL_V4 = "11.0.0.0/9"
INTERNET_LOCAL_V6 = "2a0c:cafe::/40"
# What the censor routes toward the internet namespace (includes the dead ranges below).
INTERNET_ROUTE_V4 = "11.0.0.0/8"
INTERNET_ROUTE_V6 = "2a0c:cafe::/32"

RESOLVER_V4 = "11.0.0.53"
RESOLVER_V6 = "2a0c:cafe::53"
HELPER_V4 = "11.0.0.8"
HELPER_PORT = 8080
# The control helper's API port (lab.topology): only this port of HELPER_V4 is exempt from the
# censor; the helper's echo ports and DNS zone sit behind it like any server.
HELPER_CONTROL_PORT = 8008
ECHO_V4 = "11.0.0.7"
ECHO_V6 = "2a0c:cafe::7"
ECHO_PORT = 7
# The message platform (lab.servers.Platform): the helper relay's protocol, with the scenario's
# [platform] rules applied to senders from the cn vantage (served on PLATFORM_PORT of every
# internet address; these are the addresses to use).
PLATFORM_V4 = "11.0.0.25"
PLATFORM_V6 = "2a0c:cafe::25"
PLATFORM_PORT = 8025
# The lab helper's echo endpoints for http_keyword (topology): 200 of each, so that a trigger
# under a residual window costs the probe one endpoint, not the test (a 1,000-word list with
# 2% censored words taints ~100-200 (port) triples within a 90 s window); none of them is
# served by lab.servers.
HELPER_ECHO_PORTS = tuple(range(9101, 9301))
HELPER_TLS_ECHO_PORTS = tuple(range(9443, 9643))
# The helper's DNS zone for the dns placement, on port 53 where the censor looks at queries.
HELPER_DNS_ZONE = "kw.lab.example"

# Per-domain addresses: index i -> 11.1.(i // 250).(i % 250 + 1), 2a0c:cafe:1::(i + 1).
DOMAIN_BASE_V4 = 0x0B010000  # 11.1.0.0
DOMAIN_BASE_V6 = int(ipaddress.IPv6Address("2a0c:cafe:1::"))
# Domains that are "down" get addresses outside the local ranges: packets die silently.
DOWN_BASE_V4 = 0x0BC80000  # 11.200.0.0
DOWN_BASE_V6 = int(ipaddress.IPv6Address("2a0c:cafe:200::"))
# Fresh server addresses for tests (served, never used by a scenario domain).
SPARE_BASE_V4 = 0x0B640000  # 11.100.0.0
SPARE_BASE_V6 = int(ipaddress.IPv6Address("2a0c:cafe:100::"))
MAX_DOMAINS = 250 * 256

# GFW-style forged answers come from this pool: routed to the internet namespace, never served.
DEFAULT_INJECT_POOL = ("11.201.0.1", "11.201.0.2", "11.201.0.3", "11.201.0.4", "11.201.0.5")
DEFAULT_BOGON = "10.10.34.35"


def _v4_index(base: int, i: int) -> str:
    return str(ipaddress.IPv4Address(base + (i // 250) * 256 + i % 250 + 1))


def domain_v4(i: int, *, down: bool = False) -> str:
    """The IPv4 address of the i-th scenario domain."""
    return _v4_index(DOWN_BASE_V4 if down else DOMAIN_BASE_V4, i)


def domain_v6(i: int, *, down: bool = False) -> str:
    """The IPv6 address of the i-th scenario domain."""
    return str(ipaddress.IPv6Address((DOWN_BASE_V6 if down else DOMAIN_BASE_V6) + i + 1))


def spare_v4(i: int) -> str:
    """The i-th fresh IPv4 server address (tests use these to avoid residual taint)."""
    return _v4_index(SPARE_BASE_V4, i)


def spare_v6(i: int) -> str:
    """The i-th fresh IPv6 server address."""
    return str(ipaddress.IPv6Address(SPARE_BASE_V6 + i + 1))


def host_part(cidr: str) -> str:
    """'10.0.0.1/24' -> '10.0.0.1'."""
    return cidr.split("/", 1)[0]
