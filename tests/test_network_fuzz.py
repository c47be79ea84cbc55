"""Hypothesis against what the probe reads from a hostile network (issue 13, "keep looking").

A censor or a hostile resolver chooses the bytes of every DNS answer and HTTP response the
probe receives. Loopback servers here answer the probe's real resolver (probes.net.dns, UDP)
and its real HTTP client (probes.net.http over http_wire) with fuzzed wire data: mutated real
answers, garbage, answers with the right ID and question but broken records; status lines,
header blocks, chunked framing and gzip bodies built to break a parser. Properties: nothing
escapes (the result carries a failure string or a parsed answer), what the result holds can be
stored as a measurement (JSON), the body cap holds, and memory stays bounded.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import time
import tracemalloc
import zlib
from collections.abc import Awaitable, Callable
from typing import Any

import dns.message
import dns.rrset
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from probes.net.dns import DNSResult, resolve
from probes.net.failures import NetworkFailure
from probes.net.http import HTTPResult, http_exchange, http_get, make_client

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
NAME = "fuzz.example"

# --- DNS ----------------------------------------------------------------------------------------


def _answer_to(query: bytes, addrs: list[str], cname: bool) -> bytes:
    msg = dns.message.from_wire(query)
    reply = dns.message.make_response(msg)
    qname = msg.question[0].name
    if cname:
        reply.answer.append(dns.rrset.from_text(qname, 60, "IN", "CNAME", "alias.example."))
    if addrs:
        reply.answer.append(dns.rrset.from_text(qname, 60, "IN", "A", *addrs))
    return reply.to_wire()


@st.composite
def dns_replies(draw: st.DrawFn) -> Callable[[bytes], list[bytes]]:
    """How a hostile resolver answers a query: one or more datagrams derived from it."""
    addrs = draw(st.lists(st.sampled_from(["1.2.3.4", "10.0.0.1", "127.0.0.1"]), max_size=3))
    cname = draw(st.booleans())
    edits = draw(
        st.lists(
            st.tuples(st.integers(0, 511), st.integers(0, 255), st.sampled_from("fct")),
            max_size=4,
        )
    )
    garbage = draw(st.binary(max_size=80))
    header = draw(st.binary(min_size=10, max_size=10))
    shapes = draw(
        st.lists(
            st.sampled_from(["valid", "mutated", "garbage", "same_id", "empty", "truncated"]),
            min_size=1,
            max_size=3,
        )
    )

    def reply(query: bytes) -> list[bytes]:
        good = _answer_to(query, sorted(set(addrs)), cname)
        out: list[bytes] = []
        for shape in shapes:
            if shape == "valid":
                out.append(good)
            elif shape == "mutated":
                data = bytearray(good)
                for where, value, how in edits:
                    if not data:
                        break
                    i = where % len(data)
                    if how == "f":
                        data[i] = value
                    elif how == "c":
                        del data[i:]
                    else:
                        data[i:i] = bytes([value])
                out.append(bytes(data))
            elif shape == "garbage":
                out.append(garbage)
            elif shape == "same_id":  # the query's ID and flags, then anything
                out.append(query[:2] + b"\x81\x80" + header + garbage)
            elif shape == "empty":
                out.append(b"")
            else:
                out.append(good[: len(good) // 2])
        return out

    return reply


class _HostileResolver(asyncio.DatagramProtocol):
    def __init__(self, reply: Callable[[bytes], list[bytes]]) -> None:
        self.reply = reply
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        assert self.transport is not None
        for datagram in self.reply(data):
            self.transport.sendto(datagram, addr)


def _check_dns(result: DNSResult) -> None:
    assert result.failure is None or isinstance(result.failure, str)
    if result.failure is None:
        assert result.addrs
    json.dumps([result.queries, result.extra_responses, result.answers])


async def _resolve_against(reply: Callable[[bytes], list[bytes]]) -> DNSResult:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(
        lambda: _HostileResolver(reply), local_addr=("127.0.0.1", 0)
    )
    port = transport.get_extra_info("sockname")[1]
    try:
        return await resolve(
            NAME,
            resolver=f"127.0.0.1:{port}",
            timeout=0.3,
            t_zero=time.monotonic(),
            listen_window=0.01,
        )
    finally:
        transport.close()


@FUZZ
@given(reply=dns_replies())
def test_any_dns_answer_gives_addresses_or_a_failure_string(
    reply: Callable[[bytes], list[bytes]],
) -> None:
    _check_dns(asyncio.run(_resolve_against(reply)))


# --- HTTP ---------------------------------------------------------------------------------------

status_lines = st.one_of(
    st.sampled_from(
        [
            b"HTTP/1.1 200 OK",
            b"HTTP/1.1 302 Found",
            b"HTTP/1.0 200",
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK",
            b"HTTP/1.1 999 X",
            b"HTTP/1.1 0 X",
            b"HTTP/2 200",
            b"HTTP/1.1 2000 OK",
            b"ICY 200 OK",
            b"HTTP/1.1 200 OK\x00",
            b"http/1.1 200 ok",
            b"",
        ]
    ),
    st.binary(max_size=30),
)
header_names = st.sampled_from(
    [
        b"Content-Length",
        b"Transfer-Encoding",
        b"Content-Encoding",
        b"Location",
        b"Set-Cookie",
        b"Connection",
        b"Content-Type",
        b"X-Odd",
        b"",
        b"Bad Name",
        b"\xff",
    ]
)
header_values = st.one_of(
    st.sampled_from(
        [
            b"0",
            b"5",
            b"-1",
            b"99999999999999999999",
            b"1, 2",
            b"chunked",
            b"gzip",
            b"deflate",
            b"gzip, chunked",
            b"br",
            b"/next",
            b"//other.example/x",
            b"http://[::1/",
            b"http://\xe3\x80\x82/",
            b"javascript:alert(1)",
            b"http://127.0.0.1:1/",
            b"a=b; Domain=..; Path=\x00",
            b"close",
            b" \t",
            b"\xff\xfe",
        ]
    ),
    st.binary(max_size=20),
)
body_parts = st.one_of(
    st.binary(max_size=60),
    st.sampled_from(
        [
            b"5\r\nhello\r\n0\r\n\r\n",
            b"ffffffffffffffff\r\n",
            b"zz\r\n",
            b"3\r\nab",
            gzip.compress(b"<title>t</title>" * 10),
            gzip.compress(b"x" * 1000)[:20],
            zlib.compress(b"y" * 1000),
            b"<title>\xff&#0;&#x110000;&bogus;</title>",
        ]
    ),
)


@st.composite
def http_responses(draw: st.DrawFn) -> bytes:
    head = draw(status_lines)
    for name, value in draw(st.lists(st.tuples(header_names, header_values), max_size=6)):
        head += b"\r\n" + name + b": " + value
    line_end = draw(st.sampled_from([b"\r\n", b"\n"]))
    body = b"".join(draw(st.lists(body_parts, max_size=3)))
    return head.replace(b"\r\n", line_end) + line_end + line_end + body


Serve = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _with_server(serve: Serve, use: Callable[[int], Awaitable[Any]]) -> Any:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            await serve(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        return await use(port)
    finally:
        server.close()


async def _only_here(host: str) -> list[str]:
    if host == "127.0.0.1":
        return [host]
    raise NetworkFailure("dns_nxdomain_error", f"{host} is not this test's server")


def _check_http(result: HTTPResult, cap: int) -> None:
    assert result.failure is None or isinstance(result.failure, str)
    assert len(result.body) <= cap
    for request in result.requests:
        assert request["failure"] is None or isinstance(request["failure"], str)
    json.dumps([result.requests, result.network_events, result.headers, result.title])


@FUZZ
@given(response=http_responses(), close=st.booleans())
def test_any_http_response_gives_a_result_or_a_failure_string(response: bytes, close: bool) -> None:
    cap = 256

    async def serve(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(response)
        await writer.drain()
        if not close:
            await asyncio.sleep(0.5)  # longer than the fetch may take

    async def get(port: int) -> HTTPResult:
        return await http_get(
            f"http://127.0.0.1:{port}/",
            resolve=_only_here,
            timeout=0.3,
            t_zero=time.monotonic(),
            body_cap=cap,
            max_redirects=3,
        )

    _check_http(asyncio.run(_with_server(serve, get)), cap)


@FUZZ
@given(response=http_responses())
def test_any_http_response_to_a_keyword_request_gives_a_result_or_a_failure_string(
    response: bytes,
) -> None:
    async def serve(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(response)
        await writer.drain()

    async def exchange(port: int) -> HTTPResult:
        return await http_exchange(
            "127.0.0.1",
            port,
            method="POST",
            target="/echo",
            host="keyword.example",
            body=b"falun",
            timeout=0.3,
            t_zero=time.monotonic(),
            client=make_client(),
            body_cap=128,
        )

    _check_http(asyncio.run(_with_server(serve, exchange)), 128)


# --- memory -------------------------------------------------------------------------------------


def _peak_while(run: Callable[[], Any]) -> tuple[Any, int]:
    tracemalloc.start()
    try:
        result = run()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _fetch_from(serve: Serve, cap: int) -> HTTPResult:
    async def get(port: int) -> HTTPResult:
        return await http_get(
            f"http://127.0.0.1:{port}/",
            resolve=_only_here,
            timeout=5.0,
            t_zero=time.monotonic(),
            body_cap=cap,
        )

    result: HTTPResult = asyncio.run(_with_server(serve, get))
    return result


def test_a_gzip_bomb_is_cut_at_the_body_cap_without_inflating_it() -> None:
    """1 GiB of zeros in ~1 MiB of gzip: the probe keeps its 1 MiB cap and its peak memory
    (tracemalloc, the loopback server included) stays far below what the bomb inflates to.
    Measured: 18.0 MiB for a 64 MiB bomb and for a 1 GiB one (zlib's buffers), 6.0 MiB for a
    plain 4 MiB body."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    zeros = b"\0" * (1 << 20)
    bomb = b"".join(packer.compress(zeros) for _ in range(1024)) + packer.flush()
    cap = 1 << 20

    async def serve(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\n"
            b"Content-Length: " + str(len(bomb)).encode() + b"\r\n\r\n"
        )
        for i in range(0, len(bomb), 4096):
            writer.write(bomb[i : i + 4096])
            await writer.drain()

    result, peak = _peak_while(lambda: _fetch_from(serve, cap))
    assert result.failure is None, result.failure
    assert result.body_truncated and len(result.body) == cap
    assert peak < 32 * cap, f"peak {peak / 2**20:.1f} MiB"


def test_an_endless_body_and_endless_headers_are_bounded() -> None:
    """A server that streams a body for ever is cut at the cap; one that sends header lines
    for ever is refused after MAX_HEAD_BYTES; neither grows the probe past a few MiB."""
    cap = 1 << 20

    async def endless_body(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"10000\r\n" + b"a" * 0x10000 + b"\r\n"
        for _ in range(1000):  # 64 MiB offered, bounded so the test ends by itself
            writer.write(chunk)
            await writer.drain()

    async def endless_head(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\n")
        for i in range(100_000):  # ~3 MiB of header lines, never the blank line
            writer.write(b"X-Header-%d: %s\r\n" % (i, b"v" * 20))
            await writer.drain()

    result, peak = _peak_while(lambda: _fetch_from(endless_body, cap))
    assert result.failure is None and result.body_truncated and len(result.body) == cap
    assert peak < 12 * cap, f"peak {peak / 2**20:.1f} MiB"
    result, peak = _peak_while(lambda: _fetch_from(endless_head, cap))
    assert isinstance(result.failure, str) and result.status_code is None
    assert peak < 12 * cap, f"peak {peak / 2**20:.1f} MiB"
