"""A keyword censor on loopback: a TCP relay that resets connections carrying a keyword.

It listens on `listen_host` at the same ports as the helper on `upstream_host` and copies bytes
both ways. When the client's bytes (HTTP request or TLS ClientHello, whose SNI is plaintext)
contain a keyword pattern, it resets the client connection (SO_LINGER 0: a real RST) and, with
`residual` > 0, resets every new connection of that (client, server, port) triple for that many
seconds, as the GFW does. Patterns are bytes as they appear on the wire (UTF-8,
percent-encoded, IDNA); `patterns_for` makes them from words. Also runnable from a test as
`run_helper`, the helper app under uvicorn with echo ports and relay.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import quote

import dns.message
import dns.rrset
import uvicorn

from backend.helper import DNSZoneConfig, EchoConfig, HelperConfig, RelayConfig, create_app
from tests.loopback.blockpage import blockpage_body
from tests.loopback.web import arm_reset

_SCAN_BYTES = 64 * 1024


def patterns_for(words: list[str]) -> list[bytes]:
    """Every wire form of each word a censor would match."""
    from probes.nettests.keyword_placements import dns_label

    out: set[bytes] = set()
    for word in words:
        out.add(word.encode())
        out.add(quote(word, safe="").encode())
        out.add(dns_label(word).encode())
    return sorted(out)


@dataclass
class KeywordCensor:
    listen_host: str
    upstream_host: str
    ports: list[int]
    patterns: list[bytes]
    residual: float = 0.0
    dns_port: int | None = None  # also relay DNS over UDP, forging answers for keywords
    action: str = "reset"  # or "blockpage": answer a national block page instead
    triggers: int = 0
    residual_resets: int = 0
    _servers: list[asyncio.base_events.Server] = field(default_factory=list)
    _tainted: dict[tuple[str, int], float] = field(default_factory=dict)
    _dns: asyncio.DatagramTransport | None = None

    async def start(self) -> None:
        for port in self.ports:
            handler = functools.partial(self._relay, port=port)
            server = await asyncio.start_server(handler, self.listen_host, port)
            self._servers.append(server)
        if self.dns_port is not None:
            loop = asyncio.get_running_loop()
            self._dns, _ = await loop.create_datagram_endpoint(
                lambda: _DNSRelay(self), local_addr=(self.listen_host, self.dns_port)
            )

    async def stop(self) -> None:
        for server in self._servers:
            server.close()
        self._servers.clear()
        if self._dns is not None:
            self._dns.close()

    def _reset(self, writer: asyncio.StreamWriter) -> None:
        """Close with SO_LINGER 0: the client gets a RST, as from an injecting censor."""
        sock = writer.get_extra_info("socket")
        if sock is not None:
            arm_reset(sock)
        writer.transport.abort()

    async def _relay(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, port: int
    ) -> None:
        client = writer.get_extra_info("peername")[0]
        key = (client, port)
        if self._tainted.get(key, 0) > time.monotonic():
            self.residual_resets += 1
            self._reset(writer)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(self.upstream_host, port)
        except OSError:
            writer.close()
            return
        seen = bytearray()

        async def client_to_server() -> None:
            while data := await reader.read(65536):
                if len(seen) < _SCAN_BYTES:
                    seen.extend(data)
                    if any(p in seen for p in self.patterns):
                        self.triggers += 1
                        if self.residual > 0:
                            self._tainted[key] = time.monotonic() + self.residual
                        up_writer.close()
                        if self.action == "blockpage":
                            writer.write(_blockpage_response())
                            await writer.drain()
                            writer.close()
                        else:
                            self._reset(writer)
                        return
                up_writer.write(data)
                await up_writer.drain()
            up_writer.write_eof()

        async def server_to_client() -> None:
            while data := await up_reader.read(65536):
                writer.write(data)
                await writer.drain()
            writer.close()

        with contextlib.suppress(OSError, ConnectionError, RuntimeError):
            await asyncio.gather(client_to_server(), server_to_client())
        with contextlib.suppress(OSError, RuntimeError):
            up_writer.close()
            writer.close()


def _blockpage_response() -> bytes:
    body = blockpage_body()
    head = (
        "HTTP/1.1 403 Forbidden\r\nContent-Type: text/html; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


# What the GFW's injected answers look like: an address of someone else (here TEST-NET-3).
FORGED_ANSWER = "203.0.113.77"


class _DNSRelay(asyncio.DatagramProtocol):
    """Forwards DNS queries upstream; answers a query naming a keyword itself, forged."""

    def __init__(self, censor: KeywordCensor) -> None:
        self.censor = censor
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if any(p in data.lower() for p in self.censor.patterns):
            self.censor.triggers += 1
            query = dns.message.from_wire(data)
            reply = dns.message.make_response(query)
            reply.answer.append(
                dns.rrset.from_text(query.question[0].name, 60, "IN", "A", FORGED_ANSWER)
            )
            assert self.transport is not None
            self.transport.sendto(reply.to_wire(), addr)
            return
        asyncio.get_running_loop().create_task(self._forward(data, addr))

    async def _forward(self, data: bytes, addr: tuple[str, int]) -> None:
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[bytes] = loop.create_future()

        class Upstream(asyncio.DatagramProtocol):
            def datagram_received(self, reply: bytes, _addr: object) -> None:
                if not answer.done():
                    answer.set_result(reply)

        assert self.censor.dns_port is not None
        transport, _ = await loop.create_datagram_endpoint(
            Upstream, remote_addr=(self.censor.upstream_host, self.censor.dns_port)
        )
        try:
            transport.sendto(data)
            reply = await asyncio.wait_for(answer, 5)
            if self.transport is not None:
                self.transport.sendto(reply, addr)
        except TimeoutError:
            pass
        finally:
            transport.close()


@contextlib.contextmanager
def run_helper(
    host: str,
    *,
    echo: EchoConfig | None = None,
    relay: RelayConfig | None = None,
    config: HelperConfig | None = None,
    dns_zone: DNSZoneConfig | None = None,
) -> Iterator[tuple[str, int]]:
    """The helper app under a real uvicorn on `host`; yields (base URL, port)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((host, 0))
    sock.listen(64)
    app = create_app(
        config or HelperConfig(allow_private=True), echo=echo, relay=relay, dns_zone=dns_zone
    )
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    port = sock.getsockname()[1]
    try:
        yield f"http://{host}:{port}/", port
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
