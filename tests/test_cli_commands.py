"""Every command module of probes/commands imports and registers (the CLI only warns)."""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys

import pytest
import typer

import probes.commands

MODULES = sorted(info.name for info in pkgutil.iter_modules(probes.commands.__path__))


@pytest.mark.parametrize("name", MODULES)
def test_command_module_registers(name: str) -> None:
    module = importlib.import_module(f"probes.commands.{name}")
    app = typer.Typer()
    module.register(app)
    assert app.registered_commands or app.registered_groups


def test_help_lists_the_core_commands_without_warnings() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "probes.cli", "--help"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0
    for command in ("run", "helper", "lists", "lab"):
        assert command in proc.stdout
    assert "unavailable" not in proc.stderr
