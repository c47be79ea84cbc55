"""Keyword isolation against simulated conjunctive filters (pure logic), then over the relay.

The simulated filter is the ground truth: a message is blocked when it holds every word of at
least one planted rule. Properties: every rule returned blocks on its own, is minimal (no word
can go), and, with a complete search, every minimal planted rule present is returned.
"""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from probes.isolation import IsolationResult, isolate


class SimulatedFilter:
    """A conjunctive keyword filter with optional flakiness (None answers, lost messages)."""

    def __init__(self, rules: list[frozenset[str]], *, flaky: float = 0.0, seed: int = 0) -> None:
        self.rules = rules
        self.flaky = flaky
        self.random = random.Random(seed)
        self.calls = 0

    def blocks(self, words: set[str] | frozenset[str]) -> bool:
        return any(rule <= words for rule in self.rules)

    async def __call__(self, words: list[str]) -> bool | None:
        self.calls += 1
        if self.flaky and self.random.random() < self.flaky:
            return None
        return self.blocks(set(words))


def minimal_rules(rules: list[frozenset[str]], words: set[str]) -> set[frozenset[str]]:
    """The planted rules present in `words` that contain no other present rule."""
    present = [r for r in rules if r <= words]
    return {r for r in present if not any(o < r for o in present)}


def run(words: list[str], oracle: SimulatedFilter, **kw: object) -> IsolationResult:
    return asyncio.run(isolate(words, oracle, **kw))  # type: ignore[arg-type]


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[list[str], list[frozenset[str]]]:
    n = draw(st.integers(min_value=1, max_value=60))
    words = [f"w{i}" for i in range(n)]
    rule_count = draw(st.integers(min_value=0, max_value=3))
    rules = []
    for _ in range(rule_count):
        size = draw(st.integers(min_value=1, max_value=min(5, n)))
        rules.append(frozenset(draw(st.permutations(words))[:size]))
    return words, rules


@settings(max_examples=150, deadline=None)
@given(scenarios())
def test_returns_exactly_the_minimal_planted_rules(
    scenario: tuple[list[str], list[frozenset[str]]],
) -> None:
    words, rules = scenario
    oracle = SimulatedFilter(rules)
    result = run(words, oracle)
    assert result.complete
    assert result.tests == oracle.calls
    found = {frozenset(r) for r in result.rules}
    for rule in found:
        assert oracle.blocks(rule)  # truly triggering
        assert not any(oracle.blocks(rule - {w}) for w in rule)  # minimal
    assert found == minimal_rules(rules, set(words))
    assert result.blocked == bool(found)


@settings(max_examples=60, deadline=None)
@given(scenarios(), st.integers(min_value=0, max_value=10_000))
def test_flaky_oracle_still_gives_true_minimal_rules(
    scenario: tuple[list[str], list[frozenset[str]]], seed: int
) -> None:
    """A third of the answers are lost: retries make the search as exact as without loss."""
    words, rules = scenario
    oracle = SimulatedFilter(rules, flaky=0.3, seed=seed)
    result = run(words, oracle, retries=8)
    found = {frozenset(r) for r in result.rules}
    for rule in found:
        assert oracle.blocks(rule) and not any(oracle.blocks(rule - {w}) for w in rule)
    if result.complete:
        assert found == minimal_rules(rules, set(words))


def test_a_lying_answer_is_outvoted() -> None:
    """One false 'delivered' for the rule itself is caught when the rule is confirmed."""
    rule = frozenset({"w3", "w7"})
    truth = SimulatedFilter([rule])
    lies = {frozenset(rule)}

    async def oracle(words: list[str]) -> bool | None:
        key = frozenset(words)
        if key in lies:
            lies.discard(key)  # lie once, then tell the truth
            return False
        return await truth(words)

    result = asyncio.run(isolate([f"w{i}" for i in range(10)], oracle))
    assert result.rules == [["w3", "w7"]]
    assert result.complete


def test_budget_stops_the_search() -> None:
    oracle = SimulatedFilter([frozenset({"w1", "w20", "w33"})])
    result = run([f"w{i}" for i in range(40)], oracle, budget=5)
    assert not result.complete and result.stopped_by == "budget"
    assert result.tests == 5 == oracle.calls


def test_an_oracle_that_never_answers_is_reported() -> None:
    oracle = SimulatedFilter([frozenset({"a"})], flaky=1.0)
    result = run(["a", "b"], oracle, retries=2)
    assert not result.complete and result.stopped_by == "inconclusive"
    assert result.tests == 3 and result.rules == []


def test_cost_is_logarithmic_in_the_message_length() -> None:
    """A two-word rule among 128 words takes a few dozen tests, not 128."""
    oracle = SimulatedFilter([frozenset({"w17", "w99"})])
    result = run([f"w{i}" for i in range(128)], oracle)
    assert result.rules == [["w17", "w99"]]
    assert result.tests < 40


def test_binary_search_deletion_costs_k_log_n() -> None:
    """Citizen Lab's suffix search on words: about k * (log2(n) + 1) tests for a rule of k words
    among n, plus the whole message and the proof that no other rule is left (QuickXplain's
    halving, used before, took 31 and 11 here)."""
    for rule, most in ((["w3", "w50", "w90"], 28), (["w5"], 10)):
        oracle = SimulatedFilter([frozenset(rule)])
        result = run([f"w{i}" for i in range(128)], oracle, confirm=False)
        assert result.rules == [rule]
        assert result.tests <= most, result.tests


# --- over the relay channel, end to end --------------------------------------------------------


def test_isolate_over_the_relay_stores_every_test(tmp_path: Path) -> None:
    """A relay dropping `tiananmen+1989` and `falun`: both found, each test stored and linked."""
    from backend.helper import RelayConfig
    from probes.channels.relay import RelayChannel
    from probes.commands.isolate import run_isolation
    from probes.nettests.keyword_isolation import DeliveryTester
    from tests.loopback.keyword_censor import run_helper

    words = [
        "the",
        "square",
        "in",
        "1989",
        "saw",
        "tiananmen",
        "protests",
        "and",
        "falun",
        "practice",
        "today",
    ]
    config = RelayConfig(
        token="iso-t0ken", rules=(("tiananmen", "1989"), ("falun",)), action="drop"
    )
    with run_helper("127.0.0.7", relay=config) as (base, _):
        summary = asyncio.run(
            run_isolation(
                DeliveryTester(RelayChannel(base, token="iso-t0ken"), 0.25, 0.02),
                words,
                results=tmp_path,
                vantage="t",
            )
        )
    assert summary["complete"]
    assert sorted(summary["rules"]) == [["1989", "tiananmen"], ["falun"]]
    stored = [json.loads(x) for p in tmp_path.rglob("*.jsonl") for x in p.read_text().splitlines()]
    tests = [m for m in stored if m["test_name"] == "message_delivery"]
    result = [m for m in stored if m["test_name"] == "keyword_isolation"]
    assert len(tests) == summary["tests"]
    assert {m["test_keys"]["isolation"]["run_id"] for m in tests} == {summary["isolation_run"]}
    assert [m["test_keys"]["isolation"]["step"] for m in tests] == list(range(1, len(tests) + 1))
    assert len(result) == 1 and result[0]["test_keys"]["blocking"] == "delivery"
    assert result[0]["test_keys"]["blocking_detail"] == "delivery.dropped"
    assert result[0]["test_keys"]["tests_report_id"] == tests[0]["report_id"]


def test_isolation_measurements_are_scrubbed(tmp_path: Path) -> None:
    """The words are the user's text: one of them is the probe's address (a forwarded message
    quoting it); no stored test or result may hold it (issue 13 item 6)."""
    from backend.helper import RelayConfig
    from probes.channels.relay import RelayChannel
    from probes.commands.isolate import run_isolation
    from probes.measurement import Scrubber
    from probes.nettests.keyword_isolation import DeliveryTester
    from tests.loopback.keyword_censor import run_helper

    words = ["my", "address", "203.0.113.7", "is", "falun"]
    config = RelayConfig(token="iso-t0ken", rules=(("falun",),), action="drop")
    with run_helper("127.0.0.7", relay=config) as (base, _):
        summary = asyncio.run(
            run_isolation(
                DeliveryTester(RelayChannel(base, token="iso-t0ken"), 0.25, 0.02),
                words,
                results=tmp_path,
                vantage="t",
                probe_cc="IT",
                probe_asn="AS30722",
                probe_network_name="Vodafone Italia",
                scrubber=Scrubber(["203.0.113.7"]),
            )
        )
    assert summary["rules"] == [["falun"]]
    stored = [x for p in tmp_path.rglob("*.jsonl") for x in p.read_text().splitlines()]
    assert stored and not any("203.0.113.7" in line for line in stored)
    assert all(json.loads(x)["probe_network_name"] == "Vodafone Italia" for x in stored)


def test_cli_isolate(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    from backend.helper import RelayConfig
    from tests.loopback.keyword_censor import run_helper

    text = tmp_path / "message.txt"
    text.write_text("please read about falun gong today", encoding="utf-8")
    relay = RelayConfig(token="iso-t0ken", rules=(("falun",),))
    with run_helper("127.0.0.7", relay=relay) as (base, _):
        proc = subprocess.run(
            [sys.executable, "-c", "from probes.cli import main; main()", "isolate",
             "--channel", "relay", "--text", str(text), "--helper", base,
             "--results", str(tmp_path / "r"), "--delivery-deadline", "0.3"],
            capture_output=True, text=True, timeout=60,
            env={**os.environ, "CENSORSCOPE_RELAY_TOKEN": "iso-t0ken"},
            cwd=Path(__file__).resolve().parents[1],
        )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "rules: falun" in proc.stdout


def test_isolate_through_http_keyword_against_an_on_path_censor(tmp_path: Path) -> None:
    """http-path: the loopback censor resets `falun`, with a residual window; found exactly."""
    from backend.helper import EchoConfig
    from probes.commands.isolate import run_isolation
    from probes.nettests.base import ProbeContext
    from probes.nettests.keyword_isolation import make_tester
    from tests.loopback import ServerThread
    from tests.loopback.keyword_censor import KeywordCensor, patterns_for, run_helper

    helper_host, censor_host, window = "127.0.0.8", "127.0.0.9", 0.3
    words = ["read", "about", "falun", "gong", "and", "the", "weather", "today"]
    with run_helper(helper_host, echo=EchoConfig(helper_host, [0, 0, 0])) as (base, port):
        import httpx

        ports = [port, *httpx.get(base + "echo", timeout=5).json()["tcp_ports"]]
        censor = KeywordCensor(censor_host, helper_host, ports, patterns_for(["falun"]), window)
        with ServerThread("censor") as thread:
            thread.start(censor)
            ctx = ProbeContext(
                helpers=[f"http://{censor_host}:{port}/"],
                timeout=5.0,
                options={"residual_window": window, "keyword_tries": 1},
            )
            tester = make_tester("http-path", ctx, deadline=1.0)
            summary = asyncio.run(run_isolation(tester, words, results=tmp_path, vantage="t"))
    assert summary["complete"] and summary["rules"] == [["falun"]]
    assert summary["blocking"] == "tcp_ip"
    assert summary["blocking_detail"] == "tcp.rst_injected.path"
    stored = [json.loads(x) for p in tmp_path.rglob("*.jsonl") for x in p.read_text().splitlines()]
    assert sum(m["test_name"] == "http_keyword" for m in stored) == summary["tests"]
