"""The scheduling daemon: nettests on cron or interval triggers, then upload (APScheduler 3.x).

Jobs are declared in the TOML config (`[[schedule.jobs]]`) and rebuilt from it at every start,
in APScheduler's memory job store. A small JSON state file (`state_file`) keeps each job's next
run time, so that a restart neither loses a run nor adds a second copy: a job whose declaration
did not change keeps its next run time (a missed one runs at once, within the misfire grace
time); a changed one starts afresh. The state holds times and the declaration it was computed
for, nothing executable: APScheduler's SQLite job store pickled its jobs, so whoever could write
that file ran code in the daemon. Runs are coalesced, never overlap (`max_instances=1`) and are
skipped when they are later than the misfire grace time.

Each run is a `censorscope run` subprocess. At the job's time limit it gets SIGINT, as a user's
Ctrl-C: the runner stores every measurement that finished and the report can be resumed with
`--resume REPORT_ID`; SIGKILL follows only if it does not stop within a grace period. After each
run the store is uploaded when `[upload] collector` is configured. The token is read from the
config (or CENSORSCOPE_UPLOAD_TOKEN) at run time and is never written to the state file.
"""

from __future__ import annotations

import asyncio
import json
import logging
import logging.handlers
import os
import re
import signal
import subprocess
import sys
import threading
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from probes.config import Config

log = logging.getLogger("censorscope.schedule")

CLI = "from probes.cli import main; main()"
STOP_GRACE = 30.0  # seconds a stopped run gets to store what it finished before SIGKILL
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_RUNNING: set[subprocess.Popen[bytes]] = set()
ISOLATING_NETTESTS = ("message_delivery", "http_keyword")
_RUNNING_LOCK = threading.Lock()


class ScheduleError(ValueError):
    """A bad schedule configuration; the message names the file and the key."""


@dataclass
class JobSpec:
    """One `[[schedule.jobs]]` entry, as plain data (the state file compares it)."""

    id: str
    nettest: str
    inputs: list[str] = field(default_factory=list)
    testlists: list[str] = field(default_factory=list)
    cron: str | None = None
    interval: float | None = None
    jitter: int | None = None
    concurrency: int | None = None
    time_limit: float | None = None
    vantage: str | None = None
    keywords: str | None = None  # a keyword list (keyword nettests), as `run --keywords`
    helpers: list[str] = field(default_factory=list)
    # Any other `run` option, by its name: {channel = "relay", placement = ["path", "sni"]}.
    options: dict[str, Any] = field(default_factory=dict)
    # After each run, isolate every newly blocked input of two or more words (probes/triggers.py).
    isolate: bool = False

    def describe_trigger(self) -> str:
        when = f"cron '{self.cron}'" if self.cron else f"every {self.interval:g} s"
        return when + (f" (jitter {self.jitter} s)" if self.jitter else "")


@dataclass
class ScheduleSettings:
    state_file: str = "schedule-state.json"
    jobstore: str | None = None  # the old pickled job store: accepted, ignored, warned about
    log_file: str = "censorscope-schedule.log"
    misfire_grace_time: int = 300
    max_parallel_jobs: int = 4
    upload: bool = True
    jobs: list[JobSpec] = field(default_factory=list)


_JOB_KEYS: dict[str, str] = {
    "id": "str",
    "nettest": "str",
    "inputs": "list",
    "testlists": "list",
    "cron": "str",
    "interval": "number",
    "jitter": "int",
    "concurrency": "int",
    "time_limit": "number",
    "vantage": "str",
    "keywords": "str",
    "helpers": "list",
    "options": "options",
    "isolate": "bool",
}
# `run` options a job sets with keys of its own (or that a scheduled run must not take).
_RESERVED_OPTIONS = {
    "input": "inputs", "testlist": "testlists", "keywords": "keywords", "helper": "helpers",
    "concurrency": "concurrency", "vantage": "vantage", "config": "(the daemon's config)",
    "resume": "(a scheduled run starts afresh)", "progress": "(runs have no terminal)",
}  # fmt: skip
_SETTINGS_KEYS: dict[str, str] = {
    "state_file": "str",
    "jobstore": "str",
    "log_file": "str",
    "misfire_grace_time": "int",
    "max_parallel_jobs": "int",
    "upload": "bool",
    "jobs": "jobs",
}


def _check(where: str, key: str, value: Any, kind: str) -> Any:
    if kind == "str" and (not isinstance(value, str) or not value):
        raise ScheduleError(f"{where}: key '{key}': expected a non-empty string, got {value!r}")
    if kind == "list" and (
        not isinstance(value, list) or not all(isinstance(v, str) for v in value)
    ):
        raise ScheduleError(f"{where}: key '{key}': expected a list of strings")
    if kind == "bool" and not isinstance(value, bool):
        raise ScheduleError(f"{where}: key '{key}': expected true or false, got {value!r}")
    if kind == "options":
        _check_options(where, key, value)
    if kind in ("int", "number"):
        types = (int,) if kind == "int" else (int, float)
        if isinstance(value, bool) or not isinstance(value, types) or value <= 0:
            what = "a positive integer" if kind == "int" else "a positive number"
            raise ScheduleError(f"{where}: key '{key}': expected {what}, got {value!r}")
    return value


def run_option_flags() -> dict[str, str]:
    """`run`'s option names (as a job's `options` keys write them) -> their kind: "flag" for
    an on/off switch, "multiple" for a repeatable option, "value" for the rest."""
    from typer.main import get_command

    from probes.cli import app

    command = get_command(app).commands["run"]  # type: ignore[attr-defined]
    out = {}
    for param in command.params:
        longs = [o for o in param.opts if o.startswith("--")]
        if param.param_type_name != "option" or not longs:
            continue
        kind = "flag" if param.is_flag else "multiple" if param.multiple else "value"
        out[longs[0][2:].replace("-", "_")] = kind
    return out


def _check_options(where: str, key: str, value: Any) -> None:
    if not isinstance(value, dict):
        raise ScheduleError(f"{where}: key '{key}': expected a table of run options")
    flags = run_option_flags()
    for name, item in value.items():
        name_key = name.replace("-", "_")
        if name_key in _RESERVED_OPTIONS:
            raise ScheduleError(
                f"{where}: key '{key}.{name}': set it with the job's own key "
                f"{_RESERVED_OPTIONS[name_key]}"
            )
        kind = flags.get(name_key)
        if kind is None:
            known = ", ".join(sorted(k for k in flags if k not in _RESERVED_OPTIONS))
            raise ScheduleError(f"{where}: key '{key}.{name}': not a run option (known: {known})")
        good = (
            isinstance(item, bool)
            if kind == "flag"
            else isinstance(item, list) and all(isinstance(v, str | int | float) for v in item)
            if kind == "multiple"
            else isinstance(item, str | int | float) and not isinstance(item, bool)
        )
        if not good:
            what = {"flag": "true or false", "multiple": "a list", "value": "a string or number"}
            raise ScheduleError(f"{where}: key '{key}.{name}': expected {what[kind]}")


def option_args(options: dict[str, Any]) -> list[str]:
    """A job's `options` as `run` arguments (checked by _check_options)."""
    args: list[str] = []
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            args.append(flag if value else "--no-" + name.replace("_", "-"))
        elif isinstance(value, list):
            for item in value:
                args += [flag, str(item)]
        else:
            args += [flag, str(value)]
    return args


def _trigger(spec: JobSpec) -> Any:
    from apscheduler.triggers.cron import CronTrigger
    from apscheduler.triggers.interval import IntervalTrigger

    if spec.cron:
        # CronTrigger.from_crontab has no jitter: split the five fields as it does.
        fields = spec.cron.split()
        if len(fields) != 5:
            raise ValueError(f"expected 5 crontab fields, got {len(fields)}")
        minute, hour, day, month, day_of_week = fields
        return CronTrigger(
            minute=minute, hour=hour, day=day, month=month, day_of_week=day_of_week,
            timezone=UTC, jitter=spec.jitter,
        )  # fmt: skip
    return IntervalTrigger(seconds=spec.interval or 0, jitter=spec.jitter, timezone=UTC)


def parse_schedule(cfg: Config) -> ScheduleSettings:
    """`[schedule]` and its `[[schedule.jobs]]` from the loaded config; ScheduleError names
    the key."""
    from probes.nettests import REGISTRY

    where = cfg.source
    raw = cfg.raw.get("schedule", {})
    if not isinstance(raw, dict):
        raise ScheduleError(f"{where}: [schedule] must be a table")
    out = ScheduleSettings()
    for key, value in raw.items():
        if key not in _SETTINGS_KEYS:
            known = ", ".join(_SETTINGS_KEYS)
            raise ScheduleError(f"{where}: unknown key 'schedule.{key}' (known: {known})")
        if key != "jobs":
            setattr(out, key, _check(where, f"schedule.{key}", value, _SETTINGS_KEYS[key]))
    jobs = raw.get("jobs", [])
    if not isinstance(jobs, list) or not all(isinstance(j, dict) for j in jobs):
        raise ScheduleError(f"{where}: 'schedule.jobs' must be [[schedule.jobs]] tables")
    if not jobs:
        raise ScheduleError(f"{where}: no jobs: add at least one [[schedule.jobs]] table")
    seen: set[str] = set()
    for n, table in enumerate(jobs):
        prefix = f"schedule.jobs[{n}]"
        for key, value in table.items():
            if key not in _JOB_KEYS:
                raise ScheduleError(
                    f"{where}: unknown key '{prefix}.{key}' (known: {', '.join(_JOB_KEYS)})"
                )
            _check(where, f"{prefix}.{key}", value, _JOB_KEYS[key])
        for required in ("id", "nettest"):
            if required not in table:
                raise ScheduleError(f"{where}: key '{prefix}.{required}': missing")
        spec = JobSpec(**table)
        if not _ID.match(spec.id):
            raise ScheduleError(
                f"{where}: key '{prefix}.id': use 1-64 letters, digits, '.', '_' or '-'"
            )
        if spec.id in seen:
            raise ScheduleError(f"{where}: key '{prefix}.id': {spec.id!r} is used twice")
        seen.add(spec.id)
        if spec.nettest not in REGISTRY:
            raise ScheduleError(
                f"{where}: key '{prefix}.nettest': unknown nettest {spec.nettest!r} "
                f"(known: {', '.join(sorted(REGISTRY))})"
            )
        if (spec.cron is None) == (spec.interval is None):
            raise ScheduleError(f"{where}: key '{prefix}': give exactly one of cron or interval")
        if not spec.inputs and not spec.testlists and not spec.keywords:
            raise ScheduleError(f"{where}: key '{prefix}': give inputs, testlists or keywords")
        if spec.isolate and spec.nettest not in ISOLATING_NETTESTS:
            raise ScheduleError(
                f"{where}: key '{prefix}.isolate': only for {', '.join(ISOLATING_NETTESTS)}"
            )
        try:
            _trigger(spec)
        except ValueError as exc:
            raise ScheduleError(f"{where}: key '{prefix}.cron': {exc}") from exc
        out.jobs.append(spec)
    return out


# --- one run -----------------------------------------------------------------------------------


def _command(spec: JobSpec, config_path: str | None) -> list[str]:
    cmd = [sys.executable, "-c", CLI, "run", spec.nettest, "--no-progress"]
    if config_path:
        cmd += ["--config", config_path]
    for value in spec.inputs:
        cmd += ["--input", value]
    for path in spec.testlists:
        cmd += ["--testlist", path]
    if spec.keywords:
        cmd += ["--keywords", spec.keywords]
    for helper in spec.helpers:
        cmd += ["--helper", helper]
    cmd += option_args(spec.options)
    if spec.concurrency:
        cmd += ["--concurrency", str(spec.concurrency)]
    if spec.vantage:
        cmd += ["--vantage", spec.vantage]
    return cmd


def _stop(proc: subprocess.Popen[bytes], job_id: str) -> None:
    """SIGINT (the runner stores what finished), then SIGKILL after the grace period."""
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(STOP_GRACE)
    except subprocess.TimeoutExpired:
        log.error("%s: did not stop within %.0f s of SIGINT; killing it", job_id, STOP_GRACE)
        proc.kill()
        proc.wait()


def run_job(spec: dict[str, Any], config_path: str | None) -> int:
    """The scheduled function (module level, so the job store can name it): run, then upload."""
    job = JobSpec(**spec)
    cmd = _command(job, config_path)
    started = datetime.now(UTC)
    log.info("%s: starting %s", job.id, job.nettest)
    # The daemon checked consent when it started (probes.consent); its runs have no terminal.
    env = {**os.environ, "CENSORSCOPE_CONSENT_INFORMED": "true"}
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
    )
    with _RUNNING_LOCK:
        _RUNNING.add(proc)
    output = b""
    try:
        try:
            output, _ = proc.communicate(timeout=job.time_limit)
        except subprocess.TimeoutExpired:
            log.warning("%s: time limit of %g s reached; stopping the run", job.id, job.time_limit)
            _stop(proc, job.id)
            output = (proc.stdout.read() if proc.stdout else b"") or b""
    finally:
        with _RUNNING_LOCK:
            _RUNNING.discard(proc)
    for line in output.decode("utf-8", "replace").splitlines():
        log.info("%s: %s", job.id, line)
    log.info("%s: run finished with status %s", job.id, proc.returncode)
    if job.isolate:
        from probes.triggers import isolate_new_triggers

        isolate_new_triggers(job, config_path, started, env)
    _upload_after_run(job.id, config_path)
    return int(proc.returncode or 0)


def _upload_after_run(job_id: str, config_path: str | None) -> None:
    from probes.config import ConfigError, load_config
    from probes.upload import UploadError, settings_from_config, upload_store

    try:
        cfg = load_config(Path(config_path) if config_path else None)
        settings = parse_schedule(cfg)
    except (ConfigError, ScheduleError) as exc:
        log.error("%s: not uploading: %s", job_id, exc)
        return
    if not settings.upload or not cfg.upload.collector:
        return
    try:
        upload, warnings = settings_from_config(cfg)
    except UploadError as exc:
        log.error("%s: not uploading: %s", job_id, exc)
        return
    for warning in warnings:
        log.warning("%s: %s", job_id, warning)
    try:
        summary = asyncio.run(upload_store(Path(cfg.probe.results), upload))
    except UploadError as exc:
        log.error("%s: upload failed: %s", job_id, exc)
        return
    (log.info if summary.ok else log.warning)("%s: %s", job_id, summary.describe())


# --- the daemon --------------------------------------------------------------------------------


def read_state(path: Path) -> dict[str, dict[str, Any]]:
    """Each job's saved declaration and next run time; {} when there is no usable state (it
    only carries times: jobs then start afresh from the config)."""
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.warning("%s: not a schedule state file (%s); jobs start afresh", path, exc)
        return {}
    jobs = data.get("jobs") if isinstance(data, dict) else None
    if not isinstance(jobs, dict):
        log.warning("%s: not a schedule state file; jobs start afresh", path)
        return {}
    return {
        job_id: entry
        for job_id, entry in jobs.items()
        if isinstance(entry, dict) and isinstance(entry.get("kwargs"), dict)
    }


def _saved_time(entry: dict[str, Any]) -> datetime | None:
    try:
        moment = datetime.fromisoformat(entry["next_run_time"])
    except (KeyError, TypeError, ValueError):
        return None
    return moment if moment.tzinfo else None


def _write_state(path: Path, jobs: list[Any]) -> None:
    """Save the jobs' next run times. A failure (a full disk) is logged, never raised: it runs
    in the scheduler's thread, which an exception would stop, and only the times go stale."""
    from probes.store import atomic_write

    state = {
        "version": 1,
        "jobs": {
            job.id: {
                "kwargs": job.kwargs,
                "next_run_time": job.next_run_time.isoformat() if job.next_run_time else None,
            }
            for job in jobs
        },
    }
    try:
        atomic_write(path, json.dumps(state, indent=1).encode())
        os.chmod(path, 0o600)
    except OSError as exc:
        log.error("%s: cannot save the schedule state: %s", path, exc)


def _state_store(path: Path) -> Any:
    """APScheduler's memory job store, writing the state file after every change (the
    scheduler calls update_job with each new next run time)."""
    from apscheduler.jobstores.memory import MemoryJobStore

    class StateJobStore(MemoryJobStore):
        def add_job(self, job: Any) -> None:
            super().add_job(job)
            _write_state(path, self.get_all_jobs())

        def update_job(self, job: Any) -> None:
            super().update_job(job)
            _write_state(path, self.get_all_jobs())

        def remove_job(self, job_id: str) -> None:
            super().remove_job(job_id)
            _write_state(path, self.get_all_jobs())

    return StateJobStore()


def _scheduler(settings: ScheduleSettings) -> Any:
    from apscheduler.executors.pool import ThreadPoolExecutor
    from apscheduler.schedulers.background import BackgroundScheduler

    return BackgroundScheduler(
        jobstores={"default": _state_store(Path(settings.state_file))},
        executors={"default": ThreadPoolExecutor(settings.max_parallel_jobs)},
        job_defaults={
            "coalesce": True,
            "max_instances": 1,
            "misfire_grace_time": settings.misfire_grace_time,
        },
        timezone=UTC,
    )


def _kwargs(spec: JobSpec, config_path: str | None) -> dict[str, Any]:
    return {"spec": asdict(spec), "config_path": config_path}


def sync_jobs(scheduler: Any, settings: ScheduleSettings, config_path: str | None) -> list[str]:
    """Schedule the config's jobs: an unchanged job keeps its saved next run time, a changed
    one starts afresh, a removed one is dropped from the state. Returns what was done, one
    line per job."""
    saved = read_state(Path(settings.state_file))
    done = []
    wanted = {spec.id for spec in settings.jobs}
    done += [
        f"{job_id}: removed (no longer in the config)" for job_id in saved if job_id not in wanted
    ]
    for spec in settings.jobs:
        kwargs = _kwargs(spec, config_path)
        entry = saved.get(spec.id)
        keep = _saved_time(entry) if entry is not None and entry["kwargs"] == kwargs else None
        options = {"next_run_time": keep} if keep is not None else {}
        job = scheduler.add_job(
            run_job,
            _trigger(spec),
            id=spec.id,
            name=f"{spec.nettest} ({spec.describe_trigger()})",
            kwargs=kwargs,
            replace_existing=True,
            **options,
        )
        what = "kept" if keep is not None else "replaced" if entry is not None else "added"
        done.append(f"{spec.id}: {what}, next run {_when(job.next_run_time)}")
    return done


def _when(moment: datetime | None) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if moment else "paused"


def setup_logging(log_file: str) -> None:
    """Log to a rotating file and to the console."""
    path = Path(log_file)
    path.parent.mkdir(parents=True, exist_ok=True)
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s")
    file_handler = logging.handlers.RotatingFileHandler(
        path, maxBytes=5 * 1024 * 1024, backupCount=5, encoding="utf-8"
    )
    console = logging.StreamHandler(sys.stderr)
    for handler in (file_handler, console):
        handler.setFormatter(formatter)
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    root.addHandler(file_handler)
    root.addHandler(console)


def _config_path(cfg: Config) -> str | None:
    return str(Path(cfg.source).resolve()) if cfg.source != "(defaults)" else None


def run_daemon(cfg: Config) -> None:
    """Schedule the configured jobs and run until SIGINT or SIGTERM."""
    settings = parse_schedule(cfg)
    setup_logging(settings.log_file)
    scheduler = _scheduler(settings)
    scheduler.start(paused=True)
    for line in sync_jobs(scheduler, settings, _config_path(cfg)):
        log.info("job %s", line)
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("received %s: stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    if settings.jobstore:
        log.warning(
            "schedule.jobstore (%s) is no longer used: jobs are rebuilt from the config and "
            "their run times kept in %s; the old file can be deleted",
            settings.jobstore,
            settings.state_file,
        )
    scheduler.resume()
    log.info("scheduler running: %d jobs, state %s", len(settings.jobs), settings.state_file)
    stop.wait()
    with _RUNNING_LOCK:
        running = list(_RUNNING)
    for proc in running:  # let runs in progress store what they finished
        proc.send_signal(signal.SIGINT)
    scheduler.shutdown(wait=True)
    log.info("scheduler stopped")


def list_jobs(cfg: Config) -> list[str]:
    """One line per configured job with its next run time (from the state file if the daemon
    has scheduled it already)."""
    settings = parse_schedule(cfg)
    saved = read_state(Path(settings.state_file))
    config_path = _config_path(cfg)
    lines = []
    now = datetime.now(UTC)
    for spec in settings.jobs:
        entry = saved.get(spec.id)
        nxt = (
            _saved_time(entry) if entry and entry["kwargs"] == _kwargs(spec, config_path) else None
        )
        origin = "scheduled"
        if nxt is None:
            nxt, origin = _trigger(spec).get_next_fire_time(None, now), "not yet scheduled"
        lines.append(
            f"{spec.id}\t{spec.nettest}\t{spec.describe_trigger()}\t"
            f"next run {_when(nxt)} ({origin})"
        )
    return lines
