"""bench.accuracy's scorer: on made-up verdicts (no root), and end to end in a small lab.

The lab test brings up its own 40-domain generated scenario (every mechanism, DNS-redirected
block pages and SNI-throttled and -stalled sites among them, one intercepted and one
regional-certificate domain, no loss, residual censorship for 2 s, the censor 2 hops away),
in-path and on-path, runs every nettest the bench scores from both vantages through
`bench.accuracy.measure`, and checks that each input got a verdict and that the targets are
met; the session's lab is restored afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench import accuracy
from lab import scenario as scenario_mod
from lab import topology
from lab.topology import LabInfo

SMALL_DOMAINS = 40
SMALL_SEED = 3
PROBE_TIMEOUT_S = "10"


def _keys(blocking: Any, detail: str | None = None) -> dict[str, Any]:
    return {"blocking": blocking, "blocking_detail": detail}


def _truth(blocking: Any, detail: str | None, mechanism: str) -> dict[str, Any]:
    return {"blocking": blocking, "blocking_detail": detail, "mechanism": mechanism}


def test_score_counts_precision_recall_detail_and_open() -> None:
    truth = {
        "a": _truth("tls", "tls.sni_reset", "sni_rst"),
        "b": _truth("tls", "tls.sni_reset", "sni_rst"),
        "c": _truth(False, None, "none"),
        "d": _truth(False, None, "none"),
    }
    cn = {
        "a": _keys("tls", "tls.sni_reset"),
        "b": _keys("tls", "tls.sni_timeout"),  # right type, wrong detail
        "c": _keys("tls", "tls.sni_reset"),  # a false positive
        "d": _keys(None),  # inconclusive: no precision or recall cost
    }
    open_ = {"a": _keys(False), "b": _keys(None), "c": _keys("tls", "tls.sni_reset")}
    s = accuracy.score(truth, cn, open_, ("tls",), "blocking_detail")
    tls = s["per_type"]["tls"]
    assert (tls["n_truth"], tls["n_said"], tls["n_hit"], tls["n_detail"]) == (2, 3, 2, 1)
    assert tls["precision"] == pytest.approx(2 / 3) and tls["recall"] == 1.0
    assert s["type_accuracy"] == 0.5  # the detail is the type of a one-layer nettest
    assert s["null_at_cn"] == 1 and s["missing"] == {"cn": 0, "open": 1}
    assert s["open_not_false"] == {"b": None, "c": "tls", "d": None}  # d: counted as missing
    missed = accuracy.misses(s)
    assert any("precision" in m for m in missed) and any("blocked at open" in m for m in missed)
    assert not accuracy.meets_targets(s)


def test_null_verdicts_miss_the_target_at_either_vantage() -> None:
    truth = {"x": _truth("dns", "dns.bogon", "dns_bogon"), "y": _truth(False, None, "none")}
    right = {"x": _keys("dns", "dns.bogon"), "y": _keys(False)}
    s = accuracy.score(truth, right, {"x": _keys(False), "y": _keys(None)}, ("dns",))
    assert (s["null_at_cn"], s["null_at_open"]) == (0, 1)
    assert accuracy.misses(s) == ["null verdicts: {'cn': 0, 'open': 1}"]


def test_bench_options_set_the_issue14_conditions() -> None:
    args = accuracy.parse_args([])
    assert (args.residual, args.mode, args.hops, args.helper_loss) == (
        accuracy.DEFAULT_RESIDUAL_S,
        "in-path",
        accuracy.DEFAULT_HOPS,
        None,  # the same loss as the censor's
    )
    assert accuracy.parse_args(["--mode", "on-path", "--no-fingerprints"]).no_fingerprints


def test_score_meets_targets_when_all_right() -> None:
    truth = {"x": _truth("dns", "dns.bogon", "dns_bogon"), "y": _truth(False, None, "none")}
    verdicts = {"x": _keys("dns", "dns.bogon"), "y": _keys(False)}
    open_ = {"x": _keys(False), "y": _keys(False)}
    s = accuracy.score(truth, verdicts, open_, ("dns",), "blocking_detail")
    assert accuracy.misses(s) == [] and s["detail_accuracy"] == 1.0


def test_nettests_option_checks_names() -> None:
    assert accuracy.parse_args(["--nettests", "tcp_connect,dns_consistency"]).nettests == [
        "tcp_connect",
        "dns_consistency",
    ]
    with pytest.raises(SystemExit):
        accuracy.parse_args(["--nettests", "nope"])


def test_dnscheck_truth_plants_each_censor_rule() -> None:
    """Each DoH name the censor resets by SNI, each DoT name it drops or lies about, and open
    ones of both kinds; the domain asked for is open."""
    scen = scenario_mod.generate(SMALL_DOMAINS, SMALL_SEED, loss=0.0)
    truth = accuracy.dnscheck_truth(scen, None)
    kinds = {(v["blocking"], v["blocking_detail"]) for v in truth.values()}
    assert {
        ("tls", "tls.sni_reset"),
        ("tcp_ip", "tcp.connect_timeout"),
        ("dns", "dns.bootstrap_injected"),
        (False, None),
    } <= kinds
    assert all(u.startswith("https://") for u, v in truth.items() if v["blocking"] == "tls")
    (flag, name) = accuracy.dnscheck_args(scen)
    assert flag == "--domain" and scen.domain(name).block == "none"


def test_download_truth_plants_both_shaped_kinds_and_open_names() -> None:
    scen = scenario_mod.generate(SMALL_DOMAINS, SMALL_SEED, loss=0.0, shaped=0.05)
    truth = accuracy.NETTESTS["download"].truth(scen, None)
    kinds = [(v["blocking"], v["blocking_detail"]) for v in truth.values()]
    assert kinds.count(("throttling", "throttled")) == kinds.count(("throttling", "stalled")) == 2
    assert (False, None) in kinds and all(u.endswith("/large.bin") for u in truth)
    assert accuracy._shaped_share(accuracy.parse_args(["--nettests", "download"])) == 0.02
    assert accuracy._shaped_share(accuracy.parse_args(["--nettests", "dnscheck"])) == 0.0


@pytest.fixture(scope="module", params=["in-path", "on-path"])
def small_lab(lab: LabInfo, request: pytest.FixtureRequest) -> Iterator[LabInfo]:
    """A small generated scenario; the session's scenario is restored afterwards."""
    scen = scenario_mod.generate(
        SMALL_DOMAINS,
        SMALL_SEED,
        loss=0.0,
        intercept=0.025,
        regional_cert=0.025,
        dns_blockpage=0.05,
        ech=0.05,
        quic_sni=0.05,
        shaped=0.05,
        residual_seconds=2.0,
        mode=request.param,
        hops=2,
    )
    try:
        yield topology.up(scen)
    finally:
        topology.up(lab.scenario)


def test_accuracy_bench_end_to_end(small_lab: LabInfo, tmp_path: Path) -> None:
    results = tmp_path / "results"
    extra = ["--concurrency", "32", "--timeout", PROBE_TIMEOUT_S]
    nettests = list(accuracy.NETTESTS)
    scores, runs = accuracy.measure(small_lab, nettests, results, tmp_path, extra)
    assert [(r.nettest, r.vantage, r.returncode) for r in runs] == [
        (n, v, 0) for n in nettests for v in ("cn", "open")
    ], [r.stderr[-500:] for r in runs if r.returncode]
    assert set(scores) == set(nettests)
    for name, s in scores.items():
        assert s["missing"] == {"cn": 0, "open": 0}, name
        planted = sum(v["n_truth"] for v in s["per_type"].values())
        assert planted > 0, f"{name}: the scenario planted nothing to find"
        assert accuracy.misses(s) == [], f"{name}: {accuracy.misses(s)} {s['wrong_at_cn']}"
