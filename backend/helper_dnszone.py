"""The helper's authoritative DNS server for a probe zone (http_keyword's `dns` placement).

Every name under the zone (e.g. `<keyword-label>.kw.example.org`) has one A record: the
configured address (the helper's). A probe asking for a name carrying a keyword therefore knows
the true answer in advance; anything else it receives was forged or altered on the way.
Names outside the zone are REFUSED: this is not an open resolver.

One name is different: `whoami.<zone>` answers with the address the query came from (A for an
IPv4 source, AAAA for IPv6). Asked through a recursive resolver, that is the resolver's egress
address: how a probe learns `resolver_ip`, as OONI's probe does with whoami.v4.powerdns.org.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
from dataclasses import dataclass
from typing import Any

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

# Short: answers are per-test facts, never worth caching long in a recursive resolver.
ZONE_TTL = 5


@dataclass(frozen=True)
class DNSZoneConfig:
    zone: str  # e.g. "kw.censorscope.test"
    answer: str  # the IPv4 address every name resolves to
    host: str = "127.0.0.1"
    port: int = 53


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, server: DNSZoneServer) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        reply = self.server.answer(data, addr[0] if isinstance(addr, tuple) else None)
        if reply is not None and self.transport is not None:
            self.transport.sendto(reply, addr)


class DNSZoneServer:
    """UDP authoritative server for one zone, on the running event loop."""

    def __init__(self, config: DNSZoneConfig) -> None:
        self.config = config
        self.origin = dns.name.from_text(config.zone)
        self.whoami = dns.name.from_text("whoami", self.origin)
        self._transport: asyncio.DatagramTransport | None = None
        self.port = config.port

    def answer(self, data: bytes, source: str | None = None) -> bytes | None:
        """The wire reply to one query from `source` (None: not a query we can parse)."""
        try:
            query = dns.message.from_wire(data)
        except Exception:  # any malformed datagram: dnspython raises many types
            return None
        if query.flags & dns.flags.QR or not query.question:
            return None
        reply = dns.message.make_response(query)
        reply.flags |= dns.flags.AA
        question = query.question[0]
        if not question.name.is_subdomain(self.origin):
            reply.set_rcode(dns.rcode.REFUSED)
            reply.flags &= ~dns.flags.AA
        elif question.name == self.whoami:
            self._whoami(reply, question.name, question.rdtype, source)
        elif question.rdtype == dns.rdatatype.A:
            reply.answer.append(
                dns.rrset.from_text(
                    question.name, ZONE_TTL, dns.rdataclass.IN, dns.rdatatype.A, self.config.answer
                )
            )
        return reply.to_wire()

    @staticmethod
    def _whoami(
        reply: dns.message.Message, name: dns.name.Name, rdtype: int, source: str | None
    ) -> None:
        """The asker's address, in the record type of its family (NOERROR, no data otherwise)."""
        if source is None:
            return
        try:
            addr = ipaddress.ip_address(source.split("%")[0])
        except ValueError:
            return
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        wanted = dns.rdatatype.A if addr.version == 4 else dns.rdatatype.AAAA
        if rdtype == wanted:
            reply.answer.append(dns.rrset.from_text(name, 0, dns.rdataclass.IN, wanted, str(addr)))

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Protocol(self), local_addr=(self.config.host, self.config.port)
        )
        self._transport = transport
        self.port = transport.get_extra_info("sockname")[1]

    async def stop(self) -> None:
        if self._transport is not None:
            with contextlib.suppress(Exception):
                self._transport.close()
            self._transport = None

    def info(self) -> dict[str, Any]:
        return {
            "dns_zone": self.config.zone,
            "dns_port": self.port,
            "dns_answer": self.config.answer,
        }
