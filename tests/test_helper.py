"""The control helper, end to end on loopback: a real uvicorn, a real DNS server, real HTTP(S).

Nothing here touches the internet. The DNS server (tests/loopback's) answers from a dict; the
web servers count every TCP connection they accept, which is how the address-guard tests
prove that a refused address was never connected to (not merely reported as refused).
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import dns.message
import httpx
import pytest
import trustme
import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import given
from hypothesis import strategies as st

from backend.helper import GREETING, HelperConfig, create_app, parse_listen
from backend.helper_protocol import (
    BadRequest,
    canonical_header,
    map_dns_failure,
    map_http_failure,
    map_tcp_failure,
    parse_request,
    plan_endpoints,
)
from backend.ssrf import FORBIDDEN_FAILURE, AddressGuard, is_special
from probes.net.dns import DNS_ATTEMPTS
from probes.nettests.control import ControlClient, ControlResult
from tests.loopback.dns_server import FakeDNSServer

PAGE = b"<html><head><title>Censorscope test page</title></head><body>hello</body></html>"

# The example control response in ooni/spec nettests/ts-017-web-connectivity.md
# ("Example control request and response") has these top-level keys ...
TS017_EXAMPLE_KEYS = {"tcp_connect", "http_request", "dns"}
TS017_EXAMPLE_HTTP_KEYS = {"body_length", "failure", "title", "headers", "status_code"}
# ... and today's oohelperd (ooni/probe-cli internal/model/th.go THResponse, measure.go) adds
# these; OONI's own keys must all be present, ours are x_-prefixed extensions.
OONI_KEYS = TS017_EXAMPLE_KEYS | {"tls_handshake", "quic_handshake", "http3_request", "ip_info"}
OONI_HTTP_KEYS = TS017_EXAMPLE_HTTP_KEYS | {"discovered_h3_endpoint"}
OUR_KEYS = {"x_tls_certificates", "x_http_request", "x_dns"}


# --- loopback servers ---------------------------------------------------------------------


def queried(server: FakeDNSServer) -> list[str]:
    return [entry["name"] for entry in server.log]


class CountingServer(ThreadingHTTPServer):
    """An HTTP(S) server that counts accepted connections and can redirect or stall."""

    daemon_threads = True

    def __init__(self, host: str, tls: ssl.SSLContext | None = None) -> None:
        super().__init__((host, 0), _Handler)
        self.tls = tls
        self.connections = 0
        self.redirect_to: str | None = None
        self.delay = 0.0
        self.seen_headers: list[dict[str, str]] = []
        self.port = self.server_address[1]
        threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()

    def get_request(self) -> tuple[Any, Any]:
        sock, peer = super().get_request()
        self.connections += 1
        if self.tls is not None:  # handshake lazily in the handler thread, not the accept loop
            sock = self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, peer

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # probes that connect and hang up are expected here

    def close(self) -> None:
        self.shutdown()
        self.server_close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: CountingServer

    def _redirect(self, location: str, cookie: str | None = None) -> None:
        self.send_response(302)
        self.send_header("Location", location)
        if cookie:
            self.send_header("Set-Cookie", cookie)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self) -> None:
        self.server.seen_headers.append({k.lower(): v for k, v in self.headers.items()})
        time.sleep(self.server.delay)
        if self.server.redirect_to:
            return self._redirect(self.server.redirect_to)
        if self.path == "/loop":
            return self._redirect("/loop")
        if self.path == "/login":  # sites that redirect in circles unless cookies are kept
            return self._redirect("/home", cookie="session=ok; Path=/")
        if self.path == "/home" and "session=ok" not in self.headers.get("Cookie", ""):
            return self._redirect("/login")
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("x-censorscope-test", "yes")
        self.send_header("Content-Length", str(len(PAGE)))
        self.end_headers()
        self.wfile.write(PAGE)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def helper(config: HelperConfig) -> Iterator[str]:
    """Run the helper app under a real uvicorn on 127.0.0.1 and yield its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    server = uvicorn.Server(uvicorn.Config(create_app(config), log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def control(base: str, url: str, endpoints: list[str], **extra: Any) -> dict[str, Any]:
    body = {
        "http_request": url,
        "http_request_headers": {
            "User-Agent": ["censorscope-test/1"],
            "Accept-Language": ["en-US;q=0.8", "en;q=0.5"],
            "Cookie": ["secret=1"],
        },
        "tcp_connect": endpoints,
        "x_quic_enabled": False,
        **extra,
    }
    reply = httpx.post(base, json=body, timeout=30)
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"] == "application/json"
    doc: dict[str, Any] = reply.json()
    return doc


# --- fixtures -------------------------------------------------------------------------------


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def web() -> Iterator[CountingServer]:
    server = CountingServer("127.0.0.1")
    yield server
    server.close()


@pytest.fixture
def tls_web(ca: trustme.CA) -> Iterator[CountingServer]:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("site.test").configure_cert(ctx)
    server = CountingServer("127.0.0.1", tls=ctx)
    yield server
    server.close()


ZONE = {
    "site.test": ["127.0.0.1"],
    "intranet.test": ["10.0.0.1"],
    "metadata.test": ["169.254.169.254", "fd00::1"],
}


@pytest.fixture
def resolver(dns_server: Callable[..., FakeDNSServer]) -> FakeDNSServer:
    """The helper's DNS server (conftest's FakeDNSServer factory) serving ZONE."""
    return dns_server(zone=ZONE)


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> str:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


def lab_config(resolver: FakeDNSServer, **kw: Any) -> HelperConfig:
    """A helper allowed to reach loopback, as the lab runs it."""
    kw.setdefault("timeout", 3.0)
    return HelperConfig(resolver=resolver.address, allow_private=True, **kw)


def public_config(resolver: FakeDNSServer, **kw: Any) -> HelperConfig:
    """A helper with the address guard on, as it runs on the internet."""
    kw.setdefault("timeout", 3.0)
    return HelperConfig(resolver=resolver.address, allow_private=False, **kw)


# --- the protocol, end to end ---------------------------------------------------------------


def test_greeting(resolver: FakeDNSServer) -> None:
    with helper(public_config(resolver)) as base:
        reply = httpx.get(base)
    assert reply.status_code == 200
    assert reply.json() == GREETING == {"message": "Hello OONItarian!"}


def test_accessible_http_site(resolver: FakeDNSServer, web: CountingServer) -> None:
    url = f"http://site.test:{web.port}/"
    with helper(lab_config(resolver)) as base:
        doc = control(base, url, [f"127.0.0.1:{web.port}"])

    assert set(doc) >= TS017_EXAMPLE_KEYS
    assert set(doc) == OONI_KEYS | OUR_KEYS
    assert set(doc["http_request"]) == OONI_HTTP_KEYS
    endpoint = f"127.0.0.1:{web.port}"
    assert doc["dns"] == {"failure": None, "addrs": ["127.0.0.1"]}
    assert doc["tcp_connect"] == {endpoint: {"status": True, "failure": None}}
    assert doc["tls_handshake"] == {}  # http URL with an explicit port: no TLS, as oohelperd
    assert doc["quic_handshake"] == {}
    assert doc["http3_request"] is None
    http = doc["http_request"]
    assert http["failure"] is None
    assert http["status_code"] == 200
    assert http["body_length"] == len(PAGE)
    assert http["title"] == "Censorscope test page"
    assert http["discovered_h3_endpoint"] == ""
    assert http["headers"]["Content-Type"] == "text/html; charset=utf-8"
    assert http["headers"]["X-Censorscope-Test"] == "yes"
    # found by both the probe and the helper; loopback is a bogon
    assert doc["ip_info"] == {"127.0.0.1": {"asn": 0, "flags": 1 | 2 | 4}}
    # only the harmless headers are forwarded, like oohelperd
    sent = web.seen_headers[-1]
    assert sent["user-agent"] == "censorscope-test/1"
    assert sent["accept-language"] == "en-US;q=0.8, en;q=0.5"
    assert "cookie" not in sent


def test_accessible_https_site(
    resolver: FakeDNSServer, tls_web: CountingServer, ca: trustme.CA, ca_file: str
) -> None:
    url = f"https://site.test:{tls_web.port}/"
    with helper(lab_config(resolver, ca_file=ca_file)) as base:
        doc = control(base, url, [])
    endpoint = f"127.0.0.1:{tls_web.port}"
    assert doc["tcp_connect"] == {endpoint: {"status": True, "failure": None}}
    assert doc["tls_handshake"] == {
        endpoint: {"server_name": "site.test", "status": True, "failure": None}
    }
    assert doc["http_request"]["status_code"] == 200
    assert doc["http_request"]["body_length"] == len(PAGE)
    # resolved by the helper only, a bogon, valid for the domain (TLS worked)
    assert doc["ip_info"] == {"127.0.0.1": {"asn": 0, "flags": 2 | 4 | 8}}
    root = x509.load_pem_x509_certificate(ca.cert_pem.bytes())
    certs = doc["x_tls_certificates"][endpoint]
    assert certs["verified"] is True
    assert certs["verify_failure"] is None
    assert certs["issuer"] == root.subject.rfc4514_string()
    assert len(certs["leaf_spki_sha256"]) == 64
    # The endpoint's TCP connect, then the GET, whose handshake is also the endpoint's: two
    # connections, not three (a separate handshake for the endpoint would be the third).
    assert tls_web.connections == 2


def test_tls_failure_is_reported_with_certificate(
    resolver: FakeDNSServer, tls_web: CountingServer
) -> None:
    """Without the test CA the handshake fails as unknown authority; the leaf is still kept."""
    url = f"https://site.test:{tls_web.port}/"
    with helper(lab_config(resolver)) as base:
        doc = control(base, url, [])
    endpoint = f"127.0.0.1:{tls_web.port}"
    assert doc["tls_handshake"][endpoint]["status"] is False
    assert doc["tls_handshake"][endpoint]["failure"] == "ssl_unknown_authority"
    assert doc["ip_info"]["127.0.0.1"]["flags"] & 8 == 0
    spki = (
        x509.load_der_x509_certificate(_leaf_der(tls_web))
        .public_key()
        .public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    )
    assert (
        doc["x_tls_certificates"][endpoint]["leaf_spki_sha256"] == hashlib.sha256(spki).hexdigest()
    )
    assert doc["http_request"]["status_code"] == -1
    assert doc["http_request"]["body_length"] == -1
    assert tls_web.connections == 3 + 1  # connect, GET, a handshake of its own; + _leaf_der


def _leaf_der(server: CountingServer) -> bytes:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection(("127.0.0.1", server.port)) as raw,
        ctx.wrap_socket(raw, server_hostname="site.test") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der
    return der


def test_nxdomain(resolver: FakeDNSServer) -> None:
    with helper(lab_config(resolver)) as base:
        doc = control(base, "http://gone.test/", [])
    assert doc["dns"] == {"failure": "dns_name_error", "addrs": []}
    assert doc["x_dns"] == {"failure": "dns_nxdomain_error", "attempts": 1}
    assert doc["tcp_connect"] == {}
    assert doc["ip_info"] == {}
    http = doc["http_request"]
    assert http["failure"] == "dns_lookup_error"
    assert (http["status_code"], http["body_length"], http["headers"]) == (-1, -1, {})
    assert "gone.test" in queried(resolver)


def test_dns_server_failure(dns_server: Callable[..., FakeDNSServer]) -> None:
    failing = dns_server(zone=ZONE, mode="servfail")
    with helper(HelperConfig(resolver=failing.address, allow_private=True, timeout=3.0)) as base:
        doc = control(base, "http://site.test/", [])
    assert doc["dns"] == {"failure": "dns_server_failure", "addrs": []}
    assert doc["http_request"]["failure"] == "dns_lookup_error"


def losing_resolver(
    dns_server: Callable[..., FakeDNSServer], zone: dict[str, list[str]], lose: int
) -> FakeDNSServer:
    """A resolver that drops the first `lose` queries of each (name, type), as 2% loss on the
    helper's path now and then does, and answers from `zone` after that."""
    seen: dict[tuple[str, int], int] = {}
    server: FakeDNSServer

    def handler(query: dns.message.Message) -> list[tuple[float, dns.message.Message | bytes]]:
        question = query.question[0]
        key = (question.name.to_text().lower().rstrip("."), int(question.rdtype))
        seen[key] = seen.get(key, 0) + 1
        if seen[key] <= lose:
            return []
        return [(0.0, server._answer(query, zone.get(key[0])))]

    server = dns_server(zone=zone, handler=handler)
    return server


def test_lost_dns_query_is_asked_again(
    dns_server: Callable[..., FakeDNSServer], web: CountingServer
) -> None:
    """The first query of every name and type is lost: the helper asks again and measures."""
    losing = losing_resolver(dns_server, ZONE, lose=1)
    url = f"http://site.test:{web.port}/"
    with helper(HelperConfig(resolver=losing.address, allow_private=True, timeout=2.0)) as base:
        doc = control(base, url, [])
    assert doc["dns"] == {"failure": None, "addrs": ["127.0.0.1"]}
    assert doc["x_dns"] == {"failure": None, "attempts": 2}
    assert doc["http_request"]["status_code"] == 200 and doc["http_request"]["failure"] is None
    assert doc["tcp_connect"][f"127.0.0.1:{web.port}"]["status"] is True
    assert queried(losing).count("site.test") == 4  # A and AAAA, twice each; the GET reused them


def test_a_retried_lookup_does_not_eat_the_fetchs_budget(
    dns_server: Callable[..., FakeDNSServer], web: CountingServer
) -> None:
    """The GET gets its whole step after the lookup: a lookup that needed a second send and a
    slow site together take longer than one step, and the page is still fetched."""
    losing = losing_resolver(dns_server, ZONE, lose=1)
    web.delay = 1.7
    with helper(HelperConfig(resolver=losing.address, allow_private=True, timeout=2.0)) as base:
        doc = control(base, f"http://site.test:{web.port}/", [])
    # The second send goes out after a quarter of the step (0.5 s) and the site answers after
    # 1.7 s: a GET whose deadline counted from the request's start would have timed out.
    assert doc["x_dns"]["attempts"] == 2
    assert doc["http_request"]["status_code"] == 200 and doc["http_request"]["failure"] is None


def test_lost_query_of_a_redirect_hop_is_asked_again(
    dns_server: Callable[..., FakeDNSServer], web: CountingServer
) -> None:
    """The GET's own lookup of a redirect's new host retries as well."""
    losing = losing_resolver(dns_server, {**ZONE, "www.site.test": ["127.0.0.1"]}, lose=1)
    final = CountingServer("127.0.0.1")
    web.redirect_to = f"http://www.site.test:{final.port}/"
    try:
        with helper(HelperConfig(resolver=losing.address, allow_private=True, timeout=2.5)) as base:
            doc = control(base, f"http://site.test:{web.port}/", [])
    finally:
        final.close()
    assert doc["http_request"]["status_code"] == 200 and doc["http_request"]["failure"] is None
    assert doc["x_http_request"]["hops"] == 2 and final.connections == 1
    assert queried(losing).count("www.site.test") == 4


def test_dns_timeout_is_a_timeout_not_unknown_error(
    dns_server: Callable[..., FakeDNSServer],
) -> None:
    """A resolver that never answers: the lookup is asked again, then reported as the timeout
    it is (oohelperd would say unknown_error); the GET's failure is oohelperd's
    dns_lookup_error for a timeout while resolving."""
    silent = dns_server(zone=ZONE, mode="silent")
    with helper(HelperConfig(resolver=silent.address, allow_private=True, timeout=1.0)) as base:
        doc = control(base, "http://site.test/", [])
    assert doc["dns"] == {"failure": "generic_timeout_error", "addrs": []}
    assert doc["x_dns"] == {"failure": "generic_timeout_error", "attempts": DNS_ATTEMPTS}
    assert doc["http_request"]["failure"] == "dns_lookup_error"
    assert doc["x_http_request"]["failure"] == "generic_timeout_error"
    assert queried(silent).count("site.test") == 2 * DNS_ATTEMPTS  # A and AAAA


def test_closed_port(resolver: FakeDNSServer) -> None:
    port = closed_port()
    with helper(lab_config(resolver)) as base:
        doc = control(base, f"http://127.0.0.1:{port}/", [f"127.0.0.1:{port}"])
    assert doc["dns"] == {"failure": None, "addrs": []}  # an IP URL is not resolved
    assert doc["tcp_connect"] == {
        f"127.0.0.1:{port}": {"status": False, "failure": "connection_refused_error"}
    }
    assert doc["http_request"]["failure"] == "connection_refused_error"
    assert doc["http_request"]["status_code"] == -1
    assert doc["x_http_request"]["failure"] == "connection_refused"


# --- the address guard, end to end ----------------------------------------------------------


def test_probe_endpoints_on_loopback_are_never_connected(
    resolver: FakeDNSServer, web: CountingServer
) -> None:
    url = f"http://site.test:{web.port}/"  # site.test resolves to 127.0.0.1 too
    with helper(public_config(resolver)) as base:
        doc = control(base, url, [f"127.0.0.1:{web.port}", f"[::ffff:127.0.0.1]:{web.port}"])
    assert web.connections == 0
    assert doc["tcp_connect"] == {}  # bogons: left out, as oohelperd leaves them out
    assert doc["http_request"]["failure"] == FORBIDDEN_FAILURE
    assert doc["http_request"]["status_code"] == -1
    assert doc["dns"] == {"failure": None, "addrs": ["127.0.0.1"]}  # reported, not used


def test_literal_loopback_url_is_never_fetched(
    resolver: FakeDNSServer, web: CountingServer
) -> None:
    with helper(public_config(resolver)) as base:
        doc = control(base, f"http://127.0.0.1:{web.port}/", [])
    assert web.connections == 0
    assert doc["tcp_connect"] == {}  # nothing from the probe, no DNS for an IP URL
    assert doc["http_request"]["failure"] == FORBIDDEN_FAILURE


def test_url_resolving_to_private_addresses_is_refused(resolver: FakeDNSServer) -> None:
    with helper(public_config(resolver)) as base:
        started = time.monotonic()
        doc = control(base, "http://intranet.test/", [])
        doc6 = control(base, "https://metadata.test/", [])
    assert time.monotonic() - started < 3.0  # refused at once, no connect timed out
    assert doc["dns"] == {"failure": None, "addrs": ["10.0.0.1"]}
    assert doc["tcp_connect"] == {}  # a bogon: not measured, as by oohelperd
    assert doc["tls_handshake"] == {}
    assert doc["http_request"]["failure"] == FORBIDDEN_FAILURE
    assert doc["ip_info"] == {"10.0.0.1": {"asn": 0, "flags": 2 | 4}}
    assert doc6["tcp_connect"] == {}
    assert set(doc6["ip_info"]) == {"169.254.169.254", "fd00::1"}
    assert doc6["http_request"]["failure"] == FORBIDDEN_FAILURE


@pytest.mark.parametrize(
    "target",
    [
        "http://127.0.0.1:{port}/admin",  # an IP literal: http_get would not ask the resolver
        "http://site.test:{port}/admin",  # a name resolving to loopback
        "http://[::ffff:127.0.0.1]:{port}/admin",  # loopback dressed as IPv6
        "http://public.test\\@127.0.0.1:{port}/admin",  # parsers disagree on the host
    ],
)
def test_redirect_to_loopback_is_never_followed(resolver: FakeDNSServer, target: str) -> None:
    """127.0.0.2 stands for a public site (exempt); it redirects into the operator's loopback."""
    inside = CountingServer("127.0.0.1")
    outside = CountingServer("127.0.0.2")
    outside.redirect_to = target.format(port=inside.port)
    try:
        config = public_config(resolver, exempt_networks=("127.0.0.2/32",))
        with helper(config) as base:
            doc = control(base, f"http://127.0.0.2:{outside.port}/", [f"127.0.0.2:{outside.port}"])
    finally:
        inside.close()
        outside.close()
    assert outside.connections >= 2  # the TCP check and the GET
    assert doc["tcp_connect"] == {f"127.0.0.2:{outside.port}": {"status": True, "failure": None}}
    assert inside.connections == 0
    assert doc["http_request"]["failure"] == FORBIDDEN_FAILURE
    assert doc["x_http_request"]["failure"] == FORBIDDEN_FAILURE


def test_measured_body_is_capped(resolver: FakeDNSServer, web: CountingServer) -> None:
    with helper(lab_config(resolver, body_cap=16)) as base:
        doc = control(base, f"http://site.test:{web.port}/", [])
    assert doc["http_request"]["body_length"] == 16
    assert doc["x_http_request"]["body_truncated"] is True


def test_redirects_keep_cookies(resolver: FakeDNSServer, web: CountingServer) -> None:
    with helper(lab_config(resolver)) as base:
        doc = control(base, f"http://site.test:{web.port}/login", [])
    assert doc["http_request"]["status_code"] == 200
    assert doc["http_request"]["title"] == "Censorscope test page"
    assert doc["x_http_request"]["hops"] == 2


def test_redirect_loop_stops(resolver: FakeDNSServer, web: CountingServer) -> None:
    with helper(lab_config(resolver)) as base:
        doc = control(base, f"http://site.test:{web.port}/loop", [])
    assert doc["http_request"]["failure"] == "unknown_error"
    assert doc["http_request"]["status_code"] == -1
    assert doc["x_http_request"]["failure"] == "unknown_failure: stopped after 10 redirects"
    assert len(web.seen_headers) == 11


# --- bad requests, limits, throttling -------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"{not json", "not JSON"),
        (b"[1, 2]", "JSON object"),
        (b"{}", "http_request"),
        (b'{"http_request": "ftp://example.org/"}', "scheme"),
        (b'{"http_request": "http://[::1/"}', "not a valid URL"),
        (b'{"http_request": "http:///nohost"}', "no host"),
        (b'{"http_request": "http://a.test/", "tcp_connect": "1.1.1.1:80"}', "list"),
        (b'{"http_request": "http://a.test/", "tcp_connect": ["a.test:80"]}', "not an IP"),
        (b'{"http_request": "http://a.test/", "tcp_connect": ["1.1.1.1:99999"]}', "bad port"),
        (b'{"http_request": "http://a.test/", "tcp_connect": ["::1:80"]}', "brackets"),
        (b'{"http_request": "http://a.test/", "http_request_headers": {"A": "b"}}', "list"),
        (b'{"http_request": "http://a.test/", "x_quic_enabled": "yes"}', "boolean"),
        (
            b'{"http_request": "http://a.test/", "tcp_connect": ["1.1.1.1:80", "1.1.1.2:80",'
            b' "1.1.1.3:80"]}',
            "more than the limit 2",
        ),
    ],
)
def test_bad_requests_get_400(resolver: FakeDNSServer, body: bytes, fragment: str) -> None:
    with helper(public_config(resolver, max_tcp_endpoints=2)) as base:
        reply = httpx.post(base, content=body, timeout=10)
    assert reply.status_code == 400
    assert fragment in reply.json()["error"]
    assert queried(resolver) == []  # nothing was measured


def test_oversized_body_gets_400_as_from_oohelperd(resolver: FakeDNSServer) -> None:
    body = b'{"http_request": "http://a.test/", "pad": "' + b"x" * 2048 + b'"}'

    def chunked() -> Iterator[bytes]:  # no Content-Length: the stream itself is counted
        yield from (body[i : i + 100] for i in range(0, len(body), 100))

    with helper(public_config(resolver, max_request_bytes=1024)) as base:
        declared = httpx.post(base, content=body, timeout=10)
        streamed = httpx.post(base, content=chunked(), timeout=10)
        small = httpx.post(base, content=b'{"http_request": "http://gone.test/"}', timeout=10)
    assert declared.status_code == 400
    assert streamed.status_code == 400
    assert "1024" in streamed.json()["error"]
    assert small.status_code == 200


def test_throttled_when_too_many_in_flight(resolver: FakeDNSServer, web: CountingServer) -> None:
    web.delay = 1.5
    url = f"http://site.test:{web.port}/"
    results: list[int] = []
    with helper(lab_config(resolver, max_inflight=1)) as base:
        first = threading.Thread(
            target=lambda: results.append(
                httpx.post(base, json={"http_request": url}, timeout=30).status_code
            )
        )
        first.start()
        deadline = time.monotonic() + 5
        while not web.seen_headers:  # the first request is now inside the helper
            assert time.monotonic() < deadline
            time.sleep(0.01)
        second = httpx.post(base, json={"http_request": url}, timeout=30)
        first.join(30)
        third = httpx.post(base, json={"http_request": "http://gone.test/"}, timeout=30)
    assert second.status_code == 503
    assert "in flight" in second.json()["error"]
    assert results == [200]
    assert third.status_code == 200  # the slot is free again


def test_control_client_asks_a_busy_helper_again(
    resolver: FakeDNSServer, web: CountingServer
) -> None:
    """Two nettest requests, one helper slot: the second gets 503, backs off and succeeds."""

    web.delay = 0.3
    url = f"http://site.test:{web.port}/"

    async def both(base: str) -> list[ControlResult]:
        client = ControlClient([base], timeout=10.0, ca_file=None)
        try:
            return list(await asyncio.gather(*(client.measure(url, [], {}) for _ in range(2))))
        finally:
            await client.aclose()

    with helper(lab_config(resolver, max_inflight=1)) as base:
        results = asyncio.run(both(base))
    assert [r.failure for r in results] == [None, None]
    assert sorted(r.attempts for r in results) == [1, 2]
    assert all(r.control["http_request"]["status_code"] == 200 for r in results)


def test_slow_site_times_out(resolver: FakeDNSServer, web: CountingServer) -> None:
    web.delay = 4.0
    url = f"http://site.test:{web.port}/"
    with helper(lab_config(resolver, timeout=1.0)) as base:
        started = time.monotonic()
        doc = control(base, url, [])
    assert time.monotonic() - started < 4.0
    assert doc["http_request"]["failure"] == "generic_timeout_error"
    assert doc["tcp_connect"][f"127.0.0.1:{web.port}"]["status"] is True


def test_serve_runs_uvicorn_and_logs(resolver: FakeDNSServer) -> None:
    """serve() as `censorscope helper` runs it: a separate process, one log line per request."""
    port = closed_port()
    code = (
        "from backend.helper import HelperConfig, serve; "
        f"serve('127.0.0.1:{port}', HelperConfig(resolver={resolver.address!r}, timeout=3.0))"
    )
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen(
        [sys.executable, "-c", code], cwd=root, stderr=subprocess.PIPE, text=True
    )
    try:
        base = f"http://127.0.0.1:{port}/"
        deadline = time.monotonic() + 15
        while True:
            try:
                greeting = httpx.get(base, timeout=2)
                break
            except httpx.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline, "helper did not start"
                time.sleep(0.05)
        refused = httpx.post(base, content=b"[]", timeout=10)
        answered = httpx.post(base, json={"http_request": "http://gone.test/"}, timeout=10)
    finally:
        proc.terminate()
        _, stderr = proc.communicate(timeout=10)
    assert greeting.json() == GREETING
    assert greeting.headers["server"].startswith("censorscope-helper/")
    assert refused.status_code == 400
    assert answered.json()["dns"]["failure"] == "dns_name_error"
    assert "400 request body must be a JSON object" in stderr
    assert "http://gone.test/ endpoints=0 dns=dns_name_error http=dns_lookup_error" in stderr


# --- pure parts ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ip",
    [
        "127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1",
        "0.0.0.0", "224.0.0.1", "255.255.255.255", "192.0.2.1", "198.18.0.1", "::", "::1",
        "fe80::1", "fd12::1", "ff02::1", "::ffff:10.0.0.1", "2002:808:808::", "64:ff9b::a00:1",
        "2001:db8::1", "2001:0:4136:e378:8000:63bf:3fff:fdd2", "not-an-ip", "",
    ],
)  # fmt: skip
def test_guard_refuses_special_addresses(ip: str) -> None:
    assert is_special(ip)
    assert not AddressGuard().allows(ip)
    assert AddressGuard.build(True).allows(ip) is (ip not in ("not-an-ip", ""))


@pytest.mark.parametrize("ip", ["8.8.8.8", "93.184.216.34", "2606:4700::1111", "64:ff9b::808:808"])
def test_guard_allows_public_addresses(ip: str) -> None:
    assert AddressGuard().allows(ip)


@given(st.ip_addresses())
def test_guard_never_allows_a_non_global_address(addr: Any) -> None:
    if not addr.is_global or addr.is_multicast:
        assert not AddressGuard().allows(str(addr))


def test_guard_exemptions_are_narrow() -> None:
    guard = AddressGuard.build(False, ["10.9.0.0/16"])
    assert guard.allows("10.9.1.1")
    assert not guard.allows("10.8.1.1")
    assert not guard.allows("127.0.0.1")
    with pytest.raises(ValueError, match="bad exempt network"):
        AddressGuard.build(False, ["10.9.0.0/99"])
    with pytest.raises(ValueError, match="bad exempt network"):
        HelperConfig(exempt_networks=("nonsense",))


def test_endpoint_plan_follows_oohelperd() -> None:
    guard = AddressGuard()
    http = parse_request(b'{"http_request": "http://a.test/"}', max_tcp_endpoints=4)
    https = parse_request(b'{"http_request": "https://a.test/"}', max_tcp_endpoints=4)
    port = parse_request(b'{"http_request": "http://a.test:8080/"}', max_tcp_endpoints=4)
    plan = plan_endpoints(http, ["8.8.8.8", "2606:4700::1111"], guard)
    assert [(e.key, e.tls) for e in plan] == [
        ("8.8.8.8:443", True),
        ("8.8.8.8:80", False),
        ("[2606:4700::1111]:443", True),
        ("[2606:4700::1111]:80", False),
    ]
    assert [(e.key, e.tls) for e in plan_endpoints(https, ["8.8.8.8"], guard)] == [
        ("8.8.8.8:443", True)
    ]
    assert [(e.key, e.tls) for e in plan_endpoints(port, ["8.8.8.8"], guard)] == [
        ("8.8.8.8:8080", False)
    ]
    assert [e.allowed for e in plan_endpoints(https, ["10.0.0.1"], guard)] == [False]


def test_legacy_failure_strings() -> None:
    assert map_dns_failure("dns_nxdomain_error") == "dns_name_error"
    assert map_dns_failure("dns_no_answer") is None
    assert map_dns_failure("dns_servfail_error") == "dns_server_failure"
    # oohelperd says unknown_error for a timeout; ours never does (helper_protocol.py).
    assert map_dns_failure("generic_timeout_error") == "generic_timeout_error"
    assert map_dns_failure("unknown_failure: weird") == "unknown_error"
    assert map_tcp_failure("connection_refused") == "connection_refused_error"
    assert map_tcp_failure("generic_timeout_error") == "generic_timeout_error"
    assert map_tcp_failure("connection_reset") == "connect_error"
    assert map_http_failure("dns_nxdomain_error") == "dns_lookup_error"
    assert map_http_failure("generic_timeout_error") == "generic_timeout_error"
    assert map_http_failure("generic_timeout_error", during_dns=True) == "dns_lookup_error"
    assert map_http_failure("connection_refused") == "connection_refused_error"
    assert map_http_failure("ssl_invalid_hostname") == "unknown_error"
    assert map_http_failure(FORBIDDEN_FAILURE) == FORBIDDEN_FAILURE
    assert canonical_header("x-frame-OPTIONS") == "X-Frame-Options"


def test_request_parsing_keeps_the_probe_view() -> None:
    req = parse_request(
        b'{"http_request": "https://[2001:db8::1]:8443/x", "tcp_connect": ["[2001:db8::1]:8443"],'
        b' "unknown_future_key": 1}',
        max_tcp_endpoints=1,
    )
    assert (req.scheme, req.hostname, req.port, req.host_is_ip) == (
        "https",
        "2001:db8::1",
        8443,
        True,
    )
    assert req.tcp_connect == ["[2001:db8::1]:8443"]
    with pytest.raises(BadRequest, match="control character"):
        parse_request(
            b'{"http_request": "http://a.test/", "http_request_headers": {"A": ["b\\r\\nX: y"]}}',
            max_tcp_endpoints=1,
        )


def test_parse_listen() -> None:
    assert parse_listen("127.0.0.1:8080") == ("127.0.0.1", 8080)
    assert parse_listen("[::1]:9000") == ("::1", 9000)
    with pytest.raises(ValueError):
        parse_listen("127.0.0.1:http")


def test_control_client_asks_an_unreachable_helper_once() -> None:
    """A helper that did not answer its greeting is not retried for every input."""
    closed = f"http://127.0.0.1:{closed_port()}/"

    async def ask() -> ControlResult:
        client = ControlClient([closed], timeout=5.0, ca_file=None)
        try:
            assert await client.choose() is not None  # unreachable
            return await client.measure("http://site.test/", [], {})
        finally:
            await client.aclose()

    result = asyncio.run(ask())
    assert result.failure is not None and "connection_refused" in result.failure
    assert result.attempts == 1


def test_a_newline_in_the_url_cannot_forge_a_log_line(
    resolver: FakeDNSServer, caplog: pytest.LogCaptureFixture
) -> None:
    """The logged URL is the client's text: control characters are escaped, never a new line.
    Both requests are refused (400), as oohelperd refuses a URL Go's url.Parse rejects."""
    forged = "http://gone.test/\n<#999> http://bank.test/ endpoints=0\r\x1b[2K\u2028x"
    with (
        caplog.at_level("INFO", logger="censorscope.helper"),
        helper(public_config(resolver)) as base,
    ):
        answered = httpx.post(base, json={"http_request": forged}, timeout=10)
        refused = httpx.post(base, json={"http_request": forged, "tcp_connect": 1}, timeout=10)
    assert (answered.status_code, refused.status_code) == (400, 400)
    lines = [r.getMessage() for r in caplog.records if r.name == "censorscope.helper"]
    assert any("http://gone.test/\\n<#999> http://bank.test/" in line for line in lines), lines
    for line in lines:
        assert not any(c in line for c in "\n\r\x1b\u2028"), line
