"""Compatibility with OONI's oohelperd, today's and the one before its GET health check.

tests/loopback/oohelperd_double.py reproduces oohelperd from probe-cli's Go sources; here it
is checked against those sources' rules, our helper is held to the same wire behaviour, and
every nettest that talks to a helper runs end to end against both variants on loopback.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from backend.helper import HelperConfig
from probes.nettests.base import Nettest, ProbeContext, SetupError
from probes.nettests.control import (
    CONTROL_MAX_INFLIGHT,
    PROBE_REQUEST,
    ControlClient,
    is_control_response,
)
from probes.nettests.dns_consistency import DNSConsistency
from probes.nettests.http_keyword import HTTPKeyword
from probes.nettests.sni_blocking import SNIBlocking
from probes.nettests.tcp_connect import TCPConnect
from probes.nettests.tls_interception import TLSInterception
from probes.nettests.web_connectivity import WebConnectivity
from tests.loopback import FakeDNSServer, ServerThread, TestCA, WebServer
from tests.loopback.control_helper import free_port_on, running_asgi, running_helper
from tests.loopback.interceptor import InterceptingTLSServer
from tests.loopback.oohelperd_double import (
    CURRENT,
    GREETING,
    PRE_HEALTH_CHECK,
    OOHelperdDouble,
    should_throttle,
)

NET = "127.0.12.0/24"
SITE, EDGE2, LIAR, SILENT, TLS_HOST = (
    "127.0.12.10",
    "127.0.12.11",
    "127.0.12.12",
    "127.0.12.13",
    "127.0.12.50",
)
ASNS = {SITE: 64500, EDGE2: 64500, LIAR: 64666, TLS_HOST: 64501}
# The helper's (truthful) view and the probe's (censored) one.
CONTROL_ZONE = {
    "site.test": [SITE],
    "cdn.test": [SITE],
    "lied.test": [SITE],
    "watched.test": [TLS_HOST],
    "free.test": [TLS_HOST],
}
PROBE_ZONE = {**CONTROL_ZONE, "cdn.test": [EDGE2], "lied.test": [LIAR]}
VARIANTS = [CURRENT, PRE_HEALTH_CHECK]
NO_IP_INFO = "no-ip-info"  # a pre-health-check helper from before ip_info (Aug 2022)


def asn_of(ip: str) -> int:
    return ASNS.get(ip, 0)


@dataclass
class World:
    port: int  # the plain-HTTP sites' port on SITE, EDGE2 and LIAR
    silent_port: int
    probe_dns: FakeDNSServer
    control_dns: FakeDNSServer
    doubles: dict[str, str]  # variant -> URL
    double_of: dict[str, OOHelperdDouble]
    ours: str
    ca_file: str


@pytest.fixture(scope="module")
def world(test_ca: TestCA, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    thread = ServerThread("oohelperd-compat")
    try:
        port = free_port_on([SITE, EDGE2, LIAR])
        thread.start(WebServer(SITE, port))
        thread.start(WebServer(EDGE2, port))
        thread.start(WebServer(LIAR, port, behaviour="blockpage", blockpage_status=403))
        thread.start(WebServer(SITE, 443, ca=test_ca))  # oohelperd handshakes only on 443
        silent = thread.start(WebServer(SILENT, behaviour="silent"))
        interceptor = TestCA(tmp_path_factory.mktemp("compat-interceptor"))
        thread.start(
            InterceptingTLSServer(
                TLS_HOST, 443, real=test_ca, interceptor=interceptor, intercept=["watched.test"]
            )
        )
        probe_dns = thread.start(FakeDNSServer("127.0.12.1", 0, PROBE_ZONE))
        control_dns = thread.start(FakeDNSServer("127.0.12.2", 0, CONTROL_ZONE))
        common = dict(resolver=control_dns.address, ca_file=test_ca.ca_pem_path)
        doubles = {
            v: OOHelperdDouble(
                variant=v, public_networks=(NET,), asn_of=asn_of, step_timeout=3, **common
            )
            for v in VARIANTS
        }
        doubles[NO_IP_INFO] = OOHelperdDouble(
            variant=PRE_HEALTH_CHECK,
            public_networks=(NET,),
            asn_of=asn_of,
            step_timeout=3,
            with_ip_info=False,
            **common,
        )
        ours = HelperConfig(exempt_networks=(NET,), asn_lookup=asn_of, timeout=3, **common)
        with (
            running_asgi(doubles[CURRENT].app) as current,
            running_asgi(doubles[PRE_HEALTH_CHECK].app) as old,
            running_asgi(doubles[NO_IP_INFO].app) as oldest,
            running_helper(ours) as ours_url,
        ):
            yield World(
                port,
                silent.port,
                probe_dns,
                control_dns,
                {CURRENT: current, PRE_HEALTH_CHECK: old, NO_IP_INFO: oldest},
                doubles,
                ours_url,
                test_ca.ca_pem_path,
            )
    finally:
        thread.close()


def post(url: str, doc: Any, **kw: Any) -> httpx.Response:
    content = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    return httpx.post(url, content=content, timeout=20, **kw)


# --- the double against probe-cli's rules ---------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_double_methods_and_status_codes(world: World, variant: str) -> None:
    url = world.doubles[variant]
    greeting = httpx.get(url + "any/path")
    if variant == CURRENT:
        assert (greeting.status_code, greeting.json()) == (200, GREETING)
    else:
        assert (greeting.status_code, greeting.content) == (400, b"")
    assert greeting.headers["server"].startswith("oohelperd/")
    assert httpx.put(url, content=b"{}").status_code == 400
    assert httpx.head(url).status_code == 400
    assert post(url, b"{").status_code == 400
    assert post(url, {"tcp_connect": "1.2.3.4:80"}).status_code == 400
    assert post(url, {"http_request": f"http://site.test:{world.port}/"}).status_code == 200


def test_throttling_rule_is_handlers() -> None:
    assert not should_throttle(24, "python-httpx/0.27")
    assert should_throttle(25, "python-httpx/0.27")
    assert not should_throttle(49, "ooniprobe-cli/3.22.0")
    assert should_throttle(50, "ooniprobe-cli/3.22.0")


def test_double_throttles_past_25_in_flight_unless_ooni_probe(world: World) -> None:
    url = world.doubles[CURRENT]
    slow = {"http_request": f"http://{SILENT}:{world.silent_port}/", "tcp_connect": []}

    async def burst(agent: str) -> list[int]:
        async with httpx.AsyncClient(
            headers={"user-agent": agent}, limits=httpx.Limits(max_connections=40), timeout=30
        ) as client:
            replies = await asyncio.gather(*(client.post(url, json=slow) for _ in range(32)))
        return [r.status_code for r in replies]

    others = asyncio.run(burst("censorscope-test"))
    assert others.count(503) >= 1 and others.count(200) >= 25
    assert asyncio.run(burst("ooniprobe-cli/3.22.0")) == [200] * 32


def test_double_endpoint_rules(world: World) -> None:
    url = world.doubles[CURRENT]
    doc = post(
        url,
        {
            "http_request": f"http://site.test:{world.port}/",
            "tcp_connect": [f"{SITE}:1234", "10.0.0.1:80"],  # the port is not used
        },
    ).json()
    assert list(doc) == [
        "tcp_connect",
        "quic_handshake",
        "http_request",
        "http3_request",
        "dns",
        "ip_info",
    ]
    assert doc["tcp_connect"] == {f"{SITE}:{world.port}": {"status": True, "failure": None}}
    assert doc["ip_info"] == {
        SITE: {"asn": 64500, "flags": 1 | 2},
        "10.0.0.1": {"asn": 0, "flags": 1 | 4},
    }
    assert (doc["quic_handshake"], doc["http3_request"]) == ({}, None)
    https = post(url, {"http_request": "https://site.test/", "tcp_connect": []}).json()
    assert https["tls_handshake"] == {
        f"{SITE}:443": {"server_name": "site.test", "status": True, "failure": None}
    }
    assert https["ip_info"][SITE]["flags"] == 2 | 8
    plain = post(url, {"http_request": "http://site.test/", "tcp_connect": []}).json()
    assert set(plain["tcp_connect"]) == {f"{SITE}:80", f"{SITE}:443"}
    assert plain["tcp_connect"][f"{SITE}:80"] == {
        "status": False,
        "failure": "connection_refused_error",
    }
    assert set(plain["tls_handshake"]) == {f"{SITE}:443"}


def test_double_failure_strings(world: World) -> None:
    doc = post(
        world.doubles[CURRENT], {"http_request": "http://gone.test/", "tcp_connect": []}
    ).json()
    assert doc["dns"] == {"failure": "dns_name_error", "addrs": []}
    assert doc["tcp_connect"] == {} and "ip_info" not in doc and "tls_handshake" not in doc
    assert doc["http_request"]["failure"] == "dns_lookup_error"
    assert (doc["http_request"]["body_length"], doc["http_request"]["status_code"]) == (-1, -1)


# --- our helper behaves the same where OONI Probe depends on it -----------------------------

SAME_REQUESTS = [
    {
        "http_request": "http://site.test:{port}/",
        "tcp_connect": [f"{EDGE2}:{{port}}", "10.0.0.1:80"],
    },
    {"http_request": "https://site.test/", "tcp_connect": [f"{SITE}:443"]},
    {"http_request": "http://gone.test/", "tcp_connect": []},
    {"http_request": f"http://{SITE}:1/", "tcp_connect": [f"{SITE}:1"]},
]


def _comparable(doc: dict[str, Any]) -> dict[str, Any]:
    http = doc["http_request"]
    return {
        "tcp_connect": doc["tcp_connect"],
        "tls_handshake": {
            k: (v["server_name"], v["status"], v["failure"])
            for k, v in doc.get("tls_handshake", {}).items()
        },
        "dns": doc["dns"],
        "http": (
            http["status_code"],
            http["failure"],
            http["body_length"],
            http["title"],
            set(http["headers"]),
        ),
        # flag 4: our helper calls its exempt (test) network bogons; the double does not
        "ip_info": {ip: (v["asn"], v["flags"] & ~4) for ip, v in doc.get("ip_info", {}).items()},
    }


@pytest.mark.parametrize("request_doc", SAME_REQUESTS)
def test_our_helper_answers_as_the_double(world: World, request_doc: dict[str, Any]) -> None:
    doc = json.loads(json.dumps(request_doc).replace("{port}", str(world.port)))
    theirs = post(world.doubles[CURRENT], doc)
    ours = post(world.ours, doc)
    assert ours.status_code == theirs.status_code == 200
    mine = ours.json()
    assert set(theirs.json()) <= set(mine)
    assert all(
        k.startswith("x_") for k in set(mine) - set(theirs.json()) - {"tls_handshake", "ip_info"}
    )
    assert _comparable(mine) == _comparable(theirs.json())


def test_our_helper_status_codes_are_the_doubles(world: World) -> None:
    for url in (world.ours, world.doubles[CURRENT]):
        assert httpx.get(url).json() == GREETING
        assert httpx.put(url, content=b"{}").status_code == 400
        assert httpx.request("DELETE", url).status_code == 400
        assert post(url, b"not json").status_code == 400
        assert post(url, {"http_request": "http://a.test/", "tcp_connect": "x"}).status_code == 400


# --- the probe's side -----------------------------------------------------------------------


def test_probe_keeps_its_requests_in_flight_below_oohelperds_threshold() -> None:
    assert CONTROL_MAX_INFLIGHT <= 25


@pytest.mark.anyio
async def test_a_busy_run_stays_under_oohelperds_throttle(world: World) -> None:
    double = world.double_of[PRE_HEALTH_CHECK]  # no other test sends it slow requests
    double.peak_inflight = 0
    client = ControlClient([world.doubles[PRE_HEALTH_CHECK]], timeout=15, ca_file=None)
    slow = f"http://{SILENT}:{world.silent_port}/"  # each request holds the helper 3 s
    try:
        results = await asyncio.gather(*(client.measure(slow, [], {}) for _ in range(40)))
    finally:
        await client.aclose()
    assert [r.failure for r in results] == [None] * 40
    assert [r.attempts for r in results] == [1] * 40  # never a 503 to retry
    assert double.peak_inflight == CONTROL_MAX_INFLIGHT


@pytest.mark.anyio
@pytest.mark.parametrize("variant", VARIANTS)
async def test_choose_works_without_a_greeting(world: World, variant: str) -> None:
    client = ControlClient([world.doubles[variant]], timeout=5, ca_file=None)
    try:
        before = len(world.double_of[variant].requests)
        assert await client.choose() is None
        assert client.chosen == world.doubles[variant]
        posted = world.double_of[variant].requests[before:]
        assert posted == ([] if variant == CURRENT else [PROBE_REQUEST])
    finally:
        await client.aclose()


def test_the_fallback_request_makes_oohelperd_connect_nowhere(world: World) -> None:
    doc = post(world.doubles[PRE_HEALTH_CHECK], PROBE_REQUEST).json()
    assert is_control_response(doc)
    assert doc["tcp_connect"] == {} and doc["dns"] == {"failure": None, "addrs": []}
    assert doc["http_request"]["failure"] == "unknown_error"  # a bogon: refused, not fetched


@pytest.mark.anyio
async def test_choose_refuses_what_is_not_a_helper(world: World) -> None:
    # A web server answers GET and POST with a page: not a control response.
    client = ControlClient([f"http://{SITE}:{world.port}/"], timeout=5, ca_file=None)
    try:
        problem = await client.choose()
        assert problem is not None and "control request" in problem
        assert client.unreachable_failure == "control_helper_unreachable"
    finally:
        await client.aclose()


def context(world: World, variant: str, **options: Any) -> ProbeContext:
    return ProbeContext(
        resolver=world.probe_dns.address,
        helpers=[world.doubles[variant]],
        timeout=8,
        ca_file=world.ca_file,
        options=options,
    )


def dns_context(world: World, variant: str, tls_port: int) -> ProbeContext:
    """dns_consistency asking the probe's (censored) resolver, the helper checking on tls_port."""
    return context(
        world,
        variant,
        dns_resolvers=[world.probe_dns.address],
        listen_window=0.2,
        bogon_exempt=[NET],
        tls_port=tls_port,
    )


async def run(nettest: Nettest, input_: str) -> dict[str, Any]:
    await nettest.setup()
    try:
        keys = await nettest.measure(input_)
    finally:
        await nettest.close()
    assert not [w for w in nettest.warnings if "unreachable" in w]
    return keys


@pytest.mark.anyio
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize(
    ("name", "consistency", "blocking"),
    [
        ("site.test", "consistent", False),
        # Another address in the same network (a CDN): consistent by the ASN rule.
        ("cdn.test", "consistent", False),
        ("lied.test", "inconsistent", "dns"),
    ],
)
async def test_web_connectivity_against_oohelperd(
    world: World, variant: str, name: str, consistency: str, blocking: Any
) -> None:
    keys = await run(WebConnectivity(context(world, variant)), f"http://{name}:{world.port}/")
    assert keys["control_failure"] is None
    assert keys["dns_consistency"] == consistency
    assert keys["blocking"] == blocking
    assert keys["control"]["ip_info"]  # taken as oohelperd sends it


@pytest.mark.anyio
@pytest.mark.parametrize("variant", VARIANTS)
async def test_tcp_connect_against_oohelperd(world: World, variant: str) -> None:
    keys = await run(TCPConnect(context(world, variant)), f"site.test:{world.port}")
    assert keys["control_failure"] is None
    assert keys["control"]["tcp_connect"][f"{SITE}:{world.port}"]["status"] is True
    assert keys["blocking"] is False


@pytest.mark.anyio
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize(
    ("name", "blocking", "detail"),
    [("watched.test", "tls", "tls.failure"), ("free.test", False, None)],
)
async def test_tls_interception_against_oohelperd(
    world: World, variant: str, name: str, blocking: Any, detail: Any
) -> None:
    keys = await run(TLSInterception(context(world, variant)), name)
    assert keys["control_failure"] is None
    assert (keys["blocking"], keys["blocking_detail"]) == (blocking, detail)
    assert set(keys["x_control_degraded"]) == {"x_tls_certificates"}


@pytest.mark.anyio
@pytest.mark.parametrize("variant", VARIANTS)
async def test_sni_blocking_against_oohelperd(world: World, variant: str) -> None:
    keys = await run(SNIBlocking(context(world, variant)), "free.test")
    assert keys["blocking"] is False
    assert set(keys["x_control_degraded"]) == {"x_tls_certificates"}


@pytest.mark.anyio
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize(("name", "blocking"), [("site.test", False), ("lied.test", "dns")])
async def test_dns_consistency_against_oohelperd(
    world: World, variant: str, name: str, blocking: Any
) -> None:
    keys = await run(DNSConsistency(dns_context(world, variant, 443)), name)
    assert keys["control_failure"] is None
    assert keys["blocking"] == blocking
    assert "x_tls_certificates" not in keys["control"]


@pytest.mark.anyio
async def test_our_helper_loses_the_nettests_nothing(world: World) -> None:
    ctx = context(world, CURRENT)
    ctx.helpers = [world.ours]
    keys = await run(TLSInterception(ctx), "watched.test")
    assert (keys["blocking"], keys["blocking_detail"]) == ("tls", "tls.intercepted")
    assert "x_control_degraded" not in keys


@pytest.mark.anyio
@pytest.mark.parametrize("variant", VARIANTS)
async def test_http_keyword_says_oohelperd_has_no_echo(world: World, variant: str) -> None:
    nettest = HTTPKeyword(context(world, variant))
    with pytest.raises(SetupError, match="oohelperd has none"):
        await nettest.setup()
    await nettest.close()


@pytest.mark.anyio
async def test_web_connectivity_without_ip_info_loses_the_asn_rule_not_the_verdict(
    world: World,
) -> None:
    url = f"http://cdn.test:{world.port}/"
    keys = await run(WebConnectivity(context(world, NO_IP_INFO)), url)
    assert keys["dns_consistency"] == "inconsistent"  # only shared addresses count now
    assert (keys["accessible"], keys["blocking"]) == (True, False)  # the page matches
    assert set(keys["x_control_degraded"]) == {"ip_info"}
    current = await run(WebConnectivity(context(world, CURRENT)), url)
    assert "x_control_degraded" not in current


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("variant", "name", "blocking"),
    [
        # A CDN's other address, in the control's network: consistent by the same-ASN rule.
        (CURRENT, "cdn.test", False),
        (PRE_HEALTH_CHECK, "cdn.test", False),
        # Another network, and no handshake to tell: inconclusive, never blocked.
        (CURRENT, "lied.test", None),
        # A helper from before ip_info: the ASN rule is gone, the verdict is null, not false.
        (NO_IP_INFO, "cdn.test", None),
    ],
)
async def test_dns_consistency_same_asn_rule_where_no_handshake_can_check(
    world: World, variant: str, name: str, blocking: Any
) -> None:
    """On a port other than 443 oohelperd connects but makes no TLS handshake, so only the
    ASNs of its ip_info can tell a CDN's answer from a lie (issue 12, section 1)."""
    keys = await run(DNSConsistency(dns_context(world, variant, world.port)), name)
    assert keys["control_failure"] is None
    assert keys["blocking"] == blocking, (keys["dns_evidence"], keys["control"])
    assert ("ip_info" in keys.get("x_control_degraded", {})) == (variant == NO_IP_INFO)
