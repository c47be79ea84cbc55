"""After a scheduled keyword run: isolate what newly triggered the filter.

A keyword list row can be a whole message (Citizen Lab's lists hold sentences and
combinations); when a scheduled http_keyword or message_delivery run finds one blocked, the
next question is which of its words, alone or together, trigger the filter. A job with
`isolate = true` answers it at once: each input of two or more words that this run found
blocked, and that this job has not isolated before, goes to `censorscope isolate` in the same
channel (message_delivery: the job's channel and accounts; http_keyword: `http-<placement>`,
the first placement blocked), with the same vantage, config and store, before the upload. What
was isolated is remembered beside the schedule's state file, so a filter that stays in place is
isolated once, not at every run. At most `MAX_PER_RUN` inputs are isolated per run: the rest
wait for the next run.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from probes.schedule import JobSpec

log = logging.getLogger("censorscope.schedule")

MAX_PER_RUN = 5
ISOLATION_BUDGET = 200  # tests per isolation (the isolate command's --budget)
# Longest an isolation may run before it is stopped (what it stored stays): 200 tests of a
# message channel at its 60 s deadline would take over three hours; a schedule cannot wait.
ISOLATION_TIMEOUT = 1800.0
CLI = "from probes.cli import main; main()"


def words_of(value: str) -> list[str]:
    """The words of an input: combination parts (`A+B`) and the words of a sentence."""
    return [w for part in value.split("+") for w in part.split()]


def blocked_inputs(
    results: Path, nettest: str, vantage: str, since: datetime
) -> list[tuple[str, dict[str, Any]]]:
    """(input, test_keys) of every measurement of `nettest` at `vantage` that started at or
    after `since` and was found blocked, in the order they were stored."""
    from probes.store import ResultsStore

    out = []
    store = ResultsStore(results)
    day = (since - timedelta(days=1)).date()  # a report's partition is the day it started
    for m in store.iter_measurements(since=day, vantages={vantage}, test_names={nettest}):
        started = _time(m.measurement_start_time)
        keys = m.test_keys or {}
        if started is None or started < since.replace(microsecond=0, tzinfo=None):
            continue
        if keys.get("blocking") not in (False, None) and isinstance(m.input, str):
            out.append((m.input, keys))
    return out


def _time(text: str | None) -> datetime | None:
    try:
        return datetime.strptime(str(text), "%Y-%m-%d %H:%M:%S")
    except ValueError:
        return None


def _isolated_file(state_file: str) -> Path:
    return Path(state_file).with_name(Path(state_file).name + ".isolated.json")


def _read_isolated(path: Path) -> dict[str, list[str]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {k: [str(x) for x in v] for k, v in data.items() if isinstance(v, list)}


def _write_isolated(path: Path, data: dict[str, list[str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, path)


def channel_for(nettest: str, options: dict[str, Any], keys: dict[str, Any]) -> str:
    """The isolate channel that repeats what blocked this measurement."""
    if nettest == "http_keyword":
        placements = keys.get("blocked_placements") or ["path"]
        return f"http-{placements[0]}"
    return str(options.get("channel") or "relay")


def isolate_command(
    job: JobSpec, config_path: str | None, results: Path, vantage: str, text_file: Path,
    channel: str,
) -> list[str]:  # fmt: skip
    cmd = [sys.executable, "-c", CLI, "isolate", "--channel", channel,
           "--text", str(text_file), "--results", str(results), "--vantage", vantage,
           "--budget", str(ISOLATION_BUDGET)]  # fmt: skip
    if config_path:
        cmd += ["--config", config_path]
    for helper in job.helpers:
        cmd += ["--helper", helper]
    for name in ("sender", "receiver", "delivery_deadline", "residual_window", "keyword_tries"):
        if name in job.options and (channel == "relay" or name not in ("sender", "receiver")):
            cmd += ["--" + name.replace("_", "-"), str(job.options[name])]
    return cmd


def isolate_new_triggers(
    job: JobSpec, config_path: str | None, started: datetime, env: dict[str, str]
) -> list[str]:
    """Isolate this run's new multi-word triggers; returns the inputs isolated."""
    from probes.config import ConfigError, load_config
    from probes.schedule import ScheduleError, parse_schedule

    try:
        cfg = load_config(Path(config_path) if config_path else None)
        settings = parse_schedule(cfg)
    except (ConfigError, ScheduleError) as exc:
        log.error("%s: not isolating: %s", job.id, exc)
        return []
    results = Path(str(job.options.get("results") or cfg.probe.results))
    vantage = job.vantage or cfg.vantage.name
    state = _isolated_file(settings.state_file)
    done = _read_isolated(state)
    seen = set(done.get(job.id, []))
    todo: dict[str, dict[str, Any]] = {}
    for value, keys in blocked_inputs(results, job.nettest, vantage, started):
        if value not in seen and len(words_of(value)) >= 2:
            todo.setdefault(value, keys)
    isolated = []
    for value, keys in list(todo.items())[:MAX_PER_RUN]:
        channel = channel_for(job.nettest, job.options, keys)
        with tempfile.TemporaryDirectory(prefix="censorscope-isolate-") as tmp:
            text_file = Path(tmp) / "message.txt"
            text_file.write_text(" ".join(words_of(value)), encoding="utf-8")
            cmd = isolate_command(job, config_path, results, vantage, text_file, channel)
            log.info("%s: isolating %r (%s)", job.id, value, channel)
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, env=env,
                                      stdin=subprocess.DEVNULL, check=False,
                                      timeout=ISOLATION_TIMEOUT)  # fmt: skip
            except subprocess.TimeoutExpired:
                log.warning("%s: isolating %r took over %.0f s; stopped, tried again next run",
                            job.id, value, ISOLATION_TIMEOUT)  # fmt: skip
                continue
        for line in (proc.stdout + proc.stderr).splitlines():
            log.info("%s: %s", job.id, line)
        if proc.returncode in (0, 1):  # 1: incomplete (budget), still a stored answer
            isolated.append(value)
            done.setdefault(job.id, []).append(value)
            _write_isolated(state, done)
    if len(todo) > MAX_PER_RUN:
        log.info("%s: %d more triggers wait for the next run", job.id, len(todo) - MAX_PER_RUN)
    return isolated
