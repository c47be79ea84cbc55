"""sni_blocking: is a TLS handshake cut because of the name in its SNI?

To one endpoint (``sni_endpoint`` IP:PORT, else the target's first address) we run a handshake
with a control SNI (``control_sni``, a name nobody blocks) and then one with the target SNI,
``ROUNDS`` times. Blocking when the target's handshake failed in every round while the
control's passed in every round, so that one lost packet does not make a verdict. The control
SNI runs first in each round so that residual blocking shows: a censor that keeps blocking the
(client, server, port) triple after a trigger (the GFW does, for minutes) fails the next
control too. A control that passed, a target that was *reset* (loss never forges a reset), and
then a control that fails at once is that residual blocking: it is kept as evidence
(``x_residual_blocking``) and the verdict stands on the reset. A timeout followed by a failing
control could be a path going down, so it stays inconclusive. When a control helper is set, the
target handshake's certificate is also compared with the helper's for the same endpoint
(tls.intercepted).

As root the rounds' packets are captured (`probes.net.packets.FlowRecorder`): a reset whose
IP TTL differs from the server's SYN-ACK was forged on the path (``x_packets.evidence`` is
``tcp.rst_injected``). Options: ``packet_capture`` (default on), ``pcap_dir`` (keep a pcap).
"""

from __future__ import annotations

import time
from typing import Any

from probes.net.addresses import format_host_port, parse_host_port
from probes.net.dns import resolve_retrying
from probes.net.packets import FlowRecorder, capture_unavailable, pcap_path
from probes.net.tls import tls_handshake
from probes.nettests.base import Nettest
from probes.nettests.control import ControlClient, note_degraded
from probes.nettests.tls_compare import INTERCEPTED, compare, probe_summary
from probes.nettests.tls_interception import (
    CERTIFICATES,
    CERTIFICATES_FEATURE,
    control_certificates,
    sni_input_problem,
    target_of,
)

# Three rounds: a 2% loss path fails one handshake in ~25 by chance; all three in ~1 in 10^4.
ROUNDS = 3
# OONI's sni_blocking default control SNI (ooni/probe-cli internal/experiment/sniblocking).
DEFAULT_CONTROL_SNI = "example.com"
STEP_TIMEOUT_SHARE = 0.1
_DETAILS = {
    "connection_reset": "tls.sni_reset",
    "generic_timeout_error": "tls.sni_timeout",
    "eof_error": "tls.sni_eof",
}


def reached_tls(failure: str | None) -> bool:
    """The handshake got as far as the certificate (a name mismatch is not SNI blocking)."""
    return failure is None or failure.startswith("ssl_")


def residual_after_reset(
    control_failures: list[str | None], target_failures: list[str | None]
) -> bool:
    """The first round's control passed and its target was reset, and a later control failed.

    Loss cannot forge a reset, so the first round alone is active interference triggered by the
    SNI; the later control failing is the censor's residual blocking of the endpoint.
    """
    return (
        len(control_failures) >= 2
        and control_failures[0] is None
        and target_failures[0] == "connection_reset"
        and control_failures[-1] is not None
    )


class SNIBlocking(Nettest):
    name = "sni_blocking"
    version = "0.1.0"

    async def setup(self) -> None:
        self.control: ControlClient | None = None
        self.control_sni = str(self.ctx.options.get("control_sni") or DEFAULT_CONTROL_SNI)
        self.endpoint = self.ctx.options.get("sni_endpoint")
        self.capture = bool(self.ctx.options.get("packet_capture", True))
        self.pcap_dir = self.ctx.options.get("pcap_dir")
        if self.capture and (why := capture_unavailable()):
            self.warnings.append(f"packet capture unavailable: {why}")
        if self.ctx.helpers:
            self.control = ControlClient.for_context(self.ctx)
            if await self.control.choose():
                self.warnings.append("control helper unreachable: no interception check")
                await self.control.aclose()
                self.control = None

    async def close(self) -> None:
        if self.control is not None:
            await self.control.aclose()

    @classmethod
    def input_problem(cls, input_: str) -> str | None:
        return sni_input_problem(input_)

    async def measure(self, input_: str | None) -> dict[str, Any]:
        assert input_ is not None  # the runner checked it with input_problem()
        name, port = target_of(input_)
        t_zero = time.monotonic()
        timeout = self.ctx.timeout * STEP_TIMEOUT_SHARE
        keys: dict[str, Any] = {"queries": [], "control_sni": self.control_sni,
                                "tls_handshakes": [], "control": {}}  # fmt: skip
        if self.endpoint:
            ip, port = parse_host_port(str(self.endpoint), port)
        else:
            # A lost datagram must not end the input: an unanswered query is sent again.
            dns = await resolve_retrying(
                name, resolver=self.ctx.resolver, timeout=timeout, t_zero=t_zero
            )
            keys["queries"] = dns.queries
            if not dns.addrs:
                keys.update(failure=dns.failure, blocking=None, blocking_detail=None)
                return keys
            ip = dns.addrs[0]
        keys["endpoint"] = format_host_port(ip, port)
        target_failures: list[str | None] = []
        control_failures: list[str | None] = []
        summary: dict[str, Any] = {}
        residual = False
        pcap = pcap_path(self.pcap_dir, self.name, name)
        recorder = FlowRecorder(ip, port, enabled=self.capture, pcap=pcap)
        async with recorder:
            residual = await self._rounds(ip, port, name, t_zero, timeout, keys,
                                          control_failures, target_failures, summary)  # fmt: skip
        keys.update(recorder.keys())
        blocking: Any = None
        detail = None
        if reached_tls(target_failures[-1]):
            blocking = False
            if self.control is not None:
                blocking, detail = await self._interception(name, port, keys, summary)
        elif residual or (
            all(f is None for f in control_failures) and len(target_failures) == ROUNDS
        ):
            blocking = "tls"
            detail = _DETAILS.get(target_failures[0] or "", "tls.sni_failure")
        keys["x_residual_blocking"] = residual
        keys["blocking"], keys["blocking_detail"] = blocking, detail
        return keys

    async def _rounds(
        self,
        ip: str,
        port: int,
        name: str,
        t_zero: float,
        timeout: float,
        keys: dict[str, Any],
        control_failures: list[str | None],
        target_failures: list[str | None],
        summary: dict[str, Any],
    ) -> bool:
        """Control then target, up to ROUNDS times; True when residual blocking showed."""
        for _ in range(ROUNDS):
            control = await tls_handshake(
                ip, port, self.control_sni, timeout=timeout, t_zero=t_zero, verify=False
            )
            target = await tls_handshake(
                ip, port, name, timeout=timeout, t_zero=t_zero, ca_file=self.ctx.ca_file
            )
            summary.clear()
            summary.update(
                probe_summary(
                    target.record, target.leaf_spki_sha256, target.issuer, target.verified
                )
            )
            keys["tls_handshakes"] += [control.record, dict(summary)]
            control_failures.append(control.failure)
            target_failures.append(target.failure)
            if reached_tls(target.failure):
                break  # the name went through: no need to repeat
            if control.failure is not None:
                # The endpoint itself is failing now: more rounds tell nothing.
                return residual_after_reset(control_failures, target_failures)
        return False

    async def _interception(
        self, name: str, port: int, keys: dict[str, Any], summary: dict[str, Any]
    ) -> tuple[Any, str | None]:
        control, failure = await control_certificates(self.control, name, port, [keys["endpoint"]])
        keys["control"], keys["control_failure"] = control, failure
        note_degraded(keys, control, {CERTIFICATES: CERTIFICATES_FEATURE})
        found = compare(summary, control.get("x_tls_certificates", {}).get(keys["endpoint"]))
        keys["tls_comparison"] = found.as_dict()
        return ("tls", INTERCEPTED) if found.intercepted else (False, None)
