"""Client of the web-connectivity control helper (OONI's oohelperd protocol).

The probe can use OONI's public helpers or a censorscope helper: both take
`{"http_request", "http_request_headers", "tcp_connect"}` and answer with the control's view.
Several helper URLs are fallbacks: `choose()` picks the first that answers its greeting.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from probes.net.http import JSONClient

# A greeting should come back fast; a control measurement may take the helper's full budget.
GREETING_TIMEOUT = 5.0
# A busy helper (503/429) or a broken connection to it is asked again with exponential backoff;
# a timeout is not (it already took the whole budget).
CONTROL_ATTEMPTS = 3
CONTROL_BACKOFF_S = 0.5
RETRYABLE_FAILURES = (
    "status 503",
    "status 429",
    "connection_refused",
    "connection_reset",
    "eof_error",
)
# Control requests in flight at once per probe: a helper answers 503 past its own limit
# (ours: 100), and two probes at full concurrency would otherwise make it refuse half of them.
CONTROL_MAX_INFLIGHT = 64


@dataclass
class ControlResult:
    control: dict[str, Any] = field(default_factory=dict)
    failure: str | None = None
    runtime: float = 0.0
    attempts: int = 1


class ControlClient:
    def __init__(self, helpers: list[str], *, timeout: float, ca_file: str | None) -> None:
        self.helpers = list(helpers)
        self.timeout = timeout
        self.chosen: str | None = self.helpers[0] if self.helpers else None
        self.unreachable_failure: str | None = None
        self._client = JSONClient(ca_file=ca_file)
        self._slots = asyncio.Semaphore(CONTROL_MAX_INFLIGHT)

    async def choose(self) -> str | None:
        """Pick the first helper that answers; return a description of the problem if none does."""
        if not self.helpers:
            self.unreachable_failure = "no_control_helper"
            return "no helper configured"
        problems = []
        for url in self.helpers:
            reply = await self._client.get_json(url, timeout=GREETING_TIMEOUT)
            if reply.failure is None and reply.status_code == 200:
                self.chosen = url
                self.unreachable_failure = None
                return None
            problems.append(f"{url}: {reply.failure or f'HTTP {reply.status_code}'}")
        self.unreachable_failure = "control_helper_unreachable"
        return "; ".join(problems)

    async def measure(
        self, url: str, endpoints: list[str], headers: dict[str, str]
    ) -> ControlResult:
        """Ask the chosen helper for its view of `url` and the probe's endpoints.

        Asked again while the helper is busy or the connection to it broke, so that a loaded
        helper does not turn into `control_failure` and a null verdict; asked once when it did
        not answer its greeting (every input would otherwise wait out the backoff).
        """
        result = ControlResult()
        attempts = 1 if self.unreachable_failure else CONTROL_ATTEMPTS
        for attempt in range(attempts):
            async with self._slots:
                result = await self._measure_once(url, endpoints, headers)
            result.attempts = attempt + 1
            if not any(f in (result.failure or "") for f in RETRYABLE_FAILURES):
                break
            if attempt + 1 < attempts:
                await asyncio.sleep(CONTROL_BACKOFF_S * 2**attempt)
        return result

    async def _measure_once(
        self, url: str, endpoints: list[str], headers: dict[str, str]
    ) -> ControlResult:
        if self.chosen is None:
            return ControlResult(failure="no_control_helper")
        payload = {
            "http_request": url,
            "http_request_headers": {name: [value] for name, value in headers.items()},
            "tcp_connect": endpoints,
        }
        started = time.monotonic()
        reply = await self._client.post_json(self.chosen, payload, timeout=self.timeout)
        runtime = time.monotonic() - started
        if reply.failure is not None:
            return ControlResult(failure=reply.failure, runtime=runtime)
        if reply.status_code != 200 or not isinstance(reply.data, dict):
            return ControlResult(
                failure=f"http_request_failed: status {reply.status_code}", runtime=runtime
            )
        return ControlResult(control=reply.data, runtime=runtime)

    async def aclose(self) -> None:
        await self._client.aclose()
