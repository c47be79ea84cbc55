"""quic_sni: is a QUIC handshake dropped because of the name in its SNI?

Since 2024 the Great Firewall decrypts QUIC Initial packets (their keys derive from the
client's clear-text connection ID, RFC 9001 section 5.2), reads the SNI and, for names on a
list of its own, drops the flow's UDP packets for a while (Zohaib et al., "Exposing and
Circumventing SNI-based QUIC Censorship of the Great Firewall of China", USENIX Security 2025).
This test sends, to one endpoint (``--sni-endpoint`` IP[:PORT], else the name's first address
from DNS, port 443), QUIC v1 handshakes (aioquic, ALPN h3) with a control SNI
(``control_sni``, default example.com, as OONI's sni_blocking) and with the target SNI, in up
to ROUNDS rounds of control-then-target, every handshake from a fresh source port
(probes.net.quic). The control runs first in each round, so a censor that keeps the
(client, server, port) triple blocked after a trigger shows in the next control.

Pacing: a target that timed out taints the endpoint for ``residual_window`` seconds (default
180, the paper's); inputs to the same endpoint run one at a time, and one that starts on a
tainted endpoint is labelled ``x_residual`` (its failures are never a fresh verdict; the
taint is kept between runs in the state directory, as http_keyword's). With the
``residual_wait`` option (seconds, default 0; not on the command line) an input waits that
long at most for the taint to end.
With a control helper (``--helper``), the helper is asked for the name with
``x_quic_enabled``: as OONI's oohelperd, it then makes a QUIC handshake with the name to our
endpoint when the site advertises HTTP/3 (``Alt-Svc``), kept in ``control``. When the control
fails right after a target's timeout, one TLS-over-TCP handshake with the
control SNI to the same address and port (``x_tcp_check``) tells a residual block from a path that
went down. The verdict is quic_sni_analysis.analyze's, from these test keys only.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from probes.net.addresses import format_host_port, is_ip, parse_host_port
from probes.net.dns import resolve_retrying
from probes.net.quic import quic_handshake
from probes.net.tls import tls_handshake
from probes.nettests.base import Nettest, SetupError
from probes.nettests.control import ControlClient
from probes.nettests.keyword_residual import TaintFile, state_dir
from probes.nettests.quic_sni_analysis import ROUNDS, TIMEOUT, analyze, reached
from probes.nettests.tls_interception import sni_input_problem, target_of

DEFAULT_CONTROL_SNI = "example.com"  # OONI's sni_blocking control SNI
# The GFW kept a QUIC flow blocked for 180 s after a trigger (Zohaib et al. 2025).
RESIDUAL_WINDOW_S = 180.0
STEP_TIMEOUT_SHARE = 0.1  # of the per-input budget, per handshake (3 s of the default 30 s)
CONTROL_SHARE = 0.9  # the helper's answer is waited for until then
# Inputs to one endpoint run one at a time (a trigger must not fall inside another input's
# rounds); one that cannot start within this share of its budget is stored unmeasured.
LOCK_WAIT_SHARE = 0.45
BUSY = "unknown_failure: endpoint busy with other inputs"
TAINT_FILE = "quic-taints.json"


def _wants_helper_again(keys: dict[str, Any]) -> bool:
    """The first control timed out (QUIC fails with any name) and the helper did not reach
    QUIC there: the verdict hangs on the helper's view."""
    attempts = keys["quic_handshakes"]
    if not attempts or attempts[0].get("failure") != TIMEOUT or keys["x_residual"]:
        return False
    entry = (keys.get("control") or {}).get("quic_handshake", {}).get(keys["endpoint"])
    return not (isinstance(entry, dict) and entry.get("status") is True)


class QuicSNI(Nettest):
    name = "quic_sni"
    version = "0.1.0"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        opts = self.ctx.options
        self.control_sni = str(opts.get("control_sni") or DEFAULT_CONTROL_SNI)
        self.endpoint = opts.get("sni_endpoint")
        self._fixed: tuple[str, int] | None = None  # --sni-endpoint's (ip, port), from setup
        window = opts.get("residual_window")
        self.window = RESIDUAL_WINDOW_S if window is None else float(window)
        self.max_wait = float(opts.get("residual_wait") or 0.0)
        state = opts.get("state_dir")
        self._taint_file = TaintFile(path=Path(state or state_dir()) / TAINT_FILE)
        self._taints: dict[str, float] = {}  # "ip:port" -> end of its taint (time.monotonic)
        self._locks: dict[str, asyncio.Lock] = {}
        self.control: ControlClient | None = None

    async def setup(self) -> None:
        if self.endpoint:
            try:
                ip, port = parse_host_port(str(self.endpoint), 443)
            except ValueError as exc:
                raise SetupError(f"quic_sni --sni-endpoint {self.endpoint!r}: {exc}") from exc
            if not is_ip(ip):
                raise SetupError(f"quic_sni --sni-endpoint {self.endpoint!r}: not an IP address")
            self._fixed = (ip, port)
        if self.window < 0 or self.max_wait < 0:
            raise SetupError("quic_sni: residual_window and residual_wait must be >= 0")
        now_mono, now_wall = time.monotonic(), time.time()
        for key, until in self._taint_file.load().items():
            self._taints[key] = now_mono + (until - now_wall)
        self.control = await ControlClient.answering(self.ctx, self.warnings, "no QUIC control")

    async def close(self) -> None:
        if self.control is not None:
            await self.control.aclose()
        now_mono, now_wall = time.monotonic(), time.time()
        running = {k: now_wall + (t - now_mono) for k, t in self._taints.items() if t > now_mono}
        if running:
            self._taint_file.save(running)

    def pacing(self, input_: str | None) -> tuple[str, int] | None:
        """With --sni-endpoint every input shares one endpoint, one at a time: the runner
        queues them before their budgets start. Queued inside measure, the second of two
        inputs at --timeout 10 waited out 45% of its budget behind a blocked name's three
        rounds and was stored unmeasured."""
        if self._fixed is None:
            return None  # the endpoint is known after DNS; measure's lock keeps them apart
        return format_host_port(*self._fixed), 1

    @classmethod
    def input_problem(cls, input_: str) -> str | None:
        return sni_input_problem(input_)

    async def measure(self, input_: str | None) -> dict[str, Any]:
        assert input_ is not None  # the runner checked it with input_problem()
        name, port = target_of(input_)
        t_zero = time.monotonic()
        step = max(0.5, self.ctx.timeout * STEP_TIMEOUT_SHARE)
        keys: dict[str, Any] = {
            "queries": [],
            "control_sni": self.control_sni,
            "quic_handshakes": [],
            "x_residual": False,
            "x_residual_blocking": False,
            "x_tcp_check": None,
            "control": {},
            "control_failure": None,
        }
        if self._fixed is not None:
            ip, port = self._fixed
        else:
            dns = await resolve_retrying(
                name, resolver=self.ctx.resolver, timeout=step, t_zero=t_zero
            )
            keys["queries"] = dns.queries
            addrs = [a for a in dns.addrs if ":" not in a] or list(dns.addrs)
            if not addrs:
                keys.update(failure=dns.failure, blocking=None, blocking_detail=None)
                return keys
            ip = addrs[0]
        endpoint = format_host_port(ip, port)
        keys["endpoint"] = endpoint
        lock = self._locks.setdefault(endpoint, asyncio.Lock())
        try:
            async with asyncio.timeout(self.ctx.timeout * LOCK_WAIT_SHARE):
                await lock.acquire()
        except TimeoutError:
            keys.update(failure=BUSY, blocking=None, blocking_detail=None)
            keys["x_verdict_why"] = "other inputs held the endpoint for half the budget"
            return keys
        try:
            await self._pace(endpoint)
            keys["x_residual"] = self._tainted(endpoint)
            deadline = t_zero + self.ctx.timeout * CONTROL_SHARE
            await asyncio.gather(
                self._rounds(ip, port, name, t_zero, step, keys),
                self._control(name, port, endpoint, deadline, keys),
            )
            if self.control is not None and _wants_helper_again(keys):
                # The helper's answer decides here: one lost datagram on its path (its GET
                # saw no Alt-Svc, its handshake timed out) must not leave the input null.
                keys["x_control_asked_again"] = True
                await self._control(name, port, endpoint, deadline, keys)
        finally:
            lock.release()
        verdict = analyze(keys)
        keys["x_residual_blocking"] = verdict.residual_blocking
        keys["x_verdict_why"] = verdict.why
        keys["blocking"], keys["blocking_detail"] = verdict.blocking, verdict.blocking_detail
        return keys

    def _tainted(self, endpoint: str) -> bool:
        return self._taints.get(endpoint, -1.0) > time.monotonic()

    async def _pace(self, endpoint: str) -> None:
        """Wait out the endpoint's taint when it ends within residual_wait."""
        left = self._taints.get(endpoint, -1.0) - time.monotonic()
        if 0 < left <= self.max_wait:
            await asyncio.sleep(left)

    async def _rounds(
        self, ip: str, port: int, name: str, t_zero: float, step: float, keys: dict[str, Any]
    ) -> None:
        """Control then target, up to ROUNDS times (see the module docstring)."""
        endpoint = keys["endpoint"]
        attempts: list[dict[str, Any]] = keys["quic_handshakes"]
        for round_ in range(ROUNDS):
            for role, sni, verify in (("control", self.control_sni, False), ("target", name, True)):
                residual = self._tainted(endpoint)
                result = await quic_handshake(
                    ip, port, sni, timeout=step, t_zero=t_zero, verify=verify,
                    ca_file=self.ctx.ca_file,
                )  # fmt: skip
                attempts.append({**result.record, "x_role": role, "x_round": round_,
                                 "x_residual": residual})  # fmt: skip
                if role == "target" and result.failure == TIMEOUT and self.window > 0:
                    self._taints[endpoint] = time.monotonic() + self.window
                if reached(result.record):
                    if role == "target":
                        return  # the name went through
                    continue
                if role == "control":
                    if round_ > 0:
                        await self._tcp_check(ip, port, t_zero, step, keys)
                    return  # the endpoint fails now: more rounds tell nothing

    async def _tcp_check(
        self, ip: str, port: int, t_zero: float, step: float, keys: dict[str, Any]
    ) -> None:
        """Is the server up over TCP while its QUIC went dark? (rule 4 of the analysis)"""
        check = await tls_handshake(
            ip, port, self.control_sni, timeout=step, t_zero=t_zero, verify=False
        )
        keys["x_tcp_check"] = check.record

    async def _control(
        self, name: str, port: int, endpoint: str, deadline: float, keys: dict[str, Any]
    ) -> None:
        """The helper's QUIC handshake with the name to our endpoint (oohelperd's
        quic_handshake: made when the site advertises h3), while the rounds run."""
        if self.control is None:
            return
        url = f"https://{name}/" if port == 443 else f"https://{name}:{port}/"
        try:
            async with asyncio.timeout_at(deadline):
                result = await self.control.measure(url, [endpoint], {}, quic=True)
        except TimeoutError:
            keys["control_failure"] = "generic_timeout_error"
            return
        keys["control_failure"] = result.failure
        if result.failure is None:
            doc = result.control
            http = doc.get("http_request") if isinstance(doc.get("http_request"), dict) else {}
            keys["control"] = {
                "quic_handshake": doc.get("quic_handshake") or {},
                "discovered_h3_endpoint": (http or {}).get("discovered_h3_endpoint") or "",
            }

    def timeout_keys(self, input_: str | None, failure: str) -> dict[str, Any]:
        return {"failure": failure, "blocking": None, "blocking_detail": None}
