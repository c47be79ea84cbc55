"""One QUIC handshake as an observation: a ``quic_handshakes`` entry (df-006's form, UDP).

OONI records QUIC handshakes in ``quic_handshakes`` with the same keys as ``tls_handshakes``
(probe-cli's model.ArchivalTLSOrQUICHandshakeResult: address, server_name, alpn,
no_tls_verify, failure, negotiated_protocol, tls_version, peer_certificates, t0, t, network
"udp"). aioquic drives the connection; the socket is ours, so that each handshake goes out
from a fresh source port that we know and record (``x_source_port``): a censor that blocks a
QUIC flow residually (the GFW, Zohaib et al., USENIX Security 2025) must not see one
attempt's trigger spill into the next through a shared 4-tuple.

Failures: no handshake within the timeout is ``generic_timeout_error`` (a dropped flow gives
nothing else: UDP has no reset); a certificate aioquic rejects is ``ssl_invalid_hostname``,
``ssl_unknown_authority`` or ``ssl_invalid_certificate`` (its alert's reason); any other close
during the handshake is ``ssl_failed_handshake``; a socket error is netxlite's word for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from dataclasses import dataclass, field
from typing import Any

from aioquic.asyncio import QuicConnectionProtocol
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import ConnectionTerminated, QuicEvent

from probes.net import failures as F
from probes.net.addresses import format_host_port
from probes.net.failures import failure_from_exception
from probes.net.records import binary_data, since

H3_ALPN = ("h3",)
# TLS alert bad_certificate (42) in a QUIC CRYPTO_ERROR (0x100 + alert, RFC 9001 section 4.8).
BAD_CERTIFICATE = 0x100 + 42
CLOSE_WAIT_S = 0.2


@dataclass
class QuicResult:
    """What one handshake saw; ``record`` is its quic_handshakes entry."""

    failure: str | None
    source_port: int | None
    t0: float
    t: float
    record: dict[str, Any] = field(default_factory=dict)


class _Watcher(QuicConnectionProtocol):
    """Keeps the reason a connection was closed with (aioquic's waiter only says it was)."""

    closed: ConnectionTerminated | None = None

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, ConnectionTerminated):
            self.closed = event


def close_failure(event: ConnectionTerminated | None) -> str:
    """OONI's failure for a handshake the connection's close ended."""
    if event is None or event.error_code != BAD_CERTIFICATE:
        return F.SSL_FAILED_HANDSHAKE
    reason = event.reason_phrase.lower()
    if "doesn't match" in reason or "hostname" in reason:
        return F.SSL_INVALID_HOSTNAME
    if "issuer" in reason or "self-signed" in reason or "self signed" in reason:
        return F.SSL_UNKNOWN_AUTHORITY
    return F.SSL_INVALID_CERTIFICATE


def _collect(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()


async def close_quietly(protocol: Any, transport: Any) -> None:
    """Close a QUIC connection (CONNECTION_CLOSE, a short wait) and its datagram transport.

    A handshake we stopped waiting for leaves aioquic's waiter to fail on close: its exception
    is ours to collect, or asyncio reports it as never retrieved."""
    if protocol is not None:
        waiter = getattr(protocol, "_connected_waiter", None)
        if isinstance(waiter, asyncio.Future):
            waiter.add_done_callback(_collect)
        protocol.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CLOSE_WAIT_S):
                await protocol.wait_closed()
    if transport is not None:
        transport.close()


def peer_address(ip: str, port: int) -> tuple[Any, ...]:
    """The address as an AF_INET6 socket reports its peers, (ip, port, flowinfo, scope):
    aioquic compares it with each datagram's source to find the path, and a 2-tuple never
    matches, so an IPv6 handshake would never complete."""
    return (ip, port, 0, 0) if ":" in ip else (ip, port)


def _socket_for(ip: str) -> socket.socket:
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", 0))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def _peer_chain(quic: QuicConnection) -> list[bytes]:
    """The server's certificates (DER, leaf first) when the handshake got that far."""
    tls = getattr(quic, "tls", None)
    leaf = getattr(tls, "_peer_certificate", None)
    chain = getattr(tls, "_peer_certificate_chain", None) or []
    out = []
    for cert in [leaf, *chain]:
        if cert is not None:
            with contextlib.suppress(Exception):
                from cryptography.hazmat.primitives.serialization import Encoding

                out.append(cert.public_bytes(Encoding.DER))
    return out


async def quic_handshake(
    ip: str,
    port: int,
    server_name: str,
    *,
    timeout: float,
    t_zero: float,
    verify: bool = True,
    ca_file: str | None = None,
    alpn: tuple[str, ...] = H3_ALPN,
) -> QuicResult:
    """A QUIC v1 handshake to ip:port with ``server_name`` as SNI, from a fresh source port;
    never raises for a network failure."""
    config = QuicConfiguration(
        is_client=True, alpn_protocols=list(alpn), server_name=server_name, idle_timeout=timeout
    )
    if not verify:
        import ssl

        config.verify_mode = ssl.CERT_NONE
    elif ca_file:
        config.load_verify_locations(cafile=ca_file)
    t0 = since(t_zero)
    address = format_host_port(ip, port)
    source_port: int | None = None
    failure: str | None = None
    chain: list[bytes] = []
    negotiated: str | None = None
    protocol: _Watcher | None = None
    transport: asyncio.DatagramTransport | None = None
    try:
        sock = _socket_for(ip)
        source_port = sock.getsockname()[1]
        connection = QuicConnection(configuration=config)
        loop = asyncio.get_running_loop()
        transport, proto = await loop.create_datagram_endpoint(
            lambda: _Watcher(connection), sock=sock
        )
        protocol = proto
        try:
            async with asyncio.timeout(timeout):
                protocol.connect(peer_address(ip, port))
                await protocol.wait_connected()
        except TimeoutError:
            failure = F.GENERIC_TIMEOUT_ERROR
        except ConnectionError:
            failure = close_failure(protocol.closed)
        chain = _peer_chain(connection)
        negotiated = getattr(getattr(connection, "tls", None), "alpn_negotiated", None)
    except OSError as exc:
        failure = failure_from_exception(exc)
    finally:
        await close_quietly(protocol, transport)
    t = since(t_zero)
    record = {
        "address": address,
        "server_name": server_name,
        "alpn": list(alpn),
        "no_tls_verify": not verify,
        "failure": failure,
        "negotiated_protocol": (negotiated or "") if failure is None else "",
        "tls_version": "TLSv1.3" if failure is None else "",
        "peer_certificates": [binary_data(der) for der in chain],
        "network": "udp",
        "t0": t0,
        "t": t,
        "tags": [],
        "x_source_port": source_port,
    }
    return QuicResult(failure, source_port, t0, t, record)
