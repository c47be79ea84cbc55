"""Residual-censorship bookkeeping for keyword tests: which endpoints are tainted, until when.

After a keyword triggers it, the GFW resets every new connection between the same client and
server IP:port for about 90 seconds (Bock et al., "Your Censor is My Censor", FOCI 2020, report
the HTTP residual window at ~90 s; Xu et al., TMA 2011, and Wang et al., IMC 2017, describe the
same statefulness). The client is always this probe, so an endpoint (server IP, port) stands for
the whole (client, server, port) triple.

The tracker picks the endpoint least recently used among those not tainted, waits out a taint
when every endpoint is tainted, and tells whether a failure happened while the endpoint was
tainted by someone else's trigger: such a failure is `residual`, never a fresh verdict.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

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
        self._state = {ep: _State() for ep in self.endpoints}

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
