"""One timed HTTP(S) download: the bytes received and when, the point where it stalls.

The download nettest's fetch. A GET on a new connection (probes.net.http_wire, the same
connect, handshake and HTTP/1.1 code as every other fetch) whose reads are sampled as OONI's
web_connectivity 0.5 samples them: ``bytes_received_cumulative`` network events (df-008 shape;
probe-cli internal/throttling), the connection's bytes so far, TLS included. A fetch ends in one
of four ways, recorded as ``ended``:

- ``complete``: the whole body (or ``max_bytes`` of it) arrived;
- ``stalled``: nothing arrived for ``stall_seconds`` (an idle timer restarted by each read);
- ``time_cap``: still receiving when ``fetch_seconds`` ran out: not a failure, the rate is
  known from what arrived (a throttled transfer of a large object ends so);
- ``failure``: connect, TLS or HTTP failed (``failure``, ``failed_operation``).
"""

from __future__ import annotations

import asyncio
import ssl
import zlib
from dataclasses import dataclass, field
from typing import Any

import h11

from probes.net.addresses import format_host_port
from probes.net.failures import failure_from_exception
from probes.net.http_wire import exchange, request_head
from probes.net.records import since
from probes.net.tls import client_context

BYTES_RECEIVED = "bytes_received_cumulative"  # OONI's operation name (probe-cli throttling)
# A new sample at most this often (OONI samples every ~250 ms on average, memoryless; we keep
# a finer curve, bounded: a 10 s fetch gives at most 200 samples), plus the last read's.
SAMPLE_EVERY_S = 0.05


@dataclass
class _Sampler:
    """An ExchangeListener that records the curve and restarts the idle timer on each read."""

    t_zero: float
    address: str
    tags: list[str]
    stall_seconds: float
    hard_end: float  # the event loop's clock: the fetch's time cap
    timer: asyncio.Timeout | None = None
    last_read: float = 0.0  # the event loop's clock: the last byte (or the start)
    events: list[dict[str, Any]] = field(default_factory=list)
    failed_operation: str | None = "connect"
    t_request: float | None = None
    bytes_at_request: int = 0
    head_received: bool = False
    total: int = 0
    t_last_byte: float | None = None
    _last_sample: dict[str, Any] | None = None

    def _event(self, operation: str, t: float, num_bytes: int | None = None) -> dict[str, Any]:
        event: dict[str, Any] = {
            "address": self.address,
            "failure": None,
            "operation": operation,
            "proto": "tcp",
            "t0": t,
            "t": t,
            "tags": list(self.tags),
        }
        if num_bytes is not None:
            event["num_bytes"] = num_bytes
        self.events.append(event)
        return event

    def connected(self, failure: str | None) -> None:
        if failure is None:
            self.failed_operation = "http_transaction"

    def tls_started(self) -> None:
        self.failed_operation = "tls_handshake"

    def tls_done(self, failure: str | None, obj: ssl.SSLObject | None) -> None:
        if failure is None:
            self.failed_operation = "http_transaction"

    def wrote_headers(self) -> None:
        self.t_request = since(self.t_zero)
        self.bytes_at_request = self.total
        self._event("http_wrote_headers", self.t_request)

    def first_response_byte(self) -> None:
        self.head_received = True

    def received(self, total: int) -> None:
        if total <= self.total:
            return
        self.total = total
        now = since(self.t_zero)
        self.t_last_byte = now
        self.last_read = asyncio.get_running_loop().time()
        if self.timer is not None:
            self.timer.reschedule(min(self.hard_end, self.last_read + self.stall_seconds))
        last = self._last_sample
        if last is None or now - last["t0"] >= SAMPLE_EVERY_S:
            self._last_sample = self._event(BYTES_RECEIVED, now, total)
        else:  # the latest count goes into the last sample (its t0: when it was opened)
            last.update(t=now, num_bytes=total)


async def timed_get(
    ip: str,
    port: int,
    *,
    sni: str,
    host: str,
    path: str,
    role: str,
    ca_file: str | None,
    verify: bool,
    max_bytes: int,
    fetch_seconds: float,
    stall_seconds: float,
    t_zero: float,
) -> dict[str, Any]:
    """GET https://``host````path`` from ``ip``:``port`` with TLS SNI ``sni``; the record of
    the transfer (see the module docstring). Never raises for a network failure."""
    address = format_host_port(ip, port)
    loop = asyncio.get_running_loop()
    hard_end = loop.time() + fetch_seconds
    sampler = _Sampler(t_zero, address, [f"role={role}"], stall_seconds, hard_end)
    sampler.last_read = loop.time()
    t0 = since(t_zero)
    record: dict[str, Any] = {
        "role": role,
        "sni": sni,
        "address": address,
        "t0": t0,
        "failure": None,
        "failed_operation": None,
        "ended": "complete",
        "status_code": None,
        "body_length": None,
        "body_is_truncated": False,
    }
    try:
        async with asyncio.timeout_at(min(hard_end, loop.time() + stall_seconds)) as timer:
            sampler.timer = timer
            response = await exchange(
                ip,
                port,
                method="GET",
                target=path,
                head=request_head(host, {"Accept-Encoding": "identity"}),
                sni=sni,
                ssl_context=client_context(ca_file, verify),
                body_cap=max_bytes,
                timeout=min(stall_seconds, fetch_seconds),
                listener=sampler,
            )
        record.update(
            status_code=response.status,
            body_length=len(response.body),
            body_is_truncated=response.truncated,
        )
    except TimeoutError:
        idle = loop.time() - sampler.last_read >= stall_seconds * 0.99
        if sampler.failed_operation != "http_transaction":
            failed = sampler.failed_operation
            record.update(failure="generic_timeout_error", failed_operation=failed, ended="failure")
        else:
            record["ended"] = "stalled" if idle else "time_cap"
    except (h11.ProtocolError, OSError, EOFError, ssl.SSLError, zlib.error) as exc:
        failure = failure_from_exception(exc)
        record.update(failure=failure, failed_operation=sampler.failed_operation, ended="failure")
    record.update(
        t=since(t_zero),
        t_request=sampler.t_request,
        bytes_at_request=sampler.bytes_at_request,
        head_received=sampler.head_received,
        bytes_received=sampler.total,
        t_last_byte=sampler.t_last_byte,
        network_events=sampler.events,
    )
    return record
