"""A STUN Binding client (RFC 8489, over UDP): the address a server saw us come from.

Written from RFC 8489: section 5 (header: two zero bits, 14-bit type, length, the magic cookie
0x2112A442, a 96-bit transaction id), 6.2.1 (UDP retransmission: RTO 500 ms, doubled each
time), 6.3.3 (a success response with an unknown comprehension-required attribute fails the
transaction), 14.1 and 14.2 (MAPPED-ADDRESS and XOR-MAPPED-ADDRESS). MAPPED-ADDRESS is read
only when a (RFC 3489) server sends no XOR-MAPPED-ADDRESS.

Limits: UDP only (no TCP/TLS transport), no authentication (a Binding request needs none).
"""

from __future__ import annotations

import asyncio
import ipaddress
import secrets
import struct
from typing import Any

MAGIC_COOKIE = 0x2112A442
BINDING_REQUEST = 0x0001
BINDING_SUCCESS = 0x0101
BINDING_ERROR = 0x0111
ATTR_MAPPED_ADDRESS = 0x0001
ATTR_XOR_MAPPED_ADDRESS = 0x0020
DEFAULT_PORT = 3478
INITIAL_RTO = 0.5  # RFC 8489 6.2.1: "SHOULD be 500 ms" on fixed-line access
HEADER = struct.Struct("!HHI12s")
# Attribute types RFC 8489 defines that a client may meet in a Binding response and can ignore:
# USERNAME, MESSAGE-INTEGRITY, ERROR-CODE, UNKNOWN-ATTRIBUTES, REALM, NONCE,
# MESSAGE-INTEGRITY-SHA256, PASSWORD-ALGORITHM, USERHASH (comprehension-required range).
_KNOWN_REQUIRED = {0x0001, 0x0006, 0x0008, 0x0009, 0x000A, 0x0014, 0x0015, 0x001C, 0x001D, 0x001E,
                   0x0020}  # fmt: skip


class STUNError(Exception):
    """No usable Binding response (timeout, error response, malformed or unexpected reply)."""


class NotOurs(STUNError):
    """A datagram that is no reply to our transaction (stray, late or forged): ignored."""


def binding_request(transaction_id: bytes) -> bytes:
    """A Binding request with no attributes."""
    return HEADER.pack(BINDING_REQUEST, 0, MAGIC_COOKIE, transaction_id)


def _address(value: bytes, xor: bytes | None) -> str:
    if len(value) < 8:
        raise STUNError("address attribute too short")
    family = value[1]
    raw = value[4:]
    if family == 0x01 and len(raw) >= 4:
        raw = raw[:4]
    elif family == 0x02 and len(raw) >= 16:
        raw = raw[:16]
    else:
        raise STUNError(f"address attribute: unknown family {family:#x} or bad length")
    if xor is not None:
        raw = bytes(a ^ b for a, b in zip(raw, xor, strict=False))
    return str(ipaddress.ip_address(raw))


def parse_binding_response(data: bytes, transaction_id: bytes) -> str:
    """The mapped address in a Binding success response to our transaction."""
    if len(data) < HEADER.size:
        raise NotOurs("not a STUN reply to our request: shorter than a STUN header")
    msg_type, length, cookie, tid = HEADER.unpack_from(data)
    if msg_type & 0xC000 or cookie != MAGIC_COOKIE or tid != transaction_id:
        raise NotOurs("not a STUN reply to our request")
    if length % 4 or HEADER.size + length > len(data):
        raise STUNError("bad STUN message length")
    if msg_type == BINDING_ERROR:
        raise STUNError("the server answered with an error response")
    if msg_type != BINDING_SUCCESS:
        raise STUNError(f"unexpected STUN message type {msg_type:#06x}")
    mapped: str | None = None
    xor_mapped: str | None = None
    offset = HEADER.size
    end = HEADER.size + length
    while offset + 4 <= end:
        attr_type, attr_len = struct.unpack_from("!HH", data, offset)
        value = data[offset + 4 : offset + 4 + attr_len]
        if len(value) != attr_len:
            raise STUNError("attribute runs past the message")
        if attr_type == ATTR_XOR_MAPPED_ADDRESS and xor_mapped is None:
            key = struct.pack("!I", MAGIC_COOKIE) + transaction_id
            port_xor = bytes(b ^ k for b, k in zip(value[2:4], key[:2], strict=False))
            xor_mapped = _address(value[:2] + port_xor + value[4:], key)
        elif attr_type == ATTR_MAPPED_ADDRESS and mapped is None:
            mapped = _address(value, None)
        elif attr_type < 0x8000 and attr_type not in _KNOWN_REQUIRED:
            raise STUNError(f"unknown comprehension-required attribute {attr_type:#06x}")
        offset += 4 + attr_len + (-attr_len % 4)  # values are padded to 4 bytes
    address = xor_mapped or mapped
    if address is None:
        raise STUNError("the response carries no mapped address")
    return address


class _Client(asyncio.DatagramProtocol):
    def __init__(self, transaction_id: bytes) -> None:
        self.transaction_id = transaction_id
        self.result: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if self.result.done():
            return
        try:
            self.result.set_result(parse_binding_response(data, self.transaction_id))
        except NotOurs:
            pass  # stray or late datagrams: keep waiting
        except STUNError as exc:
            self.result.set_exception(exc)

    def error_received(self, exc: Exception) -> None:
        if not self.result.done():
            self.result.set_exception(STUNError(f"{exc}"))


async def stun_mapped_address(host: str, port: int = DEFAULT_PORT, timeout: float = 3.0) -> str:
    """Ask one STUN server which address (IP) our UDP packets come from."""
    transaction_id = secrets.token_bytes(12)
    loop = asyncio.get_running_loop()
    try:
        transport, protocol = await asyncio.wait_for(
            loop.create_datagram_endpoint(
                lambda: _Client(transaction_id), remote_addr=(host, port)
            ),
            timeout,
        )
    except (OSError, TimeoutError) as exc:
        raise STUNError(f"{host}:{port}: {exc}") from exc
    request = binding_request(transaction_id)
    deadline = loop.time() + timeout
    rto = INITIAL_RTO
    try:
        while True:
            transport.sendto(request)
            wait = min(rto, deadline - loop.time())
            if wait <= 0:
                raise STUNError(f"{host}:{port}: no STUN response within {timeout:g} s")
            done, _ = await asyncio.wait({protocol.result}, timeout=wait)
            if done:
                return protocol.result.result()
            rto *= 2
    finally:
        transport.close()
