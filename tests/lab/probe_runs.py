"""Probe runs in the lab's vantages: started together, collected with their stored verdicts.

Each nettest's lab module starts one `censorscope run` per vantage (or per app and vantage) at
once, so both sides see the censor in the same state, then waits for every run and reads its
measurements. Runs still going when a test fails are killed, never left behind.
"""

from __future__ import annotations

import subprocess
from collections.abc import Collection, Hashable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from bench.accuracy import read_verdicts
from lab import topology

K = TypeVar("K", bound=Hashable)


@dataclass
class ProbeRun:
    """One started run: its process, results folder, vantage, nettest and expected inputs."""

    proc: subprocess.Popen[str]
    results: Path
    vantage: str
    nettest: str
    inputs: Collection[str]


def start(argv: list[str]) -> subprocess.Popen[str]:
    """`argv` (a vantage's exec prefix and a censorscope command) with the lab's Python env."""
    return subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=topology._python_env(),
    )  # fmt: skip


@dataclass
class Runs(Generic[K]):
    """Started runs by key, collected together."""

    started: dict[K, ProbeRun]

    def collect(self, timeout: float) -> dict[K, dict[str, dict[str, Any]]]:
        """key -> input -> test_keys; every run must exit 0 and store every input."""
        out: dict[K, dict[str, dict[str, Any]]] = {}
        for key, run in self.started.items():
            _, err = run.proc.communicate(timeout=timeout)
            assert run.proc.returncode == 0, f"{key} exited {run.proc.returncode}: {err[-2000:]}"
            found = read_verdicts(run.results, run.vantage, run.nettest)
            assert set(found) == set(run.inputs), f"{key}: inputs missing"
            out[key] = found
        return out


@contextmanager
def running(started: dict[K, ProbeRun]) -> Iterator[Runs[K]]:
    """The runs, killed on the way out if any is still going (a failed or timed-out test)."""
    try:
        yield Runs(started)
    finally:
        for run in started.values():
            if run.proc.poll() is None:
                run.proc.kill()
                run.proc.communicate()


def verdict_pairs(found: Mapping[str, Mapping[str, Any]]) -> dict[str, tuple[Any, Any]]:
    """input -> (blocking, blocking_detail)."""
    return {i: (k["blocking"], k["blocking_detail"]) for i, k in found.items()}
