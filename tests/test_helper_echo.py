"""The helper's echo ports and message relay, on loopback under a real uvicorn."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from backend.helper import DNSZoneConfig, EchoConfig
from tests.loopback.keyword_censor import run_helper

HOST = "127.0.0.1"


@pytest.fixture(scope="module")
def echo_helper() -> Iterator[tuple[str, dict[str, list[int]]]]:
    with run_helper(HOST, echo=EchoConfig(HOST, [0, 0], [0])) as (base, _port):
        info = httpx.get(base + "echo", timeout=5).json()
        yield base, info


def _talk(port: int, data: bytes, *, tls_sni: str | None = None) -> bytes:
    raw = socket.create_connection((HOST, port), timeout=5)
    sock: socket.socket = raw
    if tls_sni is not None:
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        sock = ctx.wrap_socket(raw, server_hostname=tls_sni)
    with sock:
        sock.sendall(data)
        if tls_sni is None:
            sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
            if tls_sni is not None and b"}" in chunk:
                break
        return b"".join(chunks)


def test_echo_info_lists_the_ports(echo_helper: tuple[str, dict[str, list[int]]]) -> None:
    _base, info = echo_helper
    assert len(info["tcp_ports"]) == 2 and len(info["tls_ports"]) == 1
    assert all(p > 0 for p in info["tcp_ports"] + info["tls_ports"])


def test_http_echo_reports_the_request_as_received(
    echo_helper: tuple[str, dict[str, list[int]]],
) -> None:
    _base, info = echo_helper
    port = info["tcp_ports"][1]
    reply = httpx.post(
        f"http://{HOST}:{port}/kw/%E6%B3%95%E8%BD%AE?q=x",
        headers={"Host": "falun.kw.censorscope.test"},
        content="q=法轮".encode(),
        timeout=5,
    )
    echo = reply.json()
    assert reply.status_code == 200
    assert echo["method"] == "POST"
    assert echo["target"] == "/kw/%E6%B3%95%E8%BD%AE?q=x"
    assert echo["host"] == "falun.kw.censorscope.test"
    assert echo["body"] == "q=法轮"
    assert echo["sni"] is None


def test_raw_tcp_echo(echo_helper: tuple[str, dict[str, list[int]]]) -> None:
    _base, info = echo_helper
    assert _talk(info["tcp_ports"][0], b"\x00\x01 not http \xff") == b"\x00\x01 not http \xff"


def test_tls_echo_accepts_any_sni_and_reports_it(
    echo_helper: tuple[str, dict[str, list[int]]],
) -> None:
    _base, info = echo_helper
    request = b"GET /kw HTTP/1.1\r\nHost: echo.kw.censorscope.test\r\n\r\n"
    reply = _talk(info["tls_ports"][0], request, tls_sni="xn--fiq228c.kw.censorscope.test")
    assert reply.startswith(b"HTTP/1.1 200 OK")
    assert b'"sni":"xn--fiq228c.kw.censorscope.test"' in reply


# --- DNS zone ----------------------------------------------------------------------------------


def test_dns_zone_answers_every_name_in_the_zone_and_refuses_others() -> None:
    import dns.message
    import dns.query
    import dns.rcode

    zone = DNSZoneConfig("probe.censorscope.test", "192.0.2.44", HOST, 0)
    with run_helper(HOST, dns_zone=zone) as (base, _):
        port = httpx.get(base + "echo", timeout=5).json()["dns_port"]
        inside = dns.query.udp(
            dns.message.make_query("xn--fiq228c.probe.censorscope.test", "A"), HOST, 3, port
        )
        outside = dns.query.udp(dns.message.make_query("example.org", "A"), HOST, 3, port)
    assert [r.to_text() for rrset in inside.answer for r in rrset] == ["192.0.2.44"]
    assert inside.rcode() == dns.rcode.NOERROR
    assert outside.rcode() == dns.rcode.REFUSED and not outside.answer


def test_helper_command_serves_echo_zone_and_relay() -> None:
    """`censorscope helper` with the new options, as an operator runs it."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from tests.loopback.web import closed_port

    host = "127.0.0.11"
    port, echo_port, tls_port, dns_port = (closed_port(host) for _ in range(4))
    args = [sys.executable, "-c", "from probes.cli import main; main()", "helper",
            "--listen", f"{host}:{port}", "--echo-ports", str(echo_port),
            "--tls-echo-ports", str(tls_port), "--dns-zone", "kw.censorscope.test",
            "--dns-listen", f"{host}:{dns_port}"]  # fmt: skip
    env = {**os.environ, "CENSORSCOPE_RELAY_TOKEN": "tok-123"}
    proc = subprocess.Popen(
        args, cwd=Path(__file__).resolve().parents[1], env=env, stderr=subprocess.DEVNULL
    )
    try:
        info = _echo_info_when_up(proc, f"http://{host}:{port}/echo")
        open_post = httpx.post(f"http://{host}:{port}/relay/box", json={"text": "x"})
        echoed = httpx.get(f"http://{host}:{echo_port}/kw/x", timeout=5).json()
    finally:
        proc.terminate()
        proc.wait(10)
    assert info == {
        "tcp_ports": [echo_port],
        "tls_ports": [tls_port],
        "dns_zone": "kw.censorscope.test",
        "dns_port": dns_port,
        "dns_answer": host,
    }
    assert open_post.status_code == 401  # the token from the environment is required
    assert echoed["target"] == "/kw/x"


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (["9101"], [9101]),
        (["9101-9103", "9443"], [9101, 9102, 9103, 9443]),
        (["9101-9102", "9102-9103"], [9101, 9102, 9103]),  # each port once
        (["0", "0"], [0, 0]),  # any free port, twice: two ports
    ],
)
def test_echo_ports_take_ranges(values: list[str], expected: list[int]) -> None:
    from backend.helper_echo import parse_ports

    assert parse_ports(values) == expected


@pytest.mark.parametrize("value", ["9103-9101", "x", "70000", "1-", "0-5", "1-3000"])
def test_bad_echo_ports_are_refused(value: str) -> None:
    from backend.helper_echo import parse_ports

    with pytest.raises(ValueError):
        parse_ports([value])


def test_helper_serves_an_echo_port_range() -> None:
    """Hundreds of echo ports from one range (issue 15 item 4: a residual window taints one
    port, not the test); here 64 from `--echo-ports LOW-HIGH`, each answering."""
    import os
    import socket
    import subprocess
    import sys
    from pathlib import Path

    from tests.loopback.web import closed_port

    host = "127.0.0.18"
    port = closed_port(host)
    low = _free_range(host, 64)
    args = [sys.executable, "-c", "from probes.cli import main; main()", "helper",
            "--listen", f"{host}:{port}", "--echo-ports", f"{low}-{low + 63}"]  # fmt: skip
    proc = subprocess.Popen(args, cwd=Path(__file__).resolve().parents[1],
                            env=dict(os.environ), stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        info = _echo_info_when_up(proc, f"http://{host}:{port}/echo")
        for echo_port in (low, low + 31, low + 63):
            with socket.create_connection((host, echo_port), timeout=5):
                pass
    finally:
        proc.terminate()
        proc.wait(10)
    assert info["tcp_ports"] == list(range(low, low + 64))


def _free_range(host: str, n: int) -> int:
    """The first port of `n` consecutive free ports on `host` (a bind test of each)."""
    import random
    import socket

    for _ in range(50):
        low = random.randrange(20000, 60000 - n)
        socks = []
        try:
            for p in range(low, low + n):
                s = socket.socket()
                socks.append(s)
                s.bind((host, p))
            return low
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise AssertionError("no free port range")


def _echo_info_when_up(proc: Any, url: str, within: float = 15.0) -> Any:
    """GET /echo of a helper process once it answers (it must not have exited meanwhile)."""
    import time

    deadline = time.monotonic() + within
    while True:
        try:
            return httpx.get(url, timeout=2).json()
        except httpx.TransportError:
            assert proc.poll() is None and time.monotonic() < deadline, "helper did not start"
            time.sleep(0.05)
