"""TLS handshake as an observation: the tls_handshakes entry of ooni/spec df-006-tlshandshake.

The handshake runs on an ssl.SSLObject over memory BIOs, driven by our own socket
reads and writes. That keeps the failure precise (a reset, an EOF, a timeout and a
certificate error are told apart) and lets us keep the certificate chain even when
verification fails: OpenSSL has already stored the peer's chain when it rejects it,
and ``_sslobj.get_unverified_chain()`` (private in Python 3.10-3.12, public as
``SSLObject.get_unverified_chain`` from 3.13) returns it. If that method is missing we
fall back to a second, non-verifying handshake and mark the record with
``x_chain_from_second_handshake``. Evidence of interception is kept either way.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from probes.net.addresses import format_host_port
from probes.net.failures import failure_from_exception
from probes.net.records import binary_data, since
from probes.net.tcp import open_socket

# OpenSSL names for TLS 1.2 suites -> the IANA names OONI's Go engine reports.
# TLS 1.3 suites already carry their IANA names in OpenSSL.
_IANA_CIPHER_NAMES = {
    "ECDHE-ECDSA-AES128-GCM-SHA256": "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384": "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    "ECDHE-RSA-AES128-GCM-SHA256": "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    "ECDHE-RSA-AES256-GCM-SHA384": "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305": "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
    "ECDHE-RSA-CHACHA20-POLY1305": "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
    "ECDHE-RSA-AES128-SHA": "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA",
    "ECDHE-RSA-AES256-SHA": "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA",
    "AES128-GCM-SHA256": "TLS_RSA_WITH_AES_128_GCM_SHA256",
    "AES256-GCM-SHA384": "TLS_RSA_WITH_AES_256_GCM_SHA384",
    "AES128-SHA": "TLS_RSA_WITH_AES_128_CBC_SHA",
    "AES256-SHA": "TLS_RSA_WITH_AES_256_CBC_SHA",
}

_READ_SIZE = 65536


@dataclass
class TLSResult:
    address: str
    server_name: str
    failure: str | None
    t0: float
    t: float
    tls_version: str | None = None
    cipher_suite: str | None = None
    negotiated_protocol: str | None = None
    peer_certificates: list[bytes] = field(default_factory=list)  # DER, leaf first
    leaf_spki_sha256: str | None = None
    issuer: str | None = None
    verified: bool = False
    verify_failure: str | None = None
    record: dict[str, Any] = field(default_factory=dict)  # df-006 tls_handshakes entry
    connected: bool = False  # the TCP connect under the handshake succeeded
    tcp_t: float = 0.0  # when it did (or failed)


def verifying_context(ca_file: str | None = None) -> ssl.SSLContext:
    """A new verifying client context: the system's roots, plus ``ca_file``'s CAs when given.

    ``ssl.create_default_context(cafile=F)`` trusts F *instead of* the system's roots: with a
    lab's CA every public site would then fail validation and read as blocked. The system's
    roots are OpenSSL's default verify paths (SSL_CERT_FILE / SSL_CERT_DIR override them).
    """
    ctx = ssl.create_default_context()
    if ca_file:
        ctx.load_verify_locations(cafile=ca_file)
    return ctx


@functools.lru_cache(maxsize=64)
def client_context(
    ca_file: str | None = None,
    verify: bool = True,
    alpn: tuple[str, ...] | None = None,
    check_hostname: bool = True,
) -> ssl.SSLContext:
    """A cached client context: building one (and loading CAs) costs far more than a handshake.

    Callers must not mutate the returned context.
    """
    ctx = verifying_context(ca_file)
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    elif not check_hostname:
        ctx.check_hostname = False
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    return ctx


def _chain_of(obj: ssl.SSLObject) -> list[bytes]:
    """The peer's chain as sent (DER, leaf first); works after a failed verification."""
    raw = getattr(obj, "_sslobj", None)
    getter = getattr(raw, "get_unverified_chain", None) or getattr(
        obj, "get_unverified_chain", None
    )
    if getter is not None:
        try:
            certs = getter()
        except (ssl.SSLError, ValueError):
            certs = None
        if certs:
            return [c.public_bytes(ssl._ssl.ENCODING_DER) for c in certs]  # type: ignore[attr-defined]
    try:
        leaf = obj.getpeercert(binary_form=True)
    except ValueError:  # handshake not completed
        return []
    return [leaf] if leaf else []


def has_chain_api() -> bool:
    """True when this Python can read the chain of a handshake that failed verification."""
    return hasattr(ssl._ssl._SSLSocket, "get_unverified_chain")  # type: ignore[attr-defined]


@dataclass
class TLSChannel:
    """A client TLS session over memory BIOs on a connected non-blocking socket.

    We drive the socket ourselves (asyncio's sock_* calls) so that a reset, an EOF, a
    timeout and a certificate error stay distinct, and so the chain is readable even when
    verification failed.
    """

    sock: socket.socket
    obj: ssl.SSLObject
    incoming: ssl.MemoryBIO
    outgoing: ssl.MemoryBIO
    # Bytes read from the socket so far, handshake included (ciphertext: what a censor sees
    # and counts, as OONI's bytes_received_cumulative counts a connection's reads).
    received: int = 0
    # Told the new total after each read (a throughput curve, probes.net.http_wire).
    on_received: Callable[[int], None] | None = None

    async def _flush(self) -> None:
        pending = self.outgoing.read()
        if pending:
            await asyncio.get_running_loop().sock_sendall(self.sock, pending)

    async def _fill(self) -> bool:
        """Read more ciphertext; False at the peer's end of stream."""
        data = await asyncio.get_running_loop().sock_recv(self.sock, _READ_SIZE)
        if not data:
            self.incoming.write_eof()
            return False
        self.received += len(data)
        if self.on_received is not None:
            self.on_received(self.received)
        self.incoming.write(data)
        return True

    async def handshake(self) -> None:
        while True:
            try:
                self.obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                pass  # I/O below, outside the handler, so errors do not chain to it
            await self._flush()
            if not await self._fill():
                raise EOFError("peer closed the connection during the TLS handshake")
        await self._flush()  # the client's Finished and the like

    async def send(self, data: bytes) -> None:
        self.obj.write(data)
        await self._flush()

    async def recv(self) -> bytes:
        """Plaintext as it arrives; b"" at the end (close_notify or a bare TCP close: many
        servers close without close_notify, and HTTP framing tells a short body apart)."""
        ended = False
        while True:
            try:
                return self.obj.read(_READ_SIZE)
            except ssl.SSLWantReadError:
                if ended:  # OpenSSL reports the end as an error; never spin on a closed socket
                    return b""
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                return b""
            await self._flush()  # e.g. a key update's answer
            ended = not await self._fill()


async def tls_channel(
    sock: socket.socket, ctx: ssl.SSLContext, server_name: str | None
) -> TLSChannel:
    """Run a client handshake on a connected non-blocking socket; raises on failure.

    On failure the SSLObject is attached to the exception as ``exc.ssl_object`` so the
    caller can still read the chain.
    """
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=server_name or None)
    channel = TLSChannel(sock, obj, incoming, outgoing)
    try:
        await channel.handshake()
    except BaseException as exc:
        exc.ssl_object = obj  # type: ignore[attr-defined]
        raise
    return channel


async def handshake_on_socket(
    sock: socket.socket, ctx: ssl.SSLContext, server_name: str | None
) -> ssl.SSLObject:
    """tls_channel for callers that only inspect the handshake (we do not keep reading)."""
    return (await tls_channel(sock, ctx, server_name)).obj


@functools.lru_cache(maxsize=1024)
def _describe(der: bytes) -> tuple[str | None, str | None]:
    """(sha256 of the leaf's SubjectPublicKeyInfo in hex, issuer RFC 4514 string).

    Cached: parsing costs ~0.2 ms and the same leaf comes back for every address of a site.
    """
    try:
        cert = x509.load_der_x509_certificate(der)
        spki = cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
        return hashlib.sha256(spki).hexdigest(), cert.issuer.rfc4514_string()
    except (ValueError, TypeError):
        return None, None


async def tls_handshake(
    ip: str,
    port: int,
    server_name: str,
    *,
    timeout: float,
    t_zero: float,
    ca_file: str | None = None,
    verify: bool = True,
    alpn: list[str] | None = None,
) -> TLSResult:
    """Connect to ip:port and handshake with SNI ``server_name``; never raises on failure.

    ``failure`` is the first error met (TCP, TLS or certificate verification);
    ``verify_failure`` repeats it when it was the certificate that failed. ``timeout``
    bounds the TCP connect and the handshake together.
    """
    address = format_host_port(ip, port)
    alpn_key = tuple(alpn) if alpn else None
    ctx = client_context(ca_file, verify, alpn_key, check_hostname=bool(server_name))
    result = TLSResult(address=address, server_name=server_name, failure=None, t0=0.0, t=0.0)
    result.t0 = since(t_zero)
    obj: ssl.SSLObject | None = None
    second = False
    sock: socket.socket | None = None
    try:
        async with asyncio.timeout(timeout):
            sock = await open_socket(ip, port, timeout)
            result.connected = True
            result.t0 = result.tcp_t = since(t_zero)  # df-006: t0 is when the handshake starts
            obj = await handshake_on_socket(sock, ctx, server_name)
        result.verified = verify
    except ssl.SSLCertVerificationError as exc:
        result.failure = result.verify_failure = failure_from_exception(exc)
        obj = getattr(exc, "ssl_object", None)
        if not (obj and _chain_of(obj)):
            obj, second = await _evidence_handshake(ip, port, server_name, alpn_key, timeout)
    except (OSError, EOFError, TimeoutError, ssl.SSLError) as exc:
        result.failure = failure_from_exception(exc)
        obj = getattr(exc, "ssl_object", None)
    finally:
        if sock is not None:
            sock.close()
    result.t = since(t_zero)
    if not result.connected:
        result.tcp_t = result.t
    if obj is not None:
        fill_from_ssl_object(result, obj)
    result.record = tls_record(result, no_tls_verify=not verify)
    if second:
        result.record["x_chain_from_second_handshake"] = True
    return result


async def _evidence_handshake(
    ip: str, port: int, server_name: str, alpn: tuple[str, ...] | None, timeout: float
) -> tuple[ssl.SSLObject | None, bool]:
    """Fallback for Pythons without get_unverified_chain: fetch the chain unverified."""
    ctx = client_context(None, False, alpn)
    try:
        async with asyncio.timeout(timeout):
            sock = await open_socket(ip, port, timeout)
            try:
                return await handshake_on_socket(sock, ctx, server_name), True
            finally:
                sock.close()
    except (OSError, EOFError, TimeoutError, ssl.SSLError):
        return None, True


def fill_from_ssl_object(result: TLSResult, obj: ssl.SSLObject) -> None:
    result.peer_certificates = _chain_of(obj)
    if result.peer_certificates:
        result.leaf_spki_sha256, result.issuer = _describe(result.peer_certificates[0])
    try:
        cipher = obj.cipher()
        result.tls_version = obj.version()
        result.negotiated_protocol = obj.selected_alpn_protocol()
    except (ValueError, ssl.SSLError):
        return
    if cipher:
        result.cipher_suite = _IANA_CIPHER_NAMES.get(cipher[0], cipher[0])


def tls_record(result: TLSResult, *, no_tls_verify: bool) -> dict[str, Any]:
    """The df-006 entry. Certificates follow df-001's binary data form."""
    return {
        "address": result.address,
        "server_name": result.server_name,
        "failure": result.failure,
        "t0": result.t0,
        "t": result.t,
        "tls_version": result.tls_version or "",
        "cipher_suite": result.cipher_suite or "",
        "negotiated_protocol": result.negotiated_protocol or "",
        "no_tls_verify": no_tls_verify,
        "peer_certificates": [binary_data(der) for der in result.peer_certificates],
        "tags": [],
    }
