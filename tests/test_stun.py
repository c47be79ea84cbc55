"""Our STUN Binding client (probes/net/stun.py) against a STUN server built on aioice's codec."""

from __future__ import annotations

import asyncio
import socket
import struct

import pytest

from probes.net.stun import (
    MAGIC_COOKIE,
    STUNError,
    binding_request,
    parse_binding_response,
    stun_mapped_address,
)
from tests.loopback.stun_server import start_stun


async def _ask(host: str = "127.0.0.1", timeout: float = 3.0, **faults: object) -> tuple[str, int]:
    server, port = await start_stun(host, **faults)
    try:
        return await stun_mapped_address(host, port, timeout), server.requests
    finally:
        assert server.transport is not None
        server.transport.close()


def test_binding_request_header_is_rfc8489() -> None:
    tid = bytes(range(12))
    data = binding_request(tid)
    assert len(data) == 20
    assert struct.unpack("!HHI", data[:8]) == (0x0001, 0, MAGIC_COOKIE) and data[8:] == tid


def test_xor_mapped_address_ipv4() -> None:
    assert asyncio.run(_ask())[0] == "127.0.0.1"


def test_xor_mapped_address_ipv6() -> None:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    assert asyncio.run(_ask("::1"))[0] == "::1"


def test_rfc3489_server_mapped_address_is_read() -> None:
    assert asyncio.run(_ask(mapped_only=True))[0] == "127.0.0.1"


def test_lost_requests_are_retransmitted() -> None:
    address, requests = asyncio.run(_ask(drop_first=2))
    assert address == "127.0.0.1" and requests == 3


def test_a_reply_to_another_transaction_is_ignored() -> None:
    assert asyncio.run(_ask(noise=True))[0] == "127.0.0.1"


def test_error_response_and_silence_fail() -> None:
    with pytest.raises(STUNError, match="error response"):
        asyncio.run(_ask(error=True, timeout=1.0))
    with pytest.raises(STUNError, match="no STUN response"):
        asyncio.run(_ask(drop_first=100, timeout=0.8))


def test_malformed_replies_are_refused() -> None:
    tid = b"x" * 12
    header = struct.pack("!HHI12s", 0x0101, 0, MAGIC_COOKIE, tid)
    with pytest.raises(STUNError, match="no mapped address"):
        parse_binding_response(header, tid)
    with pytest.raises(STUNError, match="not a STUN reply"):
        parse_binding_response(header, b"y" * 12)
    unknown = struct.pack("!HHI12s", 0x0101, 8, MAGIC_COOKIE, tid) + struct.pack(
        "!HH4s", 0x7777, 4, b"abcd"
    )
    with pytest.raises(STUNError, match="comprehension-required"):
        parse_binding_response(unknown, tid)
    truncated = struct.pack("!HHI12s", 0x0101, 8, MAGIC_COOKIE, tid) + b"\x00\x20\x00\x08"
    with pytest.raises(STUNError):
        parse_binding_response(truncated, tid)
