"""message_delivery over the `matrix` channel against a real Synapse homeserver on loopback.

One homeserver per session (tests/loopback/synapse.py) loads our keyword-filter module
(tests/loopback/synapse_filter.py) once per "region": accounts whose localpart starts with
`cn_` have filtered messages silently dropped (as WeChat does to China-registered accounts),
`ir_` refused with 403, `tm_` masked. The rules are the ground truth; the receiver `bob` and
the sender `alice` belong to no region. Nothing here is simulated: real logins, rooms, /sync.
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

from probes.channels.base import ChannelError
from probes.channels.matrix import MatrixChannel
from probes.nettests.base import ProbeContext
from probes.nettests.message_delivery import MessageDelivery, Postman
from tests import missing
from tests.loopback.synapse import (
    Homeserver,
    Region,
    _request,
    start_synapse,
    synapse_available,
)

RULES = [["falun"], ["tiananmen", "1989"]]
DEADLINE = 1.0  # a dropped message costs this long; the controls arrive at once
pytestmark = missing.skip_if(
    not synapse_available(),
    "matrix-synapse (scripts/install.sh --dev): the tests run a real homeserver",
)


@pytest.fixture(scope="session")
def homeserver() -> Iterator[Homeserver]:
    regions = [Region("cn_", "drop", RULES), Region("ir_", "reject", RULES)]
    regions.append(Region("tm_", "modify", RULES))
    with start_synapse(regions) as server:
        for name in ("alice", "bob", "cn_alice", "ir_alice", "tm_alice"):
            server.register(name)
        yield server


def env_for(server: Homeserver, sender: str, *, password_login: bool = False) -> dict[str, str]:
    """Settings as a user would export them: sender by token (or password), receiver bob."""
    a, b = server.accounts[sender], server.accounts["bob"]
    env = {
        "CENSORSCOPE_MATRIX_URL": server.url,
        "CENSORSCOPE_MATRIX_RECEIVER_TOKEN": b.access_token,
    }
    if password_login:
        env |= {"CENSORSCOPE_MATRIX_USER": a.localpart, "CENSORSCOPE_MATRIX_PASSWORD": a.password}
    else:
        env["CENSORSCOPE_MATRIX_TOKEN"] = a.access_token
    return env


def measure(env: dict[str, str], keyword: str) -> dict[str, Any]:
    ctx = ProbeContext(options={"channel": "matrix", "delivery_deadline": DEADLINE})

    async def go() -> dict[str, Any]:
        nettest = MessageDelivery(ctx)
        nettest.channel = MatrixChannel.from_settings([], None, env)
        nettest.postman = Postman(nettest.channel, DEADLINE, 0.05)
        try:
            return await nettest.measure(keyword)
        finally:
            await nettest.close()

    return asyncio.run(go())


@pytest.mark.parametrize("keyword", ["falun", "tiananmen+1989", "FALUN"])
@pytest.mark.parametrize(
    ("sender", "outcome"),
    [("cn_alice", "dropped"), ("ir_alice", "rejected"), ("tm_alice", "modified")],
)
def test_region_sender_keyword_is_filtered(
    homeserver: Homeserver, sender: str, outcome: str, keyword: str
) -> None:
    keys = measure(env_for(homeserver, sender), keyword)
    assert keys["control_before"]["outcome"] == keys["control_after"]["outcome"] == "delivered"
    assert keys["outcome"] == outcome
    assert keys["blocking"] == "delivery"
    assert keys["blocking_detail"] == f"delivery.{outcome}"
    message = keys["message"]
    if outcome == "dropped":  # the platform said "sent" and gave an event ID
        assert message["accepted"] and message["status_code"] == 200 and message["message_id"]
    if outcome == "rejected":
        assert message["status_code"] == 403
        assert message["refusal"].startswith("M_FORBIDDEN")
    if outcome == "modified":
        assert "*****" in message["received_text"] and message["received_text"] != message["text"]
    assert keys["channel"]["sender"] == f"@{sender}:censorscope.test"


@pytest.mark.parametrize("keyword", ["falun", "tiananmen+1989"])
def test_same_message_from_outside_the_region_is_delivered(
    homeserver: Homeserver, keyword: str
) -> None:
    keys = measure(env_for(homeserver, "alice"), keyword)
    assert keys["outcome"] == "delivered" and keys["blocking"] is False
    assert keys["message"]["received_text"] == keys["message"]["text"]


@pytest.mark.parametrize("keyword", ["tiananmen", "1989", "hello"])
def test_a_combination_rule_needs_every_word(homeserver: Homeserver, keyword: str) -> None:
    keys = measure(env_for(homeserver, "cn_alice"), keyword)
    assert keys["outcome"] == "delivered" and keys["blocking"] is False


def test_password_login_and_secrets_never_stored(homeserver: Homeserver) -> None:
    env = env_for(homeserver, "cn_alice", password_login=True)
    keys = measure(env, "falun")
    assert keys["outcome"] == "dropped" and keys["blocking_detail"] == "delivery.dropped"
    stored = json.dumps(keys)
    for secret in (env["CENSORSCOPE_MATRIX_PASSWORD"], env["CENSORSCOPE_MATRIX_RECEIVER_TOKEN"]):
        assert secret not in stored
    assert homeserver.accounts["cn_alice"].access_token not in stored


def test_bad_token_is_inconclusive_and_not_stored(homeserver: Homeserver) -> None:
    env = env_for(homeserver, "alice") | {"CENSORSCOPE_MATRIX_TOKEN": "syt_Xq9-bad-secret"}
    keys = measure(env, "falun")
    assert keys["blocking"] is None
    assert keys["control_before"]["outcome"] == "rejected"
    assert keys["control_before"]["status_code"] == 401
    assert "M_UNKNOWN_TOKEN" in keys["control_before"]["refusal"]
    assert "Xq9-bad-secret" not in json.dumps(keys)


def test_named_room_is_joined_and_history_ignored(homeserver: Homeserver) -> None:
    """A shared room: messages sent before the run are never taken as this run's."""
    env = env_for(homeserver, "alice")
    alice = homeserver.accounts["alice"]
    room = _request(
        "POST",
        f"{homeserver.url}/_matrix/client/v3/createRoom",
        {"preset": "public_chat", "room_alias_name": "cs-shared"},
        alice.access_token,
    )["room_id"]
    keys = measure(env | {"CENSORSCOPE_MATRIX_ROOM": "#cs-shared:censorscope.test"}, "hello")
    assert keys["channel"]["room"] == room and keys["outcome"] == "delivered"

    async def history_then_new() -> tuple[list[str], list[str]]:
        channel = MatrixChannel.from_settings([], None, env | {"CENSORSCOPE_MATRIX_ROOM": room})
        try:
            await channel.start()
            old = [m.text for m in await channel.fetch()]
            receipt = await channel.send("fresh")
            assert receipt.accepted
            return old, [m.text for m in await channel.fetch()]
        finally:
            await channel.close()

    old, new = asyncio.run(history_then_new())
    assert old == [] and new == ["fresh"]  # the first run's three messages are history


def test_settings_come_from_the_environment_only() -> None:
    with pytest.raises(ChannelError, match="CENSORSCOPE_MATRIX_URL"):
        MatrixChannel.from_settings([], None, {})
    with pytest.raises(ChannelError, match="RECEIVER_TOKEN"):
        MatrixChannel.from_settings(
            [], None, {"CENSORSCOPE_MATRIX_URL": "http://x", "CENSORSCOPE_MATRIX_TOKEN": "t"}
        )


def test_cli_run_message_delivery(homeserver: Homeserver, tmp_path: Path) -> None:
    keywords = tmp_path / "kw.csv"
    keywords.write_text(
        "keyword,language,category,source\nhello,en,control,t\nfalun,en,religion,t\n"
        "tiananmen+1989,en,politics,t\ntiananmen,en,politics,t\n",
        encoding="utf-8",
    )
    results = tmp_path / "results"
    env = {**os.environ, **env_for(homeserver, "cn_alice", password_login=True)}
    proc = subprocess.run(
        [sys.executable, "-c", "from probes.cli import main; main()", "run",
         "message_delivery", "--channel", "matrix", "--keywords", str(keywords),
         "--results", str(results), "--delivery-deadline", str(DEADLINE)],
        capture_output=True, text=True, timeout=120, env=env,
        cwd=Path(__file__).resolve().parents[1],
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    raw = "".join(p.read_text() for p in results.rglob("*.jsonl"))
    by_input = {m["input"]: m["test_keys"] for m in map(json.loads, raw.splitlines())}
    assert by_input["hello"]["blocking"] is False
    assert by_input["tiananmen"]["blocking"] is False
    assert by_input["falun"]["blocking_detail"] == "delivery.dropped"
    assert by_input["tiananmen+1989"]["blocking_detail"] == "delivery.dropped"
    assert by_input["falun"]["channel"]["homeserver"] == homeserver.url
    for secret in (env["CENSORSCOPE_MATRIX_PASSWORD"], env["CENSORSCOPE_MATRIX_RECEIVER_TOKEN"]):
        assert secret not in raw


@pytest.mark.slow  # every blocked test waits out the 1 s deadline
def test_cli_isolate_finds_the_rules(homeserver: Homeserver, tmp_path: Path) -> None:
    text = tmp_path / "message.txt"
    text.write_text("we remember tiananmen in 1989 and falun today\n", encoding="utf-8")
    results = tmp_path / "results"
    env = {**os.environ, **env_for(homeserver, "cn_alice")}
    proc = subprocess.run(
        [sys.executable, "-c", "from probes.cli import main; main()", "isolate",
         "--channel", "matrix", "--text", str(text), "--results", str(results),
         "--delivery-deadline", str(DEADLINE)],
        capture_output=True, text=True, timeout=240, env=env,
        cwd=Path(__file__).resolve().parents[1],
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    raw = "".join(p.read_text() for p in results.rglob("*.jsonl"))
    stored = [json.loads(line) for line in raw.splitlines()]
    result = next(m for m in stored if m["test_name"] == "keyword_isolation")["test_keys"]
    assert sorted(sorted(r) for r in result["rules"]) == [["1989", "tiananmen"], ["falun"]]
    assert env["CENSORSCOPE_MATRIX_TOKEN"] not in raw
