"""dns_consistency, tcp_connect, sni_blocking and tls_interception against the lab's ground truth.

Each nettest runs as `censorscope run` inside both vantages (all runs at once), over inputs
taken from the scenario, and its stored verdicts are compared with what the scenario planted:
at cs-vp-cn the verdict and detail of every planted rule, at cs-vp-open nothing blocked.

The scenario is the default one plus what these tests need: a domain re-signed by the censor's
own CA (lab.interceptor, `intercept_sni`), a domain whose regional edge serves another key from
the public (lab) CA (`regional_cert_sni`, a CDN: not interception), and a blackholed IP:PORT.
The probe at cn trusts the interceptor CA (`LabInfo.cn_trust_pem`, as a user made to install a
national root would); the helper outside trusts only the lab CA.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.accuracy import read_verdicts
from lab import addresses, topology
from lab import scenario as scenario_mod
from lab.topology import LabInfo

RUN_TIMEOUT_S = 120.0
# Per-input budget: the blackholed connects wait out a share of it (tcp_connect: 30%).
PROBE_TIMEOUT_S = "5"
INTERCEPTED = "intercepted.example"
REGIONAL = "regional-cdn.example"
BLACKHOLED_PORT = 443
# The only server address that runs no DNS (any answer from it was injected on the path).
NO_DNS_ADDRESS = addresses.ECHO_V4

# Ground truth per nettest, in the probe's vocabulary (docs/methodology.md), by block kind.
DNS_TRUTH = {
    "dns_inject": ("dns", "dns.injected"),  # differing answers to one query
    "dns_nxdomain": ("dns", "dns.nxdomain"),
    "dns_bogon": ("dns", "dns.bogon"),
    # One forged public address, which the helper's handshake for the name cannot reach.
    "dns_blockpage": ("dns", "dns.inconsistent"),
}
DNS_EVIDENCE = {"dns_inject": "dns.injected", "dns_nxdomain": "dns.nxdomain",
                "dns_bogon": "dns.bogon", "dns_blockpage": "dns.injected"}  # fmt: skip


def _scenario() -> scenario_mod.Scenario:
    base = scenario_mod.load()
    blackholed_ip = addresses.spare_v4(900)
    data: dict[str, Any] = {
        "lab": {"name": "nettests", "description": "default + interception + IP:PORT blackhole"},
        "censor": {
            "keywords": [list(k) if len(k) > 1 else k[0] for k in base.censor.keywords],
            "residual_seconds": base.censor.residual_seconds,
            "intercept_sni": [INTERCEPTED],
            "regional_cert_sni": [REGIONAL],
            "blackhole": [f"{blackholed_ip}:{BLACKHOLED_PORT}"],
        },
        "domain": [
            {"name": d.name, "block": d.block, "scheme": d.scheme, "a": d.a, "aaaa": d.aaaa}
            for d in base.domains
        ]
        + [
            {"name": INTERCEPTED, "block": "none", "scheme": "https"},
            {"name": REGIONAL, "block": "none", "scheme": "https"},
        ],
    }
    return scenario_mod.parse(data, "<nettests>")


@pytest.fixture(scope="module")
def nlab(lab: LabInfo) -> Iterator[LabInfo]:
    """The lab with this module's scenario; the session's scenario is restored afterwards."""
    yield topology.up(_scenario())
    topology.up(lab.scenario)


def _argv(lab: LabInfo, vantage: str, nettest: str, inputs: list[str], results: Path,
          *extra: str) -> list[str]:  # fmt: skip
    assert lab.helper_url, "the lab's control helper is not running"
    ca = lab.cn_trust_pem if vantage == "cn" else lab.ca_pem
    argv = [*lab.vantages[vantage].exec_prefix, *topology._censorscope_argv(), "run", nettest]
    for i in inputs:
        argv += ["--input", i]
    return [
        *argv,
        "--resolver", lab.resolver, "--helper", lab.helper_url, "--ca-file", ca,
        "--results", str(results), "--vantage", vantage, "--timeout", PROBE_TIMEOUT_S,
        "--no-progress", *extra,
    ]  # fmt: skip


def _inputs(lab: LabInfo) -> dict[str, tuple[list[str], list[str]]]:
    """run label -> (nettest and its extra flags, inputs)."""
    scen = lab.scenario
    names = [d.name for d in scen.domains]
    # TCP: every reachable domain (not the DNS-blocked ones: their forged addresses answer
    # nobody, here or at the helper) and the IP:PORT blackhole, plus its other port.
    tcp = [f"{d.name}:443" for d in scen.domains if d.block in ("none", "blackhole")]
    hole_ip, _, hole_port = scen.censor.blackhole[0].rpartition(":")
    tcp += [f"{hole_ip}:{hole_port}", f"{hole_ip}:80"]
    sni = [d.name for d in scen.domains if d.block in ("none", "sni_rst", "http_rst")]
    sni = [n for n in sni if n not in scen.tls_sni_names()]
    tls = [d.name for d in scen.domains if d.block == "none" and d.scheme == "https"]
    return {
        "dns_consistency": (["dns_consistency"], names),
        "dns_probe_address": (
            ["dns_consistency", "--dns-probe-address", NO_DNS_ADDRESS],
            [d.name for d in scen.domains if d.block.startswith("dns_") or d.block == "none"],
        ),
        "tcp_connect": (["tcp_connect"], tcp),
        "sni_blocking": (["sni_blocking"], sni),
        "tls_interception": (["tls_interception"], tls),
    }


@pytest.fixture(scope="module")
def runs(
    nlab: LabInfo, tmp_path_factory: pytest.TempPathFactory
) -> dict[tuple[str, str], dict[str, dict[str, Any]]]:
    """(run label, vantage) -> input -> test_keys; every run at once, each in its own dir."""
    procs: dict[tuple[str, str], tuple[subprocess.Popen[str], Path, str]] = {}
    for label, (cmd, inputs) in _inputs(nlab).items():
        for vantage in ("cn", "open"):
            results = tmp_path_factory.mktemp(f"{label}-{vantage}")
            argv = _argv(nlab, vantage, cmd[0], inputs, results, *cmd[1:])
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True, env=topology._python_env())  # fmt: skip
            procs[(label, vantage)] = (proc, results, cmd[0])
    out = {}
    try:
        for key, (proc, results, nettest) in procs.items():
            _, err = proc.communicate(timeout=RUN_TIMEOUT_S)
            assert proc.returncode == 0, f"{key} exited {proc.returncode}: {err[-2000:]}"
            out[key] = read_verdicts(results, key[1], nettest)
            assert set(out[key]) == set(_inputs(nlab)[key[0]][1]), f"{key}: inputs missing"
    finally:
        for proc, _, _ in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    return out


Runs = dict[tuple[str, str], dict[str, dict[str, Any]]]


def _verdicts(found: dict[str, dict[str, Any]]) -> dict[str, tuple[Any, Any]]:
    return {i: (k["blocking"], k["blocking_detail"]) for i, k in found.items()}


def _open_blocked(runs: Runs, label: str) -> dict[str, Any]:
    return {i: v for i, v in _verdicts(runs[(label, "open")]).items() if v[0] is not False}


def test_dns_consistency_at_cn(nlab: LabInfo, runs: Runs) -> None:
    want = {d.name: DNS_TRUTH.get(d.block, (False, None)) for d in nlab.scenario.domains}
    assert _verdicts(runs[("dns_consistency", "cn")]) == want


def test_dns_injection_caught_on_an_address_without_dns(nlab: LabInfo, runs: Runs) -> None:
    """Every name the censor tampers with draws an answer from an address that runs no DNS
    server (GFW-style injection), so all of them are dns.injected, with the specific
    evidence (NXDOMAIN, bogon) kept beside it."""
    found = runs[("dns_probe_address", "cn")]
    for name, keys in found.items():
        block = nlab.scenario.domain(name).block
        kinds = {e["kind"] for e in keys["dns_evidence"]}
        if block == "none":
            assert (keys["blocking"], kinds) == (False, set()), name
            continue
        assert (keys["blocking"], keys["blocking_detail"]) == ("dns", "dns.injected"), name
        assert DNS_EVIDENCE[block] in kinds, name
        probe_q = [q for q in keys["queries"] if q["x_role"] == "probe_address"]
        assert probe_q and all(r["valid"] for q in probe_q for r in q["x_responses"]), name


def test_dns_consistency_at_open(runs: Runs) -> None:
    assert not _open_blocked(runs, "dns_consistency")
    assert not _open_blocked(runs, "dns_probe_address")
    for keys in runs[("dns_probe_address", "open")].values():
        probe_q = [q for q in keys["queries"] if q["x_role"] == "probe_address"]
        assert probe_q and not any(q["x_responses"] for q in probe_q)


def test_tcp_connect_at_cn(nlab: LabInfo, runs: Runs) -> None:
    scen = nlab.scenario
    hole = scen.censor.blackhole[0]
    want: dict[str, tuple[Any, Any]] = {
        f"{d.name}:443": (False, None) for d in scen.domains if d.block == "none"
    }
    want |= {f"{d.name}:443": ("tcp_ip", "tcp.timeout") for d in scen.by_block("blackhole")}
    # The IP:PORT rule drops one port only.
    want |= {hole: ("tcp_ip", "tcp.timeout"), hole.rpartition(":")[0] + ":80": (False, None)}
    assert _verdicts(runs[("tcp_connect", "cn")]) == want


def test_tcp_connect_at_open(runs: Runs) -> None:
    assert not _open_blocked(runs, "tcp_connect")


@pytest.mark.parametrize("vantage", ["cn", "open"])
def test_tcp_connect_packets_without_resets(runs: Runs, vantage: str) -> None:
    """Every connect is captured; the blackholes time out with no RST at all, so there is no
    forgery to see at either vantage. (A server may still reset a connection the probe closed
    at once: such a RST carries the server's own TTL and is not evidence.)"""
    for name, keys in runs[("tcp_connect", vantage)].items():
        assert keys["packet_capture"] == "ok", name
        pkts = keys["x_packets"]
        assert (pkts["evidence"], keys["x_packet_detail"]) == (None, None), name
        assert not any(r["ttl_differs"] for r in pkts["resets"]), name
        if keys["blocking"] is not False:
            assert pkts["resets"] == [], name
        assert bool(pkts["synack"]) == (keys["blocking"] is False), name


@pytest.mark.parametrize("vantage", ["cn", "open"])
def test_tcp_connect_sees_the_residual_rst_forged(
    nlab: LabInfo, spares: Any, tmp_path: Path, vantage: str
) -> None:
    """A keyword request taints (vantage, server, port 80) for the censor's residual window;
    tcp_connect to that port then is refused at cn by a RST the censor forges (TTL 64, its
    IP-ID counter) in answer to the SYN. No SYN-ACK to compare it with: the reference connect
    to port 443 of the same server gets the server's SYN-ACK (TTL 63), so the RST is
    tcp.rst_injected. From the open vantage the same sequence connects, with no RST."""
    ip = spares.v4()
    flow = [sys.executable, "-c", _KEYWORD_FLOW, ip, "keyword-reset.example"]
    trigger = nlab.run(vantage, [*flow, str(tmp_path / "trigger.pcap")])
    assert trigger.returncode == 0, trigger.stderr
    results = tmp_path / "results"
    argv = _argv(nlab, vantage, "tcp_connect", [f"{ip}:80"], results, "--pcap",
                 str(tmp_path / "pcap"))  # fmt: skip
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=RUN_TIMEOUT_S,
                          env=topology._python_env(), check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    keys = read_verdicts(results, vantage, "tcp_connect")[f"{ip}:80"]
    pkts = keys["x_packets"]
    assert keys["packet_capture"] == "ok" and Path(keys["x_pcap"]).stat().st_size > 0
    if vantage == "open":
        assert (keys["blocking"], pkts["resets"], pkts["evidence"]) == (False, [], None)
        assert pkts["synack"]["ttl"] == 63
        return
    assert (keys["blocking"], keys["blocking_detail"]) == ("tcp_ip", "tcp.refused")
    assert (pkts["evidence"], keys["x_packet_detail"]) == ("tcp.rst_injected",) * 2
    [reference] = pkts["references"]
    assert (reference["port"], reference["flags"], reference["ttl"]) == (443, "SA", 63)
    assert pkts["resets"] and all(
        (r["ttl"], r["baseline_ttl"], r["ttl_differs"]) == (64, 63, True) for r in pkts["resets"]
    )
    assert all(r["ip_id"] != reference["ip_id"] for r in pkts["resets"])


def test_sni_blocking_at_cn(nlab: LabInfo, runs: Runs) -> None:
    found = runs[("sni_blocking", "cn")]
    want = {
        name: ("tls", "tls.sni_reset")
        if nlab.scenario.domain(name).block == "sni_rst"
        else (False, None)
        for name in found
    }
    assert _verdicts(found) == want
    assert {n for n, k in found.items() if k["x_residual_blocking"]} == {
        d.name for d in nlab.scenario.by_block("sni_rst")
    }, "the lab's residual blocking (30 s) fails the control right after the reset"


def test_sni_blocking_at_open(runs: Runs) -> None:
    assert not _open_blocked(runs, "sni_blocking")


def test_tls_interception_at_cn(nlab: LabInfo, runs: Runs) -> None:
    found = runs[("tls_interception", "cn")]
    want = {n: (False, None) for n in found} | {INTERCEPTED: ("tls", "tls.intercepted")}
    assert _verdicts(found) == want
    (endpoint,) = found[INTERCEPTED]["x_intercepted_endpoints"]
    seen = found[INTERCEPTED]["tls_comparisons"][0][endpoint]
    assert seen["outcome"] == "other_issuer"
    assert "National Information Security" in seen["probe_issuer"]
    # The CDN-like edge: another key, same public CA, not interception.
    regional = found[REGIONAL]["tls_comparisons"][0]
    assert [c["outcome"] for c in regional.values()] == ["other_valid"]


def test_tls_interception_at_open(runs: Runs) -> None:
    assert not _open_blocked(runs, "tls_interception")
    for keys in runs[("tls_interception", "open")].values():
        outcomes = {c["outcome"] for r in keys["tls_comparisons"] for c in r.values()}
        assert outcomes == {"same"}


def test_sni_reset_packets_show_the_forgery(nlab: LabInfo, runs: Runs) -> None:
    """As root the probe captures its flows: the censor's RST comes with another TTL than the
    server's SYN-ACK (the censor is one hop nearer), so it is tcp.rst_injected."""
    for d in nlab.scenario.by_block("sni_rst"):
        keys = runs[("sni_blocking", "cn")][d.name]
        assert keys["packet_capture"] == "ok"
        pkts = keys["x_packets"]
        assert pkts["evidence"] == "tcp.rst_injected" and pkts["synack"] and pkts["resets"]
        assert {r["ttl"] for r in pkts["resets"]} != {pkts["synack"]["ttl"]}
    for name, keys in runs[("sni_blocking", "open")].items():
        assert keys["packet_capture"] == "ok", name
        assert keys["x_packets"]["synack"] and keys["x_packets"]["evidence"] is None, name


_KEYWORD_FLOW = """
import asyncio, json, sys
from probes.net.packets import FlowRecorder

async def main(ip, host, pcap):
    async with FlowRecorder(ip, 80, pcap=pcap) as rec:
        reader, writer = await asyncio.open_connection(ip, 80)
        request = f"GET / HTTP/1.1\\r\\nHost: {host}\\r\\nConnection: close\\r\\n\\r\\n"
        writer.write(request.encode())
        await writer.drain()
        try:
            await reader.read()
        except ConnectionError:
            pass
        writer.close()
    print(json.dumps(rec.keys()))

asyncio.run(main(*sys.argv[1:]))
"""


@pytest.mark.parametrize("vantage", ["cn", "open"])
def test_keyword_reset_ttl_and_ip_id(
    nlab: LabInfo, spares: Any, tmp_path: Path, vantage: str
) -> None:
    """The keyword RST at cn is forged by the censor: its TTL and IP-ID are not the server's.
    The same request from the open vantage gets the page and no RST at all."""
    ip = spares.v4()
    pcap = tmp_path / "flow.pcap"
    proc = nlab.run(vantage, [sys.executable, "-c", _KEYWORD_FLOW, ip,
                              "keyword-reset.example", str(pcap)])  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    keys = json.loads(proc.stdout)
    pkts = keys["x_packets"]
    assert keys["packet_capture"] == "ok" and pkts["synack"] and pcap.stat().st_size > 0
    if vantage == "open":
        assert (pkts["resets"], pkts["evidence"]) == ([], None)
        return
    assert pkts["evidence"] == "tcp.rst_injected"
    synack = pkts["synack"]
    assert all(r["ttl"] != synack["ttl"] for r in pkts["resets"])
    assert all(r["ip_id"] != synack["ip_id"] for r in pkts["resets"])
