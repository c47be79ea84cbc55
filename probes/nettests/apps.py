"""whatsapp, telegram, signal, facebook_messenger: can the app's servers be reached?

OONI's four messaging-app nettests (ooni/spec nettests ts-018-whatsapp, ts-020-telegram,
ts-029-signal, ts-019-facebook-messenger; probe-cli internal/experiment/{whatsapp,telegram,
signal,fbmessenger} at commit 7cb22410), with their test keys, measured from an endpoint list
the user can replace (probes.nettests.apps_endpoints; default ``testlists/apps.toml``,
``--endpoints FILE``). The nettests need no input: ``--input NAME`` picks a named endpoint set
of the file instead of its first.

Each target is measured as probe-cli's urlgetter does, one step after another, every step
recorded in OONI's ``queries``, ``tcp_connect``, ``tls_handshakes``, ``requests`` and
``network_events``: resolve the host (unless it is an address), connect (the first IPv4 and
the first IPv6 address, until one connects), then for https a TLS handshake with the host as
SNI (verified against the system's roots, ``--ca-file`` and the app's ``ca_pem``) and a GET;
for http a POST. Beyond OONI, so that the verdict can name the blocking type: every answer is
checked against the set's ``prefixes`` (when given) and for bogons (``--bogon-exempt``
excepted), and before an https target's handshake one handshake with a control SNI (default
example.com, unverified) to the same address tells SNI blocking from TLS blocking (done first,
as dnscheck does, so a censor's residual block from the real handshake cannot spoil it).
Per-target outcomes are kept in ``x_targets``; OONI's keys and the verdict come from
probes.nettests.apps_analysis.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from probes.net.addresses import format_host_port, is_ip
from probes.net.dns import resolve, resolve_retrying
from probes.net.http import http_exchange, make_client
from probes.net.tcp import tcp_connect
from probes.net.tls import tls_handshake
from probes.nettests import apps_analysis as analysis
from probes.nettests import dns_consistency_analysis as dca
from probes.nettests.apps_endpoints import (
    BUNDLED,
    EndpointsError,
    EndpointSet,
    Target,
    load_sets,
)
from probes.nettests.base import Nettest, ProbeContext, SetupError
from probes.nettests.control import ControlClient

DEFAULT_CONTROL_SNI = "example.com"
# Each step's share of the per-input budget (--timeout, 30 s by default): a target's steps run
# one after another (resolve, control handshake, connect to at most two addresses, handshake,
# request), so their shares add up below 1 and the step that hangs names the failure.
STEP_SHARE = 0.14
DEFAULT_LISTEN_WINDOW = 0.5
MAX_ADDRESSES = 2  # the first IPv4 and the first IPv6 answer


class AppNettest(Nettest):
    """What the four apps share; subclasses set ``name`` and ``version``."""

    needs_input = False

    def __init__(self, ctx: ProbeContext) -> None:
        super().__init__(ctx)
        opts = ctx.options
        self.endpoints_path = Path(str(opts.get("endpoints") or BUNDLED))
        self.control_sni = str(opts.get("control_sni") or DEFAULT_CONTROL_SNI)
        window = opts.get("listen_window")
        self.listen_window = DEFAULT_LISTEN_WINDOW if window is None else float(window)
        self.bogon_exempt = [str(c) for c in opts.get("bogon_exempt") or []]
        self.sets: dict[str, EndpointSet] = {}
        self._ca_files: dict[str, str | None] = {}
        self._tmp: list[str] = []
        self.control: ControlClient | None = None

    async def setup(self) -> None:
        try:
            sets = load_sets(self.endpoints_path, self.name)
        except EndpointsError as exc:
            raise SetupError(f"--endpoints: {exc}") from exc
        self.sets = {s.name: s for s in sets}
        for s in sets:
            self._ca_files[s.name] = self._ca_file_for(s)
        self.control = await ControlClient.answering(self.ctx, self.warnings, "no control")

    async def close(self) -> None:
        if self.control is not None:
            await self.control.aclose()
        for path in self._tmp:
            Path(path).unlink(missing_ok=True)

    def _ca_file_for(self, s: EndpointSet) -> str | None:
        """--ca-file plus the set's own CAs (Signal's), in one file the TLS stack can load."""
        if not s.ca_pem:
            return self.ctx.ca_file
        parts = [Path(self.ctx.ca_file).read_text()] if self.ctx.ca_file else []
        parts += [pem.strip() + "\n" for pem in s.ca_pem]
        fd, path = tempfile.mkstemp(prefix=f"censorscope-{self.name}-", suffix=".pem")
        with os.fdopen(fd, "w") as out:
            out.write("\n".join(parts))
        self._tmp.append(path)
        return path

    def invalid_input_keys(self, problem: str) -> dict[str, Any]:
        return {"failure": f"unknown_failure: {problem}", "blocking": None, "blocking_detail": None}

    async def measure(self, input_: str | None) -> dict[str, Any]:
        name = input_ if input_ is not None else next(iter(self.sets))
        chosen = self.sets.get(name)
        if chosen is None:
            known = ", ".join(self.sets)
            return self.invalid_input_keys(
                f"no endpoint set {name!r} for {self.name} in {self.endpoints_path} ({known})"
            )
        t_zero = time.monotonic()
        client = make_client(ca_file=self._ca_files[name])
        results = await asyncio.gather(
            *(self._measure_target(t, chosen, t_zero, client) for t in chosen.targets)
        )
        keys: dict[str, Any] = {
            "agent": "redirect",
            "failed_operation": None,
            "failure": None,
            "network_events": [],
            "queries": [],
            "requests": [],
            "tcp_connect": [],
            "tls_handshakes": [],
        }
        targets = []
        for r in results:
            for key in ("network_events", "queries", "requests", "tcp_connect", "tls_handshakes"):
                keys[key].extend(r.pop(key))
            targets.append(r)
        keys.update(analysis.ooni_keys(self.name, targets))
        keys["x_targets"] = targets
        keys["x_endpoints"] = {
            "file": self.endpoints_path.name,
            "set": chosen.name,
            "source": chosen.source,
            "updated": chosen.updated,
            "prefixes": [str(p) for p in chosen.prefixes],
        }
        keys["x_control_sni"] = self.control_sni
        if self.bogon_exempt:
            keys["x_bogon_exempt"] = self.bogon_exempt
        if self.control is not None:
            keys["x_down"] = [t["target"] for t in targets if analysis.down_everywhere(t)]
        verdict = analysis.analyze(self.name, keys)
        keys["blocking"], keys["blocking_detail"] = verdict.blocking, verdict.blocking_detail
        return keys

    async def _resolve(
        self, host: str, t_zero: float, timeout: float
    ) -> tuple[list[str], list[str], list[dict[str, Any]], str | None]:
        """(addresses to use, every address any answer gave, query records, failure)."""
        if not self.ctx.resolver:
            result = await resolve(host, query_type="ANY", timeout=timeout, t_zero=t_zero)
            failure = None if result.addrs else (result.failure or "dns_no_answer")
            return list(result.addrs), list(result.addrs), result.queries, failure
        results = await asyncio.gather(
            *(
                resolve_retrying(
                    host,
                    query_type=qtype,
                    resolver=self.ctx.resolver,
                    timeout=timeout,
                    t_zero=t_zero,
                    listen_window=self.listen_window,
                )
                for qtype in ("A", "AAAA")
            )
        )
        addrs: list[str] = []
        seen: list[str] = []
        records: list[dict[str, Any]] = []
        for result in results:
            for record in result.queries:
                record.setdefault("x_responses", [])
            result.queries[-1]["x_responses"] = result.extra_responses
            records.extend(result.queries)
            addrs.extend(a for a in result.addrs if a not in addrs)
            for response in result.extra_responses:
                seen.extend(str(a) for a in response.get("addrs") or [])
            seen.extend(result.addrs)
        failure = None if addrs else (results[0].failure or "dns_no_answer")
        return addrs, list(dict.fromkeys(seen)), records, failure

    async def _ask_control(self, target: Target, addrs: list[str], t_zero: float) -> dict[str, Any]:
        """The helper's view of the target (x_control, x_control_failure), asked while the
        probe's own steps run and waited for until the per-input budget (--timeout) is spent,
        so the runner never abandons the input for it."""
        assert self.control is not None
        tried = (
            []
            if target.port is None
            else [format_host_port(a, target.port) for a in _tried_addresses(addrs)]
        )
        out: dict[str, Any] = {"x_control": None, "x_control_failure": None}
        try:
            left = self.ctx.timeout - (time.monotonic() - t_zero)
            async with asyncio.timeout(max(left, 0.0)):
                result = await self.control.measure(analysis.control_url(target.url), tried, {})
        except TimeoutError:
            out["x_control_failure"] = "generic_timeout_error"
            return out
        out["x_control_failure"] = result.failure
        if result.failure is None:
            out["x_control"] = analysis.control_view(result.control, tried)
        return out

    async def _measure_target(
        self, target: Target, chosen: EndpointSet, t_zero: float, client: Any
    ) -> dict[str, Any]:
        asked: asyncio.Task[dict[str, Any]] | None = None

        def ask(addrs: list[str]) -> None:
            nonlocal asked
            if self.control is not None:
                asked = asyncio.create_task(self._ask_control(target, addrs, t_zero))

        try:
            out = await self._target_steps(target, chosen, t_zero, client, ask)
        except BaseException:
            if asked is not None:
                asked.cancel()
            raise
        if asked is not None:
            if out["failure"] is None:
                asked.cancel()  # the probe got through: nothing for the control to explain
            else:
                out.update(await asked)
        return out

    async def _target_steps(
        self,
        target: Target,
        chosen: EndpointSet,
        t_zero: float,
        client: Any,
        ask: Callable[[list[str]], None],
    ) -> dict[str, Any]:
        step = max(0.5, self.ctx.timeout * STEP_SHARE)
        out: dict[str, Any] = {
            "role": target.role,
            "target": target.url,
            "failed_operation": None,
            "failure": None,
            "x_dns_inconsistent": None,
            "x_bogon": False,
            "x_control_sni_reached": None,
            "network_events": [],
            "queries": [],
            "requests": [],
            "tcp_connect": [],
            "tls_handshakes": [],
        }

        def fail(operation: str, failure: str | None) -> dict[str, Any]:
            out["failed_operation"], out["failure"] = operation, failure or "unknown_failure"
            return out

        if is_ip(target.host):
            addrs = [target.host]
        else:
            addrs, seen, records, failure = await self._resolve(target.host, t_zero, step)
            out["queries"] = records
            bogon = dca.bogon_check({"x_bogon_exempt": self.bogon_exempt})
            out["x_bogon"] = any(bogon(a) for a in seen)
            if chosen.prefixes and seen:
                out["x_dns_inconsistent"] = not all(
                    analysis.in_networks(a, chosen.prefixes) for a in seen
                )
            if failure is not None:
                ask([])
                return fail("resolve", failure)
        if target.kind == "dnslookup":
            return out
        assert target.port is not None
        ask(addrs)
        ip = None
        first_failure = None
        for address in _tried_addresses(addrs):
            result = await tcp_connect(address, target.port, timeout=step, t_zero=t_zero)
            out["tcp_connect"].append(result.record)
            if result.failure is None:
                ip = address
                out["x_endpoint"] = format_host_port(address, target.port)
                break
            first_failure = first_failure or result.failure
        if ip is None:
            return fail("connect", first_failure)
        if target.kind == "tcpconnect":
            return out
        sni = None
        if target.kind == "https":
            sni = target.host
            control = await tls_handshake(
                ip, target.port, self.control_sni, timeout=step, t_zero=t_zero, verify=False
            )
            out["x_control_sni_reached"] = analysis.reached_tls(control.failure)
            out["x_control_sni_handshake"] = control.record
            handshake = await tls_handshake(
                ip,
                target.port,
                sni,
                timeout=step,
                t_zero=t_zero,
                ca_file=self._ca_files[chosen.name],
            )
            out["tls_handshakes"].append(handshake.record)
            if handshake.failure is not None:
                return fail("tls_handshake", handshake.failure)
        default_port = 443 if target.kind == "https" else 80
        host = (
            target.host
            if target.port == default_port
            else format_host_port(target.host, target.port)
        )
        exchange = await http_exchange(
            ip,
            target.port,
            method=target.method,
            target=target.path,
            host=host,
            tls_sni=sni,
            timeout=step,
            t_zero=t_zero,
            client=client,
        )
        out["requests"] = exchange.requests
        out["network_events"] = exchange.network_events
        if exchange.failure is not None:
            return fail("http_round_trip", exchange.failure)
        return out


def _tried_addresses(addrs: list[str]) -> list[str]:
    """The first IPv4 and the first IPv6 answer, in that order (MAX_ADDRESSES)."""
    v4 = [a for a in addrs if ":" not in a][:1]
    v6 = [a for a in addrs if ":" in a][:1]
    return (v4 + v6)[:MAX_ADDRESSES]


class WhatsApp(AppNettest):
    name = "whatsapp"
    version = "0.1.0"


class Telegram(AppNettest):
    name = "telegram"
    version = "0.1.0"


class Signal(AppNettest):
    name = "signal"
    version = "0.1.0"


class FacebookMessenger(AppNettest):
    name = "facebook_messenger"
    version = "0.1.0"
