"""HTTP/1.1 framing and content codings in probes.net.http_wire, against real sockets.

Each test starts a loopback server that reads the request head and answers with exact
bytes (plain or over TLS from the test CA), so framing cases that well-behaved servers
never produce (a short body, a close-delimited body, a 1xx before the answer) are met.
"""

from __future__ import annotations

import asyncio
import gzip
import ssl
import time
import zlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from probes.net.http import http_get, make_client
from tests.loopback.certs import TestCA

pytestmark = pytest.mark.anyio

BODY = b"<html><title>wire</title>" + b"x" * 5000 + b"</html>"


@asynccontextmanager
async def canned_server(
    reply: bytes, *, tls: ssl.SSLContext | None = None, linger: bool = False
) -> AsyncIterator[tuple[int, list[bytes]]]:
    """Answer every connection with ``reply`` once its request head has arrived, then close
    (or, with ``linger``, keep the connection open until the client goes)."""
    heads: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            heads.append(await reader.readuntil(b"\r\n\r\n"))
            writer.write(reply)
            await writer.drain()
            if linger:
                await reader.read()
        except (OSError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            writer.transport.abort()  # a bare TCP close: no close_notify over TLS

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=tls)
    port = server.sockets[0].getsockname()[1]
    try:
        yield port, heads
    finally:
        server.close()


async def fetch(port: int, *, https: bool = False, ca: TestCA | None = None, cap: int = 1 << 20):
    async def resolve(host: str) -> list[str]:
        return ["127.0.0.1"]

    scheme = "https" if https else "http"
    client = make_client(ca_file=ca.ca_pem_path) if ca else None
    return await http_get(
        f"{scheme}://wire.test:{port}/page",
        resolve=resolve,
        timeout=5,
        t_zero=time.monotonic(),
        client=client,
        body_cap=cap,
    )


def response(head: str, body: bytes) -> bytes:
    return head.replace("\n", "\r\n").encode() + b"\r\n" + body


@pytest.mark.parametrize(("coding", "pack"), [("gzip", gzip.compress), ("deflate", zlib.compress)])
async def test_coded_body_is_decoded_and_the_cap_counts_decoded_bytes(coding: str, pack) -> None:
    packed = pack(BODY)
    reply = response(
        f"HTTP/1.1 200 OK\nContent-Encoding: {coding}\nContent-Length: {len(packed)}\n", packed
    )
    async with canned_server(reply) as (port, heads):
        whole = await fetch(port)
        capped = await fetch(port, cap=100)
    assert whole.failure is None and whole.body == BODY and whole.title == "wire"
    assert capped.body == BODY[:100] and capped.body_truncated
    assert b"Accept-Encoding: gzip, deflate" in heads[0]


async def test_chunked_body_after_an_informational_response() -> None:
    chunks = b"".join(
        b"%x\r\n%s\r\n" % (len(BODY[i : i + 999]), BODY[i : i + 999])
        for i in range(0, len(BODY), 999)
    )
    reply = b"HTTP/1.1 100 Continue\r\n\r\n" + response(
        "HTTP/1.1 200 OK\nTransfer-Encoding: chunked\n", chunks + b"0\r\n\r\n"
    )
    async with canned_server(reply, linger=True) as (port, _):
        res = await fetch(port)
    assert res.failure is None and res.status_code == 200 and res.body == BODY


async def test_body_that_ends_with_the_connection() -> None:
    reply = response("HTTP/1.1 200 OK\nConnection: close\n", BODY)
    async with canned_server(reply) as (port, _):
        res = await fetch(port)
    assert res.failure is None and res.body == BODY and not res.body_truncated


async def test_short_body_is_an_eof_error() -> None:
    reply = response(f"HTTP/1.1 200 OK\nContent-Length: {len(BODY) + 10}\n", BODY)
    async with canned_server(reply) as (port, _):
        res = await fetch(port)
    assert res.failure == "eof_error"
    assert res.requests[0]["failure"] == "eof_error"
    assert res.network_events[-1]["operation"] == "http_transaction_done"


async def test_malformed_status_line_is_an_unknown_failure() -> None:
    async with canned_server(b"HTTP/1.1 OK-ish\r\n\r\n") as (port, _):
        res = await fetch(port)
    assert res.failure is not None and res.failure.startswith("unknown_failure")


async def test_tls_body_ending_without_close_notify() -> None:
    ca = TestCA()
    reply = response("HTTP/1.1 200 OK\nConnection: close\n", BODY)
    server_tls = ca.server_context(["wire.test"])
    server_tls.set_alpn_protocols(["h2", "http/1.1"])  # the client offers http/1.1 alone
    async with canned_server(reply, tls=server_tls) as (port, _):
        res = await fetch(port, https=True, ca=ca)
    assert res.failure is None and res.body == BODY
    [handshake] = res.tls_handshakes
    assert handshake["failure"] is None and handshake["negotiated_protocol"] == "http/1.1"
    operations = [e["operation"] for e in res.network_events]
    assert operations == [
        "http_transaction_start",
        "connect",
        "tls_handshake_start",
        "tls_handshake_done",
        "http_wrote_headers",
        "http_first_response_byte",
        "http_transaction_done",
    ]


async def test_short_tls_body_is_an_eof_error() -> None:
    ca = TestCA()
    reply = response(f"HTTP/1.1 200 OK\nContent-Length: {len(BODY) * 2}\n", BODY)
    async with canned_server(reply, tls=ca.server_context(["wire.test"])) as (port, _):
        res = await fetch(port, https=True, ca=ca)
    assert res.failure == "eof_error"
