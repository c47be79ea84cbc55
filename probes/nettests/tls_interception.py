"""tls_interception: is someone on the path re-signing our TLS connections?

For a name (or an https URL), resolve it, complete a TLS handshake with each address (SNI = the
name), and ask the control helper to do the same for the same addresses and SNI from outside the
censor. The chains are compared by `tls_compare.compare`: a different leaf key whose chain does not
validate to the public roots (``ctx.ca_file`` or the system store) is ``tls.intercepted``. A
disagreement is measured a second time before it counts (a key rotation mid-test, a flaky
middlebox). Both sides' certificates stay in the measurement as evidence.

So that one lost datagram or a busy helper does not decide a verdict, a DNS query that timed
out is sent again (`resolve_retrying`) and a helper answering 503/429 or a broken helper
connection is asked again with backoff (`ControlClient.measure`), as in every nettest.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import urlsplit

from probes.net.addresses import format_host_port, is_ip
from probes.net.dns import resolve_retrying
from probes.net.tls import tls_handshake
from probes.nettests.base import EXIT_HELPER_UNREACHABLE, Nettest
from probes.nettests.control import ControlClient, note_degraded
from probes.nettests.tls_compare import INTERCEPTED, Comparison, compare, probe_summary

# Addresses of one name we check (each costs a handshake here and at the helper).
MAX_ADDRESSES = 4
# A disagreement must show in this many rounds before it is called interception.
ROUNDS_TO_CONFIRM = 2
STEP_TIMEOUT_SHARE = 0.2
DEFAULT_TLS_PORT = 443


def target_of(input_: str) -> tuple[str, int]:
    """(name, port) from a name or an https URL."""
    if "://" in input_:
        parts = urlsplit(input_)
        return (parts.hostname or "").lower(), parts.port or DEFAULT_TLS_PORT
    return input_.strip().rstrip(".").lower(), DEFAULT_TLS_PORT


def sni_input_problem(input_: str) -> str | None:
    """Why `input_` names no SNI to test (an IP, nothing, a broken URL), or None."""
    try:
        name, _port = target_of(input_)
    except ValueError as exc:
        return f"not a valid URL: {exc}"
    if not name or is_ip(name.strip("[]")):
        return "needs a domain name (the SNI) or a URL with one"
    return None


CERTIFICATES = "x_tls_certificates"
CERTIFICATES_FEATURE = (
    "certificate comparison with the helper's view: interception by a CA the probe trusts "
    "is not detected; a failed verification reads as OONI reads it (tls blocking)"
)


def handshake_detail(failure: str | None) -> str:
    """blocking_detail for a handshake that failed where the control's passed."""
    if failure == "connection_reset":
        return "tls.reset"
    if failure == "generic_timeout_error":
        return "tls.timeout"
    if failure == "eof_error":
        return "tls.eof"
    return "tls.failure"


async def control_certificates(
    control: ControlClient | None, name: str, port: int, endpoints: list[str]
) -> tuple[dict[str, Any], str | None]:
    """The helper's TLS view of our endpoints for SNI ``name`` ({} and a failure if none)."""
    if control is None:
        return {}, "no_control_helper"
    result = await control.measure(f"https://{name}:{port}/", endpoints, {})
    if result.failure is not None:
        return {}, result.failure
    doc = result.control
    view = {"tls_handshake": doc.get("tls_handshake") or {}}
    if isinstance(doc.get("x_tls_certificates"), dict):
        view["x_tls_certificates"] = doc["x_tls_certificates"]
    return view, None


def note_lost_tls_view(
    keys: dict[str, Any], control: dict[str, Any], endpoints: list[str], port: int
) -> None:
    """Say in the keys which part of the helper's TLS view is missing, and what that costs.

    OONI's oohelperd sends no certificates (our `x_tls_certificates`) and handshakes only on
    port 443 (ooni/probe-cli internal/oohelperd/ipinfo.go).
    """
    note_degraded(keys, control, {CERTIFICATES: CERTIFICATES_FEATURE})
    handshakes = control.get("tls_handshake") or {}
    if control and not any(ep in handshakes for ep in endpoints):
        keys.setdefault("x_control_degraded", {})["tls_handshake"] = (
            f"the helper's TLS handshake on port {port} (oohelperd handshakes only on 443): "
            "no verdict from a failed handshake"
        )


class TLSInterception(Nettest):
    name = "tls_interception"
    version = "0.1.0"

    async def setup(self) -> None:
        self.control: ControlClient | None = None
        self.exit_status = 0
        if not self.ctx.helpers:
            self.warnings.append("no control helper: verdicts are null")
            return
        self.control = ControlClient.for_context(self.ctx)
        problem = await self.control.choose()
        if problem:
            self.warnings.append(f"control helper unreachable ({problem}); verdicts are null")
            self.exit_status = EXIT_HELPER_UNREACHABLE

    async def close(self) -> None:
        if self.control is not None:
            await self.control.aclose()

    @classmethod
    def input_problem(cls, input_: str) -> str | None:
        return sni_input_problem(input_)

    async def _round(
        self, name: str, port: int, addrs: list[str], t_zero: float, keys: dict[str, Any]
    ) -> dict[str, Comparison]:
        timeout = self.ctx.timeout * STEP_TIMEOUT_SHARE
        endpoints = [format_host_port(a, port) for a in addrs]
        control, failure = await control_certificates(self.control, name, port, endpoints)
        keys["control_failure"] = failure
        keys["control"] = control
        out: dict[str, Comparison] = {}
        for ip, endpoint in zip(addrs, endpoints, strict=True):
            result = await tls_handshake(
                ip, port, name, timeout=timeout, t_zero=t_zero, ca_file=self.ctx.ca_file
            )
            summary = probe_summary(
                result.record, result.leaf_spki_sha256, result.issuer, result.verified
            )
            keys["tls_handshakes"].append(summary)
            certs = control.get(CERTIFICATES, {}).get(endpoint)
            out[endpoint] = compare(summary, certs)
        note_lost_tls_view(keys, control, endpoints, port)
        return out

    async def measure(self, input_: str | None) -> dict[str, Any]:
        assert input_ is not None  # the runner checked it with input_problem()
        name, port = target_of(input_)
        t_zero = time.monotonic()
        keys: dict[str, Any] = {
            "queries": [],
            "tls_handshakes": [],
            "control": {},
            "control_failure": None,
            "tls_comparisons": [],
        }
        dns = await resolve_retrying(
            name,
            resolver=self.ctx.resolver,
            timeout=self.ctx.timeout * STEP_TIMEOUT_SHARE,
            t_zero=t_zero,
        )
        keys["queries"] = dns.queries
        addrs = dns.addrs[:MAX_ADDRESSES]
        if not addrs:
            keys.update(blocking=None, blocking_detail=None, failure=dns.failure)
            return keys
        rounds: list[dict[str, Comparison]] = []
        for _ in range(ROUNDS_TO_CONFIRM):
            found = await self._round(name, port, addrs, t_zero, keys)
            rounds.append(found)
            keys["tls_comparisons"].append({ep: c.as_dict() for ep, c in found.items()})
            if not any(c.intercepted for c in found.values()):
                break
        self._verdict(keys, rounds)
        return keys

    @staticmethod
    def _verdict(keys: dict[str, Any], rounds: list[dict[str, Comparison]]) -> None:
        last = rounds[-1]
        confirmed = [
            ep for ep in last if len(rounds) == ROUNDS_TO_CONFIRM and all(
                r.get(ep) is not None and r[ep].intercepted for r in rounds
            )
        ]  # fmt: skip
        control_ok = {
            ep for ep, entry in (keys["control"].get("tls_handshake") or {}).items()
            if entry.get("status")
        }  # fmt: skip
        probe_failures = [h["failure"] for h in keys["tls_handshakes"][-len(last) :]]
        # Without the helper's certificates (oohelperd) a verification failure where the
        # helper's handshake passed is read as OONI reads it: TLS blocking.
        certs_known = CERTIFICATES in keys["control"]
        blocking: Any = None
        detail = None
        if confirmed:
            blocking, detail = "tls", INTERCEPTED
        elif any(c.outcome in ("same", "other_valid") for c in last.values()):
            blocking = False
        elif control_ok and all(
            f is not None and (not certs_known or not f.startswith("ssl_")) for f in probe_failures
        ):
            blocking, detail = "tls", handshake_detail(probe_failures[0])
        elif keys["control"] and not certs_known and all(f is None for f in probe_failures):
            blocking = False  # verified handshakes; nothing to compare them with
        keys["x_intercepted_endpoints"] = confirmed
        keys["blocking"] = blocking
        keys["blocking_detail"] = detail
