from __future__ import annotations

import base64
import time
from collections.abc import Callable

import dns.message
import pytest

from probes.net.dns import DNS_ATTEMPTS, resolve, resolve_both, resolve_retrying
from tests.loopback import BOGON_ANSWERS, FakeDNSServer, TestCA

pytestmark = pytest.mark.anyio

ZONE = {"example.test": ["127.0.0.2", "::2"], "v4only.test": ["127.0.0.4"]}
MakeDNS = Callable[..., FakeDNSServer]


async def test_udp_truthful_answer_and_record(dns_server: MakeDNS) -> None:
    srv = dns_server(zone=ZONE)
    res = await resolve("example.test", resolver=srv.address, t_zero=time.monotonic())
    assert res.failure is None
    assert res.addrs == ["127.0.0.2"]
    assert res.resolver == srv.address
    (q,) = res.queries
    assert q["engine"] == "udp" and q["resolver_address"] == srv.address
    assert q["hostname"] == "example.test" and q["query_type"] == "A"
    assert q["answers"] == [{"answer_type": "A", "ttl": 60, "ipv4": "127.0.0.2"}]
    assert q["failure"] is None and q["rcode"] == 0
    wire = dns.message.from_wire(base64.b64decode(q["raw_response"]))
    assert wire.answer[0][0].address == "127.0.0.2"
    assert 0 <= res.t0 <= res.t
    assert srv.log == [{"name": "example.test", "type": "A", "transport": "udp"}]


async def test_nxdomain(dns_server: MakeDNS) -> None:
    srv = dns_server(zone=ZONE)
    res = await resolve("missing.test", resolver=srv.address, t_zero=time.monotonic())
    assert res.failure == "dns_nxdomain_error"
    assert res.queries[0]["failure"] == "dns_nxdomain_error"
    assert res.addrs == []


async def test_no_answer_for_missing_family(dns_server: MakeDNS) -> None:
    srv = dns_server(zone=ZONE)
    res = await resolve(
        "v4only.test", query_type="AAAA", resolver=srv.address, t_zero=time.monotonic()
    )
    assert res.failure == "dns_no_answer"


@pytest.mark.parametrize(
    ("mode", "failure"), [("servfail", "dns_servfail_error"), ("refused", "dns_refused_error")]
)
async def test_error_rcodes(dns_server: MakeDNS, mode: str, failure: str) -> None:
    srv = dns_server(zone=ZONE, mode=mode)
    res = await resolve("example.test", resolver=srv.address, t_zero=time.monotonic())
    assert res.failure == failure


async def test_timeout_against_silent_server(dns_server: MakeDNS) -> None:
    srv = dns_server(zone=ZONE, mode="silent")
    res = await resolve("example.test", resolver=srv.address, timeout=0.2, t_zero=time.monotonic())
    assert res.failure == "generic_timeout_error"
    assert res.queries[0]["failure"] == "generic_timeout_error"
    assert srv.log  # the query did arrive: silence, not loss


async def test_lying_and_bogon_modes(dns_server: MakeDNS) -> None:
    liar = dns_server(zone=ZONE, mode="lying", lies={"*": ["192.0.2.7"]})
    res = await resolve("example.test", resolver=liar.address, t_zero=time.monotonic())
    assert res.addrs == ["192.0.2.7"]
    bogon = dns_server(zone=ZONE, mode="bogon")
    res = await resolve("example.test", resolver=bogon.address, t_zero=time.monotonic())
    assert res.addrs == [BOGON_ANSWERS[0]]


async def test_targets_limit_the_mode(dns_server: MakeDNS) -> None:
    srv = dns_server(zone=ZONE, mode="nxdomain", targets=["v4only.test"])
    ok = await resolve("example.test", resolver=srv.address, t_zero=time.monotonic())
    blocked = await resolve("v4only.test", resolver=srv.address, t_zero=time.monotonic())
    assert ok.addrs == ["127.0.0.2"] and blocked.failure == "dns_nxdomain_error"


async def test_injected_answers_before_real_one_all_recorded(dns_server: MakeDNS) -> None:
    srv = dns_server(zone=ZONE, mode="inject_before", lies={"*": ["10.10.34.35"]}, inject_count=2)
    res = await resolve(
        "example.test", resolver=srv.address, t_zero=time.monotonic(), listen_window=0.3
    )
    # The first valid response is a forged one: that is what a stub resolver would use.
    assert res.addrs == ["10.10.34.35"]
    assert [r["addrs"] for r in res.extra_responses] == [
        ["10.10.34.35"],
        ["10.10.34.35"],
        ["127.0.0.2"],
    ]
    assert all(r["valid"] and r["rcode"] == 0 for r in res.extra_responses)
    times = [r["t"] for r in res.extra_responses]
    assert times == sorted(times)
    assert all(base64.b64decode(r["raw"]) for r in res.extra_responses)


async def test_injection_after_real_answer_needs_listen_window(dns_server: MakeDNS) -> None:
    srv = dns_server(zone=ZONE, mode="inject_after", inject_count=1, inject_delay=0.05)
    quick = await resolve("example.test", resolver=srv.address, t_zero=time.monotonic())
    assert quick.addrs == ["127.0.0.2"]
    assert len(quick.extra_responses) == 1
    patient = await resolve(
        "example.test", resolver=srv.address, t_zero=time.monotonic(), listen_window=0.5
    )
    assert patient.addrs == ["127.0.0.2"]
    assert [r["addrs"] for r in patient.extra_responses] == [["127.0.0.2"], ["1.2.3.4"]]


async def test_response_with_wrong_id_is_recorded_not_used(dns_server: MakeDNS) -> None:
    def handler(query: dns.message.Message) -> list[tuple[float, dns.message.Message | bytes]]:
        forged = dns.message.make_response(query)
        forged.id = (query.id + 1) % 65536
        real = dns.message.make_response(query)
        real.answer.append(dns.rrset.from_text(query.question[0].name, 30, "IN", "A", "127.0.0.9"))
        return [(0.0, forged), (0.0, b"\x00garbage"), (0.02, real)]

    srv = dns_server(handler=handler)
    res = await resolve(
        "example.test", resolver=srv.address, t_zero=time.monotonic(), listen_window=0.05
    )
    assert res.addrs == ["127.0.0.9"]
    assert [(r["valid"], r["id_match"]) for r in res.extra_responses] == [
        (False, False),
        (False, False),
        (True, True),
    ]


async def test_tcp_transport(dns_server: MakeDNS) -> None:
    srv = dns_server(zone=ZONE)
    res = await resolve(
        "example.test",
        query_type="AAAA",
        resolver=srv.address,
        transport="tcp",
        t_zero=time.monotonic(),
    )
    assert res.failure is None and res.addrs == ["::2"]
    assert res.queries[0]["engine"] == "tcp"
    assert res.queries[0]["answers"][0]["ipv6"] == "::2"
    assert srv.log[-1]["transport"] == "tcp"


async def test_tcp_nxdomain_and_refused(dns_server: MakeDNS) -> None:
    from tests.loopback import closed_port

    srv = dns_server(zone=ZONE)
    res = await resolve("nope.test", resolver=srv.address, transport="tcp", t_zero=time.monotonic())
    assert res.failure == "dns_nxdomain_error"
    port = closed_port("127.0.0.3")
    res = await resolve(
        "example.test", resolver=f"127.0.0.3:{port}", transport="tcp", t_zero=time.monotonic()
    )
    assert res.failure == "connection_refused"


async def test_dot_transport(dns_server: MakeDNS, test_ca: TestCA) -> None:
    srv = dns_server(zone=ZONE, dot_context=test_ca.server_context())
    res = await resolve(
        "example.test",
        resolver=f"127.0.0.3:{srv.dot_port}",
        transport="dot",
        ca_file=test_ca.ca_pem_path,
        t_zero=time.monotonic(),
    )
    assert res.failure is None and res.addrs == ["127.0.0.2"]
    assert srv.log[-1]["transport"] == "dot"


async def test_resolve_both(dns_server: MakeDNS) -> None:
    srv = dns_server(zone=ZONE)
    a, aaaa = await resolve_both("example.test", resolver=srv.address, t_zero=time.monotonic())
    assert (a.query_type, a.addrs) == ("A", ["127.0.0.2"])
    assert (aaaa.query_type, aaaa.addrs) == ("AAAA", ["::2"])


async def test_resolve_retrying_asks_again_after_a_lost_query(dns_server: MakeDNS) -> None:
    """The first query of each name gets no answer (a lost datagram): the second does."""
    seen: set[str] = set()
    srv: FakeDNSServer

    def lose_first(query: dns.message.Message) -> list[tuple[float, dns.message.Message | bytes]]:
        name = query.question[0].name.to_text()
        if name in seen:
            return [(0.0, srv._answer(query, ZONE["example.test"]))]
        seen.add(name)
        return []

    srv = dns_server(handler=lose_first)
    res = await resolve_retrying(
        "example.test", resolver=srv.address, timeout=1.5, t_zero=time.monotonic()
    )
    assert (res.failure, res.addrs) == (None, ["127.0.0.2"])
    # One socket, the query sent again after a third of the time: one record, two sends.
    assert [q["failure"] for q in res.queries] == [None]
    assert res.queries[0]["x_transmissions"] == res.transmissions == 2
    assert len(srv.log) == 2


async def test_resolve_retrying_keeps_listening_for_a_slow_answer(dns_server: MakeDNS) -> None:
    """The first query's answer comes after the retransmission: it still counts, as a stub
    resolver's would (a cut-off attempt would have lost it)."""
    srv: FakeDNSServer

    def slow_first(query: dns.message.Message) -> list[tuple[float, dns.message.Message | bytes]]:
        if len(srv.log) == 1:
            # After the second send (at a quarter of the 1.6 s), before the third (at half).
            return [(0.6, srv._answer(query, ZONE["example.test"]))]
        return []  # the retransmissions are lost

    srv = dns_server(handler=slow_first)
    res = await resolve_retrying(
        "example.test",
        resolver=srv.address,
        timeout=1.6,
        attempts=4,
        t_zero=time.monotonic(),
    )
    assert (res.failure, res.addrs) == (None, ["127.0.0.2"])
    assert res.transmissions == 2 and len(srv.log) == 2


async def test_resolve_retrying_gives_up_after_every_transmission(dns_server: MakeDNS) -> None:
    srv = dns_server(zone=ZONE, mode="silent")
    res = await resolve_retrying(
        "example.test", resolver=srv.address, timeout=0.6, t_zero=time.monotonic()
    )
    assert res.failure == "generic_timeout_error" and res.transmissions == DNS_ATTEMPTS
    assert len(srv.log) == DNS_ATTEMPTS and len(res.queries) == 1


async def test_resolve_retrying_does_not_ask_again_after_an_answer(dns_server: MakeDNS) -> None:
    srv = dns_server(zone=ZONE, nxdomain=["gone.test"])
    res = await resolve_retrying(
        "gone.test", resolver=srv.address, timeout=1.0, t_zero=time.monotonic()
    )
    assert res.failure == "dns_nxdomain_error" and len(res.queries) == 1


async def test_system_resolver_localhost() -> None:
    res = await resolve("localhost", resolver=None, t_zero=time.monotonic())
    assert res.failure is None and "127.0.0.1" in res.addrs
    q = res.queries[0]
    assert q["engine"] == "getaddrinfo" and q["resolver_address"] == ""
    assert {"answer_type": "A", "ipv4": "127.0.0.1", "ttl": None} in q["answers"]


async def test_system_lookup_of_both_families_is_one_query() -> None:
    """One getaddrinfo for both families is one "ANY" entry, as OONI's probe records it; a
    family the name lacks (/etc/hosts often maps localhost to 127.0.0.1 only) is no failure."""
    res = await resolve("localhost", query_type="ANY", resolver=None, t_zero=time.monotonic())
    assert res.failure is None and "127.0.0.1" in res.addrs
    (q,) = res.queries
    assert (q["engine"], q["query_type"], q["failure"]) == ("getaddrinfo", "ANY", None)
    assert {"answer_type": "A", "ipv4": "127.0.0.1", "ttl": None} in q["answers"]
    for answer in q["answers"]:
        key = "ipv6" if answer["answer_type"] == "AAAA" else "ipv4"
        assert answer[key] in res.addrs


async def test_system_resolver_only_answers_address_queries() -> None:
    with pytest.raises(ValueError, match="system resolver"):
        await resolve("localhost", query_type="TXT", resolver=None, t_zero=0.0)


async def test_unknown_transport_is_a_programming_error() -> None:
    with pytest.raises(ValueError):
        await resolve("x.test", resolver="127.0.0.1", transport="carrier-pigeon", t_zero=0.0)


async def test_udp_to_closed_port_is_refused() -> None:
    from tests.loopback import closed_port

    port = closed_port("127.0.0.3")
    res = await resolve(
        "example.test", resolver=f"127.0.0.3:{port}", timeout=2, t_zero=time.monotonic()
    )
    assert res.failure == "connection_refused"
