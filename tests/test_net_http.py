from __future__ import annotations

import json
import time

import pytest

from probes.net.failures import NetworkFailure
from probes.net.http import aclose, extract_title, http_get, make_client
from tests.loopback import DEFAULT_TITLE, LoopbackSuite, blockpage_fingerprint

pytestmark = pytest.mark.anyio


class resolver_for:
    """The probe's DNS as a callable; records what it was asked."""

    def __init__(self, mapping: dict[str, list[str]]) -> None:
        self.mapping = mapping
        self.asked: list[str] = []

    async def __call__(self, host: str) -> list[str]:
        self.asked.append(host)
        if host not in self.mapping:
            raise NetworkFailure("dns_nxdomain_error")
        return self.mapping[host]


async def test_made_up_hostname_is_fetched_through_the_resolve_callable(
    loopback: LoopbackSuite,
) -> None:
    resolve = resolver_for({"made-up.invalid": [loopback.host]})
    url = loopback.http.url("/echo", host="made-up.invalid")
    res = await http_get(url, resolve=resolve, timeout=5, t_zero=time.monotonic())
    assert res.failure is None and res.status_code == 200
    assert resolve.asked == ["made-up.invalid"]
    seen = json.loads(res.body)
    host_header = [v for k, v in seen["headers"] if k.lower() == "host"]
    assert host_header == [f"made-up.invalid:{loopback.http.port}"]
    assert res.address == f"{loopback.host}:{loopback.http.port}"
    assert res.requests[0]["request"]["url"] == url


async def test_page_title_and_record(loopback: LoopbackSuite) -> None:
    resolve = resolver_for({"site.test": [loopback.host]})
    url = loopback.http.url("/", host="site.test")
    res = await http_get(url, resolve=resolve, timeout=5, t_zero=time.monotonic())
    assert res.title == DEFAULT_TITLE
    assert res.headers["Server"] == "censorscope-loopback"
    (req,) = res.requests
    assert req["failure"] is None
    assert req["request"]["method"] == "GET"
    assert req["request"]["tor"] == {"exit_ip": None, "exit_name": None, "is_tor": False}
    assert req["request"]["headers"]["User-Agent"].startswith("Mozilla/5.0")
    assert ["Host", f"site.test:{loopback.http.port}"] in req["request"]["headers_list"]
    assert req["response"]["code"] == 200
    assert isinstance(req["response"]["body"], str) and DEFAULT_TITLE in req["response"]["body"]
    assert req["response"]["body_is_truncated"] is False
    assert 0 <= req["t0"] <= req["t"] <= res.t
    ops = [e["operation"] for e in res.network_events]
    assert ops[0] == "http_transaction_start" and ops[-1] == "http_transaction_done"
    assert "connect" in ops


async def test_https_verifies_the_real_hostname(loopback: LoopbackSuite) -> None:
    resolve = resolver_for({"secure.test": [loopback.host]})
    url = loopback.https.url("/echo", host="secure.test")
    res = await http_get(
        url, resolve=resolve, timeout=5, t_zero=time.monotonic(), ca_file=loopback.ca.ca_pem_path
    )
    assert res.failure is None and res.status_code == 200
    (tls,) = res.tls_handshakes
    assert tls["server_name"] == "secure.test" and tls["failure"] is None
    assert tls["peer_certificates"]
    ops = [e["operation"] for e in res.network_events]
    assert "tls_handshake_start" in ops and "tls_handshake_done" in ops


async def test_https_unknown_authority(loopback: LoopbackSuite) -> None:
    resolve = resolver_for({"secure.test": [loopback.host]})
    url = loopback.https.url("/", host="secure.test")
    res = await http_get(url, resolve=resolve, timeout=5, t_zero=time.monotonic())
    assert res.failure == "ssl_unknown_authority"
    assert res.requests[0]["failure"] == "ssl_unknown_authority"
    assert res.requests[0]["response"]["code"] == 0


async def test_https_wrong_hostname(loopback: LoopbackSuite) -> None:
    resolve = resolver_for({"secure.test": [loopback.host]})
    url = loopback.https_wrong_name.url("/", host="secure.test")
    res = await http_get(
        url, resolve=resolve, timeout=5, t_zero=time.monotonic(), ca_file=loopback.ca.ca_pem_path
    )
    assert res.failure == "ssl_invalid_hostname"


async def test_redirect_hops_are_recorded_newest_first(loopback: LoopbackSuite) -> None:
    resolve = resolver_for({"hops.test": [loopback.host]})
    url = loopback.http.url("/redirect/2", host="hops.test")
    res = await http_get(url, resolve=resolve, timeout=5, t_zero=time.monotonic())
    assert res.failure is None and res.status_code == 200 and res.title == DEFAULT_TITLE
    base = f"http://hops.test:{loopback.http.port}"
    assert [r["request"]["url"] for r in res.requests] == [
        f"{base}/",
        f"{base}/redirect/0",
        f"{base}/redirect/1",
        f"{base}/redirect/2",
    ]
    assert [r["response"]["code"] for r in res.requests] == [200, 302, 302, 302]
    assert res.final_url == f"{base}/"
    t0s = [r["t0"] for r in res.requests]
    assert t0s == sorted(t0s, reverse=True)


async def test_cross_host_redirect_resolves_each_host(loopback: LoopbackSuite) -> None:
    resolve = resolver_for({"a.test": [loopback.host], "b.test": [loopback.host]})
    target = loopback.https.url("/", host="b.test")
    url = loopback.http.url(f"/redirect-to?url={target}", host="a.test")
    res = await http_get(
        url, resolve=resolve, timeout=5, t_zero=time.monotonic(), ca_file=loopback.ca.ca_pem_path
    )
    assert res.failure is None and res.final_url == target
    assert resolve.asked == ["a.test", "b.test"]


async def test_redirect_to_unresolvable_host_keeps_dns_failure(loopback: LoopbackSuite) -> None:
    resolve = resolver_for({"a.test": [loopback.host]})
    url = loopback.http.url("/redirect-to?url=http://gone.test/", host="a.test")
    res = await http_get(url, resolve=resolve, timeout=5, t_zero=time.monotonic())
    assert res.failure == "dns_nxdomain_error"
    assert [r["failure"] for r in res.requests] == ["dns_nxdomain_error", None]


async def test_too_many_redirects(loopback: LoopbackSuite) -> None:
    resolve = resolver_for({"hops.test": [loopback.host]})
    url = loopback.http.url("/redirect/5", host="hops.test")
    res = await http_get(url, resolve=resolve, timeout=5, t_zero=time.monotonic(), max_redirects=2)
    assert res.failure is not None and res.failure.startswith("unknown_failure: ")
    assert len(res.requests) == 3


async def test_cookies_follow_redirects(loopback: LoopbackSuite) -> None:
    resolve = resolver_for({"c.test": [loopback.host]})
    url = loopback.http.url("/set-cookie", host="c.test")
    res = await http_get(url, resolve=resolve, timeout=5, t_zero=time.monotonic())
    seen = json.loads(res.body)
    assert ["Cookie", "probe=yes"] in [list(h) for h in seen["headers"]]


async def test_body_cap(loopback: LoopbackSuite) -> None:
    resolve = resolver_for({"big.test": [loopback.host]})
    url = loopback.http.url("/big?size=300000", host="big.test")
    res = await http_get(url, resolve=resolve, timeout=5, t_zero=time.monotonic(), body_cap=100_000)
    assert res.failure is None
    assert len(res.body) == 100_000 and res.body_truncated
    assert res.requests[0]["response"]["body_is_truncated"] is True
    whole = await http_get(
        url, resolve=resolve, timeout=5, t_zero=time.monotonic(), body_cap=300_000
    )
    assert len(whole.body) == 300_000 and not whole.body_truncated


async def test_binary_body_is_base64_in_record(loopback: LoopbackSuite) -> None:
    resolve = resolver_for({"bin.test": [loopback.host]})
    url = loopback.http.url("/binary", host="bin.test")
    res = await http_get(url, resolve=resolve, timeout=5, t_zero=time.monotonic())
    body = res.requests[0]["response"]["body"]
    assert body["format"] == "base64" and body["data"]


async def test_reset_on_keyword(loopback: LoopbackSuite) -> None:
    resolve = resolver_for({"r.test": [loopback.host]})
    bad = loopback.reset_http.url(f"/?q={loopback.keyword}", host="r.test")
    res = await http_get(bad, resolve=resolve, timeout=5, t_zero=time.monotonic())
    assert res.failure == "connection_reset"
    assert res.requests[0]["failure"] == "connection_reset"
    good = await http_get(
        loopback.reset_http.url("/?q=benign", host="r.test"),
        resolve=resolve,
        timeout=5,
        t_zero=time.monotonic(),
    )
    assert good.failure is None and good.status_code == 200


async def test_reset_on_sni_keyword_over_https(loopback: LoopbackSuite) -> None:
    host = f"{loopback.keyword}.test"
    resolve = resolver_for({host: [loopback.host]})
    res = await http_get(
        loopback.reset_https.url("/", host=host),
        resolve=resolve,
        timeout=5,
        t_zero=time.monotonic(),
        ca_file=loopback.ca.ca_pem_path,
    )
    assert res.failure == "connection_reset"


async def test_timeout_when_server_never_answers(loopback: LoopbackSuite) -> None:
    resolve = resolver_for({"slow.test": [loopback.host]})
    res = await http_get(
        loopback.silent.url("/", host="slow.test"),
        resolve=resolve,
        timeout=0.3,
        t_zero=time.monotonic(),
    )
    assert res.failure == "generic_timeout_error"
    assert res.requests[0]["failure"] == "generic_timeout_error"


async def test_refused_then_next_address(loopback: LoopbackSuite) -> None:
    # Same port on two hosts: nothing listens on 127.0.0.5, the site is on the suite host.
    resolve = resolver_for({"multi.test": ["127.0.0.5", loopback.host]})
    res = await http_get(
        loopback.http.url("/", host="multi.test"),
        resolve=resolve,
        timeout=5,
        t_zero=time.monotonic(),
    )
    assert res.failure is None and res.address == f"{loopback.host}:{loopback.http.port}"
    connects = [e for e in res.network_events if e["operation"] == "connect"]
    assert [c["failure"] for c in connects] == ["connection_refused", None]


async def test_all_addresses_refused(loopback: LoopbackSuite) -> None:
    resolve = resolver_for({"closed.test": [loopback.host]})
    res = await http_get(
        f"http://closed.test:{loopback.closed_port}/",
        resolve=resolve,
        timeout=5,
        t_zero=time.monotonic(),
    )
    assert res.failure == "connection_refused"


async def test_blockpage_body_matches_fingerprint(loopback: LoopbackSuite) -> None:
    resolve = resolver_for({"blocked.test": [loopback.host]})
    res = await http_get(
        loopback.blockpage.url("/", host="blocked.test"),
        resolve=resolve,
        timeout=5,
        t_zero=time.monotonic(),
    )
    assert blockpage_fingerprint().pattern.encode() in res.body


async def test_shared_client(loopback: LoopbackSuite) -> None:
    client = make_client(ca_file=loopback.ca.ca_pem_path)
    try:
        resolve = resolver_for({"one.test": [loopback.host], "two.test": [loopback.host]})
        for host in ("one.test", "two.test"):
            res = await http_get(
                loopback.https.url("/", host=host),
                resolve=resolve,
                timeout=5,
                t_zero=time.monotonic(),
                client=client,
            )
            assert res.failure is None
            assert res.tls_handshakes[0]["server_name"] == host  # no connection reuse
    finally:
        await aclose(client)


def test_extract_title() -> None:
    assert extract_title(b"<html><TITLE lang=en>\n A &amp; B </title>") == "A & B"
    assert extract_title(b"<html>no title</html>") is None


async def test_eof_when_server_closes_without_answer(loopback: LoopbackSuite) -> None:
    resolve = resolver_for({"eof.test": [loopback.host]})
    res = await http_get(
        loopback.closer.url("/", host="eof.test"),
        resolve=resolve,
        timeout=5,
        t_zero=time.monotonic(),
    )
    assert res.failure == "eof_error"
