"""A source NAT on loopback: what a home router does to the probe's traffic, without root.

Connections (TCP) and datagrams (UDP) sent to the listening ports are forwarded to a target
from another loopback address (`public`, e.g. 127.0.0.9), so the server sees that address, not
the probe's, exactly as a server on the Internet sees a NATed probe's public address.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


class _UDPInside(asyncio.DatagramProtocol):
    """The listening side: one outside socket (from `public`) per inside client."""

    def __init__(self, nat: SourceNAT) -> None:
        self.nat = nat
        self.transport: asyncio.DatagramTransport | None = None
        self.outside: dict[Any, asyncio.DatagramTransport] = {}
        self.pending: set[asyncio.Task[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        task = asyncio.ensure_future(self._forward(data, addr))
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)

    async def _forward(self, data: bytes, addr: Any) -> None:
        out = self.outside.get(addr)
        if out is None:
            inside = self

            class Back(asyncio.DatagramProtocol):
                def datagram_received(self, reply: bytes, _src: Any) -> None:
                    if inside.transport is not None:
                        inside.transport.sendto(reply, addr)

            loop = asyncio.get_running_loop()
            out, _ = await loop.create_datagram_endpoint(
                Back, local_addr=(self.nat.public, 0), remote_addr=self.nat.udp_target
            )
            self.outside[addr] = out
        out.sendto(data)


class SourceNAT:
    def __init__(
        self,
        public: str,
        *,
        tcp_target: tuple[str, int] | None = None,
        udp_target: tuple[str, int] | None = None,
        listen: str = "127.0.0.1",
    ) -> None:
        self.public = public
        self.tcp_target = tcp_target
        self.udp_target = udp_target
        self.listen = listen
        self.tcp_port = 0
        self.udp_port = 0
        self._server: asyncio.Server | None = None
        self._udp: _UDPInside | None = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert self.tcp_target is not None
        up_reader, up_writer = await asyncio.open_connection(
            *self.tcp_target, local_addr=(self.public, 0)
        )
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

    async def start(self) -> None:
        if self.tcp_target is not None:
            self._server = await asyncio.start_server(self._handle, self.listen, 0)
            self.tcp_port = self._server.sockets[0].getsockname()[1]
        if self.udp_target is not None:
            loop = asyncio.get_running_loop()
            transport, protocol = await loop.create_datagram_endpoint(
                lambda: _UDPInside(self), local_addr=(self.listen, 0)
            )
            self._udp = protocol
            self.udp_port = transport.get_extra_info("sockname")[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        if self._udp is not None:
            for out in self._udp.outside.values():
                out.close()
            if self._udp.transport is not None:
                self._udp.transport.close()
