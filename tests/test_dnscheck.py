"""dnscheck on loopback: real DoT and DoH servers with certificates from the test CA, the
control helper as a separate process (the censors tell it from the probe by process or uid,
tests/loopback/encrypted_dns.py), and a censor for each verdict: a lying bootstrap resolver,
a relay that resets the probe's ClientHellos naming a blocked SNI, an iptables rule that drops
the probe's SYNs to a port (root), a resolver that lies, a UDP injector."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from probes.nettests.base import ProbeContext
from probes.nettests.dnscheck import DNSCheck, parse_resolver_url
from probes.nettests.dnscheck_analysis import analyze
from tests.loopback import FakeDNSServer, ServerThread, TestCA
from tests.loopback.control_helper import free_port_on, wait_http
from tests.loopback.doh import running_doh
from tests.loopback.encrypted_dns import DoQServer, DoTServer, ProbeOnlyRelay, drop_syns_of_uid

SITE, SITE_IP, LIE_IP, HIJACK_IP = "site.test", "127.0.61.20", "127.0.61.66", "127.0.61.99"
DOT_IP, DOH_IP, SNI_IP, SNI_UPSTREAM = "127.0.61.10", "127.0.61.11", "127.0.61.12", "127.0.61.13"
DROP_IP, LIAR_IP, INJECT_IP = "127.0.61.14", "127.0.61.15", "127.0.61.16"
DOH_SNI_IP, ALL_TLS_IP, MITM_IP, IMPOSTOR_IP = (
    "127.0.61.17",
    "127.0.61.18",
    "127.0.61.19",
    "127.0.61.21",
)
DOQ_IP, DOQ_BAD_IP = "127.0.61.24", "127.0.61.25"
# The first bytes of every TLS ClientHello (a handshake record): a censor that resets all TLS.
CLIENT_HELLO = b"\x16\x03\x01"
NOBODY = 65534
EXEMPT = ["127.0.0.0/8"]
REPO = Path(__file__).resolve().parent.parent
IS_ROOT = os.geteuid() == 0


@dataclass
class World:
    helper: str
    ca_file: str
    probe_dns: FakeDNSServer
    dot: int
    doh: str
    sni: ProbeOnlyRelay
    drop: int
    liar: int
    inject: FakeDNSServer
    doh_sni: ProbeOnlyRelay
    all_tls: ProbeOnlyRelay
    mitm: ProbeOnlyRelay
    doq: DoQServer
    doq_untrusted: DoQServer


def _zone() -> dict[str, list[str]]:
    return {
        SITE: [SITE_IP],
        "dot.test": [DOT_IP],
        "hijack.test": [DOT_IP],
        "doh.test": [DOH_IP],
        "sni.test": [SNI_IP],
        "drop.test": [DROP_IP],
        "liar.test": [LIAR_IP],
        "gone.test": [DOT_IP],
        "doh-sni.test": [DOH_SNI_IP],
        "alltls.test": [ALL_TLS_IP],
        "mitm.test": [MITM_IP],
        "doq.test": [DOQ_IP],
        "doq-bad.test": [DOQ_BAD_IP],
    }


@pytest.fixture(scope="module")
def world(test_ca: TestCA) -> Iterator[World]:
    # The helper may run as another user (the port-drop censor needs it): a readable CA copy.
    shared = Path(tempfile.mkdtemp(prefix="cs-dnscheck-"))
    shared.chmod(0o755)
    ca_file = shared / "ca.pem"
    shutil.copy(test_ca.ca_pem_path, ca_file)
    ca_file.chmod(0o644)
    thread = ServerThread("dnscheck")
    helper = None
    try:
        truth = thread.start(FakeDNSServer("127.0.61.1", 0, _zone()))
        probe_zone = {**_zone(), "hijack.test": [HIJACK_IP]}
        probe_dns = thread.start(FakeDNSServer("127.0.61.2", 0, probe_zone, nxdomain=["gone.test"]))

        def dot(ip: str, names: list[str], mode: str = "truthful") -> DoTServer:
            tls = test_ca.server_context(names)
            lies = {SITE: [LIE_IP]}
            return thread.start(DoTServer(ip, 0, _zone(), mode, lies=lies, tls=tls))

        dot_server = dot(DOT_IP, ["dot.test", "hijack.test", "gone.test"])
        all_tls_up = dot("127.0.61.22", ["alltls.test"])
        all_tls = thread.start(
            ProbeOnlyRelay(ALL_TLS_IP, ("127.0.61.22", all_tls_up.port), [CLIENT_HELLO])
        )
        mitm_up = dot("127.0.61.23", ["mitm.test"])
        untrusted = TestCA()  # another CA: its certificates fail the probe's verification
        impostor = thread.start(
            DoTServer(IMPOSTOR_IP, 0, _zone(), tls=untrusted.server_context(["mitm.test"]))
        )

        def doq(ip: str, name: str, ca: TestCA) -> DoQServer:
            leaf = ca.ca.issue_cert(name)
            cert, key = shared / f"{name}.pem", shared / f"{name}.key"
            leaf.cert_chain_pems[0].write_to_path(str(cert))
            leaf.private_key_pem.write_to_path(str(key))
            return thread.start(DoQServer(ip, 0, _zone(), cert=str(cert), key=str(key)))

        doq_server = doq(DOQ_IP, "doq.test", test_ca)
        doq_untrusted = doq(DOQ_BAD_IP, "doq-bad.test", untrusted)
        mitm = thread.start(
            ProbeOnlyRelay(
                MITM_IP,
                ("127.0.61.23", mitm_up.port),
                [],
                probe_upstream=(IMPOSTOR_IP, impostor.port),
            )
        )
        upstream = dot(SNI_UPSTREAM, ["sni.test"])
        sni = thread.start(ProbeOnlyRelay(SNI_IP, (SNI_UPSTREAM, upstream.port), [b"sni.test"]))
        drop = dot(DROP_IP, ["drop.test"])
        liar = dot(LIAR_IP, ["liar.test"], mode="lying")
        inject = thread.start(
            FakeDNSServer(INJECT_IP, 0, _zone(), "inject_before", lies={SITE: [LIE_IP]})
        )
        port = free_port_on(["127.0.61.1"])
        user = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
        env = {**os.environ, "HOME": str(shared), "XDG_CONFIG_HOME": str(shared)}
        helper = subprocess.Popen(
            [
                *(user if IS_ROOT else []),
                sys.executable,
                "-m",
                "probes",
                "helper",
                "--listen",
                f"127.0.61.1:{port}",
                "--resolver",
                truth.address,
                "--allow-private",
                "--ca-file",
                str(ca_file),
                "--client-rate",
                "0",
            ],
            cwd=shared,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        url = f"http://127.0.61.1:{port}/"
        wait_http(url)
        names = ("doh.test", "doh-sni.test")
        with running_doh(test_ca, _zone(), DOH_IP, names=names) as doh_url:
            doh_port = int(doh_url.rsplit(":", 1)[1].split("/")[0])
            doh_sni = thread.start(
                ProbeOnlyRelay(DOH_SNI_IP, (DOH_IP, doh_port), [b"doh-sni.test"])
            )
            yield World(
                url,
                str(ca_file),
                probe_dns,
                dot_server.port,
                doh_url,
                sni,
                drop.port,
                liar.port,
                inject,
                doh_sni,
                all_tls,
                mitm,
                doq_server,
                doq_untrusted,
            )
    finally:
        if helper is not None:
            helper.terminate()
            helper.wait(10)
        thread.close()
        shutil.rmtree(shared, ignore_errors=True)


async def measure(world: World, input_: str, helper: bool = True, **options: Any) -> dict:
    ctx = ProbeContext(
        timeout=4,
        helpers=[world.helper] if helper else [],
        ca_file=world.ca_file,
        resolver=world.probe_dns.address,
        options={"domain": SITE, "bogon_exempt": EXEMPT, **options},
    )
    nettest = DNSCheck(ctx)
    await nettest.setup()
    try:
        keys = await nettest.measure(input_)
    finally:
        await nettest.close()
    json.dumps(keys)  # storable as it is
    return keys


def doh_url(world: World, name: str) -> str:
    port = world.doh.rsplit(":", 1)[1].split("/")[0]
    return f"https://{name}:{port}/dns-query"


@pytest.mark.anyio
async def test_open_dot_resolver_is_not_blocked(world: World) -> None:
    keys = await measure(world, f"dot://dot.test:{world.dot}")
    key = f"dot://{DOT_IP}:{world.dot}"
    assert list(keys["lookups"]) == [key]
    lookup = keys["lookups"][key]
    assert lookup["failure"] is None and lookup["failed_operation"] is None
    assert lookup["tcp_connect"][0]["status"]["success"] is True
    assert lookup["tls_handshakes"][0]["server_name"] == "dot.test"
    assert lookup["queries"][0]["answers"][0]["ipv4"] == SITE_IP
    assert keys["bootstrap"]["queries"][0]["answers"][0]["ipv4"] == DOT_IP
    assert keys["control"]["resolver"]["tls_handshake"][f"{DOT_IP}:{world.dot}"]["status"]
    assert (keys["blocking"], keys["blocking_detail"]) == (False, None)


@pytest.mark.anyio
async def test_open_doh_resolver_is_not_blocked(world: World) -> None:
    keys = await measure(world, doh_url(world, "doh.test"))
    (lookup,) = keys["lookups"].values()
    assert lookup["failure"] is None, lookup
    assert lookup["queries"][0]["engine"] == "doh"
    assert lookup["tls_handshakes"][0]["server_name"] == "doh.test"
    assert keys["blocking"] is False


@pytest.mark.anyio
async def test_injected_bootstrap(world: World) -> None:
    keys = await measure(world, f"dot://hijack.test:{world.dot}")
    assert keys["bootstrap"]["queries"][0]["answers"][0]["ipv4"] == HIJACK_IP
    assert (keys["blocking"], keys["blocking_detail"]) == ("dns", "dns.bootstrap_inconsistent")


@pytest.mark.anyio
async def test_sni_reset(world: World) -> None:
    before = world.sni.resets
    keys = await measure(world, f"dot://sni.test:{world.sni.port}")
    (lookup,) = keys["lookups"].values()
    assert lookup["failed_operation"] == "tls_handshake"
    assert lookup["failure"] == "connection_reset"
    assert lookup["x_control_sni_handshake"]["failure"] is None
    assert world.sni.resets > before
    assert (keys["blocking"], keys["blocking_detail"]) == ("tls", "tls.sni_reset")


@pytest.mark.anyio
async def test_doh_sni_reset(world: World) -> None:
    keys = await measure(world, f"https://doh-sni.test:{world.doh_sni.port}/dns-query")
    (key,) = keys["lookups"]
    assert key == f"https://{DOH_SNI_IP}:{world.doh_sni.port}/dns-query"
    assert (keys["blocking"], keys["blocking_detail"]) == ("tls", "tls.sni_reset")


@pytest.mark.anyio
async def test_all_tls_reset_is_not_called_sni(world: World) -> None:
    keys = await measure(world, f"dot://alltls.test:{world.all_tls.port}")
    (lookup,) = keys["lookups"].values()
    assert lookup["x_control_sni_handshake"]["failure"] == "connection_reset"
    assert (keys["blocking"], keys["blocking_detail"]) == ("tls", "tls.handshake_reset")


@pytest.mark.anyio
async def test_interception(world: World) -> None:
    keys = await measure(world, f"dot://mitm.test:{world.mitm.port}")
    (lookup,) = keys["lookups"].values()
    assert lookup["failure"] == "ssl_unknown_authority"
    assert lookup["tls_handshakes"][0]["peer_certificates"]  # the impostor's chain is kept
    assert (keys["blocking"], keys["blocking_detail"]) == ("tls", "tls.intercepted")


@pytest.mark.anyio
async def test_bootstrap_nxdomain(world: World) -> None:
    keys = await measure(world, f"dot://gone.test:{world.dot}")
    assert keys["bootstrap_failure"] == "dns_nxdomain_error"
    assert keys["lookups"] == {}
    assert (keys["blocking"], keys["blocking_detail"]) == ("dns", "dns.bootstrap_nxdomain")


@pytest.mark.anyio
async def test_doq_resolver(world: World) -> None:
    keys = await measure(world, f"doq://doq.test:{world.doq.port}")
    (lookup,) = keys["lookups"].values()
    assert lookup["failure"] is None, lookup
    assert lookup["quic_handshakes"][0]["negotiated_protocol"] == "doq"
    assert lookup["queries"][0]["engine"] == "doq"
    assert lookup["queries"][0]["answers"][0]["ipv4"] == SITE_IP
    assert world.doq.log[-1]["transport"] == "doq"
    assert (keys["blocking"], keys["blocking_detail"]) == (False, None)


@pytest.mark.anyio
async def test_doq_handshake_failure_has_no_control(world: World) -> None:
    """The helper speaks no QUIC: a failed DoQ handshake is measured, never called blocked."""
    keys = await measure(world, f"doq://doq-bad.test:{world.doq_untrusted.port}")
    (lookup,) = keys["lookups"].values()
    assert lookup["failed_operation"] == "quic_handshake"
    assert lookup["quic_handshakes"][0]["failure"] == "ssl_failed_handshake"
    assert keys["blocking"] is None


@pytest.mark.anyio
async def test_without_a_helper_every_verdict_is_null(world: World) -> None:
    keys = await measure(world, f"dot://sni.test:{world.sni.port}", helper=False)
    assert keys["lookups"]  # measured all the same
    assert keys["blocking"] is None


@pytest.mark.anyio
@pytest.mark.skipif(not IS_ROOT, reason="the port-drop censor is an iptables rule (needs root)")
async def test_dropped_port(world: World) -> None:
    with drop_syns_of_uid(os.geteuid(), DROP_IP, world.drop):
        keys = await measure(world, f"dot://drop.test:{world.drop}")
    (lookup,) = keys["lookups"].values()
    assert lookup["failed_operation"] == "connect"
    assert lookup["failure"] == "generic_timeout_error"
    assert keys["control"]["resolver"]["tcp_connect"][f"{DROP_IP}:{world.drop}"]["status"]
    assert (keys["blocking"], keys["blocking_detail"]) == ("tcp_ip", "tcp.connect_timeout")


@pytest.mark.anyio
async def test_resolver_down_everywhere_is_inconclusive(world: World) -> None:
    keys = await measure(world, "dot://127.0.61.30:9")
    (lookup,) = keys["lookups"].values()
    assert lookup["failed_operation"] == "connect"
    assert keys["bootstrap"] is None
    assert keys["blocking"] is None


@pytest.mark.anyio
async def test_lying_resolver(world: World) -> None:
    keys = await measure(world, f"dot://liar.test:{world.liar}")
    (lookup,) = keys["lookups"].values()
    assert lookup["queries"][0]["answers"][0]["ipv4"] == LIE_IP
    assert (keys["blocking"], keys["blocking_detail"]) == ("dns", "dns.inconsistent")


@pytest.mark.anyio
async def test_injection_over_udp(world: World) -> None:
    keys = await measure(world, f"udp://{world.inject.address}")
    (lookup,) = keys["lookups"].values()
    assert len(lookup["queries"][0]["x_responses"]) >= 2
    assert (keys["blocking"], keys["blocking_detail"]) == ("dns", "dns.injected")


@pytest.mark.anyio
async def test_truthful_udp_and_tcp(world: World) -> None:
    for scheme in ("udp", "tcp"):
        keys = await measure(world, f"{scheme}://{world.probe_dns.address}")
        (lookup,) = keys["lookups"].values()
        assert lookup["failure"] is None, (scheme, lookup)
        assert keys["blocking"] is False, scheme


def test_reanalysis_of_stored_keys_gives_the_same_verdict() -> None:
    """The verdict is a pure function of the keys: a stored SNI reset judged again."""
    endpoint = "127.0.0.9:853"
    lookup = {
        "x_endpoint": endpoint,
        "failed_operation": "tls_handshake",
        "failure": "connection_reset",
        "x_control_sni_handshake": {"failure": None},
    }
    control = {
        "tcp_connect": {endpoint: {"status": True}},
        "tls_handshake": {endpoint: {"status": True}},
    }
    tk = {
        "bootstrap": None,
        "lookups": {"dot://127.0.0.9:853": lookup},
        "control": {"resolver": control},
    }
    assert analyze(tk).blocking_detail == "tls.sni_reset"
    control["tls_handshake"][endpoint]["status"] = False
    assert analyze(tk).blocking is None  # the control failed too: down, not blocked


def test_ooni_spec_example_is_read() -> None:
    """OONI's own dnscheck measurement (no control in it): judged inconclusive, not blocked."""
    from tests.shared_data import SHARED_DATA

    for line in (SHARED_DATA / "ooni" / "spec_examples.jsonl").read_text().splitlines():
        data = json.loads(line)
        if data.get("test_name") == "dnscheck":
            assert analyze(data["test_keys"]).blocking is None
            return
    raise AssertionError("no dnscheck example")


@pytest.mark.parametrize(
    ("url", "key"),
    [
        ("https://dns.google/dns-query", "https://8.8.8.8/dns-query"),
        ("dot://dns.google:853", "dot://8.8.8.8:853"),
        ("dot://dns.google", "dot://8.8.8.8"),
        ("udp://8.8.8.8:53", "udp://8.8.8.8:53"),
    ],
)
def test_lookup_keys_follow_ooni(url: str, key: str) -> None:
    assert parse_resolver_url(url).lookup_key("8.8.8.8") == key


def test_bad_inputs_are_named() -> None:
    assert DNSCheck.input_problem("doq://dns.adguard-dns.com") is None
    assert parse_resolver_url("doq://dns.adguard-dns.com").lookup_key("94.140.14.14") == (
        "doq://94.140.14.14"
    )
    assert "scheme" in (DNSCheck.input_problem("ftp://x") or "")
    assert DNSCheck.input_problem("https://dns.google/dns-query") is None
    assert parse_resolver_url("dot://[2001:db8::1]:853").lookup_key("2001:db8::1") == (
        "dot://[2001:db8::1]:853"
    )


def _cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "probes", *args], capture_output=True, text=True, timeout=240
    )
    if check:
        assert done.returncode == 0, (args, done.stdout, done.stderr)
    return done


def test_cli_run_then_analyze_report_publish(world: World, tmp_path: Path) -> None:
    """`censorscope run dnscheck` stores OONI-shaped measurements, refuses a bad input naming
    it, and analyze, report and publish read its verdicts like any nettest's."""
    results = tmp_path / "results"
    testlist = tmp_path / "resolvers.csv"
    rows = [
        f"dot://dot.test:{world.dot}",
        f"dot://hijack.test:{world.dot}",
        f"dot://liar.test:{world.liar}",
    ]
    testlist.write_text(
        "url,category_code,category_description,date_added,source,notes\n"
        + "".join(
            f"{r},ANON,Anonymization and circumvention tools,2026-12-07,test,\n" for r in rows
        )
    )
    _cli(
        "run",
        "dnscheck",
        "--testlist",
        str(testlist),
        "--resolver",
        world.probe_dns.address,
        "--helper",
        world.helper,
        "--ca-file",
        world.ca_file,
        "--bogon-exempt",
        "127.0.0.0/8",
        "--domain",
        SITE,
        "--timeout",
        "4",
        "--results",
        str(results),
        "--vantage",
        "lab",
    )
    (path,) = results.glob("raw/date=*/vantage=lab/test_name=dnscheck/*.jsonl")
    stored = {m["input"]: m for m in map(json.loads, path.read_text().splitlines())}
    assert set(stored) == set(rows)
    verdicts = {
        i: (m["test_keys"]["blocking"], m["test_keys"]["blocking_detail"])
        for i, m in stored.items()
    }
    assert verdicts == {
        rows[0]: (False, None),
        rows[1]: ("dns", "dns.bootstrap_inconsistent"),
        rows[2]: ("dns", "dns.inconsistent"),
    }
    refused = _cli(
        "run", "dnscheck", "--input", "ftp://dns.example", "--results", str(results), check=False
    )
    assert refused.returncode == 2 and "ftp://dns.example" in refused.stderr
    assert "unknown scheme" in refused.stderr
    first = stored[rows[0]]
    assert first["test_name"] == "dnscheck" and first["probe_ip"] == "127.0.0.1"
    assert first["test_keys"]["domain"] == SITE
    out = tmp_path / "tables"
    _cli("analyze", "--results", str(results), "--out", str(out))
    import pandas as pd

    table = pd.read_parquet(out / "vantages.parquet").set_index("target")
    assert (table["test_name"] == "dnscheck").all()
    assert table["blocked"].to_dict() == {rows[0]: 0, rows[1]: 1, rows[2]: 1}
    assert table.loc[rows[0], "ok"] == 1
    _cli("report", "--results", str(results), "--out", str(tmp_path / "report.html"))
    assert "dnscheck" in (tmp_path / "report.html").read_text()
    _cli("publish", "--results", str(results), "--out", str(tmp_path / "dataset"))
    (part,) = (tmp_path / "dataset" / "data").rglob("test_name=dnscheck/*.parquet")
    published = pd.read_parquet(part).set_index("input")
    assert published.loc[rows[1], "blocking_detail"] == "dns.bootstrap_inconsistent"
    assert published.loc[rows[2], "blocking"] == "dns"


def test_analysis_reads_dnscheck_observations_nested_in_lookups(tmp_path: Path) -> None:
    """OONI's dnscheck keeps its queries, connects and handshakes inside `bootstrap` and
    `lookups`: the loader flattens them into observation rows like any nettest's."""
    from analysis.load import Filters, load
    from tests.shared_data import SHARED_DATA

    lines = (SHARED_DATA / "ooni" / "spec_examples.jsonl").read_text().splitlines()
    example = next(line for line in lines if json.loads(line).get("test_name") == "dnscheck")
    path = tmp_path / "dnscheck.jsonl"
    path.write_text(example + "\n")
    loaded = load(ooni=[path], filters=Filters(test_names=frozenset({"dnscheck"})))
    (row,) = loaded.measurements.itertuples()
    assert row.test_name == "dnscheck" and row.input == "dot://dns.google:853"
    obs = loaded.observations
    assert set(obs[obs["kind"] == "tls"]["server_name"]) == {"dns.google"}
    assert {"8.8.8.8", "93.184.216.34"} <= set(obs[obs["kind"] == "dns"]["address"])
    assert (obs["kind"] == "tcp").sum() >= 4


EP, EP6 = "192.0.2.9:853", "[2001:db8::9]:853"
CONTROL_OK = {
    "tcp_connect": {EP: {"status": True}, EP6: {"status": True}},
    "tls_handshake": {EP: {"status": True}, EP6: {"status": True}},
}


def _lookup(endpoint: str = EP, **fields: Any) -> dict[str, Any]:
    return {
        "x_endpoint": endpoint,
        "x_transport": "dot",
        "failed_operation": None,
        "failure": None,
        "queries": [],
        **fields,
    }


def _answered(addr: str) -> list[dict[str, Any]]:
    return [
        {
            "failure": None,
            "answers": [{"answer_type": "A", "ipv4": addr}],
            "x_responses": [
                {
                    "valid": True,
                    "rcode": 0,
                    "addrs": [addr],
                    "answers": [{"answer_type": "A", "ipv4": addr}],
                }
            ],
        }
    ]


@pytest.mark.parametrize(
    ("name", "lookups", "control", "want"),
    [
        (
            "connect refused by a censor",
            {"k": _lookup(failed_operation="connect", failure="connection_refused")},
            {"resolver": CONTROL_OK},
            ("tcp_ip", "tcp.connect_refused"),
        ),
        (
            "no route here is not interference",
            {"k": _lookup(failed_operation="connect", failure="network_unreachable")},
            {"resolver": CONTROL_OK},
            (None, None),
        ),
        (
            "IPv6 timeout with no IPv6 working",
            {"k": _lookup(EP6, failed_operation="connect", failure="generic_timeout_error")},
            {"resolver": CONTROL_OK},
            (None, None),
        ),
        (
            "IPv6 timeout while another IPv6 worked",
            {
                "k": _lookup(EP6, failed_operation="connect", failure="generic_timeout_error"),
                "j": _lookup(
                    "[2001:db8::10]:853", failed_operation="dns_round_trip", failure="eof_error"
                ),
            },
            {"resolver": CONTROL_OK},
            ("tcp_ip", "tcp.connect_timeout"),
        ),
        (
            "handshake timeout, control SNI passed",
            {
                "k": _lookup(
                    failed_operation="tls_handshake",
                    failure="generic_timeout_error",
                    x_control_sni_handshake={"failure": "ssl_invalid_hostname"},
                )
            },
            {"resolver": CONTROL_OK},
            ("tls", "tls.sni_timeout"),
        ),
        (
            "a failure after the handshake",
            {"k": _lookup(failed_operation="dns_round_trip", failure="connection_reset")},
            {"resolver": CONTROL_OK},
            (None, None),
        ),
        (
            "answered over TLS, no domain control",
            {"k": _lookup(queries=_answered("1.1.1.1"))},
            {"resolver": CONTROL_OK},
            (False, None),
        ),
        (
            "answered over UDP, no domain control",
            {"k": _lookup(x_transport="udp", queries=_answered("1.1.1.1"))},
            {},
            (None, None),
        ),
        (
            "a blocked address outweighs a working one",
            {
                "k": _lookup(queries=_answered("1.1.1.1")),
                "j": _lookup(failed_operation="connect", failure="connection_reset"),
            },
            {"resolver": CONTROL_OK},
            ("tcp_ip", "tcp.connect_reset"),
        ),
    ],
)
def test_lookup_verdicts(name: str, lookups: dict, control: dict, want: tuple) -> None:
    found = analyze({"bootstrap": None, "lookups": lookups, "control": control})
    assert (found.blocking, found.blocking_detail) == want, name


def test_bootstrap_refused_while_the_control_resolves() -> None:
    tk = {
        "bootstrap": {
            "queries": [
                {"failure": "dns_refused_error", "answers": [], "engine": "udp", "x_responses": []}
            ]
        },
        "bootstrap_failure": "dns_refused_error",
        "lookups": {},
        "control": {"resolver": {"dns": {"failure": None, "addrs": ["192.0.2.9"]}}},
    }
    assert analyze(tk).blocking_detail == "dns.bootstrap_failure"
    tk["bootstrap_failure"] = "generic_timeout_error"  # loss, a slow resolver: not evidence
    assert analyze(tk).blocking is None


def test_analysis_rederives_dnscheck_verdicts() -> None:
    """The analysis judges dnscheck again from the stored keys: ours keep their verdict, a
    stored verdict that today's rules do not support is replaced (and the disagreement kept),
    OONI's (no control) is null."""
    from analysis.verdicts import Classifier
    from tests.shared_data import SHARED_DATA

    lookup = {
        "x_endpoint": EP,
        "failed_operation": "tls_handshake",
        "failure": "connection_reset",
        "x_control_sni_handshake": {"failure": None},
    }
    tk = {
        "bootstrap": None,
        "lookups": {"dot://192.0.2.9:853": lookup},
        "control": {"resolver": CONTROL_OK},
        "blocking": "tls",
        "blocking_detail": "tls.sni_reset",
    }
    row = Classifier()({"test_name": "dnscheck", "test_keys": tk})
    assert (row["blocking"], row["blocking_detail"], row["verdict_source"]) == (
        "tls",
        "tls.sni_reset",
        "rederived",
    )
    assert "disagreement" not in row
    tk["blocking"], tk["blocking_detail"] = "dns", "dns.inconsistent"
    assert Classifier()({"test_name": "dnscheck", "test_keys": tk})["disagreement"]
    lines = (SHARED_DATA / "ooni" / "spec_examples.jsonl").read_text().splitlines()
    ooni = next(json.loads(x) for x in lines if json.loads(x).get("test_name") == "dnscheck")
    assert Classifier()(ooni)["blocking"] is None
