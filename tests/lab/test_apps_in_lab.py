"""whatsapp, telegram, signal, facebook_messenger against the lab's ground truth (issue 16 item
4): the censor blocks an app's endpoints by IP (blackhole), by SNI (reset after the
ClientHello), and by DNS (injected answers, NXDOMAIN, a bogon); the open sets and the open
vantage see nothing blocked. Both vantages run with the lab's control helper, so a set whose
server is down everywhere (the scenario's `down` kind: no answer at the helper either) is not
blocked.

The apps' endpoint lists point at the lab's own servers (bench.apps_lab): the scenario is the
default one plus, per app, one domain for each censor behaviour, so that the four apps run at
once without one's handshake leaving residual blocking on another's server.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from bench import apps_lab
from lab import scenario as scenario_mod
from lab import topology
from lab.topology import LabInfo
from tests.lab.probe_runs import ProbeRun, running, start, verdict_pairs

RUN_TIMEOUT_S = 240.0
PROBE_TIMEOUT_S = "20"
PREFIX = {"whatsapp": "wa", "telegram": "tg", "signal": "sg", "facebook_messenger": "fb"}
BLOCKS = ("blackhole", "sni_rst", "dns_inject", "dns_nxdomain", "dns_bogon", "down")


def _app_domains(app: str) -> list[dict[str, str]]:
    return [
        {"name": f"{PREFIX[app]}-{b.replace('_', '-')}.example", "block": b, "scheme": "https"}
        for b in BLOCKS
    ]


def _scenario() -> scenario_mod.Scenario:
    base = scenario_mod.load()
    extra = [d for app in apps_lab.APPS for d in _app_domains(app)]
    data: dict[str, Any] = {
        "lab": {"name": "apps", "description": "default + per app: IP, SNI and DNS blocking"},
        "censor": {
            "keywords": [list(k) if len(k) > 1 else k[0] for k in base.censor.keywords],
            "residual_seconds": base.censor.residual_seconds,
        },
        "domain": [
            {"name": d.name, "block": d.block, "scheme": d.scheme, "a": d.a, "aaaa": d.aaaa}
            for d in base.domains
        ]
        + extra,
    }
    return scenario_mod.parse(data, "<apps>")


@pytest.fixture(scope="module")
def alab(lab: LabInfo) -> Iterator[LabInfo]:
    """The lab with this module's scenario; the session's scenario is restored afterwards."""
    yield topology.up(_scenario())
    topology.up(lab.scenario)


def _sets(scen: scenario_mod.Scenario, app: str) -> tuple[str, dict[str, dict[str, Any]]]:
    mine = [scen.domain(d["name"]) for d in _app_domains(app)]
    tables, truth = apps_lab.endpoint_sets(scen, app, n_open=3, blocked=mine, control=True)
    return apps_lab.to_toml(app, tables), truth


@pytest.fixture(scope="module")
def runs(
    alab: LabInfo, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple[dict[str, Any], dict[str, dict[str, Any]]]]:
    """app -> (truth, vantage -> set name -> test_keys); every app and vantage at once."""
    started = {}
    truths: dict[str, dict[str, Any]] = {}
    for app in apps_lab.APPS:
        text, truths[app] = _sets(alab.scenario, app)
        endpoints = tmp_path_factory.mktemp(f"{app}-list") / "apps.toml"
        endpoints.write_text(text)
        for vantage in ("cn", "open"):
            results = tmp_path_factory.mktemp(f"{app}-{vantage}")
            ca = alab.cn_trust_pem if vantage == "cn" else alab.ca_pem
            argv = [*alab.vantages[vantage].exec_prefix, *topology._censorscope_argv(), "run",
                    app, *(a for name in truths[app] for a in ("--input", name)),
                    "--endpoints", str(endpoints), "--resolver", alab.resolver,
                    "--helper", str(alab.helper_url),
                    "--ca-file", ca, "--results", str(results), "--vantage", vantage,
                    "--timeout", PROBE_TIMEOUT_S, "--no-progress"]  # fmt: skip
            started[(app, vantage)] = ProbeRun(start(argv), results, vantage, app, truths[app])
    out: dict[str, tuple[dict[str, Any], dict[str, dict[str, Any]]]] = {}
    with running(started) as runs:
        for (app, vantage), found in runs.collect(RUN_TIMEOUT_S).items():
            out.setdefault(app, (truths[app], {}))[1][vantage] = found
    return out


@pytest.mark.parametrize("app", apps_lab.APPS)
def test_app_at_cn(runs: dict[str, Any], app: str) -> None:
    truth, found = runs[app]
    want = {name: (t["blocking"], t["blocking_detail"]) for name, t in truth.items()}
    assert verdict_pairs(found["cn"]) == want
    kinds = {t["mechanism"] for t in truth.values()}
    expected = {"none", *BLOCKS} - ({"sni_rst"} if app == "facebook_messenger" else set())
    assert kinds == expected


@pytest.mark.parametrize("app", apps_lab.APPS)
def test_app_at_open(runs: dict[str, Any], app: str) -> None:
    truth, found = runs[app]
    assert verdict_pairs(found["open"]) == dict.fromkeys(truth, (False, None))


def test_ooni_keys_in_lab(runs: dict[str, Any]) -> None:
    """OONI's keys say what the verdicts say: a whatsapp set whose endpoints are blackholed
    has every endpoint blocked; a telegram set whose data centres are has TCP blocking."""
    _truth, found = runs["whatsapp"]
    endpoint_sets = [
        k for name, k in found["cn"].items()
        if k["x_targets"] and k["whatsapp_endpoints_status"] == "blocked"
        and not name.startswith("down-")
    ]  # fmt: skip
    assert endpoint_sets and all(k["blocking"] for k in endpoint_sets)
    # A set down everywhere: OONI's keys call it blocked, the control says down.
    down = [k for name, k in found["cn"].items() if name.startswith("down-")]
    assert down and all(k["blocking"] is False and k["x_down"] for k in down)
    _truth, found = runs["telegram"]
    assert any(k["telegram_tcp_blocking"] for k in found["cn"].values())
    assert not any(k["telegram_tcp_blocking"] for k in found["open"].values())
