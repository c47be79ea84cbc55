"""Client of the web-connectivity control helper (OONI's oohelperd protocol).

The probe can use OONI's public helpers or a censorscope helper: both take
`{"http_request", "http_request_headers", "tcp_connect"}` and answer with the control's view.
Several helper URLs are fallbacks: `choose()` picks the first that answers its greeting or,
for helpers that have no greeting (oohelperd before April 2024 answered GET with a bare 400),
a small control request that makes the helper open no connection.

What the helper answers is taken as oohelperd sends it (ooni/probe-cli internal/model/th.go):
`tls_handshake` and `ip_info` may be absent, `quic_handshake`/`http3_request` present. Our own
helper adds `x_` fields; a nettest that uses one records the feature it lost when it is
missing (`degraded`), and its verdict stands on the standard fields alone.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from probes.net.http import JSONClient

if TYPE_CHECKING:
    from probes.nettests.base import ProbeContext

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
# Control requests in flight at once per helper: oohelperd answers 503 once 25 requests are in
# flight unless the client's User-Agent starts with "ooniprobe-" (handler.go,
# handlerShouldThrottleClient), and OONI's helpers are shared; 20 leaves room for others.
CONTROL_MAX_INFLIGHT = 20
# The control request `choose()` falls back to: an IP-literal URL needs no DNS lookup, names no
# endpoint, and oohelperd refuses to fetch a bogon, so the helper opens no connection at all.
PROBE_REQUEST = {
    "http_request": "http://127.0.0.1:9/",
    "http_request_headers": {},
    "tcp_connect": [],
}
# The keys every oohelperd response has (tls_handshake and ip_info are `omitempty`).
RESPONSE_KEYS = ("tcp_connect", "http_request", "dns")


# What web_connectivity loses with a helper that sends no ip_info (oohelperd before Aug 2022).
SAME_ASN_FEATURE = "same-ASN DNS consistency rule: only shared addresses make answers consistent"


def is_control_response(data: Any) -> bool:
    """Whether a helper's JSON is a control response (as oohelperd or our helper writes it)."""
    return isinstance(data, dict) and all(isinstance(data.get(k), dict) for k in RESPONSE_KEYS)


def degraded(control: dict[str, Any], wanted: dict[str, str]) -> dict[str, str]:
    """The features lost because the helper's answer lacks an `x_` extension: {extension:
    feature} for each of `wanted` that is absent (an empty dict when nothing is lost)."""
    if not control:
        return {}  # no answer at all: control_failure already says so
    return {ext: feature for ext, feature in wanted.items() if ext not in control}


def note_degraded(keys: dict[str, Any], control: dict[str, Any], wanted: dict[str, str]) -> None:
    """Record in the test keys (`x_control_degraded`) what a missing extension switched off."""
    lost = degraded(control, wanted)
    if lost:
        keys.setdefault("x_control_degraded", {}).update(lost)


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

    @classmethod
    def for_context(cls, ctx: ProbeContext) -> ControlClient:
        """The run's helpers, per-input budget and CA file, as every nettest asks them."""
        return cls(ctx.helpers, timeout=ctx.timeout, ca_file=ctx.ca_file)

    @classmethod
    async def answering(
        cls, ctx: ProbeContext, warnings: list[str], without: str
    ) -> ControlClient | None:
        """For nettests whose control is optional: the run's helper client once one answers;
        None when no helper is configured, or none answers (then a warning says `without`)."""
        if not ctx.helpers:
            return None
        client = cls.for_context(ctx)
        problem = await client.choose()
        if problem:
            warnings.append(f"control helper unreachable ({problem}): {without}")
            await client.aclose()
            return None
        return client

    async def choose(self) -> str | None:
        """Pick the first helper that answers; return a description of the problem if none does.

        A helper is alive when it answers the greeting (GET, 200) or, failing that, a small
        control request with a control response: oohelperd before v3.22.0 (April 2024) and other
        implementations have no greeting. A helper that cannot be reached at all is not asked
        twice.
        """
        if not self.helpers:
            self.unreachable_failure = "no_control_helper"
            return "no helper configured"
        problems = []
        for url in self.helpers:
            reply = await self._client.get_json(url, timeout=GREETING_TIMEOUT)
            if reply.status_code == 200 and isinstance(reply.data, dict):  # a JSON greeting
                self._use(url)
                return None
            problem = reply.failure or f"HTTP {reply.status_code}"
            if reply.failure is None:
                posted = await self._client.post_json(url, PROBE_REQUEST, timeout=self.timeout)
                if posted.status_code == 200 and is_control_response(posted.data):
                    self._use(url)
                    return None
                problem += f", control request: {posted.failure or f'HTTP {posted.status_code}'}"
            problems.append(f"{url}: {problem}")
        self.unreachable_failure = "control_helper_unreachable"
        return "; ".join(problems)

    def _use(self, url: str) -> None:
        self.chosen = url
        self.unreachable_failure = None

    async def measure(
        self, url: str, endpoints: list[str], headers: dict[str, str], *, quic: bool = False
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
                result = await self._measure_once(url, endpoints, headers, quic)
            result.attempts = attempt + 1
            if not any(f in (result.failure or "") for f in RETRYABLE_FAILURES):
                break
            if attempt + 1 < attempts:
                await asyncio.sleep(CONTROL_BACKOFF_S * 2**attempt)
        return result

    async def _measure_once(
        self, url: str, endpoints: list[str], headers: dict[str, str], quic: bool = False
    ) -> ControlResult:
        if self.chosen is None:
            return ControlResult(failure="no_control_helper")
        payload: dict[str, Any] = {
            "http_request": url,
            "http_request_headers": {name: [value] for name, value in headers.items()},
            "tcp_connect": endpoints,
        }
        if quic:  # oohelperd then checks QUIC when the site advertises h3 (Alt-Svc)
            payload["x_quic_enabled"] = True
        started = time.monotonic()
        reply = await self._client.post_json(self.chosen, payload, timeout=self.timeout)
        runtime = time.monotonic() - started
        if reply.failure is not None:
            return ControlResult(failure=reply.failure, runtime=runtime)
        if reply.status_code != 200:
            return ControlResult(
                failure=f"http_request_failed: status {reply.status_code}", runtime=runtime
            )
        if not is_control_response(reply.data):
            return ControlResult(
                failure="http_request_failed: not a control response", runtime=runtime
            )
        return ControlResult(control=reply.data, runtime=runtime)

    async def aclose(self) -> None:
        await self._client.aclose()
