"""A STUN server for loopback tests, built on aioice's STUN codec (aioice.stun, maintained,
RFC 5389/8489 framing), not on our client's code: Binding requests get a success response with
XOR-MAPPED-ADDRESS (the source address and port the request came from), as RFC 8489 section
12 says. Faults for the client's tests: `drop_first` requests ignored (retransmission),
`mapped_only` (an RFC 3489 server: MAPPED-ADDRESS only), `error` (a 400 error response), and
`noise` (a reply with a wrong transaction id first).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from typing import Any

from aioice import stun


class STUNServer(asyncio.DatagramProtocol):
    def __init__(
        self,
        *,
        drop_first: int = 0,
        mapped_only: bool = False,
        error: bool = False,
        noise: bool = False,
    ) -> None:
        self.drop_first = drop_first
        self.mapped_only = mapped_only
        self.error = error
        self.noise = noise
        self.requests = 0
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        with contextlib.suppress(ValueError):
            request = stun.parse_message(data)
            if (
                request.message_method != stun.Method.BINDING
                or request.message_class != stun.Class.REQUEST
            ):
                return
            self.requests += 1
            if self.requests <= self.drop_first:
                return
            assert self.transport is not None
            source = (addr[0], addr[1])
            if self.noise:
                stray = stun.Message(
                    stun.Method.BINDING, stun.Class.RESPONSE, secrets.token_bytes(12)
                )
                stray.attributes["XOR-MAPPED-ADDRESS"] = ("192.0.2.66", 1)
                self.transport.sendto(bytes(stray), addr)
            if self.error:
                reply = stun.Message(stun.Method.BINDING, stun.Class.ERROR, request.transaction_id)
                reply.attributes["ERROR-CODE"] = (400, "Bad Request")
            else:
                reply = stun.Message(
                    stun.Method.BINDING, stun.Class.RESPONSE, request.transaction_id
                )
                key = "MAPPED-ADDRESS" if self.mapped_only else "XOR-MAPPED-ADDRESS"
                reply.attributes[key] = source
                reply.attributes["SOFTWARE"] = "censorscope-test"
            self.transport.sendto(bytes(reply), addr)


async def start_stun(host: str = "127.0.0.1", **faults: Any) -> tuple[STUNServer, int]:
    """A started server on `host` (a free UDP port); close it with server.transport.close()."""
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(
        lambda: STUNServer(**faults), local_addr=(host, 0)
    )
    return protocol, transport.get_extra_info("sockname")[1]


class RunningSTUN:
    """start()/stop() wrapper for tests/loopback/runner.ServerThread."""

    def __init__(self, host: str = "127.0.0.1", **faults: Any) -> None:
        self.host = host
        self.faults = faults
        self.port = 0
        self.server: STUNServer | None = None

    async def start(self) -> None:
        self.server, self.port = await start_stun(self.host, **self.faults)

    async def stop(self) -> None:
        if self.server is not None and self.server.transport is not None:
            self.server.transport.close()
