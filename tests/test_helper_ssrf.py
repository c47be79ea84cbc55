"""The helper's address guard against URLs that parsers read differently (issue 13, item 1).

Each test serves a page on loopback and asks a helper that runs as on the internet (no
--allow-private) to fetch it in some disguise: Unicode full stops, numeric IPv4 forms, IPv6
forms, a name our loopback DNS server resolves to 127.0.0.1, a redirect. The servers count
every TCP connection they accept, so "refused" means never connected, not merely reported.
The last tests switch the URL checks off and show that the connect-time check alone still
holds: it sees the exact address of every socket the helper opens.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

import backend.helper_http
from backend.ssrf import FORBIDDEN_FAILURE, AddressGuard, canonical_host
from probes.net.tcp import guarded_connects, tcp_connect
from probes.net.tls import tls_handshake
from tests.loopback.dns_server import FakeDNSServer
from tests.test_helper import CountingServer, control, helper, public_config

ZONE = {"loop.test": ["127.0.0.1"], "loop6.test": ["::1"]}


class CountingServer6(CountingServer):
    address_family = socket.AF_INET6


@pytest.fixture
def resolver(dns_server: Callable[..., FakeDNSServer]) -> FakeDNSServer:
    return dns_server(zone=ZONE)


@pytest.fixture
def inside() -> Iterator[CountingServer]:
    """The operator's loopback service the helper must never reach."""
    server = CountingServer("127.0.0.1")
    yield server
    server.close()


def ask(base: str, url: str, endpoints: list[str]) -> dict[str, Any] | None:
    """The helper's answer, or None when it refused the request itself (400)."""
    reply = httpx.post(base, json={"http_request": url, "tcp_connect": endpoints}, timeout=30)
    if reply.status_code == 400:
        return None
    assert reply.status_code == 200, reply.text
    doc: dict[str, Any] = reply.json()
    return doc


def _refused(doc: dict[str, Any] | None) -> None:
    if doc is None:
        return
    assert doc["http_request"]["status_code"] == -1
    assert doc["http_request"]["failure"] in (FORBIDDEN_FAILURE, "dns_lookup_error")
    assert all(not v["status"] for v in doc["tcp_connect"].values())


DISGUISES_V4 = [
    "http://127\u30020\u30020\u30021:{port}/",  # ideographic full stop
    "http://127\uff610\uff610\uff611:{port}/",  # halfwidth ideographic full stop
    "http://127\uff0e0\uff0e0\uff0e1:{port}/",  # fullwidth full stop
    "http://127.0.0.1\u3002:{port}/",  # a trailing Unicode dot
    "http://127.0.0.1.:{port}/",  # a trailing dot
    "http://2130706433:{port}/",  # one decimal number
    "http://0177.0.0.1:{port}/",  # octal
    "http://0177.1:{port}/",
    "http://0x7f.0.0.1:{port}/",  # hexadecimal
    "http://0x7f000001:{port}/",
    "http://127.1:{port}/",  # short form
    "http://[::ffff:127.0.0.1]:{port}/",  # IPv4-mapped
    "http://[::ffff:7f00:1]:{port}/",
    "http://loop.test:{port}/",  # a name resolving to loopback
    "http://LOOP.test:{port}/",
    "http://loop\u3002test:{port}/",
]


DISGUISES_V6 = [
    "http://[::1]:{port}/",
    "http://[0:0:0:0:0:0:0:1]:{port}/",
    "http://[0000::0001]:{port}/",
    "http://loop6.test:{port}/",
]


@pytest.mark.parametrize(
    ("listen", "disguise"),
    [("127.0.0.1", d) for d in DISGUISES_V4] + [("::1", d) for d in DISGUISES_V6],
)
def test_disguised_loopback_url_is_never_fetched(
    resolver: FakeDNSServer, listen: str, disguise: str
) -> None:
    """The probe's endpoint list names the loopback service too: refused like the URL."""
    inside = (CountingServer6 if ":" in listen else CountingServer)(listen)
    url = disguise.format(port=inside.port)
    try:
        with helper(public_config(resolver)) as base:
            doc = ask(base, url, [f"{listen}:{inside.port}" if ":" not in listen
                                  else f"[{listen}]:{inside.port}"])  # fmt: skip
    finally:
        inside.close()
    assert inside.connections == 0, url
    _refused(doc)


@pytest.mark.parametrize("disguise", DISGUISES_V4[:8])
def test_redirect_to_disguised_loopback_is_never_followed(
    resolver: FakeDNSServer, inside: CountingServer, disguise: str
) -> None:
    """127.0.0.2 stands for a public site (exempt); it redirects into the operator's loopback."""
    outside = CountingServer("127.0.0.2")
    # on the wire as UTF-8 (http.server writes header values as latin-1)
    outside.redirect_to = disguise.format(port=inside.port).encode().decode("latin-1")
    try:
        config = public_config(resolver, exempt_networks=("127.0.0.2/32",))
        with helper(config) as base:
            doc = control(base, f"http://127.0.0.2:{outside.port}/", [])
    finally:
        outside.close()
    assert outside.connections >= 1
    assert inside.connections == 0
    assert doc["http_request"]["failure"] in (FORBIDDEN_FAILURE, "dns_lookup_error")


def test_canonical_host_is_the_host_the_fetch_uses() -> None:
    assert canonical_host("http://127\u30020\u30020\u30021:80/") == "127.0.0.1"
    assert canonical_host("http://2130706433/") == "127.0.0.1"
    assert canonical_host("http://0177.0.0.1/") is None  # httpx refuses it: nothing to fetch
    assert canonical_host("http://0177.1/") == "127.0.0.1"
    assert canonical_host("http://0x7f.1/") == "127.0.0.1"
    assert canonical_host("http://127.0.0.1./") == "127.0.0.1"
    assert canonical_host("http://[0:0::1]/") == "::1"
    assert canonical_host("http://Example.COM/") == "example.com"
    assert canonical_host("http://example.com./") == "example.com."
    assert canonical_host("http://1.2.3.4.5/") is None  # neither a name nor an address
    assert canonical_host("http://256.0.0.1/") is None


# --- the connect-time check, on its own ------------------------------------------------------


def test_connect_guard_refuses_before_any_packet(inside: CountingServer) -> None:

    guard = AddressGuard.build(allow_private=False)

    async def run() -> tuple[str | None, str | None]:
        with guarded_connects(guard.allows):
            tcp = await tcp_connect("127.0.0.1", inside.port, timeout=2, t_zero=0)
            tls = await tls_handshake("127.0.0.1", inside.port, "x.test", timeout=2, t_zero=0)
        return tcp.failure, tls.failure

    assert asyncio.run(run()) == (FORBIDDEN_FAILURE, FORBIDDEN_FAILURE)
    assert inside.connections == 0

    async def unguarded() -> str | None:
        return (await tcp_connect("127.0.0.1", inside.port, timeout=2, t_zero=0)).failure

    assert asyncio.run(unguarded()) is None  # the probe's own connects are not guarded
    deadline = time.monotonic() + 10  # the server's accept loop counts it in its own thread
    while inside.connections < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert inside.connections == 1


def test_connect_guard_alone_stops_every_hop(
    resolver: FakeDNSServer, inside: CountingServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the URL checks switched off, the exact-address check at connect time still holds,
    for the first hop and for a redirect."""
    monkeypatch.setattr(backend.helper_http, "hop_allowed", lambda url, guard: True)
    outside = CountingServer("127.0.0.2")
    outside.redirect_to = f"http://127.0.0.1:{inside.port}/"
    try:
        config = public_config(resolver, exempt_networks=("127.0.0.2/32",))
        with helper(config) as base:
            direct = control(base, f"http://127.0.0.1:{inside.port}/", [])
            hop = control(base, f"http://127.0.0.2:{outside.port}/", [])
    finally:
        outside.close()
    assert inside.connections == 0
    assert direct["http_request"]["failure"] == FORBIDDEN_FAILURE
    assert hop["http_request"]["failure"] == FORBIDDEN_FAILURE
    assert outside.connections >= 1


def test_request_host_is_read_once_as_the_fetch_reads_it() -> None:
    from backend.helper_protocol import BadRequest, parse_request

    req = parse_request(b'{"http_request": "http://127\xe3\x80\x820\xe3\x80\x820\xe3\x80\x821/"}',
                        max_tcp_endpoints=4)  # fmt: skip
    assert req.hostname == "127.0.0.1" and req.host_is_ip
    assert parse_request(b'{"http_request": "https://B\xc3\xbccher.CH/"}', max_tcp_endpoints=4
                         ).hostname == "xn--bcher-kva.ch"  # fmt: skip
    with pytest.raises(BadRequest, match="neither a name nor an address"):
        parse_request(b'{"http_request": "http://256.1.1.1/"}', max_tcp_endpoints=4)
