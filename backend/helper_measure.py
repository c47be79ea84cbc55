"""The control measurement: what the helper sees of a URL from outside the censor.

Mirrors oohelperd's measure.go: resolve the URL's host first (the endpoint plan needs the
helper's own addresses), then connect to every planned endpoint (with a TLS handshake where
TLS belongs) while fetching the URL, all concurrently, each step with its own deadline. The
address guard is applied at every point where the helper would open a connection: the
probe's endpoints, the helper's resolved addresses, and each hop of the GET; and once more
at connect time on the exact address of every socket (probes.net.tcp.guarded_connects).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from backend.helper_config import HelperConfig
from backend.helper_http import fetch
from backend.helper_protocol import (
    FLAG_VALID_FOR_DOMAIN,
    ControlRequest,
    Endpoint,
    canonical_header,
    ip_info,
    map_dns_failure,
    map_http_failure,
    map_tcp_failure,
    plan_endpoints,
    split_endpoint,
)
from backend.helper_quic import discovered_h3_endpoint, quic_checks
from backend.log_text import printable
from backend.ssrf import FORBIDDEN_FAILURE, parse_ip
from probes.net.addresses import format_host_port, is_bogon
from probes.net.dns import DNS_ATTEMPTS, DNSResult, resolve_retrying
from probes.net.tcp import guarded_connects, tcp_connect
from probes.net.tls import TLSResult, tls_handshake

log = logging.getLogger("censorscope.helper")

T = TypeVar("T")

# A failure string for a step that raised instead of reporting (a bug in a primitive): the
# probe still gets an answer, and the log gets the traceback.
_INTERNAL_FAILURE = "unknown_error"


class ForbiddenAddress(OSError):
    """Every address of a host is one the helper must not connect to."""


class LookupFailed(OSError):
    """A hop's host did not resolve; the DNS failure string is kept on the context."""


@dataclass
class _Context:
    """Per-request state shared by the concurrent steps."""

    req: ControlRequest
    config: HelperConfig
    t_zero: float
    # host -> (failure, addresses) of lookups already made, so the GET reuses the first one
    cache: dict[str, tuple[str | None, list[str]]] = field(default_factory=dict)
    dns_attempts: dict[str, int] = field(default_factory=dict)  # host -> queries sent per family
    refused_hosts: list[str] = field(default_factory=list)
    http_dns_failure: str | None = None  # why a hop of the GET did not resolve
    # The GET's first TLS handshake (None when it made none) and the endpoint it goes to first:
    # that endpoint's handshake is the GET's own when it succeeded (one handshake, not two).
    fetch_tls: asyncio.Future[TLSResult | None] | None = None
    fetch_first: str | None = None


async def _bounded(step: Awaitable[T], deadline: float) -> T:
    """Await a primitive with a hard deadline on top of its own timeouts."""
    async with asyncio.timeout(deadline):
        return await step


def _join_dns(results: list[DNSResult]) -> tuple[str | None, list[str]]:
    """Merge the A and AAAA lookups the way getaddrinfo would: any address is a success."""
    addrs: list[str] = []
    for result in results:
        addrs.extend(a for a in result.addrs if a not in addrs)
    if addrs:
        return None, addrs
    failures = [r.failure for r in results if r.failure not in (None, "dns_no_answer")]
    return (failures[0] if failures else "dns_no_answer"), []


async def _lookup(ctx: _Context, host: str) -> tuple[str | None, list[str]]:
    """Resolve `host` through the configured resolver (OONI failure string, addresses).

    A and AAAA concurrently, each asked again when it timed out (resolve_retrying, as the
    probe does): one lost datagram on the helper's path must not become a control without
    addresses, hence a null verdict at the probe. The lookup still ends within the step's
    timeout.
    """
    timeout = ctx.config.timeout
    try:
        results = await _bounded(
            asyncio.gather(
                *(
                    resolve_retrying(
                        host,
                        query_type=query_type,
                        resolver=ctx.config.resolver,
                        timeout=timeout,
                        attempts=DNS_ATTEMPTS,
                        t_zero=ctx.t_zero,
                        pool=ctx.config.resolver_pool,
                    )
                    for query_type in ("A", "AAAA")
                )
            ),
            timeout + 1.0,
        )
    except TimeoutError:
        return "generic_timeout_error", []
    except Exception:
        log.exception("DNS lookup of %s raised", printable(host))
        return _INTERNAL_FAILURE, []
    ctx.dns_attempts[host] = max(max(r.transmissions, len(r.queries)) for r in results)
    ctx.cache[host] = _join_dns(list(results))
    return ctx.cache[host]


async def _measure_endpoint(ctx: _Context, ep: Endpoint) -> tuple[dict[str, Any], Any]:
    """TCP connect to one endpoint, then a TLS handshake when TLS belongs on it."""
    if not ep.allowed:
        return {"status": False, "failure": FORBIDDEN_FAILURE}, None
    timeout = ctx.config.timeout
    try:
        tcp = await _bounded(
            tcp_connect(ep.ip, ep.port, timeout=timeout, t_zero=ctx.t_zero), timeout + 1.0
        )
        tcp_failure = tcp.failure
    except TimeoutError:
        tcp_failure = "generic_timeout_error"
    except Exception:
        log.exception("TCP connect to %s raised", ep.key)
        tcp_failure = _INTERNAL_FAILURE
    tcp_doc = {"status": tcp_failure is None, "failure": map_tcp_failure(tcp_failure)}
    if tcp_failure is not None or not ep.tls:
        return tcp_doc, None
    if ep.key == ctx.fetch_first:
        shared = await _fetch_handshake(ctx, ep)
        if shared is not None:
            return tcp_doc, shared
    try:
        tls = await _bounded(
            tls_handshake(
                ep.ip,
                ep.port,
                ctx.req.hostname,
                timeout=timeout,
                t_zero=ctx.t_zero,
                ca_file=ctx.config.ca_file,
                alpn=["h2", "http/1.1"],  # what oohelperd offers, so servers answer alike
            ),
            timeout + 1.0,
        )
    except TimeoutError:
        return tcp_doc, "generic_timeout_error"
    except Exception:
        log.exception("TLS handshake with %s raised", ep.key)
        return tcp_doc, _INTERNAL_FAILURE
    return tcp_doc, tls


async def _fetch_handshake(ctx: _Context, ep: Endpoint) -> TLSResult | None:
    """The GET's handshake with ``ep`` when it succeeded (else None: measure it apart).

    Same address, port and SNI, verified against the same trust store; only the ALPN offer
    differs (the GET offers http/1.1 alone), which servers do not answer differently.
    """
    if ctx.fetch_tls is None:
        return None
    try:
        heard = await _bounded(asyncio.shield(ctx.fetch_tls), ctx.config.timeout + 1.0)
    except TimeoutError:
        return None
    if heard is None or heard.failure is not None or heard.address != ep.key:
        return None
    return heard if heard.server_name == ctx.req.hostname else None


def _first_fetch_endpoint(ctx: _Context, th_addrs: list[str]) -> str | None:
    """The endpoint the GET connects to first (https only): the URL's IP, or the helper's
    first allowed address for its host (the GET's resolver keeps that order)."""
    if ctx.req.scheme != "https":
        return None
    if ctx.req.host_is_ip:
        ip: str | None = ctx.req.hostname  # IPv6 without brackets (ControlRequest)
    else:
        ip = next((a for a in th_addrs if ctx.config.guard.allows(a)), None)
    if ip is None:
        return None
    return format_host_port(ip, ctx.req.port or 443)


def _heard_tls(ctx: _Context) -> Callable[[TLSResult], None]:
    def heard(result: TLSResult) -> None:
        if ctx.fetch_tls is not None and not ctx.fetch_tls.done():
            ctx.fetch_tls.set_result(result)

    return heard


async def _resolve_for_http(ctx: _Context, host: str) -> list[str]:
    """The GET's resolver: every hop's addresses pass the guard before any connection."""
    host = host.strip("[]")
    failure: str | None = None
    if parse_ip(host) is not None:
        addrs = [host]
    elif host in ctx.cache:
        failure, addrs = ctx.cache[host]
    else:
        failure, addrs = await _lookup(ctx, host)
    if not addrs:
        ctx.http_dns_failure = failure or "dns_no_answer"
        raise LookupFailed(f"{host}: {ctx.http_dns_failure}")
    allowed = [a for a in addrs if ctx.config.guard.allows(a)]
    if not allowed:
        ctx.refused_hosts.append(host)
        raise ForbiddenAddress(f"{host} has only forbidden addresses")
    return allowed


async def _measure_http(ctx: _Context) -> tuple[dict[str, Any], dict[str, Any]]:
    """The GET (following redirects) as oohelperd's http_request, plus our raw details."""
    timeout = ctx.config.timeout
    result = None
    hops = 0
    try:
        fetched = await _bounded(
            fetch(
                ctx.req.url,
                resolve=lambda host: _resolve_for_http(ctx, host),
                guard=ctx.config.guard,
                headers=ctx.req.forwarded_headers(),
                timeout=timeout,
                t_zero=ctx.t_zero,
                body_cap=ctx.config.body_cap,
                ca_file=ctx.config.ca_file,
                on_tls=_heard_tls(ctx),
            ),
            timeout + 1.0,
        )
        result, failure, hops = fetched.result, fetched.failure, fetched.hops
    except TimeoutError:
        failure = "generic_timeout_error"
    except Exception:
        log.exception("GET %s raised", printable(ctx.req.url))
        failure = _INTERNAL_FAILURE
    finally:
        if ctx.fetch_tls is not None and not ctx.fetch_tls.done():
            ctx.fetch_tls.set_result(None)  # no handshake to share: endpoints measure their own
    # Whatever http_get called these, we know the cause: the guard, or a hop's DNS lookup.
    during_dns = False
    if failure is not None and ctx.refused_hosts:
        failure = FORBIDDEN_FAILURE
    elif failure is not None and ctx.http_dns_failure is not None:
        failure, during_dns = ctx.http_dns_failure, True
    extra: dict[str, Any] = {"failure": failure, "body_truncated": False, "hops": hops}
    legacy = map_http_failure(failure, during_dns=during_dns)
    if result is None or not result.status_code:
        doc = {
            "body_length": -1,
            "discovered_h3_endpoint": "",
            "failure": legacy,
            "title": "",
            "headers": {},
            "status_code": -1,
        }
        return doc, extra
    extra["body_truncated"] = result.body_truncated
    doc = {
        "body_length": len(result.body),
        "discovered_h3_endpoint": discovered_h3_endpoint(fetched.first_alt_svc, ctx.req.url),
        "failure": legacy,
        "title": result.title or "",
        "headers": {canonical_header(k): v for k, v in result.headers.items()},
        "status_code": result.status_code,
    }
    return doc, extra


def _tls_doc(ctx: _Context, tls: Any) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """oohelperd's tls_handshake entry and our certificate summary for one endpoint."""
    if isinstance(tls, str):  # the handshake step itself failed
        return {"server_name": ctx.req.hostname, "status": False, "failure": tls}, None
    doc = {"server_name": ctx.req.hostname, "status": tls.failure is None, "failure": tls.failure}
    if not tls.peer_certificates:
        return doc, None
    certs = {
        "leaf_sha256": hashlib.sha256(tls.peer_certificates[0]).hexdigest(),
        "leaf_spki_sha256": tls.leaf_spki_sha256,
        "issuer": tls.issuer,
        "verified": tls.verified,
        "verify_failure": tls.verify_failure,
        "chain_length": len(tls.peer_certificates),
    }
    return doc, certs


async def measure(req: ControlRequest, config: HelperConfig) -> dict[str, Any]:
    """Run the control measurement and return the response document."""
    ctx = _Context(req=req, config=config, t_zero=time.monotonic())
    dns_failure: str | None = None
    th_addrs: list[str] = []
    if not req.host_is_ip:
        dns_failure, th_addrs = await _lookup(ctx, req.hostname)

    info = ip_info(req, th_addrs, is_bogon, config.asn_lookup)
    probe_ips = [split_endpoint(text)[0] for text in req.tcp_connect]
    # The probe's count is capped by validation; cap the helper's own list the same way so a
    # name with thousands of addresses cannot turn one request into thousands of connects.
    addrs = list(dict.fromkeys(probe_ips + th_addrs[: config.max_tcp_endpoints]))
    endpoints = plan_endpoints(req, addrs, config.guard, is_bogon)
    ctx.fetch_tls = asyncio.get_running_loop().create_future()
    ctx.fetch_first = _first_fetch_endpoint(ctx, th_addrs)

    with guarded_connects(config.guard.allows):  # every socket's exact address, at connect
        *outcomes, (http_doc, http_extra) = await asyncio.gather(
            *(_measure_endpoint(ctx, ep) for ep in endpoints), _measure_http(ctx)
        )

    quic: dict[str, Any] = {}
    if req.x_quic_enabled and http_doc["discovered_h3_endpoint"]:
        quic = await quic_checks(req, endpoints, timeout=config.timeout, ca_file=config.ca_file)
    tcp_connect: dict[str, Any] = {}
    tls_handshake: dict[str, Any] = {}
    certificates: dict[str, Any] = {}
    for ep, (tcp_doc, tls) in zip(endpoints, outcomes, strict=True):
        tcp_connect[ep.key] = tcp_doc
        if tls is None:
            continue
        tls_handshake[ep.key], certs = _tls_doc(ctx, tls)
        if certs is not None:
            certificates[ep.key] = certs
        if tls_handshake[ep.key]["status"] and ep.ip in info:
            info[ep.ip]["flags"] |= FLAG_VALID_FOR_DOMAIN

    return {
        "tcp_connect": tcp_connect,
        "tls_handshake": tls_handshake,
        "quic_handshake": quic,  # backend/helper_quic.py: only when oohelperd would
        "http_request": http_doc,
        "http3_request": None,
        "dns": {"failure": map_dns_failure(dns_failure), "addrs": th_addrs},
        # The lookup in the probe's own words (netxlite's strings: dns_nxdomain_error,
        # dns_no_answer, generic_timeout_error, ...), which the legacy `dns.failure` loses.
        "x_dns": {
            "failure": dns_failure,
            "attempts": ctx.dns_attempts.get(req.hostname, 0),
        },
        "ip_info": info,
        "x_tls_certificates": certificates,
        "x_http_request": http_extra,
    }
