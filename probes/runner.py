"""Async execution of a nettest over a stream of inputs.

Inputs are pulled from an iterator only when a worker is free, so memory stays flat in the
length of the list.  Per-host pacing keeps us from hammering one server: at most
`per_host_concurrency` measurements of a host at once and `per_host_interval` seconds between
their starts (a nettest whose inputs share one server names it and its limit with
`Nettest.pacing`; inputs wait there before their budgets start).  Finished measurements go to
a single writer task that appends them in batches (group commit), so a kill loses at most the
measurements still in flight, never a line.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from probes.measurement import Measurement, base_annotations, new_measurement_uid, ooni_time
from probes.nettests.base import Nettest
from probes.store import ReportManifest, ReportWriter, StoreError

# Grace beyond the per-input timeout before the runner abandons a measurement itself: the
# nettest's own budgets should fire first and record which step failed.
ABANDON_GRACE_SECONDS = 5.0
TIMEOUT_FAILURE = "generic_timeout_error"


@dataclass
class RunOptions:
    concurrency: int = 16
    timeout: float = 30.0
    repeat: int = 1
    per_host_concurrency: int = 2
    per_host_interval: float = 0.2


@dataclass
class RunSummary:
    measured: int = 0
    blocked: int = 0
    inconclusive: int = 0
    errors: int = 0
    interrupted: bool = False
    # The store refused a write (disk full, ...): measuring stopped; `unstored` were dropped.
    store_error: str | None = None
    unstored: int = 0
    elapsed: float = 0.0
    blocked_inputs: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.measured / self.elapsed if self.elapsed > 0 else 0.0


def host_key(input_: str | None) -> str:
    """The server an input hits, for pacing: the URL's host, else the input itself."""
    if not input_:
        return ""
    if "://" in input_:
        try:
            return (urlsplit(input_).hostname or input_).lower()
        except ValueError:
            return input_
    return input_.lower()


class HostPacer:
    """Limits concurrent and back-to-back measurements of one host."""

    def __init__(self, per_host: int, interval: float) -> None:
        self.per_host = max(1, per_host)
        self.interval = interval
        self._active: dict[str, int] = {}
        self._last_start: dict[str, float] = {}
        self._changed = asyncio.Condition()

    async def acquire(self, host: str, limit: int | None = None) -> None:
        """Wait for a slot of `host` (at most `limit` at once, else per_host)."""
        most = self.per_host if limit is None else max(1, limit)
        async with self._changed:
            while True:
                now = time.monotonic()
                wait = self._last_start.get(host, -1e9) + self.interval - now
                if self._active.get(host, 0) < most and wait <= 0:
                    self._active[host] = self._active.get(host, 0) + 1
                    self._last_start[host] = now
                    return
                if self._active.get(host, 0) >= most:
                    await self._changed.wait()
                else:
                    # asyncio.timeout, not wait_for: wait_for runs Condition.wait in a task of
                    # its own, and on Ctrl-C those orphans wait forever for the lock, so the
                    # event loop never closes (Python 3.11).
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(wait):
                            await self._changed.wait()

    async def release(self, host: str) -> None:
        async with self._changed:
            left = self._active.get(host, 1) - 1
            if left <= 0:
                self._active.pop(host, None)
                # Forget hosts whose interval has passed so the maps stay small.
                if time.monotonic() - self._last_start.get(host, 0) > self.interval:
                    self._last_start.pop(host, None)
            else:
                self._active[host] = left
            self._changed.notify_all()


def expand_repeats(
    inputs: Iterable[str | None], repeat: int, done: dict[str | None, int]
) -> Iterator[str | None]:
    """Each input `repeat` times, minus the measurements a resumed report already holds."""
    for item in inputs:
        todo = repeat - done.get(item, 0)
        for _ in range(max(0, todo)):
            yield item


class Progress:
    """A rich progress display on a terminal; silence (then one summary line) otherwise.

    With a known total it shows count/total, percentage and ETA; it counts inconclusive
    measurements beside blocked ones, so a run whose every verdict is null says so at once.
    """

    def __init__(self, enabled: bool, label: str, total: int | None = None) -> None:
        self.enabled = enabled
        self.total = total
        self._progress: Any = None
        self._task: Any = None
        self.label = label

    def __enter__(self) -> Progress:
        if self.enabled:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TaskProgressColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )
            from rich.progress import Progress as RichProgress

            self._progress = RichProgress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TaskProgressColumn(),
                TextColumn("[red]{task.fields[blocked]} blocked"),
                TextColumn("[yellow]{task.fields[inconclusive]} inconclusive"),
                TextColumn("{task.fields[rate]:.1f}/s"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                transient=False,
            )
            self._progress.start()
            self._task = self._progress.add_task(
                self.label, total=self.total, blocked=0, inconclusive=0, rate=0.0
            )
        return self

    def update(self, summary: RunSummary, started: float) -> None:
        if self._progress is not None:
            elapsed = max(time.monotonic() - started, 1e-9)
            self._progress.update(
                self._task,
                completed=summary.measured,
                blocked=summary.blocked,
                inconclusive=summary.inconclusive,
                rate=summary.measured / elapsed,
            )

    @staticmethod
    def say(line: str) -> None:
        """One line on stderr now (while the bar shows, rich routes stderr above it)."""
        print(line, file=sys.stderr, flush=True)

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()


# The machine looks offline when the probe's own DNS failed for every one of the first names
# (not a censor: one blocks some names, not all of them, and answers NXDOMAIN rather than
# timing out). Said once, early, so nobody waits minutes for a run of null verdicts.
OFFLINE_AFTER = 5
OFFLINE_FAILURES = frozenset(
    {
        "generic_timeout_error",
        "dns_temporary_failure",
        "dns_servfail_error",
        "dns_server_misbehaving",
        "dns_non_recoverable_failure",
        "dns_refused_error",
        "network_unreachable",
        "host_unreachable",
        "network_down",
        "connection_refused",
    }
)


def own_dns_failed(test_keys: dict[str, Any]) -> bool | None:
    """Did every DNS query of this measurement fail the way an offline resolver fails? None
    when it made no query."""
    queries = test_keys.get("queries")
    if not isinstance(queries, list) or not queries:
        return None
    failures = [q.get("failure") if isinstance(q, dict) else None for q in queries]
    return all(f is not None for f in failures) and any(
        str(f).split(":")[0] in OFFLINE_FAILURES for f in failures
    )


class RunWatch:
    """Problems a person at the terminal should hear about during the run, each said once:
    a nettest's new warnings (e.g. "control helper unreachable") and an offline look."""

    def __init__(self, nettest: Nettest) -> None:
        self.nettest = nettest
        self.said_warnings = 0
        self.dns_seen = 0
        self.dns_failed = 0
        self.offline_said = False

    def observe(self, measurement: Measurement) -> None:
        failed = own_dns_failed(measurement.test_keys or {})
        if failed is None or self.dns_seen >= OFFLINE_AFTER:
            return
        self.dns_seen += 1
        self.dns_failed += failed

    def flush(self, say: Callable[[str], None]) -> None:
        for warning in self.nettest.warnings[self.said_warnings :]:
            say(f"censorscope: {warning}")
        self.said_warnings = len(self.nettest.warnings)
        if (
            not self.offline_said
            and self.dns_seen >= OFFLINE_AFTER
            and self.dns_failed == self.dns_seen
        ):
            self.offline_said = True
            say(
                f"censorscope: the probe's own DNS lookups failed for all of the first "
                f"{self.dns_seen} names: this machine looks offline (or its resolver is "
                "unreachable); measurements will be inconclusive"
            )


async def run_nettest(
    nettest: Nettest,
    inputs: Iterable[str | None],
    manifest: ReportManifest,
    writer: ReportWriter,
    options: RunOptions,
    *,
    progress: bool | None = None,
    on_measurement: Callable[[Measurement], None] | None = None,
    total: int | None = None,
    watch: RunWatch | None = None,
) -> RunSummary:
    """Measure every input, store each measurement, return counts. Cancellation-safe.

    `total` (when known) sizes the progress bar; `watch` says problems as they appear (the
    caller passes the one it prints the leftover warnings with at the end)."""
    summary = RunSummary()
    pacer = HostPacer(options.per_host_concurrency, options.per_host_interval)
    stream = iter(inputs)
    queue: asyncio.Queue[Measurement | None] = asyncio.Queue(maxsize=options.concurrency * 4)
    started = time.monotonic()
    show = sys.stdout.isatty() if progress is None else progress
    watch = watch or RunWatch(nettest)

    def build(
        input_: str | None, test_keys: dict[str, Any], t0_wall: datetime, runtime: float
    ) -> Measurement:
        ctx = nettest.ctx
        measurement = Measurement(
            test_name=nettest.name,
            test_version=nettest.version,
            input=input_,
            report_id=manifest.report_id,
            measurement_uid=new_measurement_uid(nettest.name, ctx.probe_cc, t0_wall),
            probe_cc=ctx.probe_cc,
            probe_asn=ctx.probe_asn,
            probe_network_name=ctx.probe_network_name,
            resolver_ip=nettest.resolver_ip,
            resolver_asn=ctx.resolver_asn if nettest.resolver_ip == ctx.resolver_ip else "AS0",
            resolver_network_name=(
                ctx.resolver_network_name if nettest.resolver_ip == ctx.resolver_ip else ""
            ),
            test_start_time=manifest.test_start_time,
            measurement_start_time=ooni_time(t0_wall),
            test_runtime=round(runtime, 6),
            annotations={**base_annotations(manifest.vantage), **ctx.annotations},
            test_helpers=(
                {"backend": {"address": ctx.helpers[0], "type": "https"}} if ctx.helpers else None
            ),
            test_keys=test_keys,
        )
        return ctx.scrubber.scrub(measurement)

    async def measure_one(input_: str | None) -> Measurement | None:
        t0_wall = datetime.now(UTC)
        t0 = time.monotonic()
        problem = (
            nettest.input_problem(input_)
            if input_ is not None
            else ("this nettest needs an input" if nettest.needs_input else None)
        )
        if problem:
            # Stored, not raised: the reason is kept and the rest of the list still runs.
            return build(input_, nettest.invalid_input_keys(problem), t0_wall, 0.0)
        try:
            keys = await asyncio.wait_for(
                nettest.measure(input_), timeout=options.timeout + ABANDON_GRACE_SECONDS
            )
        except TimeoutError:
            keys = nettest.timeout_keys(input_, TIMEOUT_FAILURE)
        except Exception as exc:
            # A bug, not a network failure (those go into test_keys): report it, keep going,
            # and leave the input unmeasured so that --resume retries it.
            summary.errors += 1
            if summary.errors <= 3:
                traceback.print_exception(exc, file=sys.stderr)
            return None
        return build(input_, keys, t0_wall, time.monotonic() - t0)

    async def worker() -> None:
        for input_ in stream:
            if summary.store_error is not None:
                return
            paced = nettest.pacing(input_)
            host, limit = paced if paced else (host_key(input_), None)
            await pacer.acquire(host, limit)
            try:
                measurement = await measure_one(input_)
            finally:
                await pacer.release(host)
            if measurement is not None:
                await queue.put(measurement)

    async def write_all(display: Progress) -> None:
        while True:
            item = await queue.get()
            batch = [item]
            while not queue.empty():
                batch.append(queue.get_nowait())
            done = [m for m in batch if m is not None]
            if done and summary.store_error is None:
                try:
                    await asyncio.to_thread(writer.append_lines, [m.to_json_line() for m in done])
                except (OSError, StoreError) as exc:
                    # Nothing of the batch is stored (the writer cut it back). Stop measuring
                    # (workers see store_error) but keep taking from the queue, so that no
                    # worker waits forever on a full queue; --resume measures these again.
                    summary.store_error = str(exc)
                    summary.unstored += len(done)
                    done = []
            elif done:
                summary.unstored += len(done)
                done = []
            if done:
                for m in done:
                    summary.measured += 1
                    blocking = m.blocking
                    if blocking is None:
                        summary.inconclusive += 1
                    elif blocking is not False:
                        summary.blocked += 1
                        if len(summary.blocked_inputs) < 1000 and m.input:
                            summary.blocked_inputs.append(m.input)
                    watch.observe(m)
                    if on_measurement:
                        on_measurement(m)
                display.update(summary, started)
                watch.flush(display.say)
            if None in batch:
                return

    with Progress(show, nettest.name, total) as display:
        watch.flush(display.say)  # what setup found (e.g. the helper unreachable), before any input
        writer_task = asyncio.create_task(write_all(display))
        workers = [asyncio.create_task(worker()) for _ in range(max(1, options.concurrency))]
        try:
            await asyncio.gather(*workers)
        except asyncio.CancelledError:
            summary.interrupted = True
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
        finally:
            # Whatever finished is written before we return, even when interrupted.
            await queue.put(None)
            await asyncio.shield(writer_task)
    summary.elapsed = time.monotonic() - started
    return summary
