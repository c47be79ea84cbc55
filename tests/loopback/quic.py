"""QUIC on loopback: an aioquic HTTP/3 server, and a censoring UDP relay in front of it.

The relay reads each client Initial with the lab censor's own code (lab.quic_censor, which
decrypts it with lab.quic_initial) and drops the flow residually for blocked SNIs, per 4-tuple
("flow") or per (client, server, port) triple ("triple"), as the lab's censor router does; a
relay with ``drop_all`` drops every datagram (QUIC blocked whatever the name, or no server).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aioquic.asyncio import serve
from aioquic.h3.connection import H3_ALPN
from aioquic.quic.configuration import QuicConfiguration

from lab.quic_censor import QuicFilter
from lab.quic_server import H3Site
from tests.loopback.certs import TestCA

PAGE = b"<html><head><title>quic site</title></head><body>hello over h3</body></html>"


class QuicSite:
    """An HTTP/3 server on host:port (0: a free one) with a certificate for ``names``."""

    def __init__(self, host: str, ca: TestCA, names: list[str], port: int = 0) -> None:
        self.host, self.port, self.ca, self.names = host, port, ca, names
        self._server: Any = None

    async def start(self) -> None:
        leaf = self.ca.ca.issue_cert(*self.names)
        pem = self.ca.directory / f"quic-{self.names[0]}.pem"
        key = self.ca.directory / f"quic-{self.names[0]}-key.pem"
        leaf.cert_chain_pems[0].write_to_path(str(pem))
        leaf.private_key_pem.write_to_path(str(key))
        config = QuicConfiguration(is_client=False, alpn_protocols=[*H3_ALPN])
        config.load_cert_chain(pem, key)
        self._server = await serve(
            self.host,
            self.port,
            configuration=config,
            create_protocol=lambda *a, **kw: H3Site(*a, page=PAGE, **kw),
        )
        self.port = self._server._transport.get_extra_info("sockname")[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()


class _Upstream(asyncio.DatagramProtocol):
    def __init__(self, relay: QuicCensorRelay, client: tuple[str, int]) -> None:
        self.relay, self.client = relay, client

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.relay.from_server(self.client, data)


class QuicCensorRelay(asyncio.DatagramProtocol):
    """UDP relay host:port -> upstream, censoring QUIC like the lab's censor."""

    def __init__(
        self,
        host: str,
        upstream: tuple[str, int],
        blocked: list[str],
        *,
        scope: str = "flow",
        residual_seconds: float = 30.0,
        drop_all: bool = False,
    ) -> None:
        self.host, self.port, self.upstream = host, 0, upstream
        self.filter = QuicFilter(set(blocked), residual_seconds, scope)
        self.drop_all = drop_all
        self.transport: Any = None
        self.links: dict[tuple[str, int], Any] = {}
        self.decisions: list[str] = []
        self.pending: dict[tuple[str, int], list[bytes]] = {}
        self.tasks: set[asyncio.Future[None]] = set()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: self, local_addr=(self.host, 0))
        self.port = transport.get_extra_info("sockname")[1]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def _flow(self, client: tuple[str, int]) -> tuple[str, int, str, int]:
        return (client[0], client[1], self.host, self.port)

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        client = (str(addr[0]), int(addr[1]))
        verdict = "drop_all" if self.drop_all else self.filter.from_client(
            self._flow(client), data, time.monotonic()
        )  # fmt: skip
        self.decisions.append(verdict)
        if verdict != "pass":
            return
        if client in self.pending:
            self.pending[client].append(data)
        elif client in self.links:
            self.links[client].sendto(data)
        else:
            self.pending[client] = [data]
            task = asyncio.ensure_future(self._open(client))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _open(self, client: tuple[str, int]) -> None:
        loop = asyncio.get_running_loop()
        link, _ = await loop.create_datagram_endpoint(
            lambda: _Upstream(self, client), remote_addr=self.upstream
        )
        self.links[client] = link
        for data in self.pending.pop(client):
            link.sendto(data)

    def from_server(self, client: tuple[str, int], data: bytes) -> None:
        if self.transport is not None and self.filter.from_server(
            self._flow(client), time.monotonic()
        ):
            self.transport.sendto(data, client)

    async def stop(self) -> None:
        for link in self.links.values():
            link.close()
        if self.transport is not None:
            self.transport.close()
