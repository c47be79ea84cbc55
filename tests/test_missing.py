"""Under CI (`CI=true`) a test skipped for a missing package fails; elsewhere it skips."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

_TESTS = """
import pytest
from tests import missing

pytest.importorskip("no_such_module_here", reason=missing.reason("no_such_module_here"))
"""

_MARKED = """
import pytest
from tests import missing

@missing.skip_if(True, "a package this machine lacks")
def test_marked():
    pass

def test_called():
    missing.skip("a program this machine lacks")

@pytest.mark.skipif(True, reason="not a missing package: still a skip")
def test_plain():
    pass
"""


def _pytest(tmp_path: Path, source: str, ci: str | None) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "test_probe_of_missing.py"
    path.write_text(source)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PYTHONPATH"] = str(ROOT)
    if ci is not None:
        env["CI"] = ci
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rA", "-p", "tests.conftest",
         "-p", "no:cacheprovider", "--rootdir", str(tmp_path), str(path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


@pytest.mark.parametrize("ci", [None, "false"])
def test_outside_ci_missing_packages_skip(tmp_path: Path, ci: str | None) -> None:
    done = _pytest(tmp_path, _MARKED, ci)
    assert done.returncode == 0, done.stdout
    assert "3 skipped" in done.stdout


def test_under_ci_missing_packages_fail(tmp_path: Path) -> None:
    done = _pytest(tmp_path, _MARKED, "true")
    assert done.returncode == 1, done.stdout
    assert "1 skipped" in done.stdout  # the plain skip stays a skip
    assert "a package this machine lacks" in done.stdout
    assert "a program this machine lacks" in done.stdout


def test_under_ci_a_missing_module_fails_collection(tmp_path: Path) -> None:
    done = _pytest(tmp_path, _TESTS, "true")
    assert done.returncode == 2, done.stdout  # an error during collection
    assert "requirement is not installed" in done.stdout and "no_such_module_here" in done.stdout
    skipped = _pytest(tmp_path, _TESTS, None)
    assert skipped.returncode in (0, 5), skipped.stdout  # 5: nothing collected
