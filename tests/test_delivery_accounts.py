"""message_delivery between accounts registered in different regions (issue 15 item 2).

The platform is the lab's (lab/servers.py Platform) served on loopback: its rules apply to
senders registered in CN, wherever they connect from, as WeChat files accounts by the country
of their phone number. Runs through `censorscope run` for every (sender, receiver) pair give
the delivery matrix: dropped exactly where the sender is a CN account.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from itertools import product
from pathlib import Path
from typing import Any

import pytest

from lab.scenario import Platform, Scenario
from lab.servers import Platform as PlatformServer
from probes.accounts import key_variable, load_accounts
from probes.config import ConfigError, load_config
from tests.loopback import ServerThread

HOST = "127.0.0.14"
ROOT = Path(__file__).resolve().parents[1]
ACCOUNTS = {"cn-alice": "CN", "cn-bob": "CN", "intl-carol": "US", "intl-dave": "US"}
KEYS = {name: f"{name}-mailbox-key-0123456789" for name in ACCOUNTS}
WORDS = ["falun", "weather"]


class _Served:
    """The lab platform on a loopback port, in a thread with its own event loop."""

    def __init__(self, platform: PlatformServer) -> None:
        self.platform, self.port = platform, 0
        self._server: asyncio.base_events.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self.platform.handle, HOST, 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()


@pytest.fixture(scope="module")
def platform_url() -> Iterator[str]:
    scenario = Scenario(
        name="accounts",
        description="a platform filtering CN-registered senders",
        domains=(),
        platform=Platform(keywords=(("falun",),), accounts=tuple(ACCOUNTS.items())),
    )
    with ServerThread("platform") as thread:
        served = thread.start(_Served(PlatformServer(scenario)))
        yield f"http://{HOST}:{served.port}"


def _config(tmp_path: Path, url: str) -> Path:
    lines = [f'[probe]\nresults = "{tmp_path / "results"}"\n']
    for name, region in ACCOUNTS.items():
        lines.append(f'[accounts.{name}]\nregion = "{region}"\nurl = "{url}"\n')
    path = tmp_path / "config.toml"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def _run(config: Path, sender: str, receiver: str) -> subprocess.CompletedProcess[str]:
    # The mailbox keys come from the environment: a secret never goes on the command line.
    env = {**os.environ, **{key_variable(n): k for n, k in KEYS.items()}}
    return subprocess.run(
        [sys.executable, "-c", "from probes.cli import main; main()", "run",
         "message_delivery", "--config", str(config), "--channel", "relay",
         "--sender", sender, "--receiver", receiver, "--delivery-deadline", "1",
         *[a for w in WORDS for a in ("--input", w)]],
        capture_output=True, text=True, timeout=120, env=env, cwd=ROOT,
    )  # fmt: skip


def test_the_delivery_matrix_follows_the_senders_registered_region(
    platform_url: str, tmp_path: Path
) -> None:
    config = _config(tmp_path, platform_url)
    pairs = [("cn-alice", "cn-bob"), ("cn-alice", "intl-carol"),
             ("intl-carol", "cn-alice"), ("intl-carol", "intl-dave")]  # fmt: skip
    for sender, receiver in pairs:
        proc = _run(config, sender, receiver)
        assert proc.returncode == 0, proc.stderr[-2000:]
    stored = [json.loads(line) for p in (tmp_path / "results").rglob("*.jsonl")
              for line in p.read_text().splitlines()]  # fmt: skip
    matrix: dict[tuple[str, str, str], Any] = {}
    for m in stored:
        keys = m["test_keys"]
        cell = (m["input"], keys["sender"]["region"], keys["receiver"]["region"])
        matrix.setdefault(cell, []).append(keys["outcome"])
    for (word, sender_region, receiver_region), outcomes in matrix.items():
        filtered = word == "falun" and sender_region == "CN"
        assert outcomes == ["dropped" if filtered else "delivered"] * len(outcomes), (
            word, sender_region, receiver_region, outcomes,
        )  # fmt: skip
    assert {(s, r) for _, s, r in matrix} == set(product(["CN", "US"], repeat=2))
    text = "".join(p.read_text() for p in (tmp_path / "results").rglob("*") if p.is_file())
    assert not any(key in text for key in KEYS.values())  # no mailbox key is stored
    one = next(m["test_keys"] for m in stored if m["test_keys"]["sender"]["account"] == "cn-alice")
    assert one["channel"]["sender"] == "cn-alice"
    assert one["sender"] == {"account": "cn-alice", "region": "CN"}
    _the_analysis_writes_the_matrix(tmp_path)


def _the_analysis_writes_the_matrix(tmp_path: Path) -> None:
    """analyze's keyword_delivery_matrix and the report's table: one row per (keyword, sender
    region, receiver region), each cell a keyword finding of its own ("relay CN->US")."""
    from analysis.load import Filters
    from analysis.pipeline import run
    from analysis.report import render

    result = run([tmp_path / "results"], [], Filters(), None)
    assert result.keywords is not None
    matrix = result.keywords.matrix
    cells = {
        (r.keyword, r.sender_region, r.receiver_region): (int(r.delivered), int(r.tries))
        for r in matrix.itertuples(index=False)
    }
    assert cells == {
        (word, s, r): ((0 if word == "falun" and s == "CN" else 1), 1)
        for word in WORDS
        for s, r in product(["CN", "US"], repeat=2)
    }
    assert set(result.keywords.findings["where"]) == {
        f"relay {s}->{r}" for s, r in product(["CN", "US"], repeat=2)
    }
    page = render(result)
    assert "keyword-delivery-matrix" in page and "sender registered in" in page


def test_an_unknown_account_or_a_missing_key_stops_the_run(
    platform_url: str, tmp_path: Path
) -> None:
    config = _config(tmp_path, platform_url)
    proc = _run(config, "cn-alice", "nobody")
    assert proc.returncode == 2 and "--receiver nobody" in proc.stderr, proc.stderr
    proc = subprocess.run(
        [sys.executable, "-c", "from probes.cli import main; main()", "run",
         "message_delivery", "--config", str(config), "--sender", "cn-alice",
         "--receiver", "cn-bob", "--input", "x"],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
        env={k: v for k, v in os.environ.items() if not k.startswith("CENSORSCOPE_ACCOUNT")},
    )  # fmt: skip
    assert proc.returncode == 2 and key_variable("cn-bob") in proc.stderr, proc.stderr


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('[accounts.a]\nmailbox = "a"\n', "'region' is required"),
        ('[accounts.a]\nregion = "CN"\ncolour = "red"\n', "unknown key 'colour'"),
        ('[accounts."a b"]\nregion = "CN"\n', "a name is 1-64"),
        ("[accounts.a]\nregion = 7\n", "accounts.a.region: expected a non-empty string"),
        ('[accounts.a]\nregion = "CN"\nmailbox = "x/y"\n', "accounts.a.mailbox"),
    ],
)
def test_a_bad_account_table_names_the_file_and_key(
    tmp_path: Path, table: str, message: str
) -> None:
    path = tmp_path / "c.toml"
    path.write_text(table, encoding="utf-8")
    with pytest.raises(ConfigError, match=message) as caught:
        load_accounts(load_config(path), env={})
    assert str(path) in str(caught.value)


def test_an_account_key_comes_from_the_config_or_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[accounts.cn-alice]\nregion = "cn"\n', encoding="utf-8")
    accounts = load_accounts(load_config(path), env={"CENSORSCOPE_ACCOUNT_CN_ALICE_KEY": "k" * 16})
    alice = accounts["cn-alice"]
    assert (alice.region, alice.mailbox, alice.mailbox_key) == ("CN", "cn-alice", "k" * 16)
    assert alice.describe() == {"account": "cn-alice", "region": "CN"}
