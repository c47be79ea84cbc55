"""Encrypted DNS on loopback for dnscheck: a DoT server, and censors that act on the probe only.

`DoTServer` answers DNS over TLS (RFC 7858: RFC 7766 framing inside TLS) from a zone with a
certificate from the test CA for the resolver's name, and closes a connection that stays idle
(RFC 7766 section 6.2.3 asks servers to), so a control helper's HTTP GET to it ends soon.

The censors must treat the probe and the control helper differently although both connect
to the same address from 127.0.0.1. The probe runs inside the test process and the helper in
a subprocess, so:

- `ProbeOnlyRelay` sits at the resolver's address and forwards to the real server; a
  connection whose client socket belongs to this process (its inode is one of our open fds,
  found through /proc/net/tcp) is the probe's, and is reset (SO_LINGER 0: a real RST) when its
  bytes carry a pattern (the blocked SNI in the ClientHello).
  With ``probe_upstream`` it relays the probe's connections to another server instead (a TLS
  interceptor with a certificate the probe does not trust).
- `drop_syns_of_uid` (root) adds an iptables rule that drops the SYNs of one uid to one
  endpoint; the helper runs as another uid, so only the probe's connects time out.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
import struct
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from tests.loopback.dns_server import FakeDNSServer
from tests.loopback.web import arm_reset

_SCAN_BYTES = 16 * 1024


class DoTServer(FakeDNSServer):
    """DNS over TLS only, on ``host``:``port`` (0: a free one), answering like FakeDNSServer."""

    def __init__(
        self, *args: object, tls: ssl.SSLContext, idle_timeout: float = 1.0, **kwargs: object
    ) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.tls, self.idle_timeout = tls, idle_timeout

    async def start(self) -> None:
        server = await asyncio.start_server(self._serve, self.host, self.port, ssl=self.tls)
        self.port = server.sockets[0].getsockname()[1]
        self._tcp.append(server)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                async with asyncio.timeout(self.idle_timeout):
                    (length,) = struct.unpack("!H", await reader.readexactly(2))
                    data = await reader.readexactly(length)
                replies = self._respond(data, "dot")
                if replies:
                    wire = replies[0][1]
                    writer.write(struct.pack("!H", len(wire)) + wire)
                    await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()


class DoQServer(FakeDNSServer):
    """DNS over QUIC (RFC 9250, aioquic) on ``host``:``port`` (0: a free one): each query on
    its own stream, two-byte framing, answered like FakeDNSServer."""

    def __init__(self, *args: object, cert: str, key: str, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.cert, self.key = cert, key
        self._quic: Any = None
        self._answering: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        from aioquic.asyncio import serve
        from aioquic.quic.configuration import QuicConfiguration

        config = QuicConfiguration(is_client=False, alpn_protocols=["doq"])
        config.load_cert_chain(self.cert, self.key)
        if not self.port:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
                probe.bind((self.host, 0))
                self.port = probe.getsockname()[1]
        self._quic = await serve(
            self.host, self.port, configuration=config, stream_handler=self._stream
        )

    def _stream(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.ensure_future(self._answer_stream(reader, writer))
        self._answering.add(task)
        task.add_done_callback(self._answering.discard)

    async def _answer_stream(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            (length,) = struct.unpack("!H", await reader.readexactly(2))
            replies = self._respond(await reader.readexactly(length), "doq")
            if replies:
                wire = replies[0][1]
                writer.write(struct.pack("!H", len(wire)) + wire)
            writer.write_eof()

    async def stop(self) -> None:
        if self._quic is not None:
            self._quic.close()


def _own_socket_inodes() -> set[str]:
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    return inodes


def _hex_endpoint(ip: str, port: int) -> str:
    """An IPv4 endpoint as /proc/net/tcp writes it (little-endian address, hex port)."""
    return f"{socket.inet_aton(ip)[::-1].hex().upper()}:{port:04X}"


def is_own_connection(peer: tuple[str, int], local: tuple[str, int]) -> bool:
    """Whether the client end of this TCP connection (``peer`` as the server sees it) is a
    socket of this process."""
    want_local, want_remote = _hex_endpoint(*peer), _hex_endpoint(*local)
    with open("/proc/net/tcp") as table:
        next(table)
        for line in table:
            fields = line.split()
            if fields[1] == want_local and fields[2] == want_remote:
                return fields[9] in _own_socket_inodes()
    return False


@dataclass
class ProbeOnlyRelay:
    """Listens on ``host``:``port`` (0: free) and relays to ``upstream``; resets this process's
    connections whose first bytes contain one of ``patterns``, or (``probe_upstream``) relays
    them to another server (an interceptor)."""

    host: str
    upstream: tuple[str, int]
    patterns: list[bytes]
    port: int = 0
    probe_upstream: tuple[str, int] | None = None
    resets: int = 0
    _server: asyncio.Server | None = field(default=None, repr=False)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._relay, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        probe = is_own_connection(
            writer.get_extra_info("peername")[:2], writer.get_extra_info("sockname")[:2]
        )
        upstream = self.probe_upstream if probe and self.probe_upstream else self.upstream
        try:
            up_reader, up_writer = await asyncio.open_connection(*upstream)
        except OSError:
            writer.close()
            return
        seen = bytearray()

        async def client_to_server() -> None:
            while data := await reader.read(65536):
                if probe and len(seen) < _SCAN_BYTES:
                    seen.extend(data)
                    if any(p in seen for p in self.patterns):
                        self.resets += 1
                        up_writer.close()
                        sock = writer.get_extra_info("socket")
                        if sock is not None:
                            arm_reset(sock)
                        writer.transport.abort()
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


@contextlib.contextmanager
def drop_syns_of_uid(uid: int, ip: str, port: int) -> Iterator[None]:
    """iptables: drop the SYNs ``uid`` sends to ip:port (root only), removed on exit."""
    rule = [
        "OUTPUT",
        "-o",
        "lo",
        "-p",
        "tcp",
        "--syn",
        "-d",
        ip,
        "--dport",
        str(port),
        "-m",
        "owner",
        "--uid-owner",
        str(uid),
        "-j",
        "DROP",
    ]
    subprocess.run(["iptables", "-w", "-I", *rule], check=True)
    try:
        yield
    finally:
        subprocess.run(["iptables", "-w", "-D", *rule], check=False)
