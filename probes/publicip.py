"""Sources of the probe's public address and of its resolver's, from servers we run.

Behind NAT the public address is on no interface. OONI's probe asks third-party services
(STUN servers of others, ubuntu's geoip, cloudflare's trace); we ask only our own: the helper's
and collector's GET /x/whoami (backend/whoami.py) and STUN servers the operator names. The
resolver's address comes, as in probe-cli's enginelocate/resolverlookup.go, from the answer to a
whoami name asked through the system resolver (our helper's DNS zone serves `whoami.<zone>`).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import socket
import ssl
from dataclasses import dataclass
from urllib.parse import urljoin

import dns.asyncresolver
import dns.exception
import dns.rdatatype
import dns.resolver
import httpx

from probes.net.addresses import parse_host_port
from probes.net.stun import DEFAULT_PORT, STUNError, stun_mapped_address
from probes.net.tls import verifying_context

WHOAMI_PATH = "x/whoami"
MAX_WHOAMI_BYTES = 4096


class SourceError(Exception):
    """A source gave no usable address (unreachable, error status, bad answer)."""


@dataclass(frozen=True)
class WhoamiAnswer:
    address: str
    dns_whoami: str | None = None


def _ip(text: object, where: str) -> str:
    if not isinstance(text, str):
        raise SourceError(f"{where}: no address in the answer")
    try:
        addr = ipaddress.ip_address(text.split("%")[0])
    except ValueError as exc:
        raise SourceError(f"{where}: not an IP address: {text[:60]!r}") from exc
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    if addr.is_unspecified:
        raise SourceError(f"{where}: unspecified address")
    return str(addr)


def whoami_url(base: str) -> str:
    """The whoami endpoint under a helper's or collector's base URL."""
    return urljoin(base if base.endswith("/") else base + "/", WHOAMI_PATH)


async def ask_whoami(url: str, *, timeout: float, ca_file: str | None = None) -> WhoamiAnswer:
    """GET one /x/whoami endpoint: the address the server saw us come from."""
    try:
        async with (
            httpx.AsyncClient(
                timeout=timeout, verify=verifying_context(ca_file), follow_redirects=False
            ) as client,
            client.stream("GET", url) as response,
        ):
            if response.status_code != 200:
                raise SourceError(f"{url}: HTTP {response.status_code}")
            data = b""
            async for chunk in response.aiter_bytes():
                data += chunk
                if len(data) > MAX_WHOAMI_BYTES:
                    raise SourceError(f"{url}: answer over {MAX_WHOAMI_BYTES} bytes")
    except (httpx.HTTPError, httpx.InvalidURL, OSError, ssl.SSLError, ValueError) as exc:
        raise SourceError(f"{url}: {type(exc).__name__}: {exc}") from exc
    try:
        body = json.loads(data)
    except ValueError as exc:
        raise SourceError(f"{url}: not JSON") from exc
    if not isinstance(body, dict):
        raise SourceError(f"{url}: not a JSON object")
    name = body.get("dns_whoami")
    return WhoamiAnswer(_ip(body.get("address"), url), name if isinstance(name, str) else None)


async def ask_stun(server: str, *, timeout: float) -> str:
    """One STUN server's view of our address (`server` is HOST[:PORT], port 3478 by default)."""
    try:
        host, port = parse_host_port(server, DEFAULT_PORT)
        return _ip(await stun_mapped_address(host, port, timeout), f"stun {server}")
    except (STUNError, ValueError) as exc:
        raise SourceError(f"stun {server}: {exc}") from exc


async def resolver_address(name: str, *, timeout: float, nameserver: str | None = None) -> str:
    """The address of the resolver that asked for `name` on our behalf (its first A record).

    Through the system resolver (getaddrinfo), as probe-cli does ("MUST be the system
    resolver", ooni/probe#2360), unless `nameserver` (IP[:PORT]) is given.
    """
    try:
        if nameserver is None:
            infos = await asyncio.wait_for(
                asyncio.get_running_loop().getaddrinfo(name, None, type=socket.SOCK_STREAM),
                timeout,
            )
            if not infos:
                raise SourceError(f"{name}: no address")
            return _ip(infos[0][4][0], name)
        host, port = parse_host_port(nameserver, 53)
        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers = [host]
        resolver.port = port
        # A first, AAAA when the asker came over IPv6 (the zone answers in the asker's family).
        try:
            answer = await resolver.resolve(name, dns.rdatatype.A, lifetime=timeout)
        except dns.resolver.NoAnswer:
            answer = await resolver.resolve(name, dns.rdatatype.AAAA, lifetime=timeout)
        return _ip(answer[0].to_text(), name)
    except (OSError, TimeoutError, dns.exception.DNSException, ValueError) as exc:
        raise SourceError(f"{name}: {type(exc).__name__}: {exc}") from exc
