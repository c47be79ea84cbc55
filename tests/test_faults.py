"""Fault injection on a probe run (issue 13, "keep looking"): kill -9 of the probe at random
points, kill -9 of the control helper mid-run, a read-only results directory, a wall clock
that jumps back and forth while measuring and uploading.

Every test checks the same contract: nothing measured and stored is lost, nothing is stored
twice, no torn line is read as data, and the command says what happened. The runs measure
tcp_connect against closed loopback ports (127.0.0.N:9; one host each, so the per-host pacing
does not slow them) with a real `censorscope helper` as the control where one is needed.
The kill points come from a seeded random generator (FAULT_SEED, printed on failure).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from probes.store import LineProblem, ResultsStore
from tests import missing
from tests.test_collector_support import (
    CLI,
    ROOT,
    CollectorProcess,
    fill_store,
    free_port,
    make_token,
    stored_uids,
)

SEED = int(os.environ.get("FAULT_SEED") or random.randrange(1 << 30))
HOSTS = [f"127.0.0.{i}:9" for i in range(2, 42)]  # 40 one-input hosts
FAKETIME_LIB = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), **extra}


def _run_args(results: Path, helper: str, repeat: int) -> list[str]:
    inputs = [arg for host in HOSTS for arg in ("--input", host)]
    return ["run", "tcp_connect", *inputs, "--repeat", str(repeat), "--helper", helper,
            "--results", str(results), "--no-progress", "--timeout", "5"]  # fmt: skip


def _stored(results: Path) -> tuple[list[dict[str, Any]], list[LineProblem]]:
    problems: list[LineProblem] = []
    found = [
        m.to_dict() for m in ResultsStore(results).iter_measurements(on_problem=problems.append)
    ]
    return found, problems


def _count_lines(results: Path) -> int:
    return sum(
        f.read_bytes().count(b"\n") for f in (results / "raw").rglob("*.jsonl") if f.is_file()
    )


def _wait_for_lines(results: Path, want: int, proc: subprocess.Popen[bytes]) -> int:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        have = _count_lines(results) if (results / "raw").exists() else 0
        if have >= want or proc.poll() is not None:
            return have
        time.sleep(0.01)
    raise AssertionError(f"the run stored {have} of the {want} lines waited for")


def _assert_each_once(found: list[dict[str, Any]], repeat: int) -> None:
    uids = [m["measurement_uid"] for m in found]
    assert len(uids) == len(set(uids)), "a measurement stored twice"
    assert Counter(m["input"] for m in found) == dict.fromkeys(HOSTS, repeat)


@pytest.fixture
def helper() -> Iterator[dict[str, Any]]:
    """A real control helper process (loopback allowed); restartable on the same port."""
    state: dict[str, Any] = {"port": free_port(), "proc": None}

    def start() -> None:
        state["proc"] = subprocess.Popen(
            [sys.executable, "-c", CLI, "helper", "--listen", f"127.0.0.1:{state['port']}",
             "--allow-private"],
            cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                import socket

                socket.create_connection(("127.0.0.1", state["port"]), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("the helper did not start")

    state["start"] = start
    state["url"] = f"http://127.0.0.1:{state['port']}/"
    start()
    yield state
    if state["proc"].poll() is None:
        state["proc"].kill()
        state["proc"].wait()


def test_probe_killed_at_random_points_resumes_to_every_input_exactly_once(
    tmp_path: Path, helper: dict[str, Any]
) -> None:
    rng = random.Random(SEED)
    repeat = 5
    total = len(HOSTS) * repeat
    results = tmp_path / "results"
    argv = [sys.executable, "-c", CLI, *_run_args(results, helper["url"], repeat)]
    kills = sorted(rng.sample(range(5, total - 5), 3))
    report_id = None
    killed_at: list[int] = []
    for point in kills:
        cmd = argv if report_id is None else [*argv, "--resume", report_id]
        proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)  # fmt: skip
        try:
            have = _wait_for_lines(results, point, proc)
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
        finally:
            if proc.poll() is None:
                proc.kill()
        killed_at.append(have)
        if report_id is None:
            report_id = next((results / "reports").glob("*.json")).stem
        found, problems = _stored(results)
        uids = [m["measurement_uid"] for m in found]
        assert len(uids) == len(set(uids)), f"seed {SEED}: stored twice after kill at {have}"
        assert all("torn" in p.reason for p in problems), problems
    assert report_id is not None
    done = subprocess.run([*argv, "--resume", report_id], cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, f"seed {SEED}: {done.stderr}"
    found, problems = _stored(results)
    assert not problems, problems
    _assert_each_once(found, repeat)
    assert len(killed_at) == 3 and killed_at[-1] < total, (SEED, killed_at)


def test_helper_killed_mid_run_gives_control_failures_then_recovers(
    tmp_path: Path, helper: dict[str, Any]
) -> None:
    """kill -9 of the control helper while the probe measures: the inputs measured while it is
    down say control_failure (a string, never a crash or a lost input), and once it is back
    the probe uses it again."""
    repeat = 4
    total = len(HOSTS) * repeat
    results = tmp_path / "results"
    argv = [sys.executable, "-c", CLI, *_run_args(results, helper["url"], repeat),
            "--concurrency", "8"]  # fmt: skip
    proc = subprocess.Popen(argv, cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)  # fmt: skip
    try:
        killed_at = _wait_for_lines(results, total // 4, proc)
        helper["proc"].send_signal(signal.SIGKILL)
        helper["proc"].wait()
        # Each input asks a vanished helper 3 times (0.5 s, 1 s backoff): a dozen is enough.
        _wait_for_lines(results, killed_at + 12, proc)
        helper["start"]()
        _out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    found, problems = _stored(results)
    assert not problems
    _assert_each_once(found, repeat)
    failures = [m["test_keys"]["control_failure"] for m in found]
    assert all(f is None or isinstance(f, str) for f in failures)
    assert failures[0] is None and failures[-1] is None, failures  # before and after
    assert any(isinstance(f, str) for f in failures), "no input saw the helper down"


def test_collector_and_uploader_killed_at_random_points_store_each_measurement_once(
    tmp_path: Path,
) -> None:
    """A long upload (3 reports, 1,500 measurements) during which the collector and the
    uploader are each killed with SIGKILL at seeded random points (by the collector's count),
    the collector restarted on the same data: nothing acknowledged is lost, nothing is stored
    twice, no torn line, and a last upload finds nothing left."""
    rng = random.Random(SEED)
    token = make_token()
    (tmp_path / "tokens").write_text(f"v0 {token}\n")
    (tmp_path / "tokens").chmod(0o600)
    expected = set(fill_store(tmp_path / "probe", "v0", 1500, reports=3))
    collector = CollectorProcess(data=tmp_path / "collected", tokens=tmp_path / "tokens").start()
    argv = [sys.executable, "-c", CLI, "upload", "--collector", collector.url,
            "--results", str(tmp_path / "probe"), "--attempts", "30"]  # fmt: skip
    env = _env(CENSORSCOPE_UPLOAD_TOKEN=token)
    points = sorted(rng.sample(range(50, 1400), 4))
    victims = [rng.choice(["collector", "uploader"]) for _ in points]
    try:
        for point, victim in zip(points, victims, strict=True):
            uploader = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)  # fmt: skip
            deadline = time.monotonic() + 120
            try:
                while (count := collector.get("/health")["measurements"]) < point:
                    assert uploader.poll() is None or count >= len(expected), "uploader ended"
                    assert time.monotonic() < deadline, f"seed {SEED}: stuck at {count}"
                    time.sleep(0.005)
                if victim == "collector":
                    collector.kill()
                    collector.start()
                uploader.kill()  # a killed collector's uploader is stopped too, then rerun
                uploader.wait()
            finally:
                if uploader.poll() is None:
                    uploader.kill()
        done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=300)  # fmt: skip
        assert done.returncode == 0, f"seed {SEED}: {done.stderr}"
        uids = stored_uids(collector.data)  # asserts every line is whole
        assert len(uids) == len(set(uids)), f"seed {SEED}: stored twice"
        assert set(uids) == expected, f"seed {SEED}: {len(expected - set(uids))} lost"
        assert not list(collector.data.rglob("*.torn"))
        again = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True,
                               timeout=120)  # fmt: skip
        assert again.returncode == 0, again.stderr
        assert "upload: 0 uploaded, 0 already at the collector" in again.stdout, again.stdout
    finally:
        collector.stop()


# --- a read-only results directory ----------------------------------------------------------------


def _read_only_view(of: Path, at: Path) -> None:
    """`at` shows `of` read-only (a read-only bind mount: root ignores file modes)."""
    if os.geteuid() != 0:
        pytest.skip("read-only results test: a read-only bind mount needs root")
    at.mkdir()
    for cmd in (["mount", "--bind", str(of), str(at)],
                ["mount", "-o", "remount,bind,ro", str(at)]):  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            subprocess.run(["umount", "-l", str(at)], check=False)
            pytest.skip(f"read-only results test: {' '.join(cmd)}: {done.stderr.strip()}")


def test_a_read_only_results_directory_is_refused_before_measuring_and_uploading(
    tmp_path: Path, helper: dict[str, Any]
) -> None:
    results = tmp_path / "results"
    first = subprocess.run(
        [sys.executable, "-c", CLI, *_run_args(results, helper["url"], 1)],
        cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert first.returncode == 0, first.stderr
    before = sorted((p, p.read_bytes()) for p in results.rglob("*") if p.is_file())
    view = tmp_path / "ro"
    _read_only_view(results, view)
    try:
        run = subprocess.run(
            [sys.executable, "-c", CLI, *_run_args(view, helper["url"], 1)],
            cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert run.returncode == 2, run.stderr
        assert f"results directory {view} is read-only" in run.stderr
        assert "nothing was measured" in run.stderr

        tokens = tmp_path / "tokens"
        token = make_token()
        tokens.write_text(f"default {token}\n")
        tokens.chmod(0o600)
        collector = CollectorProcess(data=tmp_path / "collected", tokens=tokens).start()
        try:
            upload = subprocess.run(
                [sys.executable, "-c", CLI, "upload", "--collector", collector.url,
                 "--results", str(view)],
                cwd=ROOT, env=_env(CENSORSCOPE_UPLOAD_TOKEN=token), capture_output=True,
                text=True, timeout=120,
            )  # fmt: skip
            assert upload.returncode == 2, upload.stderr
            assert f"results directory {view} is read-only" in upload.stderr
            assert "Traceback" not in upload.stderr
            assert collector.get("/health")["measurements"] == 0  # nothing sent unrecorded
        finally:
            collector.stop()
    finally:
        subprocess.run(["umount", "-l", str(view)], check=False)
    after = sorted((p, p.read_bytes()) for p in results.rglob("*") if p.is_file())
    assert after == before


# --- a wall clock that jumps ----------------------------------------------------------------------


def _faketime_env(offset_file: Path) -> dict[str, str]:
    if not FAKETIME_LIB.exists():
        missing.skip(f"clock-jump test: {FAKETIME_LIB} (Debian package libfaketime)")
    return _env(
        LD_PRELOAD=str(FAKETIME_LIB),
        FAKETIME_TIMESTAMP_FILE=str(offset_file),
        FAKETIME_CACHE_DURATION="1",  # read the offset file each second: jumps land within 1 s
        FAKETIME_DONT_FAKE_MONOTONIC="1",  # as a real wall-clock step: monotonic goes on
    )


def _jump_while(proc: subprocess.Popen[bytes], offset_file: Path, offsets: list[str],
                every: float) -> None:  # fmt: skip
    for offset in offsets:
        if proc.poll() is not None:
            return
        offset_file.write_text(offset + "\n")
        time.sleep(every)


def test_a_clock_jumping_back_and_forth_loses_nothing_and_stores_nothing_twice(
    tmp_path: Path, helper: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The wall clock steps back 3 days, forward a year, back a day, while the probe measures;
    then the collector's and the uploader's clock is 400 days behind the measurements' dates,
    and jumps forward to the right time between two uploads. Every measurement is stored once
    by the probe (dated as its clock said), sent and stored once by the collector, and the
    second upload finds nothing left."""
    offset_file = tmp_path / "offset"
    offset_file.write_text("+0\n")
    env = _faketime_env(offset_file)
    repeat = 4
    results = tmp_path / "results"
    argv = [sys.executable, "-c", CLI, *_run_args(results, helper["url"], repeat),
            "--concurrency", "4"]  # fmt: skip
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)  # fmt: skip
    try:
        _wait_for_lines(results, 10, proc)
        _jump_while(proc, offset_file, ["-3d", "+365d", "-1d"], 1.1)
        _out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    found, problems = _stored(results)
    assert not problems
    _assert_each_once(found, repeat)
    days = {m["measurement_start_time"][:10] for m in found}
    assert len(days) >= 2, f"the clock did not jump: {days}"

    offset_file.write_text("-400d\n")
    token = make_token()
    tokens = tmp_path / "tokens"
    tokens.write_text(f"default {token}\n")
    tokens.chmod(0o600)
    collector = CollectorProcess(data=tmp_path / "collected", tokens=tokens)
    for name in ("LD_PRELOAD", "FAKETIME_TIMESTAMP_FILE", "FAKETIME_CACHE_DURATION",
                 "FAKETIME_DONT_FAKE_MONOTONIC"):  # fmt: skip
        monkeypatch.setenv(name, env[name])  # the collector's clock is the uploader's
    collector.start()
    upload_argv = [sys.executable, "-c", CLI, "upload", "--collector", collector.url,
                   "--results", str(results)]  # fmt: skip
    upload_env = {**env, "CENSORSCOPE_UPLOAD_TOKEN": token}
    try:
        first = subprocess.run(upload_argv, cwd=ROOT, env=upload_env, capture_output=True,
                               text=True, timeout=120)  # fmt: skip
        assert first.returncode == 0, first.stderr
        assert collector.get("/health")["measurements"] == len(found)
        lines = [
            json.loads(line)
            for f in (collector.data / "raw").rglob("*.jsonl")
            for line in f.read_bytes().splitlines()
        ]
        assert sorted(m["measurement_uid"] for m in lines) == sorted(
            m["measurement_uid"] for m in found
        )
        filed = {p.parts[-4] for p in (collector.data / "raw").rglob("*.jsonl")}
        assert all(day < f"date={min(days)}" for day in filed), (filed, days)  # its clock
        offset_file.write_text("+0\n")
        time.sleep(1.2)  # past the offset file's cache
        again = subprocess.run(upload_argv, cwd=ROOT, env=upload_env, capture_output=True,
                               text=True, timeout=120)  # fmt: skip
        assert again.returncode == 0, again.stderr
        assert collector.get("/health")["measurements"] == len(found)
    finally:
        collector.stop()


def test_upload_index_on_a_full_disk_keeps_whole_lines(tmp_path: Path) -> None:
    """An acknowledgement batch that fills the disk is cut back to the last whole line, so the
    next batch does not start inside a fragment (its first uid would be unreadable)."""
    from probes.upload import _append_durably
    from tests.small_fs import fill, small_tmpfs

    with small_tmpfs(tmp_path) as fs:
        log = fs / "uploaded.log"
        _append_durably(log, [b"first\n"])
        filler = fs / "filler"
        fill(filler, leave=0)
        batch = [f"uid-{i:06d}\n".encode() for i in range(4000)]  # far more than fits
        with pytest.raises(OSError) as info:
            _append_durably(log, batch)
        assert log.read_bytes() == b"first\n"  # before: first\n and a fragment of the batch
        assert info.value.filename == str(log)  # the uploader tells it from a network error
        filler.unlink()
        _append_durably(log, [b"second\n"])
        assert log.read_bytes() == b"first\nsecond\n"
