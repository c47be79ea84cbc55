"""The helper's QUIC checks, as oohelperd makes them (probe-cli internal/oohelperd quic.go,
measure.go, http.go).

oohelperd makes QUIC handshakes only when the probe sets ``x_quic_enabled`` and the GET's
first response advertised HTTP/3 in its ``Alt-Svc`` header (``discovered_h3_endpoint``): then
one handshake per endpoint of the plan (the same ``ip:port`` as the TCP checks), ALPN ``h3``,
SNI the URL's host name, verified, reported as ``quic_handshake[endpoint] = {server_name,
status, failure}``. Ours does the same with aioquic (probes.net.quic); an endpoint the guard
refuses is not contacted. No ``http3_request`` is made (oohelperd's optional field stays
null).
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import urlsplit

from backend.helper_protocol import ControlRequest, Endpoint
from backend.ssrf import FORBIDDEN_FAILURE
from probes.net.quic import quic_handshake


def discovered_h3_endpoint(alt_svc: str, url: str) -> str:
    """oohelperd's discoverH3Endpoint: the first ``h3=`` alternative of an Alt-Svc value, its
    empty host replaced by the URL's host ("" when none or unparsable)."""
    for entry in alt_svc.split(","):
        first = entry.split(";")[0]
        _, found, authority = first.partition("h3=")
        if not found or not authority.strip():
            continue
        authority = authority.strip().strip('"')
        host, sep, port = authority.rpartition(":")
        if not sep or not port.isdigit():
            return ""
        host = host.removeprefix("[").removesuffix("]")
        if not host:  # Go's URL.Host: the name and any port, as written
            host = urlsplit(url).netloc.rpartition("@")[2]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"  # net.JoinHostPort
    return ""


async def quic_checks(
    req: ControlRequest, endpoints: list[Endpoint], *, timeout: float, ca_file: str | None
) -> dict[str, Any]:
    """endpoint -> oohelperd's quic_handshake entry, for the endpoints the guard allows."""

    async def one(ep: Endpoint) -> dict[str, Any]:
        if not ep.allowed:
            return {"server_name": req.hostname, "status": False, "failure": FORBIDDEN_FAILURE}
        result = await quic_handshake(
            ep.ip, ep.port, req.hostname, timeout=timeout, t_zero=0.0, ca_file=ca_file
        )
        return {"server_name": req.hostname, "status": result.failure is None,
                "failure": result.failure}  # fmt: skip

    docs = await asyncio.gather(*(one(ep) for ep in endpoints))
    return {ep.key: doc for ep, doc in zip(endpoints, docs, strict=True)}
