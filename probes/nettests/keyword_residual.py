"""Residual-censorship bookkeeping for keyword tests: which endpoints are tainted, until when.

After a keyword triggers it, the GFW resets every new connection between the same client and
server IP:port for about 90 seconds (Bock et al., "Your Censor is My Censor", FOCI 2020, report
the HTTP residual window at ~90 s; Xu et al., TMA 2011, and Wang et al., IMC 2017, describe the
same statefulness). The client is always this probe, so an endpoint (server IP, port) stands for
the whole (client, server, port) triple.

The tracker picks the endpoint least recently used among those not tainted, waits out a taint
when every endpoint is tainted, and tells whether a failure happened while the endpoint was
tainted by someone else's trigger: such a failure is `residual`, never a fresh verdict.

Taints outlive a run: a scheduled job runs again within the window of its last triggers, and a
new process that knew nothing of them would send its controls into the censor's residual
blocking. `TaintFile` keeps each endpoint's expiry (wall clock) in the user's state directory,
read at setup and written at close; the first endpoints tried are also shuffled, so runs that
start together do not all begin with the same ports.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

# Bock et al. (FOCI 2020) measured ~90 s of residual censorship after an HTTP trigger.
RESIDUAL_WINDOW_SECONDS = 90.0

Endpoint = tuple[str, int]


@dataclass
class _State:
    tainted_since: float = -1.0
    tainted_until: float = -1.0
    last_used: float = -1.0
    in_use: int = 0


@dataclass
class TaintTracker:
    """Endpoints to rotate across and their residual windows (monotonic clock)."""

    endpoints: list[Endpoint]
    window: float = RESIDUAL_WINDOW_SECONDS
    _state: dict[Endpoint, _State] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.endpoints:
            raise ValueError("no endpoints to rotate across")
        self.endpoints = random.sample(self.endpoints, len(self.endpoints))
        self._state = {ep: _State() for ep in self.endpoints}

    def export(self) -> dict[str, float]:
        """ "ip:port" -> when its taint ends (wall clock), for the taints still running."""
        now_mono, now_wall = time.monotonic(), time.time()
        return {
            f"{ip}:{port}": now_wall + (state.tainted_until - now_mono)
            for (ip, port), state in self._state.items()
            if state.tainted_until > now_mono
        }

    def restore(self, saved: Mapping[str, float]) -> int:
        """Taint the endpoints a saved taint still covers (a previous run's triggers); returns
        how many."""
        now_mono, now_wall = time.monotonic(), time.time()
        restored = 0
        for (ip, port), state in self._state.items():
            until = saved.get(f"{ip}:{port}")
            if isinstance(until, int | float) and until > now_wall:
                state.tainted_since = now_mono
                state.tainted_until = max(state.tainted_until, now_mono + (until - now_wall))
                restored += 1
        return restored

    def is_tainted(self, ep: Endpoint, now: float | None = None) -> bool:
        return self._state[ep].tainted_until > (time.monotonic() if now is None else now)

    def taint(self, ep: Endpoint) -> None:
        """A keyword failed on `ep`: expect resets there for the residual window."""
        now = time.monotonic()
        state = self._state[ep]
        if state.tainted_until <= now:
            state.tainted_since = now
        state.tainted_until = now + self.window

    def tainted_during(self, ep: Endpoint, start: float, end: float) -> bool:
        """Whether `ep` was under a taint that began before `start`..`end` was over."""
        state = self._state[ep]
        return state.tainted_since <= end and state.tainted_until > start

    async def acquire(self, *, max_wait: float | None = None) -> Endpoint:
        """The clean endpoint used least recently; waits for a taint to expire if need be."""
        deadline = None if max_wait is None else time.monotonic() + max_wait
        while True:
            now = time.monotonic()
            clean = [ep for ep in self.endpoints if not self.is_tainted(ep, now)]
            if clean:
                ep = min(clean, key=lambda e: (self._state[e].in_use, self._state[e].last_used))
                state = self._state[ep]
                state.last_used, state.in_use = now, state.in_use + 1
                return ep
            wake = min(s.tainted_until for s in self._state.values())
            if deadline is not None and wake > deadline:
                raise TimeoutError("every endpoint is tainted")
            await asyncio.sleep(max(0.0, wake - now))

    def release(self, ep: Endpoint) -> None:
        self._state[ep].in_use -= 1


def state_dir() -> Path:
    """The user's state directory for censorscope ($XDG_STATE_HOME, else ~/.local/state)."""
    base = os.environ.get("XDG_STATE_HOME") or ""
    root = Path(base) if base and Path(base).is_absolute() else Path.home() / ".local" / "state"
    return root / "censorscope"


@dataclass
class TaintFile:
    """Endpoint taints kept between runs (see the module docstring), one file per user."""

    path: Path = field(default_factory=lambda: state_dir() / "keyword-taints.json")

    def load(self) -> dict[str, float]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        if not isinstance(data, dict):
            return {}
        now = time.time()
        return {
            k: float(v)
            for k, v in data.items()
            if isinstance(k, str) and isinstance(v, int | float) and v > now
        }

    def save(self, taints: Mapping[str, float]) -> None:
        """Merge `taints` into the file (expired entries dropped); never raises."""
        merged = {**self.load(), **taints}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(merged, sort_keys=True), encoding="utf-8")
            os.replace(tmp, self.path)
        except OSError:
            pass  # a read-only home loses the memory between runs, not the run
