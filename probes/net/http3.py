"""One HTTP/3 GET (RFC 9114) over QUIC with aioquic, as an observation.

web_connectivity makes it when the user asks (``--http3``) and the site's HTTPS response
advertised HTTP/3 in ``Alt-Svc`` (RFC 7838), as browsers discover h3 and as OONI's helper does
(oohelperd's ``discovered_h3_endpoint``). The QUIC handshake is recorded as quic_sni records
it (probes.net.quic: a fresh source port, the df-006 shape with ``network: "udp"``); the GET
is one request stream, its response head and up to BODY_CAP bytes of body kept.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import ProtocolNegotiated, QuicEvent

from probes.net import failures as F
from probes.net.addresses import format_host_port
from probes.net.failures import failure_from_exception
from probes.net.http import extract_title
from probes.net.https_records import https_records
from probes.net.quic import (
    _socket_for,
    _Watcher,
    close_failure,
    close_quietly,
    peer_address,
)
from probes.net.records import since

BODY_CAP = 1 << 20
H3 = "h3"
USER_AGENT = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36"


def alt_svc_h3(value: str) -> str | None:
    """The port of the first ``h3`` alternative on the same host in an Alt-Svc value (RFC 7838
    section 3; ``h3=":443"``), None when there is none. An alternative on another host is
    not followed: the fetch is a check of this address, not of a CDN elsewhere."""
    for entry in value.split(","):
        protocol, _, authority = entry.split(";")[0].strip().partition("=")
        if protocol.strip() != "h3":
            continue
        host, sep, port = authority.strip().strip('"').rpartition(":")
        if sep and not host and port.isdigit() and 0 < int(port) < 65536:
            return port
    return None


def https_rr_h3(queries: list[dict[str, Any]], default_port: int = 443) -> str | None:
    """The port of HTTP/3 from the first HTTPS record (RFC 9460, lowest SvcPriority, service
    mode) whose TargetName is the name itself (".") and whose ``alpn`` holds h3: its ``port``
    SvcParam, else ``default_port``. None when no record offers h3 on the same host."""
    import dns.rdtypes.svcbbase as svcb

    for rd in https_records(queries):
        if rd.priority == 0 or rd.target.to_text() != ".":
            continue
        alpn = rd.params.get(svcb.ParamKey.ALPN)
        ids = [i.decode("latin-1") for i in getattr(alpn, "ids", ())]
        if H3 not in ids:
            continue
        port = rd.params.get(svcb.ParamKey.PORT)
        return str(getattr(port, "port", default_port))
    return None


@dataclass
class HTTP3Result:
    failure: str | None
    quic_handshake: dict[str, Any]
    status_code: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    t0: float = 0.0
    t: float = 0.0

    def record(self, url: str, address: str) -> dict[str, Any]:
        """Ours (``x_http3_request``): what the GET saw, the handshake's record inside."""
        return {
            "url": url,
            "address": address,
            "failure": self.failure,
            "status_code": self.status_code,
            "headers": self.headers,
            "body_length": len(self.body),
            "title": extract_title(self.body) or "",
            "quic_handshake": self.quic_handshake,
            "t0": self.t0,
            "t": self.t,
        }


class _H3Client(_Watcher):
    """Collects one request's response."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.h3: H3Connection | None = None
        self.stream_id: int | None = None
        self.headers: dict[str, str] = {}
        self.status: int | None = None
        self.body = bytearray()
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def quic_event_received(self, event: QuicEvent) -> None:
        super().quic_event_received(event)
        if isinstance(event, ProtocolNegotiated) and event.alpn_protocol in H3_ALPN:
            self.h3 = H3Connection(self._quic)
        if self.h3 is None:
            return
        for h3_event in self.h3.handle_event(event):
            if getattr(h3_event, "stream_id", None) != self.stream_id:
                continue
            if isinstance(h3_event, HeadersReceived):
                for name, value in h3_event.headers:
                    key, text = name.decode("latin-1"), value.decode("latin-1")
                    if key == ":status" and text.isdigit():
                        self.status = int(text)
                    elif not key.startswith(":"):
                        self.headers.setdefault(key, text)
            elif isinstance(h3_event, DataReceived):
                self.body += h3_event.data[: max(0, BODY_CAP - len(self.body))]
            if getattr(h3_event, "stream_ended", False) and not self.done.done():
                self.done.set_result(None)

    def get(self, authority: str, path: str) -> None:
        assert self.h3 is not None
        self.stream_id = self._quic.get_next_available_stream_id()
        request = [(b":method", b"GET"), (b":scheme", b"https"),
                   (b":authority", authority.encode()), (b":path", path.encode()),
                   (b"user-agent", USER_AGENT.encode())]  # fmt: skip
        self.h3.send_headers(self.stream_id, request, end_stream=True)
        self.transmit()


async def http3_get(
    ip: str, port: int, url: str, *, timeout: float, t_zero: float, ca_file: str | None = None
) -> HTTP3Result:
    """GET ``url`` over HTTP/3 from ip:port (SNI and :authority the URL's host, verified);
    never raises for a network failure."""
    parts = urlsplit(url)
    host = parts.hostname or ip
    config = QuicConfiguration(
        is_client=True, alpn_protocols=[*H3_ALPN], server_name=host, idle_timeout=timeout
    )
    if ca_file:
        config.load_verify_locations(cafile=ca_file)
    t0 = since(t_zero)
    handshake: dict[str, Any] = {
        "address": format_host_port(ip, port), "server_name": host, "alpn": [*H3_ALPN],
        "no_tls_verify": False, "failure": None, "negotiated_protocol": "",
        "tls_version": "", "peer_certificates": [], "network": "udp", "t0": t0, "t": t0,
        "tags": [],
    }  # fmt: skip
    result = HTTP3Result(failure=None, quic_handshake=handshake, t0=t0)
    protocol: _H3Client | None = None
    transport: Any = None
    try:
        sock = _socket_for(ip)
        handshake["x_source_port"] = sock.getsockname()[1]
        connection = QuicConnection(configuration=config)
        transport, protocol = await asyncio.get_running_loop().create_datagram_endpoint(
            lambda: _H3Client(connection), sock=sock
        )
        async with asyncio.timeout(timeout):
            try:
                protocol.connect(peer_address(ip, port))
                await protocol.wait_connected()
            except ConnectionError:
                handshake["failure"] = close_failure(protocol.closed)
                raise
            handshake["t"] = since(t_zero)
            handshake["tls_version"] = "TLSv1.3"
            handshake["negotiated_protocol"] = getattr(connection.tls, "alpn_negotiated", "")
            protocol.get(parts.netloc.rpartition("@")[2], parts.path or "/")
            await protocol.done
        result.status_code, result.headers = protocol.status, protocol.headers
        result.body = bytes(protocol.body)
    except TimeoutError:
        result.failure = F.GENERIC_TIMEOUT_ERROR
    except ConnectionError:
        result.failure = handshake["failure"] or F.SSL_FAILED_HANDSHAKE
    except OSError as exc:
        result.failure = failure_from_exception(exc)
    finally:
        await close_quietly(protocol, transport)
    if handshake["t"] == t0 and result.failure is not None:
        handshake["failure"] = handshake["failure"] or result.failure
        handshake["t"] = since(t_zero)
    result.t = since(t_zero)
    return result
