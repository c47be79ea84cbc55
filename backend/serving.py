"""How the helper and the collector face slow and greedy clients: uvicorn with limits it lacks.

uvicorn (0.55, h11 and httptools protocols alike) arms its keep-alive timer only after a
response: a connection that never sends a byte, or sends a request line and then nothing, is
kept forever, and ~1,000 of them exhaust the process's descriptors (issue 13). Its
`limit_concurrency` answers 503 only once a request has arrived, and does not stop the
accept. So the protocol class here adds, per connection:

- a deadline for a client that stops reading what it asked for (`send_timeout`: the
  transport's buffer stays full that long, and uvicorn would wait on it forever);
- a deadline for the request head (`header_timeout`, from the connection's start or from the
  end of the previous response), then one for the body (`body_timeout`; it does not run
  while the app, not the client, is the slow side, i.e. while uvicorn has paused reading);
- a cap on open connections in all (`max_connections`) and per client address
  (`max_connections_per_client`): past it the new connection gets a 503 and is closed at
  once, so descriptors stay bounded.

`ClientRateLimit` is an ASGI middleware: a token bucket per client address (IPv6 by /64),
429 with Retry-After when it is empty, because one control request can make the helper
open ~256 connections to public hosts. Its address is the client's as uvicorn reports it:
the TCP peer, or a trusted proxy's X-Forwarded-For (uvicorn's ProxyHeadersMiddleware wraps
this app and trusts 127.0.0.1 and ::1 by default); the connection caps always count the TCP
peer. Behind a proxy uvicorn does not trust every client is the proxy (docs/deployment.md).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
import resource
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import uvicorn
from starlette.requests import ClientDisconnect
from uvicorn.protocols.http.auto import AutoHTTPProtocol

log = logging.getLogger("censorscope.serving")

Scope = dict[str, Any]
ASGIApp = Callable[..., Any]

_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: 25\r\nretry-after: 1\r\nconnection: close\r\n\r\ntoo many open connections"
)


@dataclass(frozen=True)
class ServerLimits:
    """What a client may hold of the server; defaults sized for a small VPS."""

    header_timeout: float = 10.0  # seconds for a request head to arrive whole
    body_timeout: float = 30.0  # seconds for its body, once the head is in
    keep_alive: float = 5.0  # idle seconds between requests (uvicorn's timeout_keep_alive)
    send_timeout: float = 30.0  # seconds a client may leave a full send buffer unread
    max_connections: int = 1000  # open connections in all
    max_connections_per_client: int = 100  # per client address (IPv6: per /64)
    client_rate: float = 20.0  # requests per second per client address; 0 = no limit
    client_burst: int = 100  # requests a client may make at once before the rate applies

    def __post_init__(self) -> None:
        for name in ("header_timeout", "body_timeout", "keep_alive", "send_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("max_connections", "max_connections_per_client", "client_burst"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.client_rate < 0:
            raise ValueError(f"client_rate must be 0 (off) or positive, got {self.client_rate}")


def client_key(client: Any) -> str:
    """Who a peer address counts as: the IPv4 address, an IPv6 address's /64."""
    host = client[0] if isinstance(client, tuple | list) and client else str(client or "")
    try:
        addr = ipaddress.ip_address(str(host).split("%", 1)[0])
    except ValueError:
        return str(host)
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        return str(ipaddress.IPv6Network((addr, 64), strict=False))
    return str(addr)


def limited_protocol(
    limits: ServerLimits, base: type[asyncio.Protocol] = AutoHTTPProtocol
) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol class (`base`: httptools when installed, else h11) with
    `limits`; one class per server, which holds that server's per-client connection counts.
    It relies on what both of uvicorn's protocols keep (cycle, flow, connections, the
    on_response_complete hook), tested with uvicorn 0.55."""
    per_client: Counter[str] = Counter()

    class LimitedProtocol(base):  # type: ignore[valid-type, misc]
        _timer: asyncio.TimerHandle | None = None
        _send_timer: asyncio.TimerHandle | None = None
        _waiting_for: object = None  # the cycle before the awaited head, or the body's cycle
        _phase = "head"
        _key: str | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:
            super().connection_made(transport)
            key = client_key(self.client)
            if (
                len(self.connections) > limits.max_connections
                or per_client[key] >= limits.max_connections_per_client
            ):
                self.connections.discard(self)
                transport.write(_BUSY)
                transport.close()
                return
            self._key = key
            per_client[key] += 1
            self._arm("head", limits.header_timeout)

        def pause_writing(self) -> None:
            super().pause_writing()
            if self._send_timer is None:  # abort: close() would wait for the buffer to drain
                self._send_timer = self.loop.call_later(limits.send_timeout, self.transport.abort)

        def resume_writing(self) -> None:
            if self._send_timer is not None:
                self._send_timer.cancel()
                self._send_timer = None
            super().resume_writing()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._send_timer is not None:
                self._send_timer.cancel()
                self._send_timer = None
            self._disarm()
            if self._key is not None:
                per_client[self._key] -= 1
                if per_client[self._key] <= 0:
                    del per_client[self._key]
                self._key = None
            super().connection_lost(exc)

        def on_response_complete(self) -> None:
            if not self.transport.is_closing():
                self._arm("head", limits.header_timeout)  # the next head, counted from now
            super().on_response_complete()

        def _arm(self, phase: str, delay: float) -> None:
            self._disarm()
            self._phase = phase
            self._waiting_for = self.cycle
            self._timer = self.loop.call_later(delay, self._deadline)

        def _disarm(self) -> None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

        def _deadline(self) -> None:
            self._timer = None
            cycle = self.cycle
            if self.transport.is_closing():
                return
            if self._phase == "head" and (cycle is None or cycle is self._waiting_for):
                self.transport.close()  # no whole request head in time
                return
            if self._phase == "body" and cycle is not self._waiting_for:
                return  # another request since: its own head deadline runs
            if not cycle.more_body or cycle.response_complete:
                return  # the request is in; the app has it
            if self._phase == "head" or self.flow.read_paused:
                # the body's deadline; or the app, not the client, is the slow side
                self._arm("body", limits.body_timeout)
                return
            self.transport.close()  # the body did not arrive in time

    return LimitedProtocol


class ClientRateLimit:
    """ASGI middleware: a token bucket per client address; 429 with Retry-After when empty.

    Buckets are kept for the `max_clients` most recent clients (a client forgotten comes back
    with a full bucket, which costs at most one burst).
    """

    def __init__(
        self,
        app: ASGIApp,
        rate: float,
        burst: int,
        *,
        max_clients: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.app = app
        self.rate = rate
        self.burst = burst
        self.max_clients = max_clients
        self.clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def _take(self, key: str) -> float:
        """0 when the request may go, else the seconds until it could."""
        now = self.clock()
        tokens, last = self._buckets.pop(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - last) * self.rate)
        wait = 0.0
        if tokens >= 1.0:
            tokens -= 1.0
        else:
            wait = (1.0 - tokens) / self.rate
        self._buckets[key] = (tokens, now)
        while len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)
        return wait

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or self.rate <= 0:
            await self.app(scope, receive, send)
            return
        wait = self._take(client_key(scope.get("client")))
        if wait <= 0:
            await self.app(scope, receive, send)
            return
        body = b'{"error":"too many requests from this address, retry later"}'
        await send(
            {
                "type": "http.response.start",
                "status": 429,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"retry-after", str(max(1, math.ceil(wait))).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


class QuietDisconnect:
    """ASGI middleware: a client the server hung up on (a read timeout) is no error.

    The app reading its body then gets starlette's ClientDisconnect; nobody is left to
    answer, and uvicorn would log a traceback per slow client.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        try:
            await self.app(scope, receive, send)
        except ClientDisconnect:
            log.info("client %s gone before its request was read", scope.get("client"))


def server_config(app: ASGIApp, limits: ServerLimits, **kwargs: Any) -> uvicorn.Config:
    """A uvicorn.Config serving `app` within `limits` (other uvicorn settings in kwargs)."""
    app = QuietDisconnect(app)
    if limits.client_rate > 0:
        app = ClientRateLimit(app, limits.client_rate, limits.client_burst)
    return uvicorn.Config(
        app,
        http=limited_protocol(limits),
        timeout_keep_alive=max(1, math.ceil(limits.keep_alive)),
        **kwargs,
    )


def raise_descriptor_limit(want: int) -> int:
    """Raise the soft RLIMIT_NOFILE towards `want` (never past the hard limit), as Go's
    runtime does at start for oohelperd; returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


def run(app: ASGIApp, limits: ServerLimits, **kwargs: Any) -> None:
    """uvicorn.run for an app within `limits`, until interrupted.

    Each open connection may cost the helper hundreds of outgoing sockets while it measures,
    so the descriptor limit is raised first; the connection caps keep the count bounded.
    """
    soft = raise_descriptor_limit(1 << 16)
    if soft < 4 * limits.max_connections:
        log.warning(
            "descriptor limit %d is low for %d connections (raise `ulimit -n`)",
            soft,
            limits.max_connections,
        )
    uvicorn.Server(server_config(app, limits, **kwargs)).run()
