"""A server of one large object over TLS (any SNI), and a relay that throttles or freezes by SNI.

The relay reads the client's ClientHello as it passes (lab.matching.tls_sni) and, for a name
in ``rates``, paces the server's bytes to that many bytes a second (a shaper); for a name in
``freeze_after``, forwards the server's first N bytes and then nothing, keeping the connection
open (Russia's TSPU freezes TLS to foreign hosting so after 16-20 KB). Other names pass as
they are. Real TCP and TLS on loopback: the probe's own code meets them.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field

from lab.matching import tls_sni
from tests.loopback.certs import TestCA
from tests.loopback.encrypted_dns import is_own_connection

OBJECT_BYTES = 1 << 20
_CHUNK = 4096


def large_object(size: int = OBJECT_BYTES) -> bytes:
    """Incompressible-looking, deterministic bytes."""
    pattern = bytes((i * 131 + 7) % 251 for i in range(4096))
    return (pattern * (size // len(pattern) + 1))[:size]


@dataclass
class ObjectServer:
    """HTTPS on ``host``:``port`` (0: free); every GET gets the object, keep-alive."""

    ca: TestCA
    host: str = "127.0.0.1"
    port: int = 0
    size: int = OBJECT_BYTES
    _server: asyncio.Server | None = field(default=None, repr=False)

    async def start(self) -> None:
        body = large_object(self.size)
        head = (
            "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, ConnectionError, asyncio.IncompleteReadError):
                while await reader.readuntil(b"\r\n\r\n"):
                    writer.write(head + body)
                    await writer.drain()
            with contextlib.suppress(Exception):
                writer.close()

        ctx = self.ca.server_context()
        self._server = await asyncio.start_server(handle, self.host, self.port, ssl=ctx)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()


@dataclass
class SniShaper:
    """Listens on ``host``:``port`` (0: free), relays to ``upstream``, shaping by SNI."""

    host: str
    upstream: tuple[str, int]
    rates: dict[str, int] = field(default_factory=dict)  # SNI -> bytes per second
    freeze_after: dict[str, int] = field(default_factory=dict)  # SNI -> bytes forwarded
    port: int = 0
    # Leave this process's own connections alone (an in-process control helper), shaping
    # only other processes' (a probe run as a command).
    spare_own: bool = False
    seen: list[str] = field(default_factory=list)
    _server: asyncio.Server | None = field(default=None, repr=False)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._relay, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.close()
            return
        spared = self.spare_own and is_own_connection(
            writer.get_extra_info("peername")[:2], writer.get_extra_info("sockname")[:2]
        )
        name: list[str | None] = [None]
        hello_seen, client_gone = asyncio.Event(), asyncio.Event()

        async def client_to_server() -> None:
            hello = bytearray()
            while data := await reader.read(65536):
                if not hello_seen.is_set():
                    hello += data
                    sni = tls_sni(bytes(hello))
                    if sni is not None or len(hello) > 16384:
                        name[0] = sni
                        self.seen.append(sni or "")
                        hello_seen.set()
                up_writer.write(data)
                await up_writer.drain()
            hello_seen.set()
            client_gone.set()
            up_writer.write_eof()

        async def server_to_client() -> None:
            await hello_seen.wait()
            key = "" if spared else name[0] or ""
            rate, freeze = self.rates.get(key), self.freeze_after.get(key)
            sent, started = 0, time.monotonic()
            while data := await up_reader.read(_CHUNK if rate else 65536):
                if freeze is not None and sent + len(data) > freeze:
                    data = data[: max(0, freeze - sent)]
                if data:
                    writer.write(data)
                    await writer.drain()
                    sent += len(data)
                if freeze is not None and sent >= freeze:
                    await client_gone.wait()  # frozen: forward nothing, close nothing
                    return
                if rate:
                    await asyncio.sleep(max(0.0, started + sent / rate - time.monotonic()))
            writer.close()

        with contextlib.suppress(OSError, ConnectionError, RuntimeError):
            await asyncio.gather(client_to_server(), server_to_client())
        with contextlib.suppress(OSError, RuntimeError):
            up_writer.close()
            writer.close()
