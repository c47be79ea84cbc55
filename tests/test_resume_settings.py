"""`run --resume` continues a report with every setting it began with (helper, timeout,
concurrency, CA file, ...), and a flag that disagrees with them is an error naming it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from backend.helper import HelperConfig
from probes.store import ResultsStore
from tests.loopback import TestCA
from tests.loopback.control_helper import running_helper
from tests.loopback.web import closed_port

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "probes.cli"]


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [*CLI, *args, "--no-progress"], cwd=cwd, env=env, capture_output=True, text=True,
        timeout=120, check=False,
    )  # fmt: skip


@pytest.fixture
def interrupted(tmp_path: Path) -> Iterator[tuple[str, Path, str]]:
    """A tcp_connect report measured with a loopback helper, whose last measurement is then
    dropped as if the run had been stopped before it: (report id, results, dropped input)."""
    ca = TestCA(tmp_path / "ca")
    # The config's helper is unreachable: a resume that fell back to it would show.
    (tmp_path / "probe.toml").write_text('[probe]\nhelpers = ["http://127.0.0.1:9/"]\n')
    with running_helper(HelperConfig(allow_private=True)) as helper:
        inputs = [f"127.0.0.1:{closed_port()}", f"127.0.0.1:{closed_port()}"]
        first = _cli(
            "run", "tcp_connect", "--input", inputs[0], "--input", inputs[1],
            "--helper", helper, "--timeout", "7", "--concurrency", "3",
            "--ca-file", ca.ca_pem_path, "--results", "results", "--config", "probe.toml",
            cwd=tmp_path,
        )  # fmt: skip
        assert first.returncode == 0, first.stderr
        store = ResultsStore(tmp_path / "results")
        (report,) = list(store.iter_report_files())
        lines = report.read_bytes().splitlines(keepends=True)
        assert len(lines) == 2
        report.write_bytes(lines[0])
        dropped = json.loads(lines[1])["input"]
        yield report.stem, tmp_path / "results", dropped


def test_resume_restores_every_setting(interrupted: tuple[str, Path, str], tmp_path: Path) -> None:
    report_id, results, dropped = interrupted
    manifest = ResultsStore(results).load_manifest(report_id)
    settings = manifest.options["settings"]
    assert settings["timeout"] == 7.0 and settings["concurrency"] == 3
    assert settings["ca_file"] == str((tmp_path / "ca" / "ca.pem").resolve())
    # Resumed from another directory, with no flags: the helper of the first run is used, not
    # the config's unreachable one (the helper is still up: the fixture holds it).
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = _cli(
        "run", "tcp_connect", "--resume", report_id, "--results", str(results),
        "--config", str(tmp_path / "probe.toml"), cwd=elsewhere,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "1 measured" in done.stdout
    last = [m for m in ResultsStore(results).iter_measurements() if m.input == dropped]
    assert len(last) == 1
    keys = last[0].test_keys
    assert keys["control_failure"] is None and keys["control"], keys


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--helper", "http://127.0.0.1:9/"], "--helper"),
        (["--timeout", "9"], "--timeout"),
        (["--concurrency", "5"], "--concurrency"),
        (["--input", "127.0.0.1:1"], "--input"),
        (["--resolver", "127.0.0.1:53"], "--resolver"),
        (["--no-packet-capture"], "--packet-capture"),
    ],
)
def test_a_conflicting_flag_is_an_error(
    interrupted: tuple[str, Path, str], tmp_path: Path, flags: list[str], named: str
) -> None:
    report_id, results, _ = interrupted
    done = _cli(
        "run", "tcp_connect", "--resume", report_id, "--results", str(results), *flags,
        cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert named in done.stderr and "interrupted run" in done.stderr
    assert len(list(ResultsStore(results).iter_measurements())) == 1  # nothing measured


def test_the_same_flags_again_are_fine(interrupted: tuple[str, Path, str], tmp_path: Path) -> None:
    report_id, results, _ = interrupted
    manifest = ResultsStore(results).load_manifest(report_id)
    helper = manifest.options["settings"]["helpers"][0]
    done = _cli(
        "run", "tcp_connect", "--resume", report_id, "--results", str(results),
        "--helper", helper, "--timeout", "7", cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
