"""message_delivery over the relay channel against a real helper on loopback.

The helper's relay is configured with platform rules (the ground truth): it drops, refuses
or masks messages carrying them. Sender and receiver talk real HTTP to it.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from backend.helper import RelayConfig
from probes.channels.relay import RelayChannel
from probes.nettests.base import ProbeContext
from probes.nettests.message_delivery import MessageDelivery
from tests.loopback.keyword_censor import run_helper

HOST = "127.0.0.6"
RULES = (("falun",), ("tiananmen", "1989"))
DEADLINE = 1.0  # a dropped message costs this long; the controls arrive at once


@pytest.fixture(scope="module", params=["drop", "reject", "modify"])
def relay(request: pytest.FixtureRequest) -> Iterator[tuple[str, str]]:
    config = RelayConfig(rules=RULES, action=request.param, token="t0ken")
    with run_helper(HOST, relay=config) as (base, _):
        yield base, request.param


def measure(base: str, keyword: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    ctx = ProbeContext(helpers=[base], options={"delivery_deadline": DEADLINE})
    env = env if env is not None else {"CENSORSCOPE_RELAY_TOKEN": "t0ken"}

    async def go() -> dict[str, Any]:
        nettest = MessageDelivery(ctx)
        nettest.channel = RelayChannel.from_settings([base], None, env)
        from probes.nettests.message_delivery import Postman

        nettest.postman = Postman(nettest.channel, DEADLINE, 0.05)
        try:
            return await nettest.measure(keyword)
        finally:
            await nettest.close()

    return asyncio.run(go())


EXPECTED = {"drop": "dropped", "reject": "rejected", "modify": "modified"}


@pytest.mark.parametrize("keyword", ["falun", "tiananmen+1989"])
def test_filtered_keyword_is_not_delivered(relay: tuple[str, str], keyword: str) -> None:
    base, action = relay
    keys = measure(base, keyword)
    assert keys["control_before"]["outcome"] == keys["control_after"]["outcome"] == "delivered"
    assert keys["outcome"] == EXPECTED[action]
    assert keys["blocking"] == "delivery"
    assert keys["blocking_detail"] == f"delivery.{EXPECTED[action]}"
    if action == "reject":
        assert keys["message"]["refusal"] == "message content denied"


def test_single_part_of_a_combination_is_delivered(relay: tuple[str, str]) -> None:
    base, _ = relay
    keys = measure(base, "tiananmen")
    assert keys["outcome"] == "delivered" and keys["blocking"] is False
    assert keys["message"]["received_text"] == keys["message"]["text"]


def test_broken_channel_is_inconclusive_and_token_never_stored(relay: tuple[str, str]) -> None:
    base, _ = relay
    keys = measure(base, "falun", env={"CENSORSCOPE_RELAY_TOKEN": "Xq9-bad-secret"})
    assert keys["blocking"] is None
    assert keys["control_before"]["outcome"] == "rejected"  # 401 to every message
    assert "Xq9-bad-secret" not in json.dumps(keys) and "t0ken" not in json.dumps(keys)


def test_cli_run_message_delivery(relay: tuple[str, str], tmp_path: Path) -> None:
    base, action = relay
    if action != "drop":
        pytest.skip("one CLI run is enough")
    keywords = tmp_path / "kw.csv"
    keywords.write_text(
        "keyword,language,category,source\nhello,en,control,t\nfalun,en,religion,t\n"
        "tiananmen+1989,en,politics,t\n",
        encoding="utf-8",
    )
    results = tmp_path / "results"
    env = {**os.environ, "CENSORSCOPE_RELAY_TOKEN": "t0ken"}
    proc = subprocess.run(
        [sys.executable, "-c", "from probes.cli import main; main()", "run", "message_delivery",
         "--channel", "relay", "--keywords", str(keywords), "--helper", base,
         "--results", str(results), "--delivery-deadline", str(DEADLINE)],
        capture_output=True, text=True, timeout=60, env=env,
        cwd=Path(__file__).resolve().parents[1],
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    stored = [json.loads(x) for p in results.rglob("*.jsonl") for x in p.read_text().splitlines()]
    by_input = {m["input"]: m["test_keys"] for m in stored}
    assert by_input["hello"]["blocking"] is False
    assert by_input["falun"]["blocking_detail"] == "delivery.dropped"
    assert by_input["tiananmen+1989"]["blocking_detail"] == "delivery.dropped"
    assert "t0ken" not in "".join(p.read_text() for p in results.rglob("*.jsonl"))
