"""The informed-consent notice (probes/consent.py): asked on a terminal, remembered, accepted by
config or environment for unattended runs, and never waited for where nobody can answer."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from probes.consent import ENV_VAR, consent_file, remembered
from tests.loopback.web import closed_port
from tests.terminal import run_in_pty

CENSORSCOPE = [sys.executable, "-m", "probes"]
ROOT = Path(__file__).resolve().parents[1]
PROMPT = "Type 'yes' to continue"


@pytest.fixture
def fresh_user(tmp_path: Path) -> dict[str, str]:
    """The environment of a user who never ran censorscope (the suite's acceptance removed)."""
    env = {k: v for k, v in os.environ.items() if k != ENV_VAR}
    env["XDG_CONFIG_HOME"] = str(tmp_path / "xdg")
    env["PYTHONPATH"] = str(ROOT)
    return env


def _run_args(tmp_path: Path) -> list[str]:
    """A quick measuring run: tcp_connect to a closed loopback port, helper down."""
    return [
        *CENSORSCOPE, "run", "tcp_connect",
        "--input", f"127.0.0.2:{closed_port('127.0.0.2')}",
        "--helper", f"http://127.0.0.1:{closed_port('127.0.0.1')}/",
        "--no-packet-capture", "--no-progress", "--timeout", "5",
        "--results", str(tmp_path / "r"),
    ]  # fmt: skip


def _stored(tmp_path: Path) -> list[Path]:
    return list((tmp_path / "r").glob("raw/*/*/*/*.jsonl"))


def test_first_interactive_run_asks_and_remembers(
    tmp_path: Path, fresh_user: dict[str, str]
) -> None:
    first = run_in_pty(_run_args(tmp_path), env=fresh_user, answers=[(PROMPT, "yes\n")])
    assert "illegal" in first.output or "against the law" in first.output, first.output
    assert "accepted; remembered" in first.output
    assert first.status in (0, 3), first.output
    assert _stored(tmp_path)
    saved = tmp_path / "xdg" / "censorscope" / "consent.toml"
    assert remembered(saved)
    # The second run, still at a terminal, is not asked again.
    second = run_in_pty(_run_args(tmp_path), env=fresh_user)
    assert PROMPT not in second.output and second.status in (0, 3), second.output


def test_refusal_measures_nothing_and_is_not_remembered(
    tmp_path: Path, fresh_user: dict[str, str]
) -> None:
    run = run_in_pty(_run_args(tmp_path), env=fresh_user, answers=[(PROMPT, "no\n")])
    assert run.status == 2, run.output
    assert "not accepted" in run.output
    assert not _stored(tmp_path)
    assert not (tmp_path / "xdg" / "censorscope" / "consent.toml").exists()


def test_unattended_run_without_consent_stops_with_the_instruction(
    tmp_path: Path, fresh_user: dict[str, str]
) -> None:
    # stdin is an open pipe nobody writes to: a run that waited for an answer would time out.
    proc = subprocess.run(
        _run_args(tmp_path), env=fresh_user, stdin=subprocess.PIPE,
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2
    assert f"{ENV_VAR}=true" in proc.stderr and "informed = true" in proc.stderr
    assert not _stored(tmp_path)


def test_nothing_is_contacted_before_consent(tmp_path: Path, fresh_user: dict[str, str]) -> None:
    """Locating the vantage asks our helper's whoami: not before the notice is accepted."""
    with socket.socket() as helper:
        helper.bind(("127.0.0.1", 0))
        helper.listen(8)
        args = _run_args(tmp_path)
        args[args.index("--helper") + 1] = f"http://127.0.0.1:{helper.getsockname()[1]}/"
        proc = subprocess.run(
            args, env=fresh_user, stdin=subprocess.DEVNULL, capture_output=True, text=True,
            timeout=60,
        )  # fmt: skip
        assert proc.returncode == 2 and ENV_VAR in proc.stderr, proc.stderr
        helper.setblocking(False)
        with pytest.raises(BlockingIOError):  # no connection waits in the backlog
            helper.accept()
    assert not _stored(tmp_path)


@pytest.mark.parametrize("how", ["env", "config", "remembered"])
def test_unattended_run_accepts_by_env_config_or_earlier_answer(
    tmp_path: Path, fresh_user: dict[str, str], how: str
) -> None:
    args = _run_args(tmp_path)
    if how == "env":
        fresh_user[ENV_VAR] = "true"
    elif how == "config":
        config = tmp_path / "c.toml"
        config.write_text("[consent]\ninformed = true\n")
        args += ["--config", str(config)]
    else:
        saved = tmp_path / "xdg" / "censorscope" / "consent.toml"
        saved.parent.mkdir(parents=True)
        saved.write_text("[consent]\ninformed = true\nnotice_version = 1\n")
    proc = subprocess.run(
        args, env=fresh_user, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode in (0, 3), proc.stderr
    assert _stored(tmp_path)


def test_a_bad_consent_value_is_a_config_error(tmp_path: Path, fresh_user: dict[str, str]) -> None:
    fresh_user[ENV_VAR] = "maybe"
    proc = subprocess.run(
        _run_args(tmp_path), env=fresh_user, stdin=subprocess.DEVNULL,
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2 and ENV_VAR in proc.stderr and "true/false" in proc.stderr


def test_isolate_and_schedule_run_need_consent_too(
    tmp_path: Path, fresh_user: dict[str, str]
) -> None:
    text = tmp_path / "m.txt"
    text.write_text("hello world\n")
    config = tmp_path / "s.toml"
    config.write_text(
        f'[schedule]\njobstore = "{tmp_path / "s.sqlite"}"\nlog_file = "{tmp_path / "s.log"}"\n'
        '[[schedule.jobs]]\nid = "j"\nnettest = "tcp_connect"\ninputs = ["127.0.0.2:9"]\n'
        "interval = 60\n"
    )
    for args in (
        ["isolate", "--channel", "http-path", "--text", str(text)],
        ["schedule", "run", "--config", str(config)],
    ):
        proc = subprocess.run(
            [*CENSORSCOPE, *args], env=fresh_user, stdin=subprocess.PIPE,
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert proc.returncode == 2, (args, proc.stderr)
        assert ENV_VAR in proc.stderr, proc.stderr


def test_consent_file_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert consent_file() == tmp_path / "censorscope" / "consent.toml"
    monkeypatch.delenv("XDG_CONFIG_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert consent_file() == tmp_path / "home" / ".config" / "censorscope" / "consent.toml"


def test_a_scheduled_run_inherits_the_daemons_acceptance(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The daemon checked consent when it started; its runs have no terminal and must not be
    refused (nor wait) for want of one."""
    from probes.schedule import run_job

    monkeypatch.delenv(ENV_VAR)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    config = tmp_path / "probe.toml"
    config.write_text(
        f'[probe]\nhelpers = ["http://127.0.0.1:{closed_port("127.0.0.1")}/"]\n'
        f'results = "{tmp_path / "r"}"\ntimeout = 5.0\n'
    )
    spec = {
        "id": "j",
        "nettest": "tcp_connect",
        "inputs": [f"127.0.0.2:{closed_port('127.0.0.2')}"],
        "interval": 60.0,
    }
    assert run_job(spec, str(config)) == 3  # measured; the helper is down (exit 3)
    assert _stored(tmp_path)
