"""scripts/install.sh on a machine whose Python refuses pip (PEP 668): it makes a virtual
environment with the chosen interpreter and never installs into that interpreter itself.

The full install (downloads from PyPI) is what `.ci/run` proves; offline, these tests cover
the steps before pip: the choice of interpreter, the environment it makes, and that nothing
is linked onto PATH when the install did not finish.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "install.sh"


def _install(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("CENSORSCOPE_")}
    base.update(
        CENSORSCOPE_VENV=str(tmp_path / "venv"),
        CENSORSCOPE_BIN_DIR=str(tmp_path / "bin"),
        CENSORSCOPE_SYSTEM_PACKAGES="0",
        PIP_NO_INDEX="1",  # no network in tests: pip stops at its first download
        PIP_FIND_LINKS="",
    )
    base.update(env)
    return subprocess.run(
        ["bash", str(SCRIPT), "--dev"], env=base, capture_output=True, text=True,
        timeout=300, check=False,
    )  # fmt: skip


def _base_python() -> str:
    """The interpreter this one runs on (outside any venv), as the system Python would be."""
    return os.path.realpath(getattr(sys, "_base_executable", sys.executable))


def test_help_names_the_environment_variables() -> None:
    done = subprocess.run(["bash", str(SCRIPT), "--help"], capture_output=True, text=True)
    assert done.returncode == 0
    for name in ("CENSORSCOPE_PYTHON", "CENSORSCOPE_VENV", "CENSORSCOPE_BIN_DIR", "PEP 668"):
        assert name in done.stdout
    bad = subprocess.run(["bash", str(SCRIPT), "--devv"], capture_output=True, text=True)
    assert bad.returncode == 2 and "--devv" in bad.stderr


def test_a_missing_interpreter_is_named(tmp_path: Path) -> None:
    done = _install(tmp_path, CENSORSCOPE_PYTHON=str(tmp_path / "python9"))
    assert done.returncode == 1
    assert "python9" in done.stderr and "no such interpreter" in done.stderr
    assert not (tmp_path / "venv").exists()


def test_the_venv_uses_the_chosen_interpreter(tmp_path: Path) -> None:
    python = _base_python()
    done = _install(tmp_path, CENSORSCOPE_PYTHON=python)
    venv_python = tmp_path / "venv" / "bin" / "python"
    assert f"creating the virtual environment {tmp_path / 'venv'} with {python}" in done.stdout
    assert venv_python.exists()
    probe = subprocess.run(
        [str(venv_python), "-c", "import os, sys; print(sys.prefix != sys.base_prefix, "
         "os.path.realpath(sys._base_executable))"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert probe.stdout.split() == ["True", python]
    # Offline, pip could not fetch the build backend: the script fails and links nothing.
    assert done.returncode != 0
    assert not (tmp_path / "bin" / "censorscope").exists()
