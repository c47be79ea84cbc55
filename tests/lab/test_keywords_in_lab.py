"""Keyword censorship in the lab: http_keyword, message_delivery and isolate against planted rules.

The scenario is the default one (keywords `falun` and `tiananmen+1989` looked for in the URL
path and query, the Host header, the SNI and DNS names; a message platform dropping `falun`,
`tiananmen+1989` and `tank+man` from cn senders) with a short residual window, so that the
probe's rotation and waiting are exercised in seconds rather than the GFW's ~90 s. The probe
runs as `censorscope` inside the vantages; its stored verdicts are compared with the scenario.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from lab import addresses, topology
from lab import scenario as scenario_mod
from lab.topology import LabInfo

# The lab censor's residual window for this module, and the probe's (a margin above it: the
# two processes' clocks start the window at slightly different moments).
LAB_RESIDUAL_S = 2.0
PROBE_WINDOW_S = "3"
KEYWORD_TRIES = "2"
RUN_TIMEOUT_S = 240.0
VANTAGES = ("cn", "open")
# http_keyword's placements and how a planted rule shows in each (probe vocabulary,
# docs/methodology.md "## http_keyword").
EXPECTED = {
    "path": ("tcp_ip", "tcp.rst_injected.path"),
    "query": ("tcp_ip", "tcp.rst_injected.query"),
    "host": ("tcp_ip", "tcp.rst_injected.host"),
    "sni": ("tls", "tls.sni_reset.sni"),
    "dns": ("dns", "dns.injected.dns"),
}
# Benign inputs: ordinary words and single parts of planted combinations (a filter on
# `tiananmen+1989` must not be reported as one on `tiananmen`).
BENIGN = ["weather", "tiananmen", "1989", "tank"]
# For isolation: every platform rule among ordinary words.
ISOLATION_TEXT = "yesterday a tank and one man by tiananmen recalled 1989 while falun crowds sang"


def _scenario() -> scenario_mod.Scenario:
    base = scenario_mod.load()
    return replace(
        base,
        name="keywords",
        description="default with a short residual window",
        censor=replace(base.censor, residual_seconds=LAB_RESIDUAL_S),
    )


@pytest.fixture(scope="module")
def klab(lab: LabInfo) -> Iterator[LabInfo]:
    """The lab with this module's scenario; the session's scenario is restored afterwards."""
    yield topology.up(_scenario())
    topology.up(lab.scenario)


def _words(combos: tuple[tuple[str, ...], ...]) -> list[str]:
    return ["+".join(c) for c in combos]


def _keyword_file(path: Path, words: list[str]) -> Path:
    rows = "".join(f"{w},en,test,lab\n" for w in words)
    path.write_text("keyword,language,category,source\n" + rows, encoding="utf-8")
    return path


def _censorscope(
    lab: LabInfo, vantage: str, args: list[str], env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    argv = [*lab.vantages[vantage].exec_prefix, *topology._censorscope_argv(), *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=RUN_TIMEOUT_S,
                          env={**topology._python_env(), **(env or {})}, check=False)  # fmt: skip


def _stored(results: Path, vantage: str, nettest: str) -> list[dict[str, Any]]:
    out = []
    for path in sorted(results.glob(f"raw/date=*/vantage={vantage}/test_name={nettest}/*.jsonl")):
        out += [json.loads(line) for line in path.read_text().splitlines()]
    return out


def _run(lab: LabInfo, vantage: str, nettest: str, words: list[str], tmp: Path,
         *extra: str, env: dict[str, str] | None = None) -> dict[str, dict[str, Any]]:  # fmt: skip
    results = tmp / f"{nettest}-{vantage}"
    keywords = _keyword_file(tmp / f"{nettest}-{vantage}.csv", words)
    proc = _censorscope(lab, vantage, [
        "run", nettest, "--keywords", str(keywords), "--results", str(results),
        "--vantage", vantage, "--concurrency", "1", "--no-progress", *extra,
    ], env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {m["input"]: m["test_keys"] for m in _stored(results, vantage, nettest)}


@pytest.fixture(scope="module")
def http_runs(klab: LabInfo, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """vantage -> keyword -> test_keys of one http_keyword run (planted keywords first, so the
    benign words right after meet endpoints still under the lab's residual censorship)."""
    assert klab.helper_url, "the lab's control helper is not running"
    words = _words(klab.scenario.censor.keywords) + BENIGN
    tmp = tmp_path_factory.mktemp("http_keyword")
    flags = ["--helper", klab.helper_url, "--residual-window", PROBE_WINDOW_S,
             "--keyword-tries", KEYWORD_TRIES, "--timeout", "60"]  # fmt: skip
    return {v: _run(klab, v, "http_keyword", words, tmp, *flags) for v in ("cn", "open")}


def test_every_planted_keyword_found_in_its_placements_at_cn(klab: LabInfo, http_runs) -> None:
    planted = set(klab.scenario.censor.keyword_placements)
    assert planted == set(EXPECTED), "the scenario plants every placement this test checks"
    for word in _words(klab.scenario.censor.keywords):
        keys = http_runs["cn"][word]
        for placement, result in keys["placements"].items():
            if placement in planted:
                want = EXPECTED[placement]
                got = (result["blocking"], result["blocking_detail"])
                assert got == want, (word, placement, result["outcome"])
            else:  # e.g. the body: no rule looks there, so the keyword must get through
                assert result["blocking"] is False, (word, placement, result["outcome"])
        assert set(keys["blocked_placements"]) == planted, word


def test_residual_censorship_seen_and_handled(klab: LabInfo, http_runs) -> None:
    """Every TCP trigger left its endpoint tainted (the benign control on it failed at once),
    every retry went to another endpoint, and no failure was taken from a tainted one."""
    for word in _words(klab.scenario.censor.keywords):
        for placement in ("path", "query", "host", "sni"):
            result = http_runs["cn"][word]["placements"][placement]
            assert result["residual_observed"] is True, (word, placement)
            # residual_action "rst": the censor answers the new SYN with a RST (refused).
            check = result["residual_check"]
            assert check["failure"] == "connection_refused", (word, placement, check["failure"])
            addresses_tried = [t["address"] for t in result["keyword_tries"]]
            assert len(set(addresses_tried)) == len(addresses_tried), (word, placement)
            assert all(t["outcome"] == "reset" for t in result["keyword_tries"])
            assert result["control_after"]["outcome"] == "delivered"
            assert result["control_after"]["address"] not in addresses_tried


def test_no_benign_word_flagged_despite_residual_taint(http_runs) -> None:
    for word in BENIGN:
        keys = http_runs["cn"][word]
        assert keys["blocking"] is False, (word, keys["blocked_placements"])
        for placement, result in keys["placements"].items():
            outcomes = [t["outcome"] for t in result["keyword_tries"]]
            assert outcomes == ["delivered"], (word, placement, outcomes)


def test_nothing_flagged_from_the_open_vantage(klab: LabInfo, http_runs) -> None:
    words = _words(klab.scenario.censor.keywords) + BENIGN
    assert set(http_runs["open"]) == set(words)
    for word, keys in http_runs["open"].items():
        assert keys["blocking"] is False, (word, keys["blocked_placements"])


@pytest.fixture(scope="module")
def delivery_runs(klab: LabInfo, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    words = _words(klab.scenario.platform.keywords) + BENIGN
    tmp = tmp_path_factory.mktemp("message_delivery")
    env = {"CENSORSCOPE_RELAY_URL": klab.platform_url}
    flags = ["--channel", "relay", "--delivery-deadline", "1.5"]
    return {v: _run(klab, v, "message_delivery", words, tmp, *flags, env=env) for v in VANTAGES}


def test_platform_drops_planted_messages_from_cn_only(klab: LabInfo, delivery_runs) -> None:
    assert klab.scenario.platform.action == "drop"
    for word in _words(klab.scenario.platform.keywords):
        keys = delivery_runs["cn"][word]
        assert (keys["blocking"], keys["blocking_detail"]) == ("delivery", "delivery.dropped")
        assert keys["control_before"]["outcome"] == keys["control_after"]["outcome"] == "delivered"
        assert delivery_runs["open"][word]["outcome"] == "delivered"
    for word in BENIGN:
        assert delivery_runs["cn"][word]["blocking"] is False, word
    assert all(k["blocking"] is False for k in delivery_runs["open"].values())


def test_delivery_matrix_follows_registration_not_location(klab: LabInfo, tmp_path: Path) -> None:
    """Each scenario account sends from each vantage to an account of each region (issue 15
    item 2): a message is dropped exactly when its sender is registered in a filtered region,
    whichever network it is sent from (a CN account abroad is still filtered, a foreign
    account inside the cn network is not), and whoever receives it."""
    platform = klab.scenario.platform
    regions = dict(platform.accounts)
    assert {"CN", "US"} <= set(regions.values())
    by_region = {g: [n for n, r in regions.items() if r == g] for g in ("CN", "US")}
    senders = [names[0] for names in by_region.values()]
    receivers = [names[-1] for names in by_region.values()]
    keys = {name: f"{name}-lab-mailbox-key-000" for name in regions}
    config = tmp_path / "accounts.toml"
    config.write_text("".join(f'[accounts.{n}]\nregion = "{g}"\nmailbox_key = "{keys[n]}"\n'
                              for n, g in regions.items()), encoding="utf-8")  # fmt: skip
    config.chmod(0o600)
    word = _words(platform.keywords)[0]
    seen: dict[tuple[str, str, str], str] = {}
    for vantage in VANTAGES:
        for sender in senders:
            for receiver in receivers:
                results = tmp_path / f"{vantage}-{sender}-{receiver}"
                proc = _censorscope(klab, vantage, [
                    "run", "message_delivery", "--config", str(config), "--channel", "relay",
                    "--sender", sender, "--receiver", receiver, "--input", word, "--input",
                    "weather", "--results", str(results), "--vantage", vantage,
                    "--delivery-deadline", "1.5", "--no-progress",
                ], {"CENSORSCOPE_RELAY_URL": klab.platform_url})  # fmt: skip
                assert proc.returncode == 0, proc.stderr[-3000:]
                for m in _stored(results, vantage, "message_delivery"):
                    got = m["test_keys"]
                    cell = (vantage, got["sender"]["region"], got["receiver"]["region"])
                    seen[(*cell, m["input"])] = got["outcome"]
    for (vantage, sender_region, receiver_region, text), outcome in seen.items():
        filtered = text == word and sender_region in platform.regions
        assert outcome == ("dropped" if filtered else "delivered"), (
            vantage, sender_region, receiver_region, text, outcome,
        )  # fmt: skip
    assert len(seen) == len(VANTAGES) * 2 * 2 * 2


def test_isolation_recovers_every_planted_combination(klab: LabInfo, tmp_path: Path) -> None:
    text = tmp_path / "message.txt"
    text.write_text(ISOLATION_TEXT, encoding="utf-8")
    results = tmp_path / "results"
    proc = _censorscope(klab, "cn", [
        "isolate", "--channel", "relay", "--text", str(text), "--results", str(results),
        "--vantage", "cn", "--delivery-deadline", "1",
    ], {"CENSORSCOPE_RELAY_URL": klab.platform_url})  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    (summary,) = [m["test_keys"] for m in _stored(results, "cn", "keyword_isolation")]
    assert summary["complete"] is True
    found = {frozenset(rule) for rule in summary["rules"]}
    assert found == {frozenset(rule) for rule in klab.scenario.platform.keywords}
    assert summary["blocking_detail"] == "delivery.dropped"
    tests = _stored(results, "cn", "message_delivery")
    assert len(tests) == summary["tests"]
    assert addresses.PLATFORM_V4 in klab.platform_url
