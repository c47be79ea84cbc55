"""HTTP/HTTPS servers that behave like websites, block pages and censors.

Behaviours: "normal" (a page with a <title> for any Host, plus endpoints below),
"blockpage" (every request gets a national block page), "silent" (accept, never
answer), "reset" (reset every connection once the request arrived), "close" (read
the first bytes, then close cleanly: the client sees EOF). With
``keyword`` set, any behaviour resets the connection (SO_LINGER 0, then close) when
the keyword shows in the request or, over TLS, in the ClientHello (the SNI).

Endpoints of the normal behaviour:
  /redirect/N            302 to /redirect/N-1, /redirect/0 to /
  /redirect-to?url=U     302 to U (absolute: cross-host hops)
  /big?size=N            N bytes of text (default 2 MiB)
  /binary                bytes that are not UTF-8
  /echo                  JSON of the request line and headers as received
  /set-cookie            sets a cookie and redirects to /echo
  /status/N              an empty response with status N
  anything else          the page, titled ``title``
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import ssl
import struct
from urllib.parse import parse_qs, urlsplit

from tests.loopback.blockpage import blockpage_body
from tests.loopback.certs import TestCA

BEHAVIOURS = ("normal", "blockpage", "silent", "reset", "close")
DEFAULT_TITLE = "Censorscope Loopback Example Domain"
DEFAULT_BIG_SIZE = 2 << 20
_MAX_HEAD = 64 * 1024
_REASONS = {200: "OK", 301: "Moved Permanently", 302: "Found", 403: "Forbidden", 404: "Not Found"}


def arm_reset(sock: socket.socket) -> None:
    """Set SO_LINGER 0: the next close sends RST instead of FIN."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def reset_socket(sock: socket.socket) -> None:
    """Reset the connection now (what a censor's injected RST looks like to the client)."""
    arm_reset(sock)
    sock.close()


def closed_port(host: str = "127.0.0.1") -> int:
    """A port on ``host`` with nothing listening (connection refused)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


async def _wait_readable(sock: socket.socket, timeout: float) -> None:
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()

    def ready() -> None:
        if not fut.done():
            fut.set_result(None)

    loop.add_reader(sock.fileno(), ready)
    try:
        await asyncio.wait_for(fut, timeout)
    finally:
        loop.remove_reader(sock.fileno())


class WebServer:
    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        ca: TestCA | None = None,
        behaviour: str = "normal",
        keyword: str | None = None,
        title: str = DEFAULT_TITLE,
        cert_hosts: list[str] | None = None,
        blockpage_status: int = 200,
        paragraphs: int = 0,
        alt_svc: str = "",
    ) -> None:
        """``ca`` makes it HTTPS; ``cert_hosts`` pins the certificate to those names
        (e.g. a wrong name) instead of issuing one for whatever SNI arrives; ``paragraphs``
        lengthens the site's page with that many paragraphs of text."""
        if behaviour not in BEHAVIOURS:
            raise ValueError(f"behaviour must be one of {BEHAVIOURS}")
        self.host, self.port = host, port
        self.behaviour, self.title = behaviour, title
        self.keyword = keyword.encode() if keyword else None
        self.ssl_context = ca.server_context(cert_hosts) if ca is not None else None
        self.blockpage_status = blockpage_status
        self.paragraphs = paragraphs
        self.alt_svc = alt_svc  # an Alt-Svc header on every response (HTTP/3 discovery)
        self.requests: list[dict[str, object]] = []  # what each request looked like
        self._sock: socket.socket | None = None
        self._accept_task: asyncio.Task[None] | None = None
        self._conns: set[asyncio.Task[None]] = set()
        self._held: list[socket.socket] = []

    @property
    def scheme(self) -> str:
        return "https" if self.ssl_context else "http"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def url(self, path: str = "/", host: str | None = None) -> str:
        return f"{self.scheme}://{host or self.host}:{self.port}{path}"

    async def start(self) -> None:
        sock = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        sock.listen(512)
        sock.setblocking(False)
        self._sock, self.port = sock, sock.getsockname()[1]
        self._accept_task = asyncio.create_task(self._accept_loop())

    async def stop(self) -> None:
        if self._accept_task:
            self._accept_task.cancel()
        for task in list(self._conns):
            task.cancel()
        for s in self._held:
            s.close()
        if self._sock:
            self._sock.close()

    async def _accept_loop(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._sock is not None
        while True:
            conn, _ = await loop.sock_accept(self._sock)
            task = asyncio.create_task(self._handle(conn))
            self._conns.add(task)
            task.add_done_callback(self._conns.discard)

    async def _handle(self, conn: socket.socket) -> None:
        conn.setblocking(False)
        if self.behaviour == "silent":
            self._held.append(conn)  # never read, never answer, close at stop()
            return
        try:
            if self.behaviour == "close":
                await _wait_readable(conn, 10)
                conn.recv(65536)  # nothing left unread, so close() sends FIN, not RST
                conn.close()
                return
            if self.ssl_context is not None and self.keyword is not None:
                await _wait_readable(conn, 10)
                hello = conn.recv(16384, socket.MSG_PEEK)
                if self.keyword in hello:
                    reset_socket(conn)
                    return
            await self._serve(conn)
        except (OSError, ssl.SSLError, asyncio.IncompleteReadError, TimeoutError, ValueError):
            conn.close()

    async def _serve(self, conn: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=_MAX_HEAD)
        protocol = asyncio.StreamReaderProtocol(reader)
        if self.ssl_context is not None:
            transport, _ = await loop.connect_accepted_socket(
                lambda: protocol, conn, ssl=self.ssl_context, ssl_handshake_timeout=10
            )
        else:
            transport, _ = await loop.connect_accepted_socket(lambda: protocol, conn)
        writer = asyncio.StreamWriter(transport, protocol, reader, loop)
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            if self.behaviour == "reset" or (self.keyword and self.keyword in head):
                arm_reset(conn)
                transport.abort()
                return
            status, headers, body = self._route(head)
            lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}"]
            lines += [f"{k}: {v}" for k, v in headers]
            lines += [f"Alt-Svc: {self.alt_svc}"] if self.alt_svc else []
            lines += [f"Content-Length: {len(body)}", "Connection: close", "", ""]
            writer.write("\r\n".join(lines).encode("latin-1") + body)
            await writer.drain()
        finally:
            writer.close()

    def _route(self, head: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        text = head.decode("latin-1")
        request_line, *header_lines = text.split("\r\n")
        method, target, _version = request_line.split(" ", 2)
        headers = [tuple(h.split(":", 1)) for h in header_lines if ":" in h]
        pairs = [(k.strip(), v.strip()) for k, v in headers]
        host = next((v for k, v in pairs if k.lower() == "host"), "")
        self.requests.append({"method": method, "target": target, "headers": pairs})
        html = [("Content-Type", "text/html; charset=utf-8"), ("Server", "censorscope-loopback")]
        if self.behaviour == "blockpage":
            return self.blockpage_status, html, blockpage_body()
        parts = urlsplit(target)
        path, query = parts.path, parse_qs(parts.query)
        if path.startswith("/redirect/"):
            n = int(path.rsplit("/", 1)[1] or 0)
            return 302, [*html, ("Location", f"/redirect/{n - 1}" if n > 0 else "/")], b""
        if path == "/redirect-to":
            return 302, [*html, ("Location", query.get("url", ["/"])[0])], b""
        if path == "/big":
            size = int(query.get("size", [str(DEFAULT_BIG_SIZE)])[0])
            return 200, [("Content-Type", "text/plain")], b"a" * size
        if path == "/binary":
            return 200, [("Content-Type", "application/octet-stream")], bytes(range(256)) * 4
        if path == "/echo":
            body = json.dumps({"method": method, "target": target, "headers": pairs}).encode()
            return 200, [("Content-Type", "application/json")], body
        if path == "/set-cookie":
            return 302, [("Set-Cookie", "probe=yes; Path=/"), ("Location", "/echo")], b""
        if path.startswith("/status/"):
            return int(path.rsplit("/", 1)[1]), html, b""
        page = (
            f"<!DOCTYPE html><html><head><title>{self.title}</title></head>"
            f"<body><h1>{self.title}</h1><p>Served for host {host}.</p>"
            + "".join(
                f"<p>Story {i}: the council met on day {i} and discussed item {i * 7}.</p>"
                for i in range(self.paragraphs)
            )
            + "</body></html>"
        )
        return 200, html, page.encode()
