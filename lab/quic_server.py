"""QUIC and HTTP/3 on the lab sites (aioquic), for quic_sni and HTTP/3 fetches.

One aioquic server per site on UDP 443 of each of the site's addresses: a wildcard UDP socket
would answer from whatever source address the kernel picks (not the AnyIP address the client
wrote to), and aioquic has no per-SNI certificate choice, so each site's server holds its own
certificate from the lab CA (with the shared leaf key of lab.ca.LeafMaker). AnyIP IPv6
addresses are bound with IPV6_FREEBIND (they are not on an interface), so the control
helper's QUIC handshakes to a site's IPv6 address are answered as on the Internet. ALPN "h3": a GET
on a request stream is answered with the site's page (lab.servers.page_for), as over TCP. A
handshake with any SNI completes (the client decides whether it trusts the name), as on the
TCP port.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aioquic.asyncio import QuicConnectionProtocol
from aioquic.asyncio.server import QuicServer
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import ProtocolNegotiated, QuicEvent

from lab import scenario as scenario_mod
from lab.ca import LeafMaker

PORT = 443
IPV6_FREEBIND = getattr(socket, "IPV6_FREEBIND", 78)  # linux/in6.h
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


async def serve_on(ip: str, config: QuicConfiguration, page: bytes) -> QuicServer:
    """aioquic's serve() on a socket of ours (bound to an AnyIP address, IPv6 too)."""
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, IPV6_FREEBIND, 1)
        sock.bind((ip, PORT))
    except OSError:
        sock.close()
        raise
    _, server = await asyncio.get_running_loop().create_datagram_endpoint(
        lambda: QuicServer(configuration=config, create_protocol=_factory(page)), sock=sock
    )
    return server


async def serve_sites(scen: scenario_mod.Scenario, state: Path) -> list[QuicServer]:
    """A QUIC server on each reachable site's addresses (none unless quic_servers)."""
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
        servers += [await serve_on(ip, config, page_for(d)) for ip in (d.a, d.aaaa)]
    return servers
