"""Hypothesis against the helper's request parsing, pure and over HTTP (issue 13, "keep looking").

Properties: parse_request either returns a request whose host is the one the GET will use or
raises BadRequest (nothing else escapes); canonical_host never raises and reads every numeric
IPv4 spelling as its address; a real helper answers any body with a status below 500 and a
JSON document, logs no error, and keeps serving; hostile bodies do not grow its memory.

The helper here may not send anything off loopback (the tests' network rule), so its address
guard is replaced by one that refuses every address: fuzzed URLs and endpoints name public
addresses too. Refusal happens at the same points as on the internet, so parsing, planning
and the connect-time check all still run.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backend.helper import HelperConfig, create_app
from backend.helper_protocol import BadRequest, ControlRequest, parse_request
from backend.serving import ServerLimits, server_config
from backend.ssrf import AddressGuard, canonical_host, parse_ip
from tests.loopback import FakeDNSServer, ServerThread
from tests.loopback.control_helper import uvicorn_on
from tests.loopback.web import closed_port

ROOT = Path(__file__).resolve().parents[1]
MAX_ENDPOINTS = 8

# --- strategies ---------------------------------------------------------------------------------

DOTS = st.sampled_from([".", "\u3002", "\uff0e", "\uff61", "%2e", ".."])
labels = st.one_of(
    st.from_regex(r"[a-z0-9-]{1,12}", fullmatch=True),
    st.from_regex(r"0[xX][0-9a-fA-F]{0,9}", fullmatch=True),
    st.from_regex(r"0[0-7]{1,4}", fullmatch=True),
    st.integers(0, 2**32).map(str),
    st.text(min_size=1, max_size=6),
)


@st.composite
def hosts(draw: st.DrawFn) -> str:
    parts = draw(st.lists(labels, min_size=1, max_size=5))
    host = "".join(p + draw(DOTS) for p in parts[:-1]) + parts[-1]
    return draw(
        st.sampled_from([host, f"[{host}]", "[::1]", "[::ffff:127.0.0.1]", "[fe80::1%25lo]"])
    )


urls = st.one_of(
    st.builds(
        lambda scheme, host, port, path: f"{scheme}://{host}{port}{path}",
        st.sampled_from(["http", "https", "HTTP", "ftp", "", "javascript"]),
        hosts(),
        st.sampled_from(["", ":80", ":0", ":65536", ":x", ":443"]),
        st.sampled_from(["/", "", "/a?b#c", "\\@evil/", "/\r\n", "/%00"]),
    ),
    st.text(max_size=40),
)
endpoints = st.one_of(
    st.builds(
        lambda h, p: f"{h}:{p}",
        st.sampled_from(["1.2.3.4", "[::1]", "::1", "x"]),
        st.integers(-1, 70000),
    ),
    st.text(max_size=20),
    st.integers(),
    st.none(),
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=10,
)
requests = st.fixed_dictionaries(
    {},
    optional={
        "http_request": urls | json_values,
        "tcp_connect": st.lists(endpoints, max_size=MAX_ENDPOINTS + 2) | json_values,
        "http_request_headers": st.dictionaries(
            st.text(max_size=10), st.lists(st.text(max_size=10), max_size=3) | json_values
        )
        | json_values,
        "x_quic_enabled": st.booleans() | json_values,
    },
)


def _dumps(doc: Any) -> bytes:
    return json.dumps(doc).encode("utf-8", "surrogatepass")  # stdlib: big integers too


bodies = st.one_of(
    requests.map(_dumps),
    json_values.map(_dumps),
    st.binary(max_size=200),
    st.just(b"[" * 5000),  # deeper than orjson's limit
)


# --- pure properties -----------------------------------------------------------------------------


@settings(max_examples=600, deadline=None)
@given(bodies)
def test_parse_request_returns_or_refuses(body: bytes) -> None:
    try:
        req = parse_request(body, max_tcp_endpoints=MAX_ENDPOINTS)
    except BadRequest:
        return
    assert isinstance(req, ControlRequest)
    assert req.hostname == canonical_host(req.url)
    assert req.scheme in ("http", "https")
    assert len(req.tcp_connect) <= MAX_ENDPOINTS


@settings(max_examples=600, deadline=None)
@given(urls)
def test_canonical_host_never_raises(url: str) -> None:
    host = canonical_host(url)
    assert host is None or (host.isascii() and host == host.lower())


def _spell(value: int, parts: int, bases: list[int]) -> str:
    """`value` as a WHATWG numeric host of `parts` parts, each in the given base."""
    head = [(value >> (8 * (3 - i))) & 0xFF for i in range(parts - 1)]
    last = value & ((1 << (8 * (5 - parts))) - 1)
    out = []
    for number, base in zip([*head, last], bases, strict=False):
        out.append({10: str(number), 16: hex(number), 8: "0" + oct(number)[2:]}[base])
    return ".".join(out)


@settings(max_examples=400, deadline=None)
@given(
    st.integers(0, 2**32 - 1),
    st.integers(1, 4),
    st.lists(st.sampled_from([10, 16, 8]), min_size=4, max_size=4),
    DOTS.filter(lambda d: d in (".", "\u3002", "\uff0e", "\uff61")),
)
def test_every_numeric_spelling_reads_as_its_address(
    value: int, parts: int, bases: list[int], dot: str
) -> None:
    host = _spell(value, parts, bases).replace(".", dot)
    got = canonical_host(f"http://{host}/")
    # httpx itself refuses dotted quads with leading zeros; what it accepts must be the address
    assert got is None or got == str(ipaddress.IPv4Address(value)), host
    if got is not None:
        assert parse_ip(got) == ipaddress.IPv4Address(value)


# --- over HTTP ------------------------------------------------------------------------------------


def _against_the_helper(examples: int) -> Any:
    """Settings for examples sent to the module's running helper (a shared fixture)."""
    return settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )


class _NoAddress(AddressGuard):
    """The tests' network rule as a guard: nothing off loopback, and nothing on it either."""

    def allows(self, ip: Any) -> bool:
        return False


class _Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(scope="module")
def fuzz_helper() -> Iterator[tuple[str, _Errors]]:
    dns_thread = ServerThread("fuzz-dns")
    dns = dns_thread.start(FakeDNSServer(host="127.0.0.3", zone={"site.test": ["127.0.0.1"]}))
    config = HelperConfig(resolver=dns.address, timeout=1.0, max_tcp_endpoints=MAX_ENDPOINTS)
    config.__dict__["guard"] = _NoAddress()  # the cached guard, refusing everything
    errors = _Errors()
    logging.getLogger().addHandler(errors)
    app = create_app(config)
    limits = ServerLimits(client_rate=0, header_timeout=5, body_timeout=5)
    try:
        with uvicorn_on(server_config(app, limits, log_level="warning", lifespan="off")) as port:
            yield f"http://127.0.0.1:{port}/", errors
    finally:
        logging.getLogger().removeHandler(errors)
        dns_thread.close()


@_against_the_helper(250)
@given(body=bodies)
def test_helper_answers_any_body_below_500(fuzz_helper: tuple[str, _Errors], body: bytes) -> None:
    base, errors = fuzz_helper
    reply = httpx.post(base, content=body, timeout=30)
    assert reply.status_code in (200, 400), (reply.status_code, body[:200])
    doc = reply.json()
    if reply.status_code == 200:
        assert doc["http_request"]["status_code"] == -1  # nothing was fetched
        assert all(not v["status"] for v in doc["tcp_connect"].values())
    assert not errors.records, [r.getMessage() for r in errors.records]
    assert httpx.get(base, timeout=5).status_code == 200


HEADER_LINES = [
    b"Host: x\r\n",
    b"Content-Length: 5\r\n",
    b"Content-Length: -1\r\n",
    b"Content-Length: 99999999999999999999\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"Transfer-Encoding: gzip\r\n",
    b"Expect: 100-continue\r\n",
    b"X: \xff\r\n",
    b"bad header\r\n",
]
raw_heads = st.one_of(
    st.binary(max_size=300),
    st.builds(
        lambda method, target, headers, body: (
            method + b" " + target + b" HTTP/1.1\r\n" + b"".join(headers) + b"\r\n" + body
        ),
        st.sampled_from([b"POST", b"GET", b"PUT", b"\x00", b"POST POST"]),
        st.sampled_from([b"/", b"/relay/x", b"/echo", b"*", b"http://x/", b"/%ff", b"/\xff"]),
        st.lists(
            st.sampled_from(HEADER_LINES) | st.binary(max_size=30).map(lambda b: b + b"\r\n"),
            max_size=6,
        ),
        st.binary(max_size=40),
    ),
)


@_against_the_helper(200)
@given(raw=raw_heads)
def test_helper_survives_malformed_http(fuzz_helper: tuple[str, _Errors], raw: bytes) -> None:
    """Raw bytes on the socket: an answer below 500 or a hang-up, and the helper serves on."""
    base, errors = fuzz_helper
    port = int(base.rstrip("/").rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        with contextlib.suppress(OSError):
            sock.sendall(raw)
            sock.shutdown(socket.SHUT_WR)
        reply = b""
        with contextlib.suppress(OSError):
            while piece := sock.recv(65536):
                reply += piece
    for line in reply.split(b"\r\n"):
        if line.startswith(b"HTTP/1.1 "):
            assert line[9:10] != b"5", (raw, reply[:300])
    assert not errors.records, [r.getMessage() for r in errors.records]
    assert httpx.get(base, timeout=5).status_code == 200


# --- memory ---------------------------------------------------------------------------------------


def _peak_rss_kib(pid: int) -> int:
    """The process's peak resident memory so far (VmHWM), KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def _stream(port: int, path: str, headers: str, total: int) -> tuple[bytes, int]:
    """POST `total` bytes chunked to `path`, stopping when the server answers or hangs up."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(
        f"POST {path} HTTP/1.1\r\nHost: x\r\n{headers}Transfer-Encoding: chunked\r\n\r\n".encode()
    )
    chunk = b"%x\r\n%s\r\n" % (1 << 20, b"[" + b"1," * ((1 << 19) - 1) + b"1")
    sock.setblocking(False)
    sent = 0
    reply = b""
    try:
        while sent < total:
            try:
                reply += sock.recv(4096)
                if reply:
                    break
            except BlockingIOError:
                pass
            try:
                n = sock.send(chunk[sent % len(chunk) :])  # a partial send goes on from there
                sent += n
            except BlockingIOError:
                time.sleep(0.001)
    except (BrokenPipeError, ConnectionResetError):
        pass
    sock.settimeout(30)
    with contextlib.suppress(ConnectionResetError, TimeoutError):
        while not reply.endswith(b"}"):  # the JSON error document, whole
            piece = sock.recv(4096)
            if not piece:
                break
            reply += piece
    sock.close()
    return reply, sent


def test_hostile_bodies_leave_memory_bounded() -> None:
    """200 MB to the control route and to the relay, from a helper process as deployed."""
    port = closed_port("127.0.0.1")
    code = (
        "from backend.helper import HelperConfig, RelayConfig, serve; "
        f"serve('127.0.0.1:{port}', HelperConfig(max_request_bytes=1 << 20), "
        "relay=RelayConfig(token='fuzz-token'))"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], cwd=ROOT, stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/", timeout=2)
                break
            except httpx.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline, "helper did not start"
                time.sleep(0.05)
        before = _peak_rss_kib(proc.pid)
        relay_headers = "Authorization: Bearer fuzz-token\r\nX-Censorscope-Mailbox-Key: " + "k" * 32
        control, sent_control = _stream(port, "/", "", 200 << 20)
        relay, sent_relay = _stream(port, "/relay/box", relay_headers + "\r\n", 200 << 20)
        after = _peak_rss_kib(proc.pid)
        alive = httpx.get(f"http://127.0.0.1:{port}/", timeout=5).status_code
    finally:
        proc.terminate()
        proc.wait(10)
    assert control.startswith(b"HTTP/1.1 400") and b"request body over" in control  # oohelperd's
    assert relay.startswith(b"HTTP/1.1 413")
    assert sent_control < 200 << 20 and sent_relay < 200 << 20  # refused before the end
    print(f"peak RSS {before} -> {after} KiB; sent {sent_control} and {sent_relay} bytes")
    assert after - before < 32 * 1024, (before, after)  # KiB: far below the 400 MB offered
    assert alive == 200
