"""dns_consistency on loopback: real DNS servers that lie, inject and stay silent, a real helper.

The loopback world (127.0.7.0/24, declared "real" with bogon_exempt so loopback answers are not
bogons): the genuine site is 127.0.7.10; 127.0.7.21 serves a valid certificate for any name (a
CDN edge the control does not know); 127.0.7.22 serves a certificate for another name (where a
censor sends people). The control resolver and the helper's resolver tell the truth.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from backend.helper import HelperConfig
from probes.nettests.base import ProbeContext, SetupError
from probes.nettests.dns_consistency import (
    DNSConsistency,
    ResolverSpec,
    name_of,
    parse_resolver,
)
from probes.nettests.dns_consistency_analysis import analyze
from probes.store import ResultsStore
from tests.loopback import FakeDNSServer, ServerThread, TestCA, WebServer
from tests.loopback.control_helper import free_port_on, running_helper
from tests.shared_data import SHARED_DATA

FINGERPRINTS_DNS = SHARED_DATA / "fingerprints" / "fingerprints_dns.csv"
SITE, CDN_EDGE, IMPOSTOR = "127.0.7.10", "127.0.7.21", "127.0.7.22"
ZONE = {"site.test": [SITE], "other.test": [SITE]}
EXEMPT = ["127.0.7.0/24"]
GFW_POISON = "8.7.198.45"  # ooni.cn_0 in OONI's DNS fingerprints


@dataclass
class World:
    truthful: FakeDNSServer
    helper_url: str
    tls_port: int
    ca_file: str


@pytest.fixture(scope="module")
def world(test_ca: TestCA) -> Iterator[World]:
    thread = ServerThread("dns-consistency-world")
    try:
        port = free_port_on([CDN_EDGE, IMPOSTOR])
        thread.start(WebServer(CDN_EDGE, port, ca=test_ca))
        thread.start(WebServer(IMPOSTOR, port, ca=test_ca, cert_hosts=["elsewhere.test"]))
        truthful = thread.start(FakeDNSServer("127.0.7.1", 0, ZONE))
        config = HelperConfig(
            resolver=truthful.address, allow_private=True, ca_file=test_ca.ca_pem_path, timeout=3
        )
        with running_helper(config) as url:
            yield World(truthful, url, port, test_ca.ca_pem_path)
    finally:
        thread.close()


async def measure(name: str, ctx: ProbeContext) -> dict[str, Any]:
    nettest = DNSConsistency(ctx)
    await nettest.setup()
    try:
        return await nettest.measure(name)
    finally:
        await nettest.close()


def context(world: World, resolvers: list[str], *, helper: bool = True, **options: Any) -> Any:
    options.setdefault("control_resolver", world.truthful.address)
    options.setdefault("listen_window", 0.3)
    options.setdefault("bogon_exempt", EXEMPT)
    options.setdefault("tls_port", world.tls_port)
    return ProbeContext(
        timeout=5,
        helpers=[world.helper_url] if helper else [],
        ca_file=world.ca_file,
        fingerprint_files=[str(FINGERPRINTS_DNS)],
        options={"dns_resolvers": resolvers, **options},
    )


# name, resolver's mode and arguments, options, expected (blocking, blocking_detail)
SCENARIOS: list[tuple[str, dict[str, Any], dict[str, Any], tuple[Any, Any]]] = [
    ("truthful", {}, {}, (False, None)),
    ("inject_before", {"mode": "inject_before"}, {}, ("dns", "dns.injected")),
    ("inject_after", {"mode": "inject_after"}, {}, ("dns", "dns.injected")),
    # Without the listening window the late forged answers are never seen: the first is true.
    ("inject_after_no_window", {"mode": "inject_after"}, {"listen_window": 0.0}, (False, None)),
    ("bogon", {"mode": "lying", "lies": {"*": ["10.99.0.1"]}}, {}, ("dns", "dns.bogon")),
    # 10.10.34.34 is a bogon, and also Iran's known forged answer (ooni.ir_4): named as such.
    ("iran_bogon", {"mode": "bogon"}, {}, ("dns", "dns.known_forged")),
    ("nxdomain", {"mode": "nxdomain"}, {}, ("dns", "dns.nxdomain")),
    (
        "known_forged",
        {"mode": "lying", "lies": {"*": [GFW_POISON]}},
        {"helper": False},
        ("dns", "dns.known_forged"),
    ),
    ("cdn_edge", {"mode": "lying", "lies": {"*": [CDN_EDGE]}}, {}, (False, None)),
    ("impostor", {"mode": "lying", "lies": {"*": [IMPOSTOR]}}, {}, ("dns", "dns.inconsistent")),
    # Other addresses but no helper to check them with TLS: inconclusive, never "blocked".
    (
        "impostor_no_helper",
        {"mode": "lying", "lies": {"*": [IMPOSTOR]}},
        {"helper": False},
        (None, None),
    ),
]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("mode", "expected"), [(s[1:3], s[3]) for s in SCENARIOS], ids=[s[0] for s in SCENARIOS]
)
async def test_verdicts(
    world: World,
    dns_server: Callable[..., FakeDNSServer],
    mode: tuple[dict[str, Any], dict[str, Any]],
    expected: tuple[Any, Any],
) -> None:
    server_args, options = mode
    options = dict(options)
    helper = options.pop("helper", True)
    censored = dns_server(zone=ZONE, host="127.0.7.2", inject_delay=0.05, **server_args)
    keys = await measure("site.test", context(world, [censored.address], helper=helper, **options))
    assert (keys["blocking"], keys["blocking_detail"]) == expected, keys["dns_evidence"]
    # Re-deriving the verdict from the stored keys gives the same answer.
    verdict = analyze(json.loads(json.dumps(keys)), _fingerprints())
    assert (verdict.blocking, verdict.blocking_detail) == expected


def _fingerprints() -> Any:
    from probes.fingerprints import Fingerprints

    return Fingerprints.from_files([FINGERPRINTS_DNS])


@pytest.mark.anyio
async def test_every_injected_datagram_is_kept(
    world: World, dns_server: Callable[..., FakeDNSServer]
) -> None:
    censored = dns_server(
        zone=ZONE, host="127.0.7.2", mode="inject_before", inject_count=3, inject_delay=0.05
    )
    keys = await measure("site.test", context(world, [censored.address]))
    (query,) = [q for q in keys["queries"] if q["x_role"] == "resolver"]
    responses = query["x_responses"]
    assert len(responses) == 4  # three forged answers, then the genuine one
    assert [r["addrs"] for r in responses] == [["1.2.3.4"]] * 3 + [[SITE]]
    assert all(r["valid"] and r["rcode"] == 0 and r["raw"] for r in responses)
    assert all(r["answers"][0]["ttl"] == 60 for r in responses)
    times = [r["t"] for r in responses]
    assert times == sorted(times) and times[3] > times[2]
    assert keys["inconsistent"] == [censored.address]


@pytest.mark.anyio
async def test_answer_from_a_non_resolver_is_injection(
    world: World, dns_server: Callable[..., FakeDNSServer]
) -> None:
    truthful = dns_server(zone=ZONE, host="127.0.7.2")
    # What an on-path injector does: answer for an address that runs no DNS server.
    injector = dns_server(zone=ZONE, host="127.0.7.31", mode="lying")
    keys = await measure(
        "site.test",
        context(world, [truthful.address], dns_probe_addresses=[injector.address]),
    )
    assert (keys["blocking"], keys["blocking_detail"]) == ("dns", "dns.injected")
    # Nothing listens on 127.0.7.32: no answer, no evidence.
    keys = await measure(
        "site.test", context(world, [truthful.address], dns_probe_addresses=["127.0.7.32:53"])
    )
    assert keys["blocking"] is False, keys["dns_evidence"]
    (probe,) = [q for q in keys["queries"] if q["x_role"] == "probe_address"]
    assert probe["failure"] is not None and probe["x_responses"] == []


@pytest.mark.anyio
async def test_tcp_transport_and_consistent_nxdomain(
    world: World, dns_server: Callable[..., FakeDNSServer]
) -> None:
    censored = dns_server(zone=ZONE, host="127.0.7.2", mode="inject_before")
    keys = await measure("site.test", context(world, [f"tcp://{censored.address}"]))
    # Over TCP the first planned reply is the only one: one response, the forged one.
    (query,) = keys["queries"]
    assert query["engine"] == "tcp" and len(query["x_responses"]) == 1
    assert keys["blocking"] == "dns"
    truthful = dns_server(zone=ZONE, host="127.0.7.3")
    keys = await measure("missing.test", context(world, [truthful.address]))
    assert keys["blocking"] is False and keys["errors"] == {truthful.address: "dns_nxdomain_error"}


def test_resolver_specs() -> None:
    assert parse_resolver("9.9.9.9") == ResolverSpec("udp", "9.9.9.9:53")
    assert parse_resolver("tcp://[2620:fe::fe]:5353") == ResolverSpec("tcp", "[2620:fe::fe]:5353")
    assert parse_resolver("tls://1.1.1.1") == ResolverSpec("dot", "1.1.1.1:853")
    assert parse_resolver("https://dns.example/dns-query").transport == "doh"
    assert parse_resolver("system") == ResolverSpec("system", None)
    for bad in ("ftp://1.1.1.1", "udp://resolver.example", "https:///x"):
        with pytest.raises(ValueError):
            parse_resolver(bad)
    assert name_of("https://Example.ORG./path") == "example.org"
    assert DNSConsistency.input_problem("https://1.2.3.4/") is not None
    assert DNSConsistency.input_problem("a" * 64 + ".example") is not None
    assert DNSConsistency.input_problem("example.org") is None


@pytest.mark.anyio
async def test_bad_option_is_a_setup_error() -> None:
    nettest = DNSConsistency(ProbeContext(options={"dns_resolvers": ["ftp://x"]}))
    with pytest.raises(SetupError):
        await nettest.setup()


def test_cli_end_to_end(world: World, tmp_path: Path) -> None:
    thread = ServerThread("dns-cli")
    try:
        censored = thread.start(
            FakeDNSServer("127.0.7.4", 0, ZONE, "inject_after", targets=["site.test"])
        )
        cmd = [
            sys.executable, "-c", "from probes.cli import main; main()", "run", "dns_consistency",
            "--input", "site.test", "--input", "http://other.test/page",
            "--dns-resolver", f"udp://{censored.address}",
            "--control-resolver", world.truthful.address,
            "--bogon-exempt", EXEMPT[0], "--listen-window", "0.3",
            "--results", str(tmp_path), "--no-progress", "--timeout", "5",
        ]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    finally:
        thread.close()
    assert proc.returncode == 0, proc.stderr
    assert "2 measured, 1 blocked" in proc.stdout
    lines = list(ResultsStore(tmp_path).iter_measurements(test_names={"dns_consistency"}))
    verdicts = {m.input: (m.test_keys or {})["blocking_detail"] for m in lines}
    assert verdicts == {"site.test": "dns.injected", "http://other.test/page": None}
    assert all(m.resolver_ip == "127.0.7.4" for m in lines)


def _answer(addr: str, ip_ttl: int | None, *, valid: bool = True) -> dict[str, Any]:
    answers = [{"answer_type": "A", "ttl": 60, "ipv4": addr}]
    entry: dict[str, Any] = {"valid": valid, "rcode": 0, "addrs": [addr], "answers": answers}
    if ip_ttl is not None:
        entry["ip_ttl"] = ip_ttl
    return entry


@pytest.mark.parametrize(
    ("responses", "expected"),
    [
        # Same address twice, from two senders: only the IP TTLs tell.
        ([_answer(SITE, 57), _answer(SITE, 63)], ("dns", "dns.injected")),
        ([_answer(SITE, 63), _answer(SITE, 63)], (False, None)),
        # An invalid datagram (wrong ID) is not an answer to the query: no evidence.
        ([_answer(SITE, 57, valid=False), _answer(SITE, 63)], (False, None)),
        # Without capture there is nothing to compare.
        ([_answer(SITE, None), _answer(SITE, None)], (False, None)),
    ],
    ids=["ttls_differ", "one_ttl", "invalid_other_ttl", "no_capture"],
)
def test_ip_ttl_evidence_from_stored_keys(
    responses: list[dict[str, Any]], expected: tuple[Any, Any]
) -> None:
    query = {"x_role": "resolver", "resolver_address": "127.0.7.2:53", "failure": None,
             "answers": [], "x_responses": responses}  # fmt: skip
    control = {"x_role": "control", "failure": None, "x_responses": [_answer(SITE, 64)]}
    keys = {"queries": [query], "control_queries": [control], "control": {},
            "x_bogon_exempt": EXEMPT}  # fmt: skip
    verdict = analyze(keys)
    assert (verdict.blocking, verdict.blocking_detail) == expected
    if expected[0]:
        assert [e.detail for e in verdict.evidence] == ["answers' IP TTLs differ: 57,63"]


def _other_address_keys(tls_ok: bool | None, asns: dict[str, int]) -> dict[str, Any]:
    """Keys where the resolver answered CDN_EDGE and the helper SITE: `tls_ok` None means the
    helper connected but made no handshake (oohelperd off port 443)."""
    query = {"x_role": "resolver", "resolver_address": "127.0.7.2:53", "failure": None,
             "answers": [], "x_responses": [_answer(CDN_EDGE, None)]}  # fmt: skip
    endpoint = f"{CDN_EDGE}:443"
    control: dict[str, Any] = {
        "dns": {"addrs": [SITE], "failure": None},
        "tcp_connect": {endpoint: {"status": True, "failure": None}},
        "tls_handshake": {} if tls_ok is None else {endpoint: {"status": tls_ok}},
        "ip_info": {ip: {"asn": asn, "flags": 1} for ip, asn in asns.items()},
    }
    return {"queries": [query], "control_queries": [], "control": control,
            "x_bogon_exempt": EXEMPT}  # fmt: skip


@pytest.mark.parametrize(
    ("tls_ok", "asns", "expected"),
    [
        # No handshake to tell: the same network as the control's answer is consistent...
        (None, {SITE: 13335, CDN_EDGE: 13335}, (False, None)),
        # ...another network, or ASNs unknown (0), stays inconclusive.
        (None, {SITE: 13335, CDN_EDGE: 64666}, (None, None)),
        (None, {SITE: 0, CDN_EDGE: 0}, (None, None)),
        # A handshake that failed for the name is stronger evidence than a shared ASN.
        (False, {SITE: 13335, CDN_EDGE: 13335}, ("dns", "dns.inconsistent")),
        (True, {SITE: 13335, CDN_EDGE: 64666}, (False, None)),
    ],
    ids=["same_asn", "other_asn", "unknown_asn", "failed_handshake_wins", "handshake_ok"],
)
def test_same_asn_rule_from_stored_keys(
    tls_ok: bool | None, asns: dict[str, int], expected: tuple[Any, Any]
) -> None:
    verdict = analyze(_other_address_keys(tls_ok, asns))
    assert (verdict.blocking, verdict.blocking_detail) == expected
