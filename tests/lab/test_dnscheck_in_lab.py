"""dnscheck against the lab's ground truth (issue 16 item 5): the censor resets the TLS of a DoH
resolver by its SNI and drops a DoT resolver's port; the open resolvers and the open vantage
see nothing blocked.

The lab's servers answer DoH (POST /dns-query on 443) and DoT (853) from the scenario's zone on
every address (lab/servers.py); the scenario is the default one plus four resolver names, one
listed in `blocked_sni` and one whose IPv4 address has its port 853 blackholed.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from lab import addresses, topology
from lab import scenario as scenario_mod
from lab.topology import LabInfo
from tests.lab.probe_runs import ProbeRun, running, start, verdict_pairs

RUN_TIMEOUT_S = 120.0
PROBE_TIMEOUT_S = "8"
TEST_DOMAIN = "open-news.example"
DOH_OPEN, DOH_BLOCKED = "doh-open.example", "doh-blocked.example"
DOT_OPEN, DOT_BLOCKED = "dot-open.example", "dot-blocked.example"
DOT_BLOCKED_IP = addresses.spare_v4(910)

INPUTS = {
    f"https://{DOH_OPEN}/dns-query": (False, None),
    f"https://{DOH_BLOCKED}/dns-query": ("tls", "tls.sni_reset"),
    f"dot://{DOT_OPEN}:853": (False, None),
    f"dot://{DOT_BLOCKED}:853": ("tcp_ip", "tcp.connect_timeout"),
}


def _scenario() -> scenario_mod.Scenario:
    base = scenario_mod.load()
    resolvers = [
        {"name": DOH_OPEN, "block": "none", "scheme": "https"},
        {"name": DOH_BLOCKED, "block": "none", "scheme": "https"},
        {"name": DOT_OPEN, "block": "none", "scheme": "https"},
        {"name": DOT_BLOCKED, "block": "none", "scheme": "https", "a": DOT_BLOCKED_IP},
    ]
    data: dict[str, Any] = {
        "lab": {"name": "dnscheck", "description": "default + DoH SNI reset + DoT port drop"},
        "censor": {
            "keywords": [list(k) if len(k) > 1 else k[0] for k in base.censor.keywords],
            "residual_seconds": base.censor.residual_seconds,
            "blocked_sni": [DOH_BLOCKED],
            "blackhole": [f"{DOT_BLOCKED_IP}:853"],
        },
        "domain": [
            {"name": d.name, "block": d.block, "scheme": d.scheme, "a": d.a, "aaaa": d.aaaa}
            for d in base.domains
        ]
        + resolvers,
    }
    return scenario_mod.parse(data, "<dnscheck>")


@pytest.fixture(scope="module")
def dlab(lab: LabInfo) -> Iterator[LabInfo]:
    """The lab with this module's scenario; the session's scenario is restored afterwards."""
    yield topology.up(_scenario())
    topology.up(lab.scenario)


@pytest.fixture(scope="module")
def runs(dlab: LabInfo, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """vantage -> input -> test_keys, both vantages at once."""
    assert dlab.helper_url, "the lab's control helper is not running"
    started = {}
    for vantage in ("cn", "open"):
        results = tmp_path_factory.mktemp(f"dnscheck-{vantage}")
        ca = dlab.cn_trust_pem if vantage == "cn" else dlab.ca_pem
        argv = [*dlab.vantages[vantage].exec_prefix, *topology._censorscope_argv(), "run",
                "dnscheck", *(a for i in INPUTS for a in ("--input", i)),
                "--resolver", dlab.resolver, "--helper", dlab.helper_url, "--ca-file", ca,
                "--domain", TEST_DOMAIN, "--results", str(results), "--vantage", vantage,
                "--timeout", PROBE_TIMEOUT_S, "--no-progress"]  # fmt: skip
        started[vantage] = ProbeRun(start(argv), results, vantage, "dnscheck", INPUTS)
    with running(started) as runs:
        return runs.collect(RUN_TIMEOUT_S)


def test_dnscheck_at_cn(runs: dict[str, dict[str, Any]]) -> None:
    assert verdict_pairs(runs["cn"]) == INPUTS
    blocked_dot = runs["cn"][f"dot://{DOT_BLOCKED}:853"]["lookups"][f"dot://{DOT_BLOCKED_IP}:853"]
    assert blocked_dot["failed_operation"] == "connect"
    open_doh = runs["cn"][f"https://{DOH_OPEN}/dns-query"]
    answers = [a for lk in open_doh["lookups"].values() for q in lk["queries"]
               for a in q["answers"]]  # fmt: skip
    assert answers, "the lab's DoH server answered nothing"


def test_dnscheck_at_open(runs: dict[str, dict[str, Any]]) -> None:
    assert verdict_pairs(runs["open"]) == dict.fromkeys(INPUTS, (False, None))
