"""QUIC and HTTP/3 on the lab sites (aioquic), for quic_sni and HTTP/3 fetches.

One aioquic server per site on UDP 443 of the site's IPv4 address: a wildcard UDP socket
would answer from whatever source address the kernel picks (not the AnyIP address the client
wrote to), and aioquic has no per-SNI certificate choice, so each site's server holds its own
certificate from the lab CA (with the shared leaf key of lab.ca.LeafMaker). ALPN "h3": a GET
on a request stream is answered with the site's page (lab.servers.page_for), as over TCP. A
handshake with any SNI completes (the client decides whether it trusts the name), as on the
TCP port. IPv6 is left out (AnyIP IPv6 addresses cannot be bound one by one, docs/lab.md).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from aioquic.asyncio import QuicConnectionProtocol, serve
from aioquic.asyncio.server import QuicServer
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import ProtocolNegotiated, QuicEvent

from lab import scenario as scenario_mod
from lab.ca import LeafMaker

PORT = 443
# What the sites' HTTPS responses advertise (RFC 7838): HTTP/3 on the same host, port 443.
ALT_SVC = 'h3=":443"; ma=86400'


class H3Site(QuicConnectionProtocol):
    """Answers each HTTP/3 GET with one page."""

    def __init__(self, *args: Any, page: bytes, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.page = page
        self.h3: H3Connection | None = None

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, ProtocolNegotiated) and event.alpn_protocol in H3_ALPN:
            self.h3 = H3Connection(self._quic)
        if self.h3 is None:
            return
        for h3_event in self.h3.handle_event(event):
            if isinstance(h3_event, HeadersReceived) and h3_event.stream_ended:
                headers = [(b":status", b"200"), (b"content-type", b"text/html"),
                           (b"content-length", str(len(self.page)).encode())]  # fmt: skip
                self.h3.send_headers(h3_event.stream_id, headers)
                self.h3.send_data(h3_event.stream_id, self.page, end_stream=True)
        self.transmit()


def _factory(page: bytes) -> Callable[..., H3Site]:
    return lambda *args, **kwargs: H3Site(*args, page=page, **kwargs)


async def serve_sites(scen: scenario_mod.Scenario, state: Path) -> list[QuicServer]:
    """A QUIC server on each reachable site's IPv4 address (none unless quic_servers)."""
    if not scen.censor.quic_servers:
        return []
    from lab.servers import page_for  # lab.servers imports this module

    maker = LeafMaker(state / "ca.pem", state / "ca-key.pem")
    certs = state / "quic-certs"
    certs.mkdir(exist_ok=True)
    key_file = certs / "leaf-key.pem"
    key_file.write_bytes(maker.key_pem())
    servers = []
    for d in scen.domains:
        if d.block == "down":
            continue
        cert_file = certs / f"{d.name}.pem"
        cert_file.write_bytes(maker.leaf_pem([d.name]))
        config = QuicConfiguration(is_client=False, alpn_protocols=[*H3_ALPN])
        config.load_cert_chain(cert_file, key_file)
        servers.append(
            await serve(d.a, PORT, configuration=config, create_protocol=_factory(page_for(d)))
        )
    return servers
