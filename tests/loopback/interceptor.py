"""A TLS server that re-signs some connections with an "interceptor" CA, as a middlebox does.

Interception on a real network depends on the path: the censored vantage meets the middlebox,
the control helper does not. On loopback both reach the same socket, so the server tells them
apart by the ClientHello: the helper offers ALPN ``http/1.1`` (as oohelperd does), while the
probe's tls_interception handshake offers no ALPN. A connection whose SNI is in ``intercept``
and that offers no ``http/1.1`` gets a certificate from ``interceptor``; every other one gets the
genuine certificate from ``real``. Either way the handshake is real TLS.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl

from tests.loopback.certs import TestCA


class InterceptingTLSServer:
    def __init__(
        self, host: str, port: int, *, real: TestCA, interceptor: TestCA, intercept: list[str]
    ) -> None:
        self.host, self.port = host, port
        self._real = real.server_context()
        self._fake = interceptor.server_context()
        self.intercept = [name.lower().encode() for name in intercept]
        self.intercepted = 0  # connections served with the interceptor's certificate
        self._sock: socket.socket | None = None
        self._task: asyncio.Task[None] | None = None
        self._conns: set[asyncio.Task[None]] = set()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    async def start(self) -> None:
        sock = socket.socket(socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        sock.listen(128)
        sock.setblocking(False)
        self._sock, self.port = sock, sock.getsockname()[1]
        self._task = asyncio.create_task(self._accept())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
        for task in list(self._conns):
            task.cancel()
        if self._sock:
            self._sock.close()

    async def _accept(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._sock is not None
        while True:
            conn, _ = await loop.sock_accept(self._sock)
            task = asyncio.create_task(self._handle(conn))
            self._conns.add(task)
            task.add_done_callback(self._conns.discard)

    def _context(self, hello: bytes) -> ssl.SSLContext:
        lowered = hello.lower()
        hit = any(name in lowered for name in self.intercept) and b"http/1.1" not in hello
        if hit:
            self.intercepted += 1
            return self._fake
        return self._real

    async def _handle(self, conn: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        conn.setblocking(False)
        try:
            hello = b""
            for _ in range(50):  # the whole ClientHello, without consuming it
                await asyncio.sleep(0.005)
                with contextlib.suppress(BlockingIOError):
                    hello = conn.recv(16384, socket.MSG_PEEK)
                if len(hello) >= 5 and len(hello) >= 5 + int.from_bytes(hello[3:5], "big"):
                    break
            protocol = asyncio.Protocol()
            transport, _ = await loop.connect_accepted_socket(
                lambda: protocol, conn, ssl=self._context(hello), ssl_handshake_timeout=5
            )
            await asyncio.sleep(0.5)  # let the client finish reading the handshake
            transport.close()
        except (OSError, ssl.SSLError, TimeoutError, ConnectionError):
            conn.close()
