"""A censor on loopback for ech_check: a TCP relay in front of a real TLS server that reads each
ClientHello and, when it carries the ECH extension (0xfe0d) with an outer SNI it blocks, drops
the connection silently (TSPU-style), resets it, or closes it; everything else is relayed.

The ClientHello is parsed by the lab's censor code (lab.matching), not by the probe's builder.
Every hello it saw is kept in ``hellos`` so tests can open the sealed ECH payload.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct

from lab.matching import ECH_EXTENSION, tls_extensions, tls_hello_complete, tls_sni

ACTIONS = ("drop", "reset", "eof")


class ECHCensorRelay:
    def __init__(
        self,
        host: str,
        upstream: tuple[str, int],
        blocked_outer_sni: set[str],
        action: str = "drop",
    ) -> None:
        if action not in ACTIONS:
            raise ValueError(f"action must be one of {ACTIONS}")
        self.host, self.upstream = host, upstream
        self.blocked = {s.lower() for s in blocked_outer_sni}
        self.action = action
        self.port = 0
        self.hellos: list[bytes] = []
        self.decisions: list[tuple[str | None, bool, str]] = []  # (sni, has ECH, what was done)
        self._server: asyncio.Server | None = None
        self._held: list[asyncio.StreamWriter] = []

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        for writer in self._held:
            writer.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = b""
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while not tls_hello_complete(data) and len(data) < 16384:
                chunk = await reader.read(4096)
                if not chunk:
                    break
                data += chunk
        self.hellos.append(data)
        sni = tls_sni(data)
        has_ech = ECH_EXTENSION in (tls_extensions(data) or [])
        if has_ech and sni is not None and sni in self.blocked:
            self.decisions.append((sni, True, self.action))
            await self._censor(reader, writer)
            return
        self.decisions.append((sni, has_ech, "relay"))
        await self._relay(data, reader, writer)

    async def _censor(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.action == "drop":
            # Swallow whatever the client sends (its retransmissions are acknowledged by the
            # kernel here, unlike an in-path drop, but the client sees nothing come back).
            self._held.append(writer)
            with contextlib.suppress(OSError):
                while await reader.read(4096):
                    pass
            writer.close()
            return
        sock = writer.get_extra_info("socket")
        if self.action == "reset" and sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.close()

    async def _relay(
        self, first: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.close()
            return
        up_writer.write(first)

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while chunk := await src.read(65536):
                    dst.write(chunk)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))
