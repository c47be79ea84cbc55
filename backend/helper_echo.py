"""Echo endpoints of the helper: what http_keyword sends a keyword to, outside the censor.

One server per port. A connection that starts with an HTTP/1.x request line gets one JSON
answer describing the request exactly as it arrived (method, target, Host, headers, body and,
over TLS, the SNI); anything else is echoed back byte for byte until EOF. TLS ports accept any
SNI with a self-signed certificate: the probe checks the echo, not the certificate, since the
names it sends carry keywords no certificate could list. Several ports exist so the probe can
rotate away from a (client, server, port) triple a censor has tainted (residual censorship).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import ssl
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

# Requests larger than this are cut: the echo is for keyword-sized probes, not uploads.
MAX_ECHO_BYTES = 64 * 1024
# A client silent for this long is dropped so idle sockets cannot pile up.
IDLE_TIMEOUT = 10.0
_METHODS = (b"GET ", b"POST ", b"PUT ", b"HEAD ", b"OPTIONS ", b"DELETE ", b"PATCH ")


@dataclass
class EchoConfig:
    """Where the echo servers listen; port 0 picks a free port (tests)."""

    host: str = "127.0.0.1"
    tcp_ports: list[int] = field(default_factory=list)
    tls_ports: list[int] = field(default_factory=list)


# Most echo ports one helper opens (each is a listening socket; the descriptor limit is raised
# at start, backend/serving.py).
MAX_ECHO_PORTS = 2048


def parse_ports(values: list[str]) -> list[int]:
    """Ports given as numbers or ranges `LOW-HIGH` (inclusive), in order, each once."""
    ports: list[int] = []
    for value in values:
        text = str(value).strip()
        low_text, dash, high_text = text.partition("-")
        try:
            low = int(low_text)
            high = int(high_text) if dash else low
        except ValueError:
            raise ValueError(f"{text!r} is not a port or a range LOW-HIGH") from None
        if not 0 <= low <= high <= 65535 or (low == 0 and high != 0):
            raise ValueError(f"{text!r}: ports are 1-65535 (0: any free port), LOW <= HIGH")
        ports += [p for p in range(low, high + 1) if p == 0 or p not in ports]
    if len(ports) > MAX_ECHO_PORTS:
        raise ValueError(f"{len(ports)} ports: at most {MAX_ECHO_PORTS}")
    return ports


def self_signed_context(common_name: str = "censorscope-echo") -> ssl.SSLContext:
    """A server context with a fresh self-signed certificate (any SNI is accepted)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=365))
        .sign(key, hashes.SHA256())
    )
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    with tempfile.TemporaryDirectory() as tmp:
        pem = Path(tmp) / "echo.pem"
        pem.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            + cert.public_bytes(serialization.Encoding.PEM)
        )
        ctx.load_cert_chain(pem)
    return ctx


def _text(data: bytes) -> str | dict[str, str]:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return {"format": "base64", "data": base64.b64encode(data).decode("ascii")}


def describe_request(head: bytes, body: bytes, sni: str | None) -> dict[str, Any]:
    """The JSON echo of one HTTP request as received."""
    lines = head.split(b"\r\n")
    method, _, rest = lines[0].partition(b" ")
    target, _, version = rest.rpartition(b" ")
    headers = []
    for line in lines[1:]:
        if b":" in line:
            k, _, v = line.partition(b":")
            headers.append([_text(k.strip()), _text(v.strip())])
    host = next((v for k, v in headers if isinstance(k, str) and k.lower() == "host"), None)
    return {
        "method": _text(method),
        "target": _text(target),
        "version": _text(version),
        "host": host,
        "headers": headers,
        "body": _text(body),
        "sni": sni,
    }


class EchoServer:
    """The echo ports of one helper, on the running event loop."""

    def __init__(self, config: EchoConfig) -> None:
        self.config = config
        self._servers: list[asyncio.Server] = []
        self._sni: dict[int, str | None] = {}
        self.tcp_ports: list[int] = []
        self.tls_ports: list[int] = []

    def _tls_context(self) -> ssl.SSLContext:
        ctx = self_signed_context()

        def remember(obj: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
            self._sni[id(obj)] = name

        ctx.sni_callback = remember
        return ctx

    async def start(self) -> None:
        host = self.config.host
        for port in self.config.tcp_ports:
            server = await asyncio.start_server(self._handle, host, port)
            self._servers.append(server)
            self.tcp_ports.append(server.sockets[0].getsockname()[1])
        if self.config.tls_ports:
            ctx = self._tls_context()
            for port in self.config.tls_ports:
                server = await asyncio.start_server(self._handle, host, port, ssl=ctx)
                self._servers.append(server)
                self.tls_ports.append(server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        for server in self._servers:
            server.close()
        for server in self._servers:
            with contextlib.suppress(Exception):
                await server.wait_closed()
        self._servers.clear()

    def info(self) -> dict[str, Any]:
        """What GET /echo tells a probe: the ports to rotate across."""
        return {"tcp_ports": list(self.tcp_ports), "tls_ports": list(self.tls_ports)}

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        obj = writer.get_extra_info("ssl_object")
        sni = self._sni.pop(id(obj), None) if obj is not None else None
        try:
            async with asyncio.timeout(IDLE_TIMEOUT):
                first = await reader.read(MAX_ECHO_BYTES)
                if first.startswith(_METHODS):
                    await self._http(first, reader, writer, sni)
                else:
                    await self._raw(first, reader, writer)
        except (OSError, TimeoutError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            with contextlib.suppress(OSError, ssl.SSLError):
                writer.close()

    async def _raw(
        self, data: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        total = 0
        while data and total < MAX_ECHO_BYTES:
            writer.write(data)
            await writer.drain()
            total += len(data)
            data = await reader.read(MAX_ECHO_BYTES - total)

    async def _http(
        self,
        data: bytes,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        sni: str | None,
    ) -> None:
        while b"\r\n\r\n" not in data and len(data) < MAX_ECHO_BYTES:
            more = await reader.read(MAX_ECHO_BYTES - len(data))
            if not more:
                break
            data += more
        head, _, body = data.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            k, _, v = line.partition(b":")
            if k.strip().lower() == b"content-length" and v.strip().isdigit():
                length = min(int(v.strip()), MAX_ECHO_BYTES)
        if len(body) < length:
            body += await reader.readexactly(length - len(body))
        doc = orjson.dumps(describe_request(head, body[:length] if length else body, sni))
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(doc)
            + doc
        )
        await writer.drain()
