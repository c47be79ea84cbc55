"""The scheduling daemon for real: config errors, `schedule list`, and a daemon that runs
nettests on a 1-second interval, stops an overlong run at its limit and uploads to a real
collector process."""

from __future__ import annotations

import json
import os
import pickle
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from probes.config import load_config
from probes.schedule import (
    JobSpec,
    ScheduleError,
    _scheduler,
    _trigger,
    parse_schedule,
    sync_jobs,
)
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
    store = tmp_path / "schedule.json"
    path = _write(
        tmp_path,
        f'[schedule]\nstate_file = "{store}"\nlog_file = "{tmp_path / "s.log"}"\n'
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
state_file = "{tmp_path / "state" / "schedule.json"}"
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
time_limit = 10
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

        # 10 s: a run's start (interpreter, imports, consent, the helper check) must fit in it
        # on a loaded machine, or it is stopped before it measured the closed port.
        _wait_for(lambda: log_has("overlong: time limit of 10 s reached"), "the time limit")
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


def test_cron_jobs_honour_jitter() -> None:
    """A cron job's `jitter` delays its runs by up to that many seconds (it used to be dropped
    for cron triggers, so every vantage fired at the same second)."""
    now = datetime(2026, 1, 1, 12, 0, 30, tzinfo=UTC)
    plain = _trigger(JobSpec(id="a", nettest="web_connectivity", cron="* * * * *"))
    assert {plain.get_next_fire_time(None, now).second for _ in range(20)} == {0}
    spec = JobSpec(id="a", nettest="web_connectivity", cron="* * * * *", jitter=50)
    trigger = _trigger(spec)
    fired = [trigger.get_next_fire_time(None, now) for _ in range(50)]
    assert all(datetime(2026, 1, 1, 12, 1, tzinfo=UTC) <= t for t in fired)
    assert all(t <= datetime(2026, 1, 1, 12, 1, 50, tzinfo=UTC) for t in fired)
    assert len({t.second for t in fired}) > 5, fired


def _pickled_job_store(path: Path, job_id: str, marker: Path) -> None:
    """APScheduler 3's SQLAlchemy job store table, with a job whose pickle runs code."""

    class Payload:
        def __reduce__(self) -> tuple[Any, tuple[str]]:
            return (os.mkdir, (str(marker),))

    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE apscheduler_jobs (id VARCHAR(191) PRIMARY KEY, "
            "next_run_time FLOAT, job_state BLOB NOT NULL)"
        )
        db.execute(
            "INSERT INTO apscheduler_jobs VALUES (?, ?, ?)",
            (job_id, time.time() + 3600, pickle.dumps(Payload())),
        )


@pytest.mark.parametrize("key", ["jobstore", "state_file"])
def test_a_planted_job_store_runs_no_code(tmp_path: Path, key: str) -> None:
    """Whoever could write schedule.sqlite ran code in the daemon (the job store unpickled
    it). Jobs now come from the config; the state file is JSON, and a planted pickle store,
    named as the old `jobstore` or as the state file, is never unpickled."""
    store, marker = tmp_path / "schedule.sqlite", tmp_path / "code-ran"
    _pickled_job_store(store, "web", marker)
    path = _write(
        tmp_path, f'[schedule]\n{key} = "{store}"\nlog_file = "{tmp_path / "s.log"}"\n' + GOOD_JOB
    )
    listed = _cli("schedule", "list", "--config", str(path))
    assert listed.returncode == 0, listed.stderr
    assert "(not yet scheduled)" in listed.stdout
    assert not marker.exists(), "the job store's pickle was loaded"


def test_state_keeps_next_run_of_unchanged_jobs(tmp_path: Path) -> None:
    """The state file carries an unchanged job's next run time across restarts; a changed
    declaration starts afresh; a job gone from the config is dropped."""
    from apscheduler.schedulers.background import BackgroundScheduler

    state = tmp_path / "state.json"
    text = f'[schedule]\nstate_file = "{state}"\n' + GOOD_JOB.replace(
        "interval = 1", "interval = 86400"
    )
    settings = parse_schedule(
        load_config(_write(tmp_path, text + GOOD_JOB.replace('"web"', '"old"')))
    )
    first = _scheduler(settings)
    first.start(paused=True)
    sync_jobs(first, settings, None)
    planned = first.get_job("web").next_run_time
    first.shutdown(wait=False)
    assert oct(state.stat().st_mode & 0o777) == "0o600"

    settings = parse_schedule(load_config(_write(tmp_path, text)))
    again = _scheduler(settings)
    assert isinstance(again, BackgroundScheduler)
    again.start(paused=True)
    done = sync_jobs(again, settings, None)
    assert again.get_job("web").next_run_time == planned
    assert any(line.startswith("web: kept") for line in done)
    assert "old: removed (no longer in the config)" in done
    again.shutdown(wait=False)
    assert set(json.loads(state.read_text())["jobs"]) == {"web"}

    changed = parse_schedule(load_config(_write(tmp_path, text.replace("86400", "43200"))))
    third = _scheduler(changed)
    third.start(paused=True)
    assert any(line.startswith("web: replaced") for line in sync_jobs(third, changed, None))
    third.shutdown(wait=False)


def test_an_unwritable_state_file_does_not_stop_the_scheduler(tmp_path: Path) -> None:
    """Saving the state runs in the scheduler's thread: an error there (a full disk, here a
    directory in the way) is logged and the jobs stay scheduled."""
    state = tmp_path / "state.json"
    state.mkdir()
    settings = parse_schedule(
        load_config(_write(tmp_path, f'[schedule]\nstate_file = "{state}"\n' + GOOD_JOB))
    )
    scheduler = _scheduler(settings)
    scheduler.start(paused=True)
    try:
        assert any(line.startswith("web: added") for line in sync_jobs(scheduler, settings, None))
        assert scheduler.get_job("web") is not None
    finally:
        scheduler.shutdown(wait=False)
