"""quic_sni against the lab's ground truth (issue 16 item 1): the censor decrypts QUIC
Initials (lab.quic_initial) and drops the flow residually, per (client, server, port) triple as
the GFW does, for names in `quic_blocked_sni`; the sites serve QUIC/HTTP3 on UDP 443 of their
IPv4 addresses (lab.quic_server), advertised with Alt-Svc; one site's UDP 443 is dropped
whatever the name (`quic_blocked_ip`). At the censored vantage the blocked names are
quic.sni_blocked (the endpoint goes dark right after the Initial while TCP to it works), the
dropped site is quic.all_blocked (the control helper, outside the censor, makes the QUIC
handshake oohelperd would), the open one is not blocked; at the open vantage nothing is.
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
PROBE_TIMEOUT_S = "10"
BLOCKED, OPEN, ALSO_BLOCKED = "quic-blocked.example", "quic-open.example", "h3-banned.example"
ALL_BLOCKED = "udp-dropped.example"
ALL_BLOCKED_IP = addresses.spare_v4(930)

INPUTS = {
    BLOCKED: ("quic", "quic.sni_blocked"),
    f"https://{ALSO_BLOCKED}/": ("quic", "quic.sni_blocked"),
    OPEN: (False, None),
    ALL_BLOCKED: ("quic", "quic.all_blocked"),
}


def _scenario() -> scenario_mod.Scenario:
    base = scenario_mod.load()
    data: dict[str, Any] = {
        "lab": {"name": "quic", "description": "default + QUIC SNI blocking"},
        "censor": {
            "keywords": [list(k) if len(k) > 1 else k[0] for k in base.censor.keywords],
            "residual_seconds": base.censor.residual_seconds,
            "quic_blocked_sni": [BLOCKED, ALSO_BLOCKED],
            "quic_blocked_ip": [ALL_BLOCKED_IP],
        },
        "domain": [
            {"name": d.name, "block": d.block, "scheme": d.scheme, "a": d.a, "aaaa": d.aaaa}
            for d in base.domains
        ]
        + [{"name": n, "block": "none", "scheme": "https"} for n in (BLOCKED, OPEN, ALSO_BLOCKED)]
        + [{"name": ALL_BLOCKED, "block": "none", "scheme": "https", "a": ALL_BLOCKED_IP}],
    }
    return scenario_mod.parse(data, "<quic>")


@pytest.fixture(scope="module")
def qlab(lab: LabInfo) -> Iterator[LabInfo]:
    """The lab with this module's scenario; the session's scenario is restored afterwards."""
    yield topology.up(_scenario())
    topology.up(lab.scenario)


@pytest.fixture(scope="module")
def runs(qlab: LabInfo, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """vantage -> input -> test_keys, both vantages at once."""
    assert qlab.helper_url, "the lab's control helper is not running"
    started = {}
    for vantage in ("cn", "open"):
        results = tmp_path_factory.mktemp(f"quic-{vantage}")
        state = tmp_path_factory.mktemp(f"quic-state-{vantage}")  # no taints from other runs
        argv = [*qlab.vantages[vantage].exec_prefix, "env", f"XDG_STATE_HOME={state}",
                *topology._censorscope_argv(), "run", "quic_sni",
                *(a for i in INPUTS for a in ("--input", i)),
                "--resolver", qlab.resolver, "--ca-file", qlab.ca_pem,
                "--helper", qlab.helper_url,
                "--results", str(results), "--vantage", vantage,
                "--timeout", PROBE_TIMEOUT_S, "--no-progress"]  # fmt: skip
        started[vantage] = ProbeRun(start(argv), results, vantage, "quic_sni", INPUTS)
    with running(started) as runs:
        return runs.collect(RUN_TIMEOUT_S)


def test_quic_sni_at_cn(runs: dict[str, dict[str, Any]]) -> None:
    assert verdict_pairs(runs["cn"]) == INPUTS
    blocked = runs["cn"][BLOCKED]
    # The triple stays blocked after the trigger: the next control fails, TCP still works.
    assert blocked["x_residual_blocking"] is True
    assert blocked["x_tcp_check"]["failure"] is None
    assert [a["x_role"] for a in blocked["quic_handshakes"]] == ["control", "target", "control"]
    dropped = runs["cn"][ALL_BLOCKED]
    assert dropped["control"]["quic_handshake"][f"{ALL_BLOCKED_IP}:443"]["status"] is True
    opened = runs["cn"][OPEN]["quic_handshakes"]
    assert opened[-1]["negotiated_protocol"] == "h3" and opened[-1]["failure"] is None


def test_quic_sni_at_open(runs: dict[str, dict[str, Any]]) -> None:
    assert verdict_pairs(runs["open"]) == dict.fromkeys(INPUTS, (False, None))
