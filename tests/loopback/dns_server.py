"""A fake DNS server (UDP + TCP, optional DoT) whose answers a test controls.

Modes reproduce what censors do to DNS: lie, answer NXDOMAIN, answer bogons, stay
silent, or *inject*: several forged responses race the real one (sent before it,
or after it with a delay). A ``handler`` may replace the modes entirely and return
any list of (delay, Message or raw bytes) for a query, including none.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
import struct
from collections.abc import Callable, Iterable
from typing import Any

import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset

MODES = (
    "truthful",
    "lying",
    "nxdomain",
    "bogon",
    "inject_before",
    "inject_after",
    "silent",
    "servfail",
    "refused",
)
DEFAULT_LIES = {"*": ["1.2.3.4", "2001:4860::1234"]}
BOGON_ANSWERS = ["10.10.34.34", "fd00::34"]  # 10.10.34.34: Iran's well-known injected bogon

Reply = tuple[float, "dns.message.Message | bytes"]
Handler = Callable[[dns.message.Message], list[Reply]]


def _norm(name: str) -> str:
    return name.lower().rstrip(".")


class FakeDNSServer:
    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        zone: dict[str, list[str]] | None = None,
        mode: str = "truthful",
        *,
        lies: dict[str, list[str]] | None = None,
        targets: Iterable[str] | None = None,
        nxdomain: Iterable[str] = (),
        inject_count: int = 2,
        inject_delay: float = 0.05,
        ttl: int = 60,
        handler: Handler | None = None,
        dot_context: ssl.SSLContext | None = None,
    ) -> None:
        """``targets``: names (and their subdomains) the mode applies to; None means all.

        ``nxdomain`` names always get NXDOMAIN; names outside ``zone`` get NXDOMAIN when
        answered truthfully. ``dot_context`` (server side) also serves DNS over TLS.
        """
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        self.host, self.port = host, port
        self.zone = {_norm(k): list(v) for k, v in (zone or {}).items()}
        self.mode = mode
        self.lies = {_norm(k) if k != "*" else k: v for k, v in (lies or DEFAULT_LIES).items()}
        self.targets = None if targets is None else {_norm(t) for t in targets}
        self.nxdomain = {_norm(n) for n in nxdomain}
        self.inject_count, self.inject_delay, self.ttl = inject_count, inject_delay, ttl
        self.handler = handler
        self.dot_context = dot_context
        self.dot_port: int | None = None
        self.log: list[dict[str, Any]] = []  # every query received: name, type, transport
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: list[asyncio.Server] = []

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    # -- answering ---------------------------------------------------------------------------
    def _affected(self, name: str) -> bool:
        if self.targets is None:
            return True
        return any(name == t or name.endswith("." + t) for t in self.targets)

    def _answer(self, query: dns.message.Message, ips: list[str] | None) -> dns.message.Message:
        """A response with ``ips`` of the queried family; None means NXDOMAIN."""
        resp = dns.message.make_response(query)
        if ips is None:
            resp.set_rcode(dns.rcode.NXDOMAIN)
            return resp
        q = query.question[0]
        want = 6 if q.rdtype == dns.rdatatype.AAAA else 4
        if q.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
            picked = [ip for ip in ips if ipaddress.ip_address(ip).version == want]
            if picked:
                rdtype = dns.rdatatype.to_text(q.rdtype)
                resp.answer.append(dns.rrset.from_text_list(q.name, self.ttl, "IN", rdtype, picked))
        return resp

    def _lie_for(self, name: str) -> list[str]:
        return self.lies.get(name, self.lies.get("*", DEFAULT_LIES["*"]))

    def plan(self, query: dns.message.Message) -> list[Reply]:
        """The responses to send for ``query``: (delay in seconds, message or bytes)."""
        if self.handler is not None:
            return self.handler(query)
        name = _norm(query.question[0].name.to_text())
        truth = self._answer(query, None if name in self.nxdomain else self.zone.get(name))
        if name in self.nxdomain or not self._affected(name) or self.mode == "truthful":
            return [(0.0, truth)]
        if self.mode == "silent":
            return []
        if self.mode in ("servfail", "refused"):
            resp = dns.message.make_response(query)
            resp.set_rcode(dns.rcode.SERVFAIL if self.mode == "servfail" else dns.rcode.REFUSED)
            return [(0.0, resp)]
        if self.mode == "nxdomain":
            return [(0.0, self._answer(query, None))]
        if self.mode == "bogon":
            return [(0.0, self._answer(query, BOGON_ANSWERS))]
        lie = self._answer(query, self._lie_for(name))
        if self.mode == "lying":
            return [(0.0, lie)]
        forged: list[Reply] = [(0.0, lie)] * self.inject_count
        if self.mode == "inject_before":
            return [*forged, (self.inject_delay, truth)]
        late: list[Reply] = [(self.inject_delay, lie)] * self.inject_count
        return [(0.0, truth), *late]

    def _respond(self, data: bytes, transport: str) -> list[tuple[float, bytes]]:
        try:
            query = dns.message.from_wire(data)
        except Exception:  # garbage: a real server would drop it too
            return []
        if not query.question:
            return []
        q = query.question[0]
        self.log.append(
            {
                "name": _norm(q.name.to_text()),
                "type": dns.rdatatype.to_text(q.rdtype),
                "transport": transport,
            }
        )
        out: list[tuple[float, bytes]] = []
        for delay, msg in self.plan(query):
            # Zone order, not dnspython's default shuffle: tests decide which address comes first.
            out.append((delay, msg if isinstance(msg, bytes) else msg.to_wire(want_shuffle=False)))
        return out

    # -- transports --------------------------------------------------------------------------
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        server = self

        class _UDP(asyncio.DatagramProtocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                self.transport = transport

            def datagram_received(self, data: bytes, addr: Any) -> None:
                elapsed = 0.0
                for delay, wire in server._respond(data, "udp"):
                    elapsed += delay
                    if elapsed <= 0:
                        self.transport.sendto(wire, addr)  # type: ignore[attr-defined]
                    else:
                        loop.call_later(elapsed, self._send, wire, addr)

            def _send(self, wire: bytes, addr: Any) -> None:
                if not self.transport.is_closing():
                    self.transport.sendto(wire, addr)  # type: ignore[attr-defined]

        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        for _attempt in range(20):  # TCP and UDP must share the port; retry on a clash
            transport, _ = await loop.create_datagram_endpoint(
                _UDP, local_addr=(self.host, self.port), family=family
            )
            port = transport.get_extra_info("sockname")[1]
            try:
                tcp = await asyncio.start_server(self._serve_stream, self.host, port)
            except OSError:
                transport.close()
                if self.port:
                    raise
                continue
            self._udp, self.port = transport, port
            self._tcp.append(tcp)
            break
        else:
            raise OSError("could not bind UDP and TCP on the same port")
        if self.dot_context is not None:
            dot = await asyncio.start_server(self._serve_dot, self.host, 0, ssl=self.dot_context)
            self.dot_port = dot.sockets[0].getsockname()[1]
            self._tcp.append(dot)

    async def _serve_dot(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self._serve_stream(reader, writer, transport="dot")

    async def _serve_stream(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, transport: str = "tcp"
    ) -> None:
        """DNS over TCP (RFC 7766 framing): one reply per query, the first planned one."""
        try:
            while True:
                (length,) = struct.unpack("!H", await reader.readexactly(2))
                replies = self._respond(await reader.readexactly(length), transport)
                if not replies:
                    continue
                wire = replies[0][1]
                writer.write(struct.pack("!H", len(wire)) + wire)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        if self._udp is not None:
            self._udp.close()
        for srv in self._tcp:
            srv.close()
            await srv.wait_closed()
        self._tcp.clear()
