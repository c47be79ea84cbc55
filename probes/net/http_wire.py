"""One HTTP/1.1 exchange on a fresh connection: our own TCP connect and TLS handshake, h11.

http.py decides what to fetch (redirects, cookies, addresses); this module carries one
request over one new connection and tells a listener of each step as it ends. The TCP
connect and the TLS handshake are the primitives the tcp_connect and tls_handshake
observations use (probes.net.tcp.open_socket, probes.net.tls.tls_channel), so a GET fails
with the same failure strings they give; h11, the HTTP/1.1 library under httpx, speaks
the protocol. Without httpx's pool, anyio streams and trace plumbing a GET costs about
half the CPU, and every web_connectivity input makes one in the probe and one in the
control helper.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import h11

from probes.net.failures import failure_from_exception
from probes.net.tcp import open_socket
from probes.net.tls import TLSChannel, tls_channel

_READ_SIZE = 65536
# Response heads larger than this are refused (httpcore's limit for h11 too).
MAX_HEAD_BYTES = 100 * 1024
# What we decode ourselves with zlib; br and zstd are never offered.
ACCEPT_ENCODING = "gzip, deflate"


class ExchangeListener(Protocol):
    """Hears of each step of an exchange as it ends (http.py makes df-008 events of them)."""

    def connected(self, failure: str | None) -> None: ...

    def tls_started(self) -> None: ...

    def tls_done(self, failure: str | None, obj: ssl.SSLObject | None) -> None: ...

    def wrote_headers(self) -> None: ...

    def first_response_byte(self) -> None: ...

    # Optional: ``received(total)`` with the bytes read from the connection so far (TLS
    # included) after each read, for a throughput curve (looked up with getattr).


@dataclass
class Exchange:
    """The response; failures are raised instead."""

    status: int | None = None
    headers: list[tuple[str, str]] = field(default_factory=list)  # as sent, original case
    body: bytes = b""
    truncated: bool = False


@dataclass
class _Wire:
    """A connected socket, with TLS on it for https."""

    sock: socket.socket
    tls: TLSChannel | None = None
    on_received: Callable[[int], None] | None = None
    received: int = 0  # cleartext connections: bytes read so far

    async def send(self, data: bytes) -> None:
        if not data:
            return
        if self.tls is not None:
            await self.tls.send(data)
        else:
            await asyncio.get_running_loop().sock_sendall(self.sock, data)

    async def recv(self) -> bytes:
        if self.tls is not None:
            return await self.tls.recv()  # it tells on_received of each read itself
        data = await asyncio.get_running_loop().sock_recv(self.sock, _READ_SIZE)
        self.received += len(data)
        if self.on_received is not None:
            self.on_received(self.received)
        return data


class _Decoder:
    """Content-Encoding gzip or deflate; the body cap counts decoded bytes, as httpx did."""

    def __init__(self, encoding: str) -> None:
        encoding = encoding.strip().lower()
        self._z: zlib._Decompress | None = None  # identity, or a coding we did not offer
        if encoding in ("gzip", "x-gzip"):
            self._z = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif encoding == "deflate":
            self._z = zlib.decompressobj()

    def feed(self, data: bytes, room: int) -> bytes:
        return data if self._z is None else self._z.decompress(data, room + 1)

    def flush(self, room: int) -> bytes:
        if self._z is None:
            return b""
        return self._z.decompress(self._z.unconsumed_tail, room + 1) + self._z.flush()


def request_head(host: str, headers: dict[str, str], body: bytes = b"") -> list[tuple[str, str]]:
    """The header list an exchange sends: Host first, then the caller's, then what httpx
    used to add (Accept-Encoding, Connection) unless the caller set them."""
    given = {name.lower() for name in headers}
    pairs = [("Host", host)]
    pairs.extend((name, value) for name, value in headers.items() if name.lower() != "host")
    if "accept-encoding" not in given:
        pairs.append(("Accept-Encoding", ACCEPT_ENCODING))
    if "connection" not in given:
        pairs.append(("Connection", "keep-alive"))
    if body and "content-length" not in given:
        pairs.append(("Content-Length", str(len(body))))
    return pairs


async def _connect(
    ip: str,
    port: int,
    sni: str | None,
    ssl_context: ssl.SSLContext | None,
    timeout: float,
    listener: ExchangeListener,
) -> _Wire:
    try:
        sock = await open_socket(ip, port, timeout)
    except BaseException as exc:
        listener.connected(failure_from_exception(exc))
        raise
    listener.connected(None)
    wire = _Wire(sock, on_received=getattr(listener, "received", None))
    if ssl_context is None:
        return wire
    listener.tls_started()
    try:
        wire.tls = await tls_channel(sock, ssl_context, sni)
    except BaseException as exc:
        sock.close()
        listener.tls_done(failure_from_exception(exc), getattr(exc, "ssl_object", None))
        raise
    listener.tls_done(None, wire.tls.obj)
    wire.tls.on_received = wire.on_received
    if wire.on_received is not None:
        wire.on_received(wire.tls.received)  # the handshake's bytes
    return wire


async def exchange(
    ip: str,
    port: int,
    *,
    method: str,
    target: str,
    head: list[tuple[str, str]],
    body: bytes = b"",
    sni: str | None = None,
    ssl_context: ssl.SSLContext | None = None,
    body_cap: int,
    timeout: float,
    listener: ExchangeListener,
) -> Exchange:
    """Connect to ip:port (TLS with ``ssl_context`` and SNI ``sni`` when a context is
    given), send one request with exactly ``head``, read the response, keeping up to
    ``body_cap`` decoded bytes of its body.

    Raises on any failure (the caller maps it to an OONI failure string) and bounds the
    whole exchange with its own deadline; ``timeout`` bounds the connect alone.
    """
    wire = await _connect(ip, port, sni, ssl_context, timeout, listener)
    try:
        return await _converse(wire, method, target, head, body, body_cap, listener)
    finally:
        wire.sock.close()


async def converse_on(
    sock: socket.socket,
    tls: TLSChannel | None,
    *,
    method: str,
    target: str,
    head: list[tuple[str, str]],
    body: bytes = b"",
    body_cap: int,
    listener: ExchangeListener,
) -> Exchange:
    """One request and its response on a connection the caller opened (and closes): for a
    measurement that records the connect and the handshake itself (DNS over HTTPS)."""
    return await _converse(_Wire(sock, tls), method, target, head, body, body_cap, listener)


async def _converse(
    wire: _Wire,
    method: str,
    target: str,
    head: list[tuple[str, str]],
    body: bytes,
    body_cap: int,
    listener: ExchangeListener,
) -> Exchange:
    conn = h11.Connection(our_role=h11.CLIENT, max_incomplete_event_size=MAX_HEAD_BYTES)
    await wire.send(conn.send(h11.Request(method=method, target=target, headers=head)) or b"")
    listener.wrote_headers()
    tail = (conn.send(h11.Data(data=body)) or b"") if body else b""
    await wire.send(tail + (conn.send(h11.EndOfMessage()) or b""))
    result = Exchange()
    decoder = _Decoder("identity")
    chunks: list[bytes] = []
    size = 0
    eof = False
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            if eof:  # h11's words for a server that closed in the middle of a message
                raise EOFError(f"the server closed the connection early: {exc}") from exc
            raise
        if event is h11.NEED_DATA:
            data = await wire.recv()
            eof = not data
            conn.receive_data(data)
        elif isinstance(event, h11.Response):
            listener.first_response_byte()
            result.status = event.status_code
            result.headers = [
                (name.decode("latin-1"), value.decode("latin-1"))
                for name, value in event.headers.raw_items()
            ]
            coding = next((v for k, v in result.headers if k.lower() == "content-encoding"), "")
            decoder = _Decoder(coding)
        elif isinstance(event, h11.Data | h11.EndOfMessage):
            room = body_cap - size
            end = isinstance(event, h11.EndOfMessage)
            piece = decoder.feed(event.data, room) if isinstance(event, h11.Data) else b""
            piece += decoder.flush(room - len(piece)) if end else b""
            if len(piece) > room:
                chunks.append(piece[:room])
                result.truncated = True
                break
            chunks.append(piece)
            size += len(piece)
            if end:
                break
        elif isinstance(event, h11.ConnectionClosed):
            if result.status is None:
                raise EOFError("the server closed the connection before its response")
            break
        # h11.InformationalResponse (1xx): the final response follows.
    result.body = b"".join(chunks)
    return result
