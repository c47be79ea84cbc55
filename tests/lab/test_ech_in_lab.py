"""ech_check against the lab's ground truth (issue 16 item 2): the censor drops, or resets,
ClientHellos carrying the ECH extension for chosen outer SNIs, as Russia's TSPU does with
cloudflare-ech.com; the same names without ECH pass, other names and the open vantage see
nothing blocked.

The scenario is the default one plus four names: one listed in `ech_drop_sni`, one in
`ech_rst_sni`, an https site whose HTTPS record's ECHConfig (lab.ech) has the public name
listed in `ech_drop_sni` (blocked through its public-name and real-ECH hellos only), and an
open one. The first tests need no namespaces: the censor's decisions on the probe's hellos.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from lab import ech, packets, topology
from lab import scenario as scenario_mod
from lab.censor import Censor
from lab.topology import LabInfo
from probes.net import tls_hello
from tests.lab.probe_runs import ProbeRun, running, start, verdict_pairs

RUN_TIMEOUT_S = 150.0
PROBE_TIMEOUT_S = "8"
ECH_OPEN, ECH_DROP, ECH_RESET, ECH_CDN = (
    "ech-open.example",
    "ech-drop.example",
    "ech-reset.example",
    "ech-cdn.example",
)
INPUTS = {
    ECH_OPEN: (False, None),
    ECH_DROP: ("tls", "tls.ech_dropped"),
    ECH_RESET: ("tls", "tls.ech_reset"),
    ECH_CDN: ("tls", "tls.ech_dropped"),
}
CLIENT, SERVER = "10.77.1.2", "11.100.0.9"


def _scenario(mode: str = "in-path") -> scenario_mod.Scenario:
    base = scenario_mod.load()
    names = [
        {"name": ECH_OPEN, "block": "none", "scheme": "http"},
        {"name": ECH_DROP, "block": "none", "scheme": "http"},
        {"name": ECH_RESET, "block": "none", "scheme": "http"},
        {"name": ECH_CDN, "block": "none", "scheme": "https"},
    ]
    data: dict[str, Any] = {
        "lab": {"name": "ech", "description": "default + ECH dropped and reset by outer SNI"},
        "censor": {
            "mode": mode,
            "keywords": [list(k) if len(k) > 1 else k[0] for k in base.censor.keywords],
            "residual_seconds": base.censor.residual_seconds,
            "ech_drop_sni": [ECH_DROP, ech.PUBLIC_NAME],
            "ech_rst_sni": [ECH_RESET],
        },
        "domain": [
            {"name": d.name, "block": d.block, "scheme": d.scheme, "a": d.a, "aaaa": d.aaaa}
            for d in base.domains
        ]
        + names,
    }
    return scenario_mod.parse(data, "<ech>")


# --- the censor's decisions, no namespaces --------------------------------------------------------


def _decide(censor: Censor, hello: bytes, port: int, server: str = SERVER) -> Any:
    syn = packets.build_tcp(CLIENT, server, port, 443, 100, 0, packets.SYN)
    assert censor.decide(syn, 1.0).accept
    pkt = packets.build_tcp(CLIENT, server, port, 443, 101, 1, packets.ACK | packets.PSH, hello)
    return censor.decide(pkt, 1.0)


def test_censor_drops_or_resets_only_hellos_with_ech() -> None:
    censor = Censor(_scenario())
    plain = tls_hello.client_hello(ECH_DROP).record
    assert _decide(censor, plain, 40001).accept
    dropped = _decide(censor, tls_hello.client_hello(ECH_DROP, grease_ech=True).record, 40002)
    assert (dropped.accept, dropped.reason, dropped.forged) == (False, "ech_drop", [])
    # A retransmission of the dropped hello is dropped too, and nothing is forged.
    again = packets.build_tcp(CLIENT, SERVER, 40002, 443, 101, 1, packets.ACK, b"\x16\x03\x01")
    assert not censor.decide(again, 1.1).accept
    # The trigger taints the (client, server, port) triple, as every rule of the lab's censor.
    syn = packets.build_tcp(CLIENT, SERVER, 40009, 443, 100, 0, packets.SYN)
    assert censor.decide(syn, 1.2).reason == "residual_rst"
    other_server = "11.100.0.10"
    reset = _decide(
        censor, tls_hello.client_hello(ECH_RESET, grease_ech=True).record, 40003, other_server
    )
    assert (reset.accept, reset.reason) == (False, "ech_rst")
    assert any(packets.parse(f).flags & packets.RST for f in reset.forged)
    other = _decide(
        censor, tls_hello.client_hello(ECH_OPEN, grease_ech=True).record, 40004, "11.100.0.11"
    )
    assert other.accept
    on_path = Censor(_scenario("on-path"))
    passed = _decide(on_path, tls_hello.client_hello(ECH_DROP, grease_ech=True).record, 40005)
    assert (passed.accept, passed.reason) == (True, "pass")  # nothing to drop, nothing tainted


def test_truth_matches_the_inputs_and_on_path_drops_nothing() -> None:
    truth = _scenario().ech_truth(outer_sni=("cloudflare-ech.com",))
    assert {n: (t["blocking"], t["blocking_detail"]) for n, t in truth.items() if n in INPUTS} == (
        INPUTS
    )
    # Every https site publishes the listed public name: blocked through it.
    https_open = [d.name for d in scenario_mod.load().domains if d.scheme == "https"]
    assert all(truth[n]["blocking"] == "tls" for n in https_open if n in truth)
    on_path = _scenario("on-path").ech_truth()
    assert on_path[ECH_DROP]["blocking"] is False and on_path[ECH_RESET]["blocking"] == "tls"


def test_https_record_carries_a_parseable_config() -> None:
    import dns.name

    rrset = ech.https_rrset(dns.name.from_text(ECH_CDN), ECH_CDN)
    raw = next(iter(rrset)).params[5].ech  # type: ignore[attr-defined]
    (config,) = tls_hello.parse_ech_config_list(bytes(raw))
    assert config.public_name == ech.PUBLIC_NAME
    assert tls_hello.usable_config([config]) is not None
    assert raw == ech.config_list(ECH_CDN)  # the same config every time


# --- in the lab ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def elab(lab: LabInfo) -> Iterator[LabInfo]:
    """The lab with this module's scenario; the session's scenario is restored afterwards."""
    yield topology.up(_scenario())
    topology.up(lab.scenario)


@pytest.fixture(scope="module")
def runs(elab: LabInfo, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """vantage -> input -> test_keys, both vantages at once."""
    started = {}
    for vantage in ("cn", "open"):
        results = tmp_path_factory.mktemp(f"ech-{vantage}")
        argv = [*elab.vantages[vantage].exec_prefix, *topology._censorscope_argv(), "run",
                "ech_check", *(a for i in INPUTS for a in ("--input", i)),
                "--resolver", elab.resolver, "--results", str(results), "--vantage", vantage,
                "--timeout", PROBE_TIMEOUT_S, "--no-progress"]  # fmt: skip
        started[vantage] = ProbeRun(start(argv), results, vantage, "ech_check", INPUTS)
    with running(started) as runs:
        return runs.collect(RUN_TIMEOUT_S)


def test_ech_check_at_cn(runs: dict[str, dict[str, Any]]) -> None:
    assert verdict_pairs(runs["cn"]) == INPUTS, {i: k["x_verdicts"] for i, k in runs["cn"].items()}
    cdn = runs["cn"][ECH_CDN]
    # The real ECH hello went out with the lab's public name, sealed for the site.
    real = [h for h in cdn["tls_handshakes"] if h["x_ech"] == "real"]
    assert real and real[0]["outer_server_name"] == ech.PUBLIC_NAME
    assert real[0]["x_inner_server_name"] == ECH_CDN
    assert cdn["x_verdicts"][ECH_CDN]["blocking"] is False  # its own name passes with ECH
    assert cdn["x_verdicts"][ech.PUBLIC_NAME]["blocking"] == "tls"
    for name in (ECH_DROP, ECH_RESET):
        plain = [h for h in runs["cn"][name]["tls_handshakes"] if h["x_ech"] == "none"]
        assert all(h["failure"] is None for h in plain if h["server_name"] == name)


def test_ech_check_at_open(runs: dict[str, dict[str, Any]]) -> None:
    assert verdict_pairs(runs["open"]) == dict.fromkeys(INPUTS, (False, None))


def test_generated_scenario_plants_ech_rules_apart_from_the_rest() -> None:
    """bench.accuracy's --ech share: accessible names, half dropped, half reset; the other
    nettests' truth is the scenario's without them."""
    from bench import accuracy

    plain = scenario_mod.generate(300, 1, intercept=0.02, regional_cert=0.02)
    scen = scenario_mod.generate(300, 1, intercept=0.02, regional_cert=0.02, ech=0.04)
    assert (len(scen.censor.ech_drop_sni), len(scen.censor.ech_rst_sni)) == (6, 6)
    assert scen.ground_truth() == plain.ground_truth()
    assert scen.sni_truth(open_sample=50) == plain.sni_truth(open_sample=50)
    truth = accuracy.NETTESTS["ech_check"].truth(scen, 100)
    blocked = {n for n, t in truth.items() if t["blocking"] == "tls"}
    assert blocked == set(scen.censor.ech_drop_sni) | set(scen.censor.ech_rst_sni)
    assert sum(1 for t in truth.values() if t["blocking"] is False) == 100
