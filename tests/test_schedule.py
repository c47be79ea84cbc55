"""The scheduling daemon for real: config errors, `schedule list`, and a daemon that runs
nettests on a 1-second interval, stops an overlong run at its limit and uploads to a real
collector process."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from probes.config import load_config
from probes.schedule import ScheduleError, parse_schedule
from probes.store import ResultsStore
from probes.upload import UploadIndex
from tests.test_collector_support import CLI, ROOT, CollectorProcess, make_token

GOOD_JOB = """
[[schedule.jobs]]
id = "web"
nettest = "web_connectivity"
inputs = ["http://127.0.0.1:9/"]
interval = 1
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "probe.toml"
    path.write_text(text)
    return path


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", CLI, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
    )


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("[schedule]\nfrequency = 3\n" + GOOD_JOB, "unknown key 'schedule.frequency'"),
        (GOOD_JOB.replace("interval = 1", 'interval = "often"'), "'schedule.jobs[0].interval'"),
        (GOOD_JOB.replace("interval = 1", 'cron = "61 * * * *"'), "'schedule.jobs[0].cron'"),
        (GOOD_JOB.replace("interval = 1", ""), "exactly one of cron or interval"),
        (GOOD_JOB.replace('"web_connectivity"', '"nope"'), "'schedule.jobs[0].nettest'"),
        (GOOD_JOB.replace('id = "web"\n', ""), "'schedule.jobs[0].id': missing"),
        (GOOD_JOB + GOOD_JOB, "'schedule.jobs[1].id': 'web' is used twice"),
        (GOOD_JOB.replace("interval = 1", "interval = 1\njitter = -2"), "jobs[0].jitter"),
        ("[vantage]\nname = 'x'\n", "no jobs"),
    ],
)
def test_bad_schedules_name_the_key(tmp_path: Path, text: str, names: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ScheduleError) as info:
        parse_schedule(load_config(path))
    assert names in str(info.value) and str(path) in str(info.value)


def test_schedule_list_shows_jobs_and_next_runs(tmp_path: Path) -> None:
    store = tmp_path / "jobs.sqlite"
    path = _write(
        tmp_path,
        f'[schedule]\njobstore = "{store}"\nlog_file = "{tmp_path / "s.log"}"\n'
        + GOOD_JOB
        + GOOD_JOB.replace('"web"', '"nightly"').replace("interval = 1", 'cron = "0 3 * * *"'),
    )
    done = _cli("schedule", "list", "--config", str(path))
    assert done.returncode == 0, done.stderr
    web, nightly = done.stdout.splitlines()
    assert web.startswith("web\tweb_connectivity\tevery 1 s\tnext run 20")
    assert "cron '0 3 * * *'" in nightly and "03:00:00 UTC (not yet scheduled)" in nightly
    bad = _cli("schedule", "list", "--config", str(_write(tmp_path, GOOD_JOB + "[[schedule.x]]")))
    assert bad.returncode == 2
    assert "schedule.x" in bad.stderr and len(bad.stderr.splitlines()) == 1


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A TCP port that accepts connections and never answers: an HTTP GET there hangs."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield int(sock.getsockname()[1])


def _wait_for(predicate: object, what: str, within: float = 90.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_daemon_runs_stops_overlong_runs_and_uploads(tmp_path: Path, silent_port: int) -> None:
    token = make_token()
    (tmp_path / "tokens").write_text(f"sched-a {token}\n")
    collector = CollectorProcess(data=tmp_path / "collected", tokens=tmp_path / "tokens").start()
    results = tmp_path / "results"
    log_file = tmp_path / "logs" / "schedule.log"
    config = _write(
        tmp_path,
        f"""
[vantage]
name = "sched-a"

[probe]
helpers = ["http://127.0.0.1:9/"]
results = "{results}"
timeout = 30.0

[upload]
collector = "{collector.url}"

[schedule]
jobstore = "{tmp_path / "state" / "jobs.sqlite"}"
log_file = "{log_file}"
misfire_grace_time = 30

[[schedule.jobs]]
id = "quick"
nettest = "web_connectivity"
inputs = ["http://127.0.0.1:9/", "http://127.0.0.1:7/"]
interval = 1

[[schedule.jobs]]
id = "overlong"
nettest = "web_connectivity"
inputs = ["http://127.0.0.1:{silent_port}/", "http://127.0.0.1:13/"]
interval = 1
time_limit = 3
""",
    )
    daemon = subprocess.Popen(
        [sys.executable, "-c", CLI, "schedule", "run", "--config", str(config)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(ROOT), "CENSORSCOPE_UPLOAD_TOKEN": token},
    )
    try:

        def log_has(text: str) -> bool:
            return log_file.exists() and text in log_file.read_text()

        _wait_for(lambda: log_has("overlong: time limit of 3 s reached"), "the time limit")
        _wait_for(lambda: log_has("overlong: run finished"), "the stopped run to finish")
        # Several runs of the quick job, each uploaded to the collector.
        _wait_for(
            lambda: collector.get("/stats", token)["vantages"].get("sched-a", 0) >= 6, "uploads"
        )
    finally:
        daemon.send_signal(signal.SIGINT)
        status = daemon.wait(60)
    try:
        assert status == 0
        text = log_file.read_text()
        assert "scheduler stopped" in text
        assert "uploaded" in text
        # The stopped run kept what it finished (port 13 is closed: done at once) and can be
        # resumed; the hanging input was never stored.
        inputs = [m.input for m in ResultsStore(results).iter_measurements()]
        assert f"http://127.0.0.1:{silent_port}/" not in inputs
        assert "http://127.0.0.1:13/" in inputs
        assert "--resume" in text
        # Everything uploaded is in the collector exactly once.
        uploaded = UploadIndex(results, collector.url).uploaded_path.read_text().split()
        stored = [
            json.loads(line)["measurement_uid"]
            for path in (tmp_path / "collected" / "raw").rglob("*.jsonl")
            for line in path.read_bytes().splitlines()
        ]
        assert len(stored) == len(set(stored)) >= 6
        assert set(uploaded) <= set(stored)
        # The job store kept both jobs: `list` reads their next run times from it.
        listed = _cli(
            "schedule", "list", "--config", str(config),
            env={"CENSORSCOPE_UPLOAD_TOKEN": token},
        )  # fmt: skip
        assert listed.returncode == 0, listed.stderr
        assert listed.stdout.count("(scheduled)") == 2
    finally:
        collector.stop()
