"""tcp_connect: can we open a TCP connection to host:port, and can the control?

The input is ``host:port`` (a name is resolved with the probe's resolver) or a URL (its host and
port). We connect to each address; the control helper connects to the same endpoints from
outside the censor. Only a failure here with a success there is blocking (``tcp_ip``); a failure
on both sides is a server that is down (``blocking: false``, ``x_down_everywhere: true``, the
project's convention, as web_connectivity's "website down").

As root the connects' packets are captured (`probes.net.packets.FlowRecorder`, option
``packet_capture``, default on; ``pcap_dir`` keeps one pcap per measurement). A RST that came
with no SYN-ACK to compare it with (a refused connect) is judged against a *reference*: one
connect to the same address on another port (80, or 443 when the input is port 80), whose
SYN-ACK or RST carries the host's own TTL. A RST whose TTL is not its baseline's was forged on
the path: ``x_packets.evidence`` and ``x_packet_detail`` are ``tcp.rst_injected``. The verdict
itself never depends on packets (it must not change with privileges).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any
from urllib.parse import urlsplit

from probes.net.addresses import format_host_port, is_ip, parse_host_port
from probes.net.dns import resolve_retrying
from probes.net.packets import FlowRecorder, capture_unavailable, pcap_path
from probes.net.tcp import TCPResult, tcp_connect
from probes.nettests.base import EXIT_HELPER_UNREACHABLE, Nettest
from probes.nettests.control import ControlClient

MAX_ADDRESSES = 4
STEP_TIMEOUT_SHARE = 0.3
_SCHEME_PORTS = {"http": 80, "https": 443}
# Ports a reference connect tries (the first that is not the input's): most hosts answer on them.
REFERENCE_PORTS = (80, 443)
# Failure strings -> evidence names (ooni/spec df-007 failures).
_DETAILS = {
    "connection_refused": "tcp.refused",
    "connection_reset": "tcp.reset",
    "generic_timeout_error": "tcp.timeout",
}


def endpoint_of(input_: str) -> tuple[str, int]:
    """(host, port) from ``host:port``, ``[v6]:port`` or a URL; ValueError if there is none."""
    if "://" in input_:
        parts = urlsplit(input_)
        host = parts.hostname or ""
        port = parts.port or _SCHEME_PORTS.get(parts.scheme, 0)
    else:
        host, port = parse_host_port(input_.strip(), 0)
    if not host or not 0 < port < 65536:
        raise ValueError("needs host:port or a URL")
    return host, port


def tcp_detail(failure: str | None) -> str:
    return _DETAILS.get(failure or "", "tcp.failure")


def reference_port(port: int) -> int:
    """The port of the reference connect that gives a host's own TTL when ``port`` gave none."""
    return next(p for p in REFERENCE_PORTS if p != port)


def verdict(
    results: list[TCPResult], endpoints: list[str], control: dict[str, Any]
) -> tuple[Any, str | None, bool]:
    """(blocking, detail, down everywhere): blocked only where the helper connected."""
    if any(r.failure is None for r in results):
        return False, None, False
    reached = [control_reached(control, ep) for ep in endpoints]
    blocked = [r for r, ok in zip(results, reached, strict=True) if ok]
    for r in blocked:
        r.record["status"]["blocked"] = True
    if blocked:
        return "tcp_ip", tcp_detail(blocked[0].failure), False
    if reached and all(ok is False for ok in reached):
        return False, None, True  # the helper failed every endpoint too: down, not blocked
    return None, None, False


def control_reached(control: dict[str, Any], endpoint: str) -> bool | None:
    """Whether the helper connected to ``endpoint`` (None: it did not try)."""
    entry = (control.get("tcp_connect") or {}).get(endpoint)
    return None if not isinstance(entry, dict) else bool(entry.get("status"))


class TCPConnect(Nettest):
    name = "tcp_connect"
    version = "0.1.0"

    async def setup(self) -> None:
        self.control: ControlClient | None = None
        self.capture = bool(self.ctx.options.get("packet_capture", True))
        self.pcap_dir = self.ctx.options.get("pcap_dir")
        if self.capture and (why := capture_unavailable()):
            self.warnings.append(f"packet capture unavailable: {why}")
        if self.ctx.helpers:
            self.control = ControlClient.for_context(self.ctx)
            problem = await self.control.choose()
            if problem:
                # A failed connect cannot be told from a server that is down: verdicts null,
                # and the run exits 3 as every nettest whose helper is unreachable.
                self.warnings.append(f"control helper unreachable ({problem})")
                self.exit_status = EXIT_HELPER_UNREACHABLE

    async def close(self) -> None:
        if self.control is not None:
            await self.control.aclose()

    @classmethod
    def input_problem(cls, input_: str) -> str | None:
        try:
            endpoint_of(input_)
        except ValueError as exc:
            return str(exc)
        return None

    async def measure(self, input_: str | None) -> dict[str, Any]:
        assert input_ is not None  # the runner checked it with input_problem()
        host, port = endpoint_of(input_)
        t_zero = time.monotonic()
        timeout = self.ctx.timeout * STEP_TIMEOUT_SHARE
        keys: dict[str, Any] = {"queries": [], "tcp_connect": [], "control": {},
                                "control_failure": None}  # fmt: skip
        if is_ip(host):
            addrs = [host]
        else:
            # A lost datagram must not end the input: a timed-out query is asked again.
            dns = await resolve_retrying(
                host, resolver=self.ctx.resolver, timeout=timeout, t_zero=t_zero
            )
            keys["queries"] = dns.queries
            addrs = dns.addrs[:MAX_ADDRESSES]
            if not addrs:
                keys.update(failure=dns.failure, blocking=None, blocking_detail=None)
                return keys
        endpoints = [format_host_port(a, port) for a in addrs]
        scheme = "https" if port == 443 else "http"
        control_task = (
            asyncio.create_task(self.control.measure(f"{scheme}://{host}:{port}/", endpoints, {}))
            if self.control is not None
            else None
        )
        recorder = FlowRecorder(
            addrs,
            port,
            enabled=self.capture,
            pcap=pcap_path(self.pcap_dir, self.name, f"{host}_{port}"),
            reference_port=reference_port(port),
        )
        async with recorder:
            results = await asyncio.gather(
                *(tcp_connect(a, port, timeout=timeout, t_zero=t_zero) for a in addrs)
            )
            if any(r.failure for r in results):
                await self._references(recorder, timeout, t_zero)
        keys["tcp_connect"] = [r.record for r in results]
        keys.update(recorder.keys(detail=True))
        control: dict[str, Any] = {}
        if control_task is not None:
            reply = await control_task
            keys["control_failure"] = reply.failure
            control = {"tcp_connect": reply.control.get("tcp_connect") or {}}
            keys["control"] = control
        else:
            keys["control_failure"] = "no_control_helper"
        blocking, detail, down = verdict(list(results), endpoints, control)
        keys["x_down_everywhere"] = down
        keys["blocking"], keys["blocking_detail"] = blocking, detail
        return keys

    async def _references(self, recorder: FlowRecorder, timeout: float, t_zero: float) -> None:
        """Connect to the reference port of each address whose RST has nothing to be compared
        with, while the capture runs: the host's answer there carries its own TTL."""
        ips = await recorder.unjudged_resets()
        if ips and recorder.reference_port:
            ref = recorder.reference_port
            await asyncio.gather(
                *(tcp_connect(ip, ref, timeout=timeout, t_zero=t_zero) for ip in ips)
            )
