"""Scheduled keyword monitoring (issue 15 item 3): keyword jobs with their run options, and
isolation of what a run newly found blocked, against the helper's relay with planted rules."""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from pathlib import Path

import pytest

from backend.helper import RelayConfig
from probes.config import load_config
from probes.schedule import ScheduleError, _command, parse_schedule, run_job
from probes.triggers import words_of
from tests.loopback.keyword_censor import run_helper

HOST = "127.0.0.15"
TOKEN = "sched-relay-t0ken"
RULES = (("tank", "man"),)
MESSAGE = "yesterday a tank and one man stood still"


def _config(tmp_path: Path, job: str) -> Path:
    path = tmp_path / "probe.toml"
    path.write_text(
        f'[probe]\nresults = "{tmp_path / "results"}"\n\n'
        f'[schedule]\nstate_file = "{tmp_path / "state" / "schedule.json"}"\n'
        f'log_file = "{tmp_path / "schedule.log"}"\n\n[[schedule.jobs]]\n{job}\n',
        encoding="utf-8",
    )
    return path


JOB = """id = "messages"
nettest = "message_delivery"
inputs = ["weather", "{message}"]
interval = 3600
isolate = true
options = {{ channel = "relay", delivery_deadline = 1 }}"""


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ('{ colour = "red" }', "'schedule.jobs[0].options.colour': not a run option"),
        ('{ input = ["x"] }', "set it with the job's own key inputs"),
        ('{ placement = "path" }', "expected a list"),
        ("{ packet_capture = 1 }", "expected true or false"),
        ('{ channel = ["relay"] }', "expected a string or number"),
    ],
)
def test_job_options_are_checked_against_runs_own(
    tmp_path: Path, options: str, message: str
) -> None:
    job = f'id = "k"\nnettest = "http_keyword"\ninputs = ["x"]\ninterval = 60\noptions = {options}'
    with pytest.raises(ScheduleError, match=re.escape(message)):
        parse_schedule(load_config(_config(tmp_path, job)))


def test_isolation_is_for_keyword_nettests_only(tmp_path: Path) -> None:
    job = 'id = "w"\nnettest = "web_connectivity"\ninputs = ["http://x/"]\ninterval = 60\n'
    with pytest.raises(ScheduleError, match="isolate': only for message_delivery"):
        parse_schedule(load_config(_config(tmp_path, job + "isolate = true")))


def test_a_keyword_job_becomes_its_run_command(tmp_path: Path) -> None:
    job = (
        'id = "kw"\nnettest = "http_keyword"\nkeywords = "testlists/kw.csv"\ninterval = 60\n'
        'helpers = ["http://h:8080/"]\n'
        'options = { placement = ["path", "sni"], residual_window = 90, packet_capture = false }'
    )
    (spec,) = parse_schedule(load_config(_config(tmp_path, job))).jobs
    cmd = _command(spec, "probe.toml")
    tail = cmd[cmd.index("--config") + 2 :]
    assert tail == ["--keywords", "testlists/kw.csv", "--helper", "http://h:8080/",
                    "--placement", "path", "--placement", "sni", "--residual-window", "90",
                    "--no-packet-capture"]  # fmt: skip


def test_words_of_an_input() -> None:
    assert words_of("tiananmen+1989") == ["tiananmen", "1989"]
    assert words_of("a tank man") == ["a", "tank", "man"]
    assert words_of("falun") == ["falun"]


def test_a_run_isolates_its_new_triggers_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CENSORSCOPE_RELAY_TOKEN", TOKEN)
    with run_helper(HOST, relay=RelayConfig(token=TOKEN, rules=RULES)) as (base, _):
        job = JOB.format(message=MESSAGE) + f'\nhelpers = ["{base}"]'
        config = _config(tmp_path, job)
        (spec,) = parse_schedule(load_config(config)).jobs
        assert run_job(asdict(spec), str(config)) == 0
        assert run_job(asdict(spec), str(config)) == 0  # the same trigger: not isolated again
    lines = [
        json.loads(x)
        for p in (tmp_path / "results").rglob("*.jsonl")
        for x in p.read_text().splitlines()
    ]
    summaries = [m["test_keys"] for m in lines if m["test_name"] == "keyword_isolation"]
    assert len(summaries) == 1
    assert summaries[0]["rules"] == [["tank", "man"]] and summaries[0]["complete"] is True
    delivery = [m for m in lines if m["test_name"] == "message_delivery" and m["input"] == MESSAGE]
    # Two scheduled runs, then the isolation's own tests (its first sends the whole message).
    assert len(delivery) >= 2 and all(m["test_keys"]["blocking"] == "delivery" for m in delivery)
    remembered = json.loads((tmp_path / "state" / "schedule.json.isolated.json").read_text())
    assert remembered == {"messages": [MESSAGE]}
    log = (tmp_path / "schedule.log").read_text() if (tmp_path / "schedule.log").exists() else ""
    assert "weather" not in remembered["messages"], log
