"""HTTP(S) GET as an observation: the ``requests`` entries of ooni/spec df-001-httpt.

Names are never resolved behind our back: each hop's host goes through the caller's
``resolve`` callable (the probe's own DNS, which may be the censored resolver), the
connection goes to the address, and the Host header and TLS SNI carry the real name, so
certificate verification is for the real hostname. Redirects are followed here, one hop
at a time, so that every hop is recorded (df-001 lists them newest first). Each request
runs on a new connection (probes.net.http_wire): a reused one would skip the TCP/TLS
steps that censorship interferes with, and could carry one name's SNI into another's
request. httpx parses and joins URLs, keeps cookies, and carries JSONClient's calls to
our own services (the helper, the collector).
"""

from __future__ import annotations

import asyncio
import functools
import html
import itertools
import re
import ssl
import zlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import h11
import httpx

from probes.net import failures as F
from probes.net.addresses import format_host_port, is_ip
from probes.net.failures import NetworkFailure, failure_from_exception
from probes.net.http_wire import Exchange, exchange, request_head
from probes.net.records import Transactions, maybe_binary, since
from probes.net.tcp import tcp_record
from probes.net.tls import (
    TLSResult,
    client_context,
    fill_from_ssl_object,
    tls_record,
    verifying_context,
)

# What a desktop browser sends, as OONI's web_connectivity does, so that servers
# (and censors) treat the probe like an ordinary visitor.
DEFAULT_HEADERS: dict[str, str] = {
    "Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
    "Accept-Language": "en-US,en;q=0.9",
    "User-Agent": (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
        "(KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36"
    ),
}
REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})
DEFAULT_BODY_CAP = 1 << 20
_TITLE_RE = re.compile(rb"<title[^>]*>(.*?)</title", re.IGNORECASE | re.DOTALL)
_TOR = {"exit_ip": None, "exit_name": None, "is_tor": False}

Resolver = Callable[[str], Awaitable[list[str]]]
# web_connectivity 0.5's throughput curve: OONI's operation name (probe-cli internal/throttling,
# sampled about every 250 ms) for the connection's bytes received so far, TLS included.
BYTES_RECEIVED = "bytes_received_cumulative"
CURVE_EVERY_S = 0.25


@dataclass
class HTTPResult:
    url: str
    failure: str | None
    status_code: int | None = None
    headers: dict[str, str] = field(default_factory=dict)  # final response, first value
    body: bytes = b""
    body_truncated: bool = False
    title: str | None = None
    requests: list[dict[str, Any]] = field(default_factory=list)  # newest first (df-001)
    network_events: list[dict[str, Any]] = field(default_factory=list)  # df-008
    t0: float = 0.0
    t: float = 0.0
    tls_handshakes: list[dict[str, Any]] = field(default_factory=list)  # df-006, per hop
    final_url: str | None = None
    address: str | None = None  # "ip:port" that served the final response


TLSListener = Callable[[TLSResult], None]


@functools.lru_cache(maxsize=16)
def _http_ssl_context(ca_file: str | None) -> ssl.SSLContext:
    """One verifying context per CA file for JSONClient; building contexts per request is
    costly. Not tls.client_context's: httpcore sets ALPN on the context it is given, which
    would change what tls_handshake offers. The system's roots plus ``ca_file``."""
    return verifying_context(ca_file)


@dataclass(frozen=True)
class HTTPClient:
    """How http_get and http_exchange speak TLS: shared between calls, holds no connection."""

    ssl_context: ssl.SSLContext


def make_client(*, ca_file: str | None = None, verify: bool = True) -> HTTPClient:
    """Options to share between calls (one cached SSL context, offering http/1.1 alone).

    ``verify=False`` is for echo endpoints whose names carry keywords (http_keyword): no
    certificate could list them, and the echoed body is what is checked.
    """
    return HTTPClient(client_context(ca_file, verify, ("http/1.1",)))


async def aclose(client: object) -> None:
    """Nothing to release (kept so callers need not know what a client holds)."""


def extract_title(body: bytes) -> str | None:
    """The text of the first <title>, unescaped and with whitespace collapsed."""
    match = _TITLE_RE.search(body)
    if match is None:
        return None
    text = html.unescape(match.group(1).decode("utf-8", errors="replace"))
    return " ".join(text.split())


def _headers_map(pairs: list[tuple[str, str]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in pairs:
        out.setdefault(k, v)
    return out


@dataclass
class _Hop:
    """What one request/response exchange produced."""

    url: str
    t0: float
    failure: str | None = None
    request_headers: list[tuple[str, str]] = field(default_factory=list)
    status: int | None = None
    response_headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    truncated: bool = False
    address: str | None = None
    t: float = 0.0
    method: str = "GET"
    request_body: bytes = b""
    transaction_id: int | None = None
    tags: list[str] | None = None

    def record(self) -> dict[str, Any]:
        pairs = self.request_headers
        extra: dict[str, Any] = {}
        if self.transaction_id is not None:
            extra = {"transaction_id": self.transaction_id, "tags": list(self.tags or [])}
        return {
            **extra,
            "failure": self.failure,
            "request": {
                "body": maybe_binary(self.request_body),
                "body_is_truncated": False,
                "headers_list": [list(p) for p in pairs],
                "headers": _headers_map(pairs),
                "method": self.method,
                "tor": dict(_TOR),
                "x_transport": "tcp",
                "url": self.url,
            },
            "response": {
                "body": maybe_binary(self.body),
                "body_is_truncated": self.truncated,
                "code": self.status or 0,
                "headers_list": [list(p) for p in self.response_headers],
                "headers": _headers_map(self.response_headers),
            },
            "network": "tcp",
            "address": self.address or "",
            "t0": self.t0,
            "t": self.t,
        }


class _Tracer:
    """Turns the steps of an exchange into df-008 network events and df-006 records."""

    def __init__(
        self,
        t_zero: float,
        address: str,
        server_name: str,
        on_tls: TLSListener | None = None,
        transactions: Transactions | None = None,
    ) -> None:
        self.t_zero, self.address, self.server_name = t_zero, address, server_name
        self.on_tls = on_tls
        # web_connectivity 0.5: this attempt is one transaction (connect, TLS, round trip).
        self.transactions = transactions
        self.transaction_id = transactions.new_id() if transactions else None
        self.tags = transactions.tags(fetch_body=True) if transactions else []
        self.events: list[dict[str, Any]] = []
        self.tls: list[dict[str, Any]] = []
        self.tcp_connected = False
        self._t0 = since(t_zero)
        self._tls_t0 = 0.0
        # The byte curve (with ``transactions`` only): the count, when it last grew, the last
        # sample's time and count.
        self._bytes, self._bytes_t = 0, 0.0
        self._sampled_t, self._sampled = -1.0, -1
        self._requested = False

    def _event(
        self,
        operation: str,
        failure: str | None = None,
        t0: float | None = None,
        t: float | None = None,
    ) -> None:
        t = since(self.t_zero) if t is None else t
        self.events.append(
            {
                "address": self.address,
                "failure": failure,
                "operation": operation,
                "proto": "tcp",
                "t0": t if t0 is None else t0,
                "t": t,
                "tags": list(self.tags),
            }
        )

    def connected(self, failure: str | None) -> None:
        self.tcp_connected = failure is None
        self._event("connect", failure, self._t0)
        if self.transactions is not None:
            ip, _, port = self.address.rpartition(":")
            record = tcp_record(ip.strip("[]"), int(port), failure, self._t0, since(self.t_zero))
            record.update(transaction_id=self.transaction_id, tags=list(self.tags))
            self.transactions.tcp_connect.append(record)

    def tls_started(self) -> None:
        self._tls_t0 = since(self.t_zero)
        self._event("tls_handshake_start")

    def tls_done(self, failure: str | None, obj: ssl.SSLObject | None) -> None:
        # One instant for the event and the record: ooni/data finds a handshake's events
        # (connect .. tls_handshake_done) by the done event's t equal to the record's t.
        t = since(self.t_zero)
        self._event("tls_handshake_done", failure, self._tls_t0, t)
        res = TLSResult(self.address, self.server_name, failure, self._tls_t0, t)
        if obj is not None:
            fill_from_ssl_object(res, obj)
            res.verified = failure is None
        res.record = tls_record(res, no_tls_verify=False)
        if self.transaction_id is not None:
            res.record.update(transaction_id=self.transaction_id, tags=list(self.tags))
        self.tls.append(res.record)
        if self.on_tls is not None:
            self.on_tls(res)

    def wrote_headers(self) -> None:
        self._event("http_wrote_headers")
        if self.transactions is not None:
            self._requested = True
            self._bytes_event(since(self.t_zero))  # the count at the request: the handshake's

    def first_response_byte(self) -> None:
        self._event("http_first_response_byte")

    def received(self, total: int) -> None:
        """The connection's bytes so far (probes.net.http_wire): sampled after the request."""
        if self.transactions is None or total <= self._bytes:
            return
        self._bytes, self._bytes_t = total, since(self.t_zero)
        if self._requested and self._bytes_t - self._sampled_t >= CURVE_EVERY_S:
            self._bytes_event(self._bytes_t)

    def finish_curve(self) -> None:
        """The last count, at the time of the last byte (a stall shows as the gap to the
        transaction's end)."""
        if self._requested and self._bytes != self._sampled:
            self._bytes_event(self._bytes_t)

    def _bytes_event(self, t: float) -> None:
        self._sampled_t, self._sampled = t, self._bytes
        self.events.append(
            {
                "address": self.address,
                "failure": None,
                "num_bytes": self._bytes,
                "operation": BYTES_RECEIVED,
                "proto": "tcp",
                "t0": t,
                "t": t,
                "tags": list(self.tags),
                "transaction_id": self.transaction_id,
            }
        )


async def _one_hop(
    client: HTTPClient,
    url: httpx.URL,
    addrs: list[str],
    headers: dict[str, str],
    body_cap: int,
    t_zero: float,
    timeout: float,
    result: HTTPResult,
    on_tls: TLSListener | None = None,
    transactions: Transactions | None = None,
) -> _Hop:
    """GET ``url`` from the first address that accepts a TCP connection."""
    hop = _Hop(url=str(url), t0=since(t_zero))
    host = url.host
    https = url.scheme == "https"
    port = url.port or (443 if https else 80)
    hop.request_headers = request_head(url.netloc.decode("ascii"), headers)
    target = url.raw_path.decode("ascii")
    for ip in addrs:
        hop.address = format_host_port(ip, port)
        tracer = _Tracer(t_zero, hop.address, host, on_tls, transactions)
        hop.transaction_id, hop.tags = tracer.transaction_id, tracer.tags
        tracer._event("http_transaction_start")
        try:
            response = await exchange(
                ip,
                port,
                method="GET",
                target=target,
                head=hop.request_headers,
                sni=host if https else None,
                ssl_context=client.ssl_context if https else None,
                body_cap=body_cap,
                timeout=timeout,
                listener=tracer,
            )
        except (h11.ProtocolError, OSError, EOFError, ssl.SSLError, zlib.error) as exc:
            hop.failure = failure_from_exception(exc)
            _collect(result, tracer, hop.failure)
            if tracer.tcp_connected:
                break  # the TCP connect worked: the failure is this address's answer
            continue
        except asyncio.CancelledError:
            if transactions is not None:
                # The fetch's deadline (http_get's timeout) cancelled this attempt: keep its
                # events, the byte curve among them, as evidence of where it stopped.
                tracer.finish_curve()
                tracer._event("http_transaction_done", F.GENERIC_TIMEOUT_ERROR)
                result.network_events.extend(tracer.events)
            raise
        _take(hop, response)
        _collect(result, tracer, None)
        break
    hop.t = since(t_zero)
    return hop


def _take(hop: _Hop, response: Exchange) -> None:
    hop.status = response.status
    hop.response_headers = response.headers
    hop.body, hop.truncated = response.body, response.truncated
    hop.failure = None


def _collect(result: HTTPResult, tracer: _Tracer, failure: str | None) -> None:
    tracer.finish_curve()
    tracer._event("http_transaction_done", failure)
    result.network_events.extend(tracer.events)
    result.tls_handshakes.extend(tracer.tls)


async def _addresses(host: str, resolve: Resolver) -> list[str]:
    if is_ip(host):
        return [host]
    addrs = await resolve(host)
    if not addrs:
        raise NetworkFailure(F.DNS_NO_ANSWER, f"no addresses for {host}")
    return list(addrs)


async def http_get(
    url: str,
    *,
    resolve: Resolver,
    timeout: float,
    t_zero: float,
    body_cap: int = DEFAULT_BODY_CAP,
    headers: Mapping[str, str] | None = None,
    ca_file: str | None = None,
    max_redirects: int = 20,
    client: object | None = None,
    on_tls: TLSListener | None = None,
    transactions: Transactions | None = None,
) -> HTTPResult:
    """GET ``url`` following redirects; never raises on network failure.

    ``resolve(host)`` returns the addresses to try (in order); it may raise (a
    NetworkFailure carries its OONI string) or return [] (dns_no_answer).
    ``timeout`` bounds the whole fetch, redirects included. ``client`` comes from
    make_client(); without one, ``ca_file`` is the trust store (with a client, the
    client's own store applies). ``on_tls`` hears of every TLS handshake as soon as it
    ends (the control helper reuses the GET's own). With ``transactions`` every attempt is
    recorded as web_connectivity 0.5 does: its own transaction id, a ``tcp_connect`` entry
    (in ``transactions.tcp_connect``), ``depth=N`` the hop's redirect depth; a chain that
    needs more than ``max_redirects`` redirects marks its last response failed.
    """
    result = HTTPResult(url=url, failure=None, t0=since(t_zero))
    http = make_client(ca_file=ca_file) if client is None else client
    if not isinstance(http, HTTPClient):
        raise TypeError("client must come from probes.net.http.make_client()")
    send_headers = {**DEFAULT_HEADERS, **(headers or {})}
    cookies = httpx.Cookies()
    hops: list[_Hop] = []
    try:
        async with asyncio.timeout(timeout):
            await _follow(http, httpx.URL(url), resolve, send_headers, cookies, body_cap,
                          max_redirects, t_zero, timeout, result, hops, on_tls,
                          transactions)  # fmt: skip
    except TimeoutError as exc:
        failure = failure_from_exception(exc)
        if hops and hops[-1].t == 0.0:  # the hop in flight when time ran out
            hops[-1].failure, hops[-1].t = failure, since(t_zero)
        result.failure = failure
    except (NetworkFailure, httpx.InvalidURL, OSError, ValueError) as exc:
        result.failure = failure_from_exception(exc)
        if transactions is not None and hops and hops[-1].failure is None:
            hops[-1].failure = result.failure  # the redirect we would not follow (0.5)
    _finish(result, hops, t_zero)
    return result


async def _follow(
    client: HTTPClient,
    url: httpx.URL,
    resolve: Resolver,
    headers: dict[str, str],
    cookies: httpx.Cookies,
    body_cap: int,
    max_redirects: int,
    t_zero: float,
    timeout: float,
    result: HTTPResult,
    hops: list[_Hop],
    on_tls: TLSListener | None = None,
    transactions: Transactions | None = None,
) -> None:
    for depth in range(max_redirects + 1):
        if transactions is not None:
            transactions.depth = depth
        if url.scheme not in ("http", "https"):
            raise NetworkFailure(F.UNKNOWN_FAILURE_PREFIX + f"unsupported scheme {url.scheme}")
        try:
            addrs = await _addresses(url.host, resolve)
        except Exception as exc:  # the caller's resolver: any error is a DNS-step failure
            hop = _Hop(url=str(url), t0=since(t_zero), failure=failure_from_exception(exc))
            hop.t = since(t_zero)
            hops.append(hop)
            result.failure = hop.failure
            return
        jar_request = httpx.Request("GET", url)
        cookies.set_cookie_header(jar_request)
        hop_headers = dict(headers)
        if "cookie" in jar_request.headers:
            hop_headers["Cookie"] = jar_request.headers["cookie"]
        hops.append(_Hop(url=str(url), t0=since(t_zero)))  # placeholder while in flight
        hop = await _one_hop(
            client, url, addrs, hop_headers, body_cap, t_zero, timeout, result, on_tls, transactions
        )
        hops[-1] = hop
        result.failure = hop.failure
        if hop.failure is not None or hop.status not in REDIRECT_CODES:
            return
        location = _headers_map([(k.lower(), v) for k, v in hop.response_headers]).get("location")
        if not location:
            return
        cookies.extract_cookies(
            httpx.Response(hop.status or 0, headers=hop.response_headers, request=jar_request)
        )
        url = url.join(location)
    raise NetworkFailure(F.UNKNOWN_FAILURE_PREFIX + f"stopped after {max_redirects} redirects")


def _finish(result: HTTPResult, hops: list[_Hop], t_zero: float) -> None:
    result.t = since(t_zero)
    result.requests = [h.record() for h in reversed(hops)]
    if not hops:
        return
    last = hops[-1]
    result.final_url = last.url
    result.address = last.address
    result.status_code = last.status
    result.headers = _headers_map(last.response_headers)
    result.body, result.body_truncated = last.body, last.truncated
    result.title = extract_title(last.body)


async def http_exchange(
    ip: str,
    port: int,
    *,
    method: str,
    target: str,
    host: str,
    body: bytes = b"",
    tls_sni: str | None = None,
    timeout: float,
    t_zero: float,
    client: object,
    body_cap: int = DEFAULT_BODY_CAP,
) -> HTTPResult:
    """One request to ip:port with exactly this target, Host header, body and SNI.

    For http_keyword: the request carries a keyword where a censor looks for it, so nothing
    is resolved, normalised or followed. ``target`` must already be percent-encoded; with
    ``tls_sni`` the exchange runs over TLS with that SNI. Never raises on network failure.
    """
    scheme = "https" if tls_sni is not None else "http"
    url = f"{scheme}://{format_host_port(ip, port)}{target}"
    result = HTTPResult(url=url, failure=None, t0=since(t_zero))
    if not isinstance(client, HTTPClient):
        raise TypeError("client must come from probes.net.http.make_client()")
    hop = _Hop(url=url, t0=since(t_zero), method=method, request_body=body)
    hop.address = format_host_port(ip, port)
    hop.request_headers = request_head(host, DEFAULT_HEADERS, body)
    tracer = _Tracer(t_zero, hop.address, tls_sni or host)
    tracer._event("http_transaction_start")
    try:
        async with asyncio.timeout(timeout):
            response = await exchange(
                ip,
                port,
                method=method,
                target=target,
                head=hop.request_headers,
                body=body,
                sni=tls_sni,
                ssl_context=client.ssl_context if tls_sni is not None else None,
                body_cap=body_cap,
                timeout=timeout,
                listener=tracer,
            )
        _take(hop, response)
    except (h11.ProtocolError, OSError, EOFError, ssl.SSLError, TimeoutError, zlib.error) as exc:
        hop.failure = failure_from_exception(exc)
    hop.t = since(t_zero)
    _collect(result, tracer, hop.failure)
    result.failure = hop.failure
    _finish(result, [hop], t_zero)
    return result


@dataclass
class JSONReply:
    """A JSON API reply (control helper, collector): status, decoded body, OONI failure."""

    status_code: int | None
    data: Any = None
    failure: str | None = None


class _ShardedTransport(httpx.AsyncBaseTransport):
    """Requests spread round-robin over several small connection pools.

    httpcore's pool re-scans all of its connections and queued requests whenever a request
    starts or ends, so its cost grows with (connections x requests in flight): with 64 control
    requests in flight to one helper that scan was ~2 ms of CPU per request. Eight pools of a
    few connections each keep every scan short.
    """

    def __init__(self, shards: int, **transport_options: Any) -> None:
        self._pools = [httpx.AsyncHTTPTransport(**transport_options) for _ in range(shards)]
        self._turn = itertools.cycle(self._pools)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await next(self._turn).handle_async_request(request)

    async def aclose(self) -> None:
        for pool in self._pools:
            await pool.aclose()


JSON_CLIENT_SHARDS = 8


class JSONClient:
    """Talks JSON to our own infrastructure (helpers, collectors) with the system's DNS.

    Unlike `http_get` this is not a measurement: it reuses connections and lets httpx
    resolve names, because the helper's address is not what we are measuring.
    """

    def __init__(
        self, *, ca_file: str | None = None, headers: Mapping[str, str] | None = None
    ) -> None:
        transport = _ShardedTransport(
            JSON_CLIENT_SHARDS,
            verify=_http_ssl_context(ca_file),
            limits=httpx.Limits(max_connections=32, max_keepalive_connections=8),
        )
        self._client = httpx.AsyncClient(transport=transport, headers=dict(headers or {}))

    async def _call(
        self, method: str, url: str, *, timeout: float, payload: Any = None
    ) -> JSONReply:
        try:
            response = await self._client.request(method, url, json=payload, timeout=timeout)
        except Exception as exc:
            return JSONReply(status_code=None, failure=failure_from_exception(exc))
        try:
            data = response.json()
        except ValueError:
            data = None
        return JSONReply(status_code=response.status_code, data=data)

    async def get_json(self, url: str, *, timeout: float) -> JSONReply:
        return await self._call("GET", url, timeout=timeout)

    async def post_json(self, url: str, payload: Any, *, timeout: float) -> JSONReply:
        return await self._call("POST", url, timeout=timeout, payload=payload)

    async def put_json(self, url: str, payload: Any, *, timeout: float) -> JSONReply:
        """PUT (idempotent sends keyed by the URL, e.g. Matrix transaction IDs)."""
        return await self._call("PUT", url, timeout=timeout, payload=payload)

    async def post_encoded(self, url: str, body: bytes, *, timeout: float) -> JSONReply:
        """POST a body that is already JSON (the uploader sends stored lines as they are)."""
        try:
            response = await self._client.post(
                url, content=body, headers={"content-type": "application/json"}, timeout=timeout
            )
        except Exception as exc:
            return JSONReply(status_code=None, failure=failure_from_exception(exc))
        try:
            data = response.json()
        except ValueError:
            data = None
        return JSONReply(status_code=response.status_code, data=data)

    async def aclose(self) -> None:
        await self._client.aclose()
