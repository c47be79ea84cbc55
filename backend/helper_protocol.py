"""The web-connectivity test-helper protocol: request parsing, endpoint plan, legacy strings.

Pure functions, no I/O, so the wire format can be tested on its own. The protocol is OONI's
(oohelperd in ooni/probe-cli, summarised in docs/methodology.md): a probe POSTs the URL it
measured and the endpoints it connected to; the helper answers with its own view. The
failure strings in the answer are the *legacy* helper's (`dns_name_error`,
`connection_refused_error`, ...), not the probe's, because OONI's analysis matches on them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import orjson

from backend.ssrf import AddressGuard, canonical_host, parse_ip

# ip_info flags, as in ooni/probe-cli internal/model/th.go.
FLAG_RESOLVED_BY_PROBE = 1
FLAG_RESOLVED_BY_TH = 2
FLAG_BOGON = 4
FLAG_VALID_FOR_DOMAIN = 8

# The probe's request headers the helper copies into its own GET; oohelperd copies only
# these, so a probe cannot make the helper send arbitrary headers (cookies, auth).
FORWARDED_HEADERS = frozenset({"user-agent", "accept", "accept-language"})

# oohelperd measures addresses, not the probe's exact endpoints: each address on the URL's
# port, or on 80 and 443 for an http URL without a port (443 tells whether the address
# serves TLS for the domain).
_SCHEME_PORTS = {"https": (443,), "http": (80, 443)}


class BadRequest(ValueError):
    """The control request cannot be measured; the message is sent back with a 400."""


@dataclass(frozen=True)
class ControlRequest:
    """A validated control request."""

    url: str
    scheme: str
    hostname: str  # IPv6 literals without brackets
    port: int | None  # the URL's explicit port, if any
    headers: dict[str, list[str]]
    tcp_connect: list[str]
    x_quic_enabled: bool

    @property
    def host_is_ip(self) -> bool:
        return parse_ip(self.hostname) is not None

    def forwarded_headers(self) -> dict[str, str]:
        """The headers the helper sends, multiple values joined as HTTP allows."""
        return {
            name: ", ".join(values)
            for name, values in self.headers.items()
            if name.lower() in FORWARDED_HEADERS and values
        }


@dataclass(frozen=True)
class Endpoint:
    """One TCP endpoint the helper measures (or refuses to)."""

    ip: str
    port: int
    tls: bool
    allowed: bool

    @property
    def key(self) -> str:
        """The "ip:port" key used in the response, IPv6 in brackets like Go's JoinHostPort."""
        return f"[{self.ip}]:{self.port}" if ":" in self.ip else f"{self.ip}:{self.port}"


def split_endpoint(text: str) -> tuple[str, int]:
    """Split "ip:port" / "[ipv6]:port"; raises BadRequest when it is anything else."""
    if not isinstance(text, str):
        raise BadRequest(f"tcp_connect entries must be strings, got {type(text).__name__}")
    host, sep, port_text = text.rpartition(":")
    if not sep:
        raise BadRequest(f"tcp_connect entry {text!r} is not ip:port")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise BadRequest(f"tcp_connect entry {text!r}: IPv6 addresses need brackets")
    if parse_ip(host) is None:
        raise BadRequest(f"tcp_connect entry {text!r}: {host!r} is not an IP address")
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise BadRequest(f"tcp_connect entry {text!r}: bad port {port_text!r}")
    return host, int(port_text)


def _parse_headers(raw: Any) -> dict[str, list[str]]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise BadRequest("http_request_headers must be an object of name: [values]")
    headers: dict[str, list[str]] = {}
    for name, values in raw.items():
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise BadRequest(f"http_request_headers[{name!r}] must be a list of strings")
        if any(c in v for v in values for c in "\r\n\0"):
            raise BadRequest(f"http_request_headers[{name!r}] contains a control character")
        headers[name] = values
    return headers


def parse_request(data: bytes, *, max_tcp_endpoints: int) -> ControlRequest:
    """Validate a control request body; every problem becomes a BadRequest with a reason."""
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"request body is not JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise BadRequest("request body must be a JSON object")
    url = doc.get("http_request")
    if not isinstance(url, str) or not url:
        raise BadRequest("http_request must be a non-empty URL string")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise BadRequest(f"http_request {url!r} is not a valid URL: {exc}") from exc
    scheme = parts.scheme.lower()
    if scheme not in _SCHEME_PORTS:
        raise BadRequest(f"http_request scheme must be http or https, got {parts.scheme!r}")
    if not parts.hostname:
        raise BadRequest(f"http_request {url!r} has no host")
    hostname = canonical_host(url)  # the host as the GET reads it (issue 13: one parse)
    if hostname is None:
        raise BadRequest(f"http_request {url!r}: its host is neither a name nor an address")
    endpoints = doc.get("tcp_connect")
    if endpoints is None:
        endpoints = []
    if not isinstance(endpoints, list):
        raise BadRequest("tcp_connect must be a list of ip:port strings")
    if len(endpoints) > max_tcp_endpoints:
        raise BadRequest(
            f"tcp_connect has {len(endpoints)} endpoints, more than the limit {max_tcp_endpoints}"
        )
    for text in endpoints:
        split_endpoint(text)
    quic = doc.get("x_quic_enabled", False)
    if not isinstance(quic, bool):
        raise BadRequest("x_quic_enabled must be a boolean")
    return ControlRequest(
        url=url,
        scheme=scheme,
        hostname=hostname,
        port=port,
        headers=_parse_headers(doc.get("http_request_headers")),
        tcp_connect=list(endpoints),
        x_quic_enabled=quic,
    )


def ip_info(
    req: ControlRequest,
    th_addrs: Iterable[str],
    is_bogon: Callable[[str], bool],
    asn_of: Callable[[str], int | None] | None = None,
) -> dict[str, dict[str, int]]:
    """Who found each address, whether it is a bogon, and its ASN (0 when unknown, as
    oohelperd's geoipx answers AS0; `asn_of` is the operator's database, if any)."""
    flags: dict[str, int] = {}
    for text in req.tcp_connect:
        ip, _ = split_endpoint(text)
        flags[ip] = flags.get(ip, 0) | FLAG_RESOLVED_BY_PROBE
    for ip in th_addrs:
        if parse_ip(ip) is not None:
            flags[ip] = flags.get(ip, 0) | FLAG_RESOLVED_BY_TH
    return {
        ip: {
            "asn": (asn_of(ip) or 0) if asn_of is not None else 0,
            "flags": f | (FLAG_BOGON if is_bogon(ip) else 0),
        }
        for ip, f in flags.items()
    }


def plan_endpoints(
    req: ControlRequest,
    addrs: Iterable[str],
    guard: AddressGuard,
    is_bogon: Callable[[str], bool] = lambda ip: False,
) -> list[Endpoint]:
    """Every address on the ports oohelperd would use, sorted by key; refused ones marked.

    A bogon the guard refuses is left out, as oohelperd leaves every bogon out (ipinfo.go
    ipInfoToEndpoints); a lab or test that allows private addresses measures them.
    """
    ports = (req.port,) if req.port is not None else _SCHEME_PORTS[req.scheme]
    addrs = [ip for ip in addrs if guard.allows(ip) or not is_bogon(ip)]
    plan = {
        ep.key: ep
        for ip in addrs
        for port in ports
        for ep in [
            Endpoint(
                ip=ip,
                port=port,
                tls=port == 443 or req.scheme == "https",
                allowed=guard.allows(ip),
            )
        ]
    }
    return [plan[key] for key in sorted(plan)]


def map_dns_failure(failure: str | None) -> str | None:
    """The probe's DNS failure string as the legacy helper reported it (oohelperd dns.go
    dnsMapFailure), except for a timeout.

    oohelperd writes `unknown_error` for every failure it has no legacy name for, a timeout
    included; ours keeps `generic_timeout_error`, the name the legacy vocabulary already uses
    for TCP and HTTP timeouts, so that "the helper's DNS timed out" stays distinguishable from
    a broken helper. Clients test `dns.failure` against `dns_name_error` or for null (probe-cli's
    dnsanalysis and webconnectivitylte, ooni/data), so any other string reads the same to
    them. SERVFAIL is `dns_server_failure`, as the legacy helper said it (oohelperd's table
    predates netxlite's `dns_servfail_error` and lets it fall to `unknown_error`). The raw
    string is in the response's `x_dns.failure`.
    """
    if failure is None or failure == "dns_no_answer":
        return None  # the legacy helper answered an empty list without an error
    if failure == "dns_nxdomain_error":
        return "dns_name_error"
    if failure in {
        "dns_non_recoverable_failure",
        "dns_refused_error",
        "dns_server_misbehaving",
        "dns_servfail_error",
        "dns_temporary_failure",
    }:
        return "dns_server_failure"
    if failure == "generic_timeout_error":
        return failure
    return "unknown_error"


def map_tcp_failure(failure: str | None) -> str | None:
    """TCP connect failures in the legacy helper's words (oohelperd tcptls.go)."""
    if failure is None or failure in {"generic_timeout_error", "x_forbidden_address"}:
        return failure
    if failure == "connection_refused":
        return "connection_refused_error"
    return "connect_error"


def map_http_failure(failure: str | None, *, during_dns: bool = False) -> str | None:
    """HTTP failures in the legacy helper's words (oohelperd http.go httpMapFailure): a DNS
    failure of the GET, a timeout of its lookup included, is `dns_lookup_error`."""
    if failure is None or failure == "x_forbidden_address":
        return failure
    if failure.startswith("dns_") or during_dns:
        return "dns_lookup_error"
    if failure == "generic_timeout_error":
        return failure
    if failure == "connection_refused":
        return "connection_refused_error"
    return "unknown_error"


def canonical_header(name: str) -> str:
    """Go's canonical header form ("content-type" -> "Content-Type"), as oohelperd emits."""
    return "-".join(part[:1].upper() + part[1:].lower() for part in name.split("-"))
