"""One DNS lookup through one resolver endpoint, each step of the connection an observation.

dnscheck asks a named resolver (DoH, DoT, DNS over TCP or UDP) at each of its addresses in
turn, with the resolver's name as SNI and Host, so that a failure is pinned to the step that
failed: the TCP connect (df-005 tcp_connect), the TLS handshake (df-006 tls_handshakes) or the
DNS round trip itself (df-002 queries). dnspython's own DoT/DoH helpers connect, handshake and
ask in one call and report one exception, so the connection is ours here (probes.net.tcp,
probes.net.tls) and dnspython only builds and parses the messages; DoH is one HTTP/1.1 POST
(RFC 8484 section 4.1, ``application/dns-message``) written with h11 (probes.net.http_wire).
UDP goes through probes.net.dns, which keeps listening after the first answer so that forged
answers racing the genuine one are kept. DNS over QUIC (RFC 9250) is aioquic's connection (the
QUIC handshake, recorded like a TLS handshake in ``quic_handshakes``) and one stream per query
carrying the same two-byte framing.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import struct
from dataclasses import dataclass, field
from typing import Any

import dns.exception
import dns.message
import dns.rcode

from probes.net import failures as F
from probes.net.addresses import format_host_port
from probes.net.dns import _addrs_of, _failure_of, answers_of, resolve
from probes.net.failures import failure_from_exception
from probes.net.http_wire import converse_on, request_head
from probes.net.records import b64, since
from probes.net.tcp import open_socket, tcp_record
from probes.net.tls import TLSResult, client_context, fill_from_ssl_object, tls_channel, tls_record

TRANSPORTS = ("udp", "tcp", "dot", "doh", "doq")
DNS_MESSAGE = "application/dns-message"
# The largest DNS message over TCP (a two-byte length prefix, RFC 1035 section 4.2.2).
MAX_MESSAGE = 65535
# What we call the step that failed, as OONI's failed_operation (netxlite's "connect" and
# "tls_handshake"; the DNS exchange is OONI's dns_round_trip event).
OP_CONNECT = "connect"
OP_TLS = "tls_handshake"
OP_ROUND_TRIP = "dns_round_trip"
OP_QUIC = "quic_handshake"  # netxlite's name for the QUIC handshake step
DOQ_ALPN = "doq"  # RFC 9250 section 4.1.1
# A DoH answer that is not 200 with a DNS message: OONI's failure for an HTTP request that did
# not give what was asked for.
HTTP_FAILURE = "http_request_failed"


@dataclass
class Endpoint:
    """Where and how to ask: an address, and the names the resolver expects from us."""

    transport: str  # one of TRANSPORTS
    ip: str
    port: int
    server_name: str = ""  # SNI (DoT, DoH); empty for an IP-only resolver
    http_host: str = ""  # DoH Host header (the URL's host[:port])
    path: str = "/dns-query"  # DoH path, query included

    @property
    def address(self) -> str:
        return format_host_port(self.ip, self.port)


@dataclass
class EndpointLookup:
    """What one lookup saw, in OONI's archival forms."""

    failure: str | None = None
    failed_operation: str | None = None
    addrs: list[str] = field(default_factory=list)
    queries: list[dict[str, Any]] = field(default_factory=list)
    tcp_connect: list[dict[str, Any]] = field(default_factory=list)
    tls_handshakes: list[dict[str, Any]] = field(default_factory=list)
    quic_handshakes: list[dict[str, Any]] = field(default_factory=list)
    network_events: list[dict[str, Any]] = field(default_factory=list)


class _RoundTripError(Exception):
    """The DNS exchange failed after the connection was up; ``failure`` is OONI's string."""

    def __init__(self, failure: str) -> None:
        super().__init__(failure)
        self.failure = failure


class _NoListener:
    """http_wire's step listener; our connection's steps are recorded by us already."""

    def connected(self, failure: str | None) -> None: ...

    def tls_started(self) -> None: ...

    def tls_done(self, failure: str | None, obj: ssl.SSLObject | None) -> None: ...

    def wrote_headers(self) -> None: ...

    def first_response_byte(self) -> None: ...


async def _read_exact(sock: socket.socket, channel: Any, size: int, buffer: bytearray) -> bytes:
    loop = asyncio.get_running_loop()
    while len(buffer) < size:
        data = await channel.recv() if channel is not None else await loop.sock_recv(sock, 65536)
        if not data:
            raise EOFError("the resolver closed the connection before its answer")
        buffer.extend(data)
    out = bytes(buffer[:size])
    del buffer[:size]
    return out


async def _stream_round_trip(sock: socket.socket, channel: Any, wire: bytes) -> bytes:
    """RFC 7766/7858 framing: a two-byte length, then the message; the answer alike."""
    framed = struct.pack("!H", len(wire)) + wire
    if channel is not None:
        await channel.send(framed)
    else:
        await asyncio.get_running_loop().sock_sendall(sock, framed)
    buffer = bytearray()
    (length,) = struct.unpack("!H", await _read_exact(sock, channel, 2, buffer))
    return await _read_exact(sock, channel, length, buffer)


async def _doh_round_trip(sock: socket.socket, channel: Any, ep: Endpoint, wire: bytes) -> bytes:
    head = request_head(
        ep.http_host or ep.server_name,
        {"Accept": DNS_MESSAGE, "Content-Type": DNS_MESSAGE},
        wire,
    )
    reply = await converse_on(
        sock,
        channel,
        method="POST",
        target=ep.path or "/dns-query",
        head=head,
        body=wire,
        body_cap=MAX_MESSAGE,
        listener=_NoListener(),
    )
    content_type = next((v for k, v in reply.headers if k.lower() == "content-type"), "")
    if reply.status != 200 or content_type.split(";")[0].strip().lower() != DNS_MESSAGE:
        raise _RoundTripError(HTTP_FAILURE)
    return reply.body


def _event(t_zero: float, operation: str, failure: str | None = None, **extra: Any) -> dict:
    return {"operation": operation, "failure": failure, "t": since(t_zero), **extra}


async def _connected_lookup(
    ep: Endpoint,
    query: dns.message.Message,
    out: EndpointLookup,
    *,
    timeout: float,
    t_zero: float,
    ca_file: str | None,
) -> bytes:
    """Connect, handshake (DoT, DoH), exchange; records each step in ``out``; raises
    _RoundTripError (with failed_operation set) on the first failure."""
    t0 = since(t_zero)
    try:
        sock = await open_socket(ep.ip, ep.port, timeout)
    except (OSError, TimeoutError) as exc:
        failure = failure_from_exception(exc)
        out.tcp_connect.append(tcp_record(ep.ip, ep.port, failure, t0, since(t_zero)))
        out.network_events.append(_event(t_zero, "connect", failure, address=ep.address))
        out.failed_operation = OP_CONNECT
        raise _RoundTripError(failure) from exc
    try:
        out.tcp_connect.append(tcp_record(ep.ip, ep.port, None, t0, since(t_zero)))
        out.network_events.append(_event(t_zero, "connect", address=ep.address, proto="tcp"))
        channel = None
        if ep.transport in ("dot", "doh"):
            channel = await _handshake(sock, ep, out, t_zero=t_zero, ca_file=ca_file)
        out.network_events.append(_event(t_zero, "dns_round_trip_start"))
        try:
            wire = query.to_wire()
            if ep.transport == "doh":
                raw = await _doh_round_trip(sock, channel, ep, wire)
            else:
                raw = await _stream_round_trip(sock, channel, wire)
        except _RoundTripError as exc:
            out.failed_operation = OP_ROUND_TRIP
            out.network_events.append(_event(t_zero, "dns_round_trip_done", exc.failure))
            raise
        except (OSError, EOFError, ssl.SSLError, ValueError) as exc:
            # h11's protocol errors are ValueErrors: a middlebox that spoke no HTTP
            failure = failure_from_exception(exc)
            out.failed_operation = OP_ROUND_TRIP
            out.network_events.append(_event(t_zero, "dns_round_trip_done", failure))
            raise _RoundTripError(failure) from exc
        out.network_events.append(_event(t_zero, "dns_round_trip_done"))
        return raw
    finally:
        sock.close()


async def _handshake(
    sock: socket.socket, ep: Endpoint, out: EndpointLookup, *, t_zero: float, ca_file: str | None
) -> Any:
    """The TLS handshake with the resolver's name as SNI, verified against that name."""
    alpn = ("http/1.1",) if ep.transport == "doh" else ("dot",)
    name = ep.server_name or ep.ip
    ctx = client_context(ca_file, True, alpn, check_hostname=True)
    result = TLSResult(address=ep.address, server_name=name, failure=None, t0=0.0, t=0.0)
    result.t0 = since(t_zero)
    out.network_events.append(_event(t_zero, "tls_handshake_start"))
    obj = None
    try:
        channel = await tls_channel(sock, ctx, name)
        obj = channel.obj
        result.verified = True
    except (OSError, EOFError, ssl.SSLError) as exc:
        result.failure = failure_from_exception(exc)
        if isinstance(exc, ssl.SSLCertVerificationError):
            result.verify_failure = result.failure
        obj = getattr(exc, "ssl_object", None)
        channel = None
    result.t = since(t_zero)
    if obj is not None:
        fill_from_ssl_object(result, obj)
    out.tls_handshakes.append(tls_record(result, no_tls_verify=False))
    out.network_events.append(_event(t_zero, "tls_handshake_done", result.failure))
    if result.failure is not None:
        out.failed_operation = OP_TLS
        raise _RoundTripError(result.failure)
    return channel


def _query_record(
    ep: Endpoint,
    domain: str,
    query_type: str,
    *,
    failure: str | None,
    t0: float,
    t: float,
    raw: bytes | None,
    rcode: int | None,
    answers: list[dict[str, Any]],
    addrs: list[str],
) -> dict[str, Any]:
    """df-002 entry, plus the one answer in the ``x_responses`` form dns_consistency's
    analysis reads (probes.nettests.dns_consistency_analysis)."""
    record: dict[str, Any] = {
        "answers": answers,
        "engine": ep.transport,
        "failure": failure,
        "hostname": domain,
        "query_type": query_type,
        "resolver_hostname": ep.server_name or None,
        "resolver_port": str(ep.port),
        "resolver_address": ep.address,
        "t0": t0,
        "t": t,
        "x_responses": [],
    }
    if raw is not None:
        record["raw_response"] = b64(raw)
        record["rcode"] = rcode
        record["x_responses"] = [
            {
                "t": t,
                "raw": b64(raw),
                "rcode": rcode,
                "answers": answers,
                "addrs": addrs,
                "valid": True,
                "id_match": True,
            }
        ]
    return record


async def lookup(
    ep: Endpoint,
    domain: str,
    *,
    query_type: str = "A",
    timeout: float,
    t_zero: float,
    ca_file: str | None = None,
    listen_window: float = 0.0,
) -> EndpointLookup:
    """Ask ``ep`` for ``domain``; never raises on network failure. ``timeout`` bounds the
    whole lookup (connect, handshake and exchange)."""
    if ep.transport not in TRANSPORTS:
        raise ValueError(f"unknown DNS transport {ep.transport!r}; use one of {TRANSPORTS}")
    out = EndpointLookup()
    if ep.transport == "udp":
        return await _udp_lookup(ep, domain, query_type, out, timeout, t_zero, listen_window)
    query = dns.message.make_query(domain, query_type)
    if ep.transport in ("doh", "doq"):
        query.id = 0  # RFC 8484 section 4.1 (cache friendly); RFC 9250 section 4.2.1 (must)
    t0 = since(t_zero)
    raw: bytes | None = None
    rcode: int | None = None
    answers: list[dict[str, Any]] = []
    try:
        async with asyncio.timeout(timeout):
            if ep.transport == "doq":
                raw = await _doq_lookup(ep, query, out, t_zero=t_zero, ca_file=ca_file)
            else:
                raw = await _connected_lookup(
                    ep, query, out, timeout=timeout, t_zero=t_zero, ca_file=ca_file
                )
        reply = dns.message.from_wire(raw)
        if not query.is_response(reply):
            raise _RoundTripError(F.DNS_SERVER_MISBEHAVING)
        rcode = int(reply.rcode())
        answers = answers_of(reply)
        out.addrs = _addrs_of(answers, query_type)
        out.failure = _failure_of(rcode, out.addrs)
    except _RoundTripError as exc:
        out.failure = exc.failure
        out.failed_operation = out.failed_operation or OP_ROUND_TRIP
    except TimeoutError as exc:
        out.failure = failure_from_exception(exc)
        out.failed_operation = _step_in_progress(out, ep, t0, since(t_zero))
    except dns.exception.DNSException as exc:
        out.failure = F.DNS_SERVER_MISBEHAVING if raw is not None else failure_from_exception(exc)
        out.failed_operation = OP_ROUND_TRIP
    out.queries.append(
        _query_record(
            ep,
            domain,
            query_type,
            failure=out.failure,
            t0=t0,
            t=since(t_zero),
            raw=raw,
            rcode=rcode,
            answers=answers,
            addrs=out.addrs,
        )
    )
    return out


async def _doq_lookup(
    ep: Endpoint,
    query: dns.message.Message,
    out: EndpointLookup,
    *,
    t_zero: float,
    ca_file: str | None,
) -> bytes:
    """RFC 9250: a QUIC connection with ALPN "doq", the query on a new bidirectional stream
    with a two-byte length, the stream's end after it; the answer framed alike."""
    from aioquic.asyncio.client import connect
    from aioquic.quic.configuration import QuicConfiguration

    name = ep.server_name or ep.ip
    config = QuicConfiguration(is_client=True, alpn_protocols=[DOQ_ALPN], server_name=name)
    if ca_file:
        config.load_verify_locations(cafile=ca_file)
    result = TLSResult(address=ep.address, server_name=name, failure=None, t0=since(t_zero), t=0)
    out.network_events.append(_event(t_zero, "quic_handshake_start"))
    try:
        async with connect(ep.ip, ep.port, configuration=config) as client:
            result.t = since(t_zero)
            result.tls_version, result.negotiated_protocol = "TLSv1.3", DOQ_ALPN
            out.quic_handshakes.append(tls_record(result, no_tls_verify=False))
            out.network_events.append(_event(t_zero, "quic_handshake_done"))
            out.network_events.append(_event(t_zero, "dns_round_trip_start"))
            try:
                reader, writer = await client.create_stream()
                wire = query.to_wire()
                writer.write(struct.pack("!H", len(wire)) + wire)
                writer.write_eof()
                (length,) = struct.unpack("!H", await reader.readexactly(2))
                raw = await reader.readexactly(length)
            except (OSError, EOFError, asyncio.IncompleteReadError) as exc:
                failure = failure_from_exception(exc)
                out.failed_operation = OP_ROUND_TRIP
                out.network_events.append(_event(t_zero, "dns_round_trip_done", failure))
                raise _RoundTripError(failure) from exc
            out.network_events.append(_event(t_zero, "dns_round_trip_done"))
            return raw
    except ConnectionError as exc:
        if out.quic_handshakes:
            raise _RoundTripError(failure_from_exception(exc)) from exc
        # aioquic ends a failed handshake (a certificate it rejects included) with a bare
        # ConnectionError: OONI's generic word for a handshake that failed.
        result.t, result.failure = since(t_zero), F.SSL_FAILED_HANDSHAKE
        out.quic_handshakes.append(tls_record(result, no_tls_verify=False))
        out.network_events.append(_event(t_zero, "quic_handshake_done", result.failure))
        out.failed_operation = OP_QUIC
        raise _RoundTripError(result.failure) from exc


def _step_in_progress(out: EndpointLookup, ep: Endpoint, t0: float, t: float) -> str:
    """The step the lookup's deadline interrupted, given a record of its own: the deadline
    cancels the step, which then leaves none."""
    timeout = F.GENERIC_TIMEOUT_ERROR
    if ep.transport == "doq":
        if out.quic_handshakes:
            return OP_ROUND_TRIP
        name = ep.server_name or ep.ip
        result = TLSResult(address=ep.address, server_name=name, failure=timeout, t0=t0, t=t)
        out.quic_handshakes.append(tls_record(result, no_tls_verify=False))
        return OP_QUIC
    if not out.tcp_connect:
        out.tcp_connect.append(tcp_record(ep.ip, ep.port, timeout, t0, t))
        return OP_CONNECT
    events = [e["operation"] for e in out.network_events]
    if "tls_handshake_start" in events and "tls_handshake_done" not in events:
        name = ep.server_name or ep.ip
        started = next(
            e["t"] for e in out.network_events if e["operation"] == "tls_handshake_start"
        )
        result = TLSResult(address=ep.address, server_name=name, failure=timeout, t0=started, t=t)
        out.tls_handshakes.append(tls_record(result, no_tls_verify=False))
        return OP_TLS
    return OP_ROUND_TRIP


async def _udp_lookup(
    ep: Endpoint,
    domain: str,
    query_type: str,
    out: EndpointLookup,
    timeout: float,
    t_zero: float,
    listen_window: float,
) -> EndpointLookup:
    result = await resolve(
        domain,
        query_type=query_type,
        resolver=ep.address,
        transport="udp",
        timeout=timeout,
        t_zero=t_zero,
        listen_window=listen_window,
    )
    record = result.queries[0]
    record["x_responses"] = result.extra_responses
    out.queries.append(record)
    out.failure, out.addrs = result.failure, list(result.addrs)
    if result.failure is not None and not result.extra_responses:
        out.failed_operation = OP_ROUND_TRIP
    return out
