"""Isolation of an unspaced (Chinese) message in the lab: the platform's rules, as substrings.

The lab's message platform drops messages from cn senders that hold every part of a rule; here
its rules are Citizen Lab's simulator's shapes in our own words (`法轮功`; `新疆` + `集中营`).
`censorscope isolate` runs inside the cn vantage on a sentence holding both; the stored result
must name the platform's rules, found as substrings of the text (issue 15 item 7).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from lab import scenario as scenario_mod
from lab import topology
from lab.topology import LabInfo

RULES = (("法轮功",), ("新疆", "集中营"))
TEXT = "今天读到法轮功和新疆的新闻还有集中营的报道"


@pytest.fixture(scope="module")
def zlab(lab: LabInfo) -> Iterator[LabInfo]:
    base = scenario_mod.load()
    scen = replace(
        base,
        name="isolation-text",
        description="default with Chinese platform rules",
        platform=replace(base.platform, keywords=RULES),
    )
    yield topology.up(scen)
    topology.up(lab.scenario)


def _isolate(lab: LabInfo, tmp: Path, *extra: str) -> dict[str, Any]:
    text = tmp / "message.txt"
    text.write_text(TEXT, encoding="utf-8")
    results = tmp / "results"
    argv = [*lab.vantages["cn"].exec_prefix, *topology._censorscope_argv(),
            "isolate", "--channel", "relay", "--text", str(text), "--results", str(results),
            "--vantage", "cn", "--delivery-deadline", "1", *extra]  # fmt: skip
    env = {**topology._python_env(), "CENSORSCOPE_RELAY_URL": lab.platform_url}
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=600, env=env, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    paths = results.glob("raw/date=*/vantage=cn/test_name=keyword_isolation/*.jsonl")
    (summary,) = [
        json.loads(line)["test_keys"] for p in paths for line in p.read_text().splitlines()
    ]
    tests = list(results.glob("raw/date=*/vantage=cn/test_name=message_delivery/*.jsonl"))
    assert sum(len(p.read_text().splitlines()) for p in tests) == summary["tests"]
    return summary


def test_one_rule_of_a_chinese_message(zlab: LabInfo, tmp_path: Path) -> None:
    summary = _isolate(zlab, tmp_path)
    assert summary["complete"] and summary["mode"] == "substrings"
    assert [tuple(r) for r in summary["rules"]] in ([RULES[0]], [RULES[1]])
    assert summary["blocking_detail"] == "delivery.dropped"


def test_every_rule_of_a_chinese_message(zlab: LabInfo, tmp_path: Path) -> None:
    summary = _isolate(zlab, tmp_path, "--all-rules")
    assert summary["complete"]
    assert sorted(tuple(r) for r in summary["rules"]) == sorted(RULES)
