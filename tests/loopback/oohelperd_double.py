"""A test double of OONI's web-connectivity test helper (oohelperd), for loopback tests.

Written by us from ooni/probe-cli's Go sources (internal/oohelperd/{handler,measure,dns,
tcptls,http,ipinfo}.go, internal/model/th.go, internal/netxlite/bogon.go), to reproduce what
a probe meets on the wire, in two variants:

- ``CURRENT``: today's handler. ``GET`` (any path) answers 200 ``{"message": "Hello
  OONItarian!"}``; ``POST`` measures; every other method is a bare 400.
- ``PRE_HEALTH_CHECK``: the handler before probe-cli #1540 (April 2024, first released in
  v3.22.0), i.e. v3.21.x, the first with throttling (#1442):
  ``GET`` is a bare 400 like every method but ``POST``.

Common to both, as in the Go code:

- Throttling: a ``POST`` arriving while 25 or more requests are in flight is a bare 503,
  unless its User-Agent starts with ``ooniprobe-`` and fewer than 50 are in flight.
- The body is read up to 16 MiB (longer bodies are cut there and fail to parse); a body that
  is not the request's JSON (wrong types included) or a URL that does not parse is a bare 400.
- The measurement: the URL's host is resolved first (skipped for an IP literal; NXDOMAIN is
  ``dns_name_error``, no answer is no failure, REFUSED is ``dns_server_failure``, anything else,
  a timeout and SERVFAIL (netxlite's ``dns_servfail_error``) included, ``unknown_error``).
  ``ip_info`` then holds every address the probe sent (flag 1, the probe's ports are ignored) or
  the helper resolved (flag 2), bogons flagged 4, and the ASN of each. Every non-bogon address
  is measured on the URL's port, or on 443 for https and on 80 and 443 for http without a port,
  with a TLS handshake (SNI: the URL's host, ALPN h2 and http/1.1) only on port 443; a
  successful one adds flag 8. TCP failures are ``connection_refused_error``,
  ``generic_timeout_error`` or ``connect_error``; TLS failures are the raw OONI strings. The GET
  (only User-Agent, Accept and Accept-Language forwarded, at most 10 redirects, a cookie jar, a
  resolver that refuses bogons) runs beside the endpoints; its failures are
  ``dns_lookup_error``, ``connection_refused_error``, ``generic_timeout_error`` or
  ``unknown_error``, with ``body_length``/``status_code`` -1 when no response came.
- The response: ``tcp_connect``, ``tls_handshake`` (left out when empty), ``quic_handshake``
  ({}), ``http_request``, ``http3_request`` (null: QUIC is off unless the operator turns it on
  and the site advertises h3), ``dns`` and ``ip_info`` (left out when empty), nothing else.

Departures, all for loopback: the resolver is a given DNS server (oohelperd uses DoH to
dns.google); the trust store is a given CA file (oohelperd uses the system's); the timeouts
(4 s DNS, 15 s connect/TLS and GET) can be shortened; ``public_networks`` are not bogons (every
loopback address is one, so without this nothing would be measured); ``asn_of`` stands in for
oohelperd's MaxMind lookup (AS0 when unknown, as geoipx answers).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from probes.net.addresses import is_bogon
from probes.net.dns import resolve_both
from probes.net.failures import NetworkFailure
from probes.net.http import http_get
from probes.net.tcp import tcp_connect
from probes.net.tls import tls_handshake

CURRENT = "current"
PRE_HEALTH_CHECK = "pre-health-check"
GREETING = {"message": "Hello OONItarian!"}
MAX_BODY = 1 << 24  # handler.go maxAcceptableBodySize
SERVER = "oohelperd/3.x ooniprobe-engine/3.x"
_TITLE = re.compile(r"(?i)<title>([^<]{1,512})</title>")  # measurexlite.WebGetTitle
# netxlite's DNS failures that http.go httpMapFailure calls dns_lookup_error. Not
# dns_servfail_error (classify.go's ErrOODNSServfail), which its table lacks: unknown_error.
_DNS_FAILURES = {
    "dns_nxdomain_error",
    "dns_no_answer",
    "dns_non_recoverable_failure",
    "dns_refused_error",
    "dns_server_misbehaving",
    "dns_temporary_failure",
}


def should_throttle(inflight: int, user_agent: str) -> bool:
    """handlerShouldThrottleClient: everyone below 25 in flight, OONI Probe below 50."""
    if inflight < 25:
        return False
    return not (inflight < 50 and user_agent.startswith("ooniprobe-"))


def map_dns(failure: str | None) -> str | None:
    """dns.go dnsMapFailure: every string outside its table is unknown_error, a timeout and
    netxlite's dns_servfail_error (SERVFAIL, classify.go) among them."""
    if failure is None or failure == "dns_no_answer":
        return None
    if failure == "dns_nxdomain_error":
        return "dns_name_error"
    if failure in {
        "dns_non_recoverable_failure",
        "dns_refused_error",
        "dns_server_misbehaving",
        "dns_temporary_failure",
    }:
        return "dns_server_failure"
    return "unknown_error"


def map_tcp(failure: str | None) -> str | None:
    """tcptls.go tcpMapFailure."""
    if failure is None or failure == "generic_timeout_error":
        return failure
    return "connection_refused_error" if failure == "connection_refused" else "connect_error"


def map_http(failure: str | None, during_dns: bool) -> str | None:
    """http.go httpMapFailure (a timeout while resolving is a DNS failure too)."""
    if failure is None:
        return None
    if failure in _DNS_FAILURES or (during_dns and failure == "generic_timeout_error"):
        return "dns_lookup_error"
    if failure == "generic_timeout_error":
        return failure
    return "connection_refused_error" if failure == "connection_refused" else "unknown_error"


def canonical(name: str) -> str:
    """Go's textproto.CanonicalMIMEHeaderKey for ordinary header names."""
    return "-".join(p[:1].upper() + p[1:].lower() for p in name.split("-"))


def join_host_port(ip: str, port: str) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def _split_addr(endpoint: str) -> str | None:
    """net.SplitHostPort then net.ParseIP: the address of "ip:port", None if not one."""
    host, sep, _port = endpoint.rpartition(":")
    if not sep:
        return None
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        return None
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return None


class _BadRequest(Exception):
    pass


@dataclass
class _Request:
    url: str
    headers: dict[str, list[str]]
    tcp_connect: list[str]


def parse(body: bytes) -> _Request:
    """json.Unmarshal into model.THRequest: unknown keys ignored, wrong types refused."""
    try:
        doc = json.loads(body)
    except ValueError as exc:
        raise _BadRequest from exc
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise _BadRequest
    url = doc.get("http_request") or ""
    headers = doc.get("http_request_headers") or {}
    endpoints = doc.get("tcp_connect") or []
    quic = doc.get("x_quic_enabled", False)
    if not isinstance(url, str) or not isinstance(headers, dict) or not isinstance(endpoints, list):
        raise _BadRequest
    if not all(
        isinstance(v, list) and all(isinstance(x, str) for x in v) for v in headers.values()
    ):
        raise _BadRequest
    if not all(isinstance(e, str) for e in endpoints) or not isinstance(quic, bool | None):
        raise _BadRequest
    return _Request(url, headers, endpoints)


@dataclass
class OOHelperdDouble:
    """The helper's settings; ``app`` is the ASGI application to serve."""

    variant: str = CURRENT
    resolver: str | None = None
    ca_file: str | None = None
    public_networks: tuple[str, ...] = ()
    asn_of: Callable[[str], int] = lambda ip: 0
    with_ip_info: bool = True  # False: as oohelperd before ip_info (probe-cli #890, Aug 2022)
    dns_timeout: float = 4.0
    step_timeout: float = 15.0
    inflight: int = 0
    peak_inflight: int = 0  # the most POSTs measured at once (tests of client caps)
    requests: list[dict[str, Any]] = field(default_factory=list)  # what probes POSTed

    def is_bogon(self, ip: str) -> bool:
        """netxlite.IsBogon, except for the loopback "internet" of a test."""
        addr = ipaddress.ip_address(ip)
        if any(addr in ipaddress.ip_network(n) for n in self.public_networks):
            return False
        return is_bogon(ip)

    async def app(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        method = scope["method"]
        if method == "GET" and self.variant == CURRENT:
            await _reply(send, 200, json.dumps(GREETING).encode())
            return
        if method != "POST":
            await _reply(send, 400)
            return
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        if should_throttle(self.inflight, headers.get("user-agent", "")):
            await _reply(send, 503)
            return
        self.inflight += 1
        self.peak_inflight = max(self.peak_inflight, self.inflight)
        try:
            body = await _read(receive)
            try:
                req = parse(body[:MAX_BODY])
                self.requests.append(json.loads(body))
                doc = await self.measure(req)
            except _BadRequest:
                await _reply(send, 400)
                return
            await _reply(send, 200, json.dumps(doc).encode())
        finally:
            self.inflight -= 1

    async def measure(self, req: _Request) -> dict[str, Any]:
        """measure.go: DNS, then endpoints and the GET together."""
        try:
            parts = urlsplit(req.url)
            port = parts.port
        except ValueError as exc:
            raise _BadRequest from exc
        host = parts.hostname or ""
        t_zero = time.monotonic()
        dns: dict[str, Any] = {"failure": None, "addrs": []}
        if not _is_ip(host):
            dns = await self._dns(host, t_zero)
        info = self._ip_info(req, dns["addrs"])
        if port is not None:
            ports = [str(port)]
        else:
            ports = {"https": ["443"], "http": ["80", "443"]}.get(parts.scheme, [])
        endpoints = sorted(
            (join_host_port(ip, p), ip, p)
            for ip, entry in info.items()
            if not entry["flags"] & 4
            for p in ports
        )
        outcomes, http_doc = await asyncio.gather(
            asyncio.gather(
                *(self._tcp_tls(ip, int(p), p == "443", host, t_zero) for _, ip, p in endpoints)
            ),
            self._http(req, host, t_zero),
        )
        tcp: dict[str, Any] = {}
        tls: dict[str, Any] = {}
        for (key, ip, _), (tcp_doc, tls_doc) in zip(endpoints, outcomes, strict=True):
            tcp[key] = tcp_doc
            if tls_doc is not None:
                tls[key] = tls_doc
                if tls_doc["failure"] is None:
                    info[ip]["flags"] |= 8
        doc: dict[str, Any] = {"tcp_connect": tcp}
        if tls:
            doc["tls_handshake"] = tls
        doc.update(quic_handshake={}, http_request=http_doc, http3_request=None, dns=dns)
        if info and self.with_ip_info:
            doc["ip_info"] = info
        return doc

    async def _lookup(self, host: str, t_zero: float) -> tuple[str | None, list[str]]:
        """LookupHost with the 4 s bound of dns.go: (netxlite failure, addresses)."""
        try:
            async with asyncio.timeout(self.dns_timeout):
                results = await resolve_both(
                    host, resolver=self.resolver, timeout=self.dns_timeout, t_zero=t_zero
                )
        except TimeoutError:
            return "generic_timeout_error", []
        addrs = [a for r in results for a in r.addrs]
        if addrs:
            return None, list(dict.fromkeys(addrs))
        failures = [r.failure for r in results if r.failure not in (None, "dns_no_answer")]
        return (failures[0] if failures else "dns_no_answer"), []

    async def _dns(self, host: str, t_zero: float) -> dict[str, Any]:
        failure, addrs = await self._lookup(host, t_zero)
        return {"failure": map_dns(failure), "addrs": addrs}

    def _ip_info(self, req: _Request, th_addrs: list[str]) -> dict[str, dict[str, int]]:
        flags: dict[str, int] = {}
        for endpoint in req.tcp_connect:
            ip = _split_addr(endpoint)
            if ip is not None:
                flags[ip] = flags.get(ip, 0) | 1
        for ip in th_addrs:
            if _is_ip(ip):
                flags[ip] = flags.get(ip, 0) | 2
        return {
            ip: {"asn": int(self.asn_of(ip)), "flags": f | (4 if self.is_bogon(ip) else 0)}
            for ip, f in flags.items()
        }

    async def _tcp_tls(
        self, ip: str, port: int, with_tls: bool, host: str, t_zero: float
    ) -> tuple[dict[str, Any], dict[str, Any] | None]:
        t = self.step_timeout
        result = await tcp_connect(ip, port, timeout=t, t_zero=t_zero)
        tcp_doc = {"status": result.failure is None, "failure": map_tcp(result.failure)}
        if result.failure is not None or not with_tls:
            return tcp_doc, None
        hs = await tls_handshake(
            ip, port, host, timeout=t, t_zero=t_zero, ca_file=self.ca_file, alpn=["h2", "http/1.1"]
        )
        return tcp_doc, {"server_name": host, "status": hs.failure is None, "failure": hs.failure}

    async def _http(self, req: _Request, host: str, t_zero: float) -> dict[str, Any]:
        failed = {"body_length": -1, "discovered_h3_endpoint": "", "title": "", "headers": {}}
        during_dns = False

        async def resolve(name: str) -> list[str]:
            nonlocal during_dns
            during_dns = True
            failure, addrs = await self._lookup(name, t_zero)
            if not addrs:
                raise NetworkFailure(failure or "dns_no_answer")  # mapped by httpMapFailure
            if any(self.is_bogon(a) for a in addrs):
                during_dns = False
                raise NetworkFailure("dns_bogon_error")  # bogonResolver; maps to unknown_error
            during_dns = False
            return addrs

        if _is_ip(host) and self.is_bogon(host):
            return {**failed, "failure": "unknown_error", "status_code": -1}
        forwarded = {
            name: ", ".join(values)
            for name, values in req.headers.items()
            if name.lower() in {"user-agent", "accept", "accept-language"}
        }
        result = await http_get(
            req.url,
            resolve=resolve,
            timeout=self.step_timeout,
            t_zero=t_zero,
            body_cap=MAX_BODY,
            headers=forwarded,
            ca_file=self.ca_file,
            max_redirects=10,
        )
        failure = map_http(result.failure, during_dns)
        if not result.status_code:
            return {**failed, "failure": failure, "status_code": -1}
        title = _TITLE.search(result.body.decode("utf-8", "replace"))
        return {
            "body_length": len(result.body),
            "discovered_h3_endpoint": "",
            "failure": failure,
            "title": title.group(1) if title else "",
            "headers": {canonical(k): v for k, v in result.headers.items()},
            "status_code": result.status_code,
        }


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


async def _read(receive: Any) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


async def _reply(send: Any, status: int, body: bytes = b"") -> None:
    headers = [(b"server", SERVER.encode()), (b"content-length", str(len(body)).encode())]
    if body:
        headers.append((b"content-type", b"application/json"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
