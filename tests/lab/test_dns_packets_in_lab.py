"""dns_consistency's packet evidence in the lab: the censor's injected answers arrive with other
IP TTLs than the resolver's genuine one.

The censor (cs-censor) forges its answers itself, one hop from the vantage (TTLs 64, 77, ... by
injector), while the genuine answer comes from the resolver in cs-internet, one router further
(its TTL decremented by the censor's forwarding). The probe runs as root in each vantage, so the
run-wide capture is on: at cn every injected name must carry the TTL evidence beside the
differing answers, at open no query may have answers with more than one TTL.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from bench.accuracy import read_verdicts
from lab import topology
from lab.topology import LabInfo

RUN_TIMEOUT_S = 120.0


def _run(lab: LabInfo, vantage: str, names: list[str], results: Path) -> dict[str, Any]:
    argv = [*lab.vantages[vantage].exec_prefix, *topology._censorscope_argv(), "run",
            "dns_consistency", "--resolver", lab.resolver, "--control-resolver", lab.resolver,
            "--results", str(results), "--vantage", vantage, "--timeout", "5",
            "--no-progress"]  # fmt: skip
    for name in names:
        argv += ["--input", name]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=RUN_TIMEOUT_S,
                          env=topology._python_env())  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "packet capture unavailable" not in proc.stderr
    out = read_verdicts(results, vantage, "dns_consistency")
    assert set(out) == set(names)
    return out


@pytest.fixture(scope="module")
def names(lab: LabInfo) -> tuple[list[str], list[str]]:
    """(injected names, untouched names) of the scenario."""
    domains = lab.scenario.domains
    injected = [d.name for d in domains if d.block == "dns_inject"]
    clean = [d.name for d in domains if d.block == "none"][:4]
    assert injected and clean
    return injected, clean


def test_injected_answers_carry_other_ttls(
    lab: LabInfo, names: tuple[list[str], list[str]], tmp_path: Path
) -> None:
    injected, clean = names
    found = _run(lab, "cn", injected + clean, tmp_path)
    for name in injected:
        keys = found[name]
        assert keys["packet_capture"] == "ok", keys.get("x_packet_capture_reason")
        (query,) = [q for q in keys["queries"] if q["x_role"] == "resolver" and q["x_responses"]]
        genuine = lab.scenario.domain(name).a
        ttl_of = {
            "genuine" if r["addrs"] == [genuine] else "forged": r["ip_ttl"]
            for r in query["x_responses"]
        }
        forged_ttls = {r["ip_ttl"] for r in query["x_responses"] if r["addrs"] != [genuine]}
        assert "genuine" in ttl_of and forged_ttls, (name, query["x_responses"])
        assert ttl_of["genuine"] not in forged_ttls, (name, query["x_responses"])
        details = [e["detail"] for e in keys["dns_evidence"] if e["kind"] == "dns.injected"]
        assert any("IP TTLs differ" in d for d in details), (name, details)
    for name in clean:
        ttls = {r["ip_ttl"] for q in found[name]["queries"] for r in q["x_responses"]}
        assert len(ttls) == 1 and found[name]["blocking"] is False, (name, found[name])


def test_one_ttl_per_query_at_the_open_vantage(
    lab: LabInfo, names: tuple[list[str], list[str]], tmp_path: Path
) -> None:
    injected, clean = names
    found = _run(lab, "open", injected + clean, tmp_path)
    for name, keys in found.items():
        assert keys["packet_capture"] == "ok"
        for query in keys["queries"] + keys["control_queries"]:
            assert len({r["ip_ttl"] for r in query["x_responses"]}) == 1, (name, query)
        assert keys["blocking"] is False, (name, keys["dns_evidence"])
