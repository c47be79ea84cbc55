"""Isolation in unspaced text (issue 15 item 7): exact components, and at most the anchor's cost.

The anchor is Citizen Lab's comp_aware_bin_split (censored-keyword-isolation), reproduced in
bench/isolation_text.py from its source: 12 sends for one keyword in 166 characters, 22 for two
in 219, 26 for four in 17 on their simulator. The filters here decide as theirs does (each
component a substring of the fragments joined by a separator); the messages are our own, of
the same lengths and rule shapes.
"""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path

import pytest

from bench.isolation_text import CASES, _shape_case, count_citizenlab, count_ours, filter_of
from probes.isolation_text import isolate_text


def _isolate(text: str, rules: list[frozenset[str]], **kw: object) -> tuple[list[str], int]:
    censored = filter_of(rules)

    async def oracle(fragments: list[str]) -> bool:
        return censored(fragments)

    result = asyncio.run(isolate_text(text, oracle, **kw))  # type: ignore[arg-type]
    assert result.complete
    return result.components, result.tests


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        ("今天我们读到了法轮功的新闻和天气预报", {"法轮功"}),
        ("新疆的天气很好今天我们去看集中营的报道", {"新疆", "集中营"}),
        (
            "一甲乙二二丙丁戊三三三己庚四四四四",
            {"甲乙", "丙丁", "丁戊", "己庚"},
        ),  # 丙丁/丁戊 overlap
        ("六四", {"六四"}),
        ("习a近平", {"a"}),  # a one-character component costs one test more, and is found
    ],
)
def test_finds_exactly_the_components(text: str, rule: set[str]) -> None:
    components, _ = _isolate(text, [frozenset(rule)], known_blocked=True)
    assert sorted(components) == sorted(rule)


def test_a_delivered_text_costs_one_test() -> None:
    components, tests = _isolate("今天天气很好", [frozenset({"法轮功"})])
    assert (components, tests) == ([], 1)


@pytest.mark.parametrize("case", CASES)
def test_never_costs_more_than_citizen_labs_algorithm(case: str) -> None:
    rng = random.Random(7)
    anchor = {CASES[0]: 12, CASES[1]: 22, CASES[2]: 26}[case]
    ours_all, theirs_all = [], []
    for _ in range(60):
        text, rules = _shape_case(rng, case)
        theirs, their_parts = count_citizenlab(text, rules)
        ours, our_parts = count_ours(text, rules)
        assert sorted(our_parts) == sorted(their_parts) == sorted(next(iter(rules)))
        assert ours <= theirs, (text, ours, theirs)
        ours_all.append(ours)
        theirs_all.append(theirs)
    assert sum(ours_all) / len(ours_all) <= anchor
    if case != CASES[2]:  # components of 3 characters: one test fewer each
        assert sum(ours_all) < sum(theirs_all)


def test_budget_and_silence_are_reported() -> None:
    async def silent(fragments: list[str]) -> bool | None:
        return None

    result = asyncio.run(isolate_text("法轮功", silent, retries=2))
    assert (result.complete, result.stopped_by, result.tests) == (False, "inconclusive", 3)

    async def blocked(fragments: list[str]) -> bool:
        return True

    result = asyncio.run(isolate_text("今天我们读到了法轮功", blocked, budget=4))
    assert (result.complete, result.stopped_by, result.tests) == (False, "budget", 4)


def test_isolate_chinese_text_over_the_relay(tmp_path: Path) -> None:
    """The isolate command's search on an unspaced message: the relay's rule, as substrings."""
    from backend.helper import RelayConfig
    from probes.channels.relay import RelayChannel
    from probes.commands.isolate import run_isolation
    from probes.nettests.keyword_isolation import DeliveryTester
    from tests.loopback.keyword_censor import run_helper

    text = "新疆的天气很好今天我们去看集中营的报道"
    config = RelayConfig(token="iso-t0ken", rules=(("新疆", "集中营"),), action="reject")
    with run_helper("127.0.0.7", relay=config) as (base, _):
        summary = asyncio.run(
            run_isolation(
                DeliveryTester(RelayChannel(base, token="iso-t0ken"), 0.25, 0.02),
                [],
                results=tmp_path,
                vantage="t",
                text=text,
            )
        )
    assert summary["complete"] and summary["mode"] == "substrings"
    assert summary["rules"] == [["新疆", "集中营"]]
    assert summary["words"] == [text]
    stored = [json.loads(x) for p in tmp_path.rglob("*.jsonl") for x in p.read_text().splitlines()]
    tests = [m for m in stored if m["test_name"] == "message_delivery"]
    assert len(tests) == summary["tests"] <= 22
