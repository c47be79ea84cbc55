"""quic_sni verdicts from test keys alone (a pure function: stored measurements can be re-judged).

The attempts (``quic_handshakes``, in order, each with ``x_role`` "control" or "target") come
in rounds: a handshake with the control SNI, then one with the target SNI, each from a fresh
source port. The rules, strictest first:

1. A target handshake that reached TLS (passed, or failed only on the certificate): not
   blocked (``false``).
2. The first control failed (a timeout): QUIC to this endpoint fails with any name. That is a
   site with no QUIC server as often as a blocked one: ``quic`` / ``quic.all_blocked`` only
   when the control helper's QUIC handshake with the name to the same endpoint passed
   (``control.quic_handshake``, oohelperd's), else null.
3. Every target handshake timed out while each control before it passed, in all ROUNDS rounds:
   ``quic`` / ``quic.sni_blocked`` (the name is what fails; a censor dropping the flow for
   the SNI, residually per 4-tuple).
4. The first control passed, a target timed out, and the next control failed (the endpoint
   went dark after the name was sent): a censor that blocks the (client, server, port) triple
   residually, as the GFW does for QUIC, or a path going down. When a TLS-over-TCP handshake
   with the control SNI to the same address (``x_tcp_check``) then passed, the server and the
   path are up: ``quic.sni_blocked`` with ``x_residual_blocking``; otherwise null.
5. An endpoint under a residual block from an earlier trigger (``x_residual``: this run or a
   saved taint) whose control failed: null, never a fresh verdict (as http_keyword).
6. Anything else (a target closed by the server, which may refuse unknown names): null.

Only timeouts count as blocking: a censor drops QUIC (no reset exists for UDP), and a server
that closes a handshake for a name it does not serve is not censorship.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

ROUNDS = 3
TIMEOUT = "generic_timeout_error"
SNI_BLOCKED = "quic.sni_blocked"
ALL_BLOCKED = "quic.all_blocked"
CERTIFICATE_FAILURES = frozenset(
    {"ssl_invalid_hostname", "ssl_unknown_authority", "ssl_invalid_certificate"}
)


@dataclass
class Verdict:
    blocking: str | bool | None
    blocking_detail: str | None = None
    why: str = ""
    residual_blocking: bool = False


def reached(attempt: Mapping[str, Any]) -> bool:
    """The handshake got as far as the server's certificate."""
    failure = attempt.get("failure")
    return failure is None or failure in CERTIFICATE_FAILURES


def _tcp_ok(tk: Mapping[str, Any]) -> bool:
    check = tk.get("x_tcp_check")
    return isinstance(check, Mapping) and reached(check)


def _helper_reached(tk: Mapping[str, Any]) -> bool:
    """The control helper's QUIC handshake with the name to our endpoint passed."""
    control = tk.get("control")
    table = control.get("quic_handshake") if isinstance(control, Mapping) else None
    entry = table.get(str(tk.get("endpoint"))) if isinstance(table, Mapping) else None
    return isinstance(entry, Mapping) and entry.get("status") is True


def analyze(tk: Mapping[str, Any]) -> Verdict:
    """The verdict of one quic_sni measurement (see the module docstring)."""
    raw = tk.get("quic_handshakes")
    attempts = [a for a in raw if isinstance(a, Mapping)] if isinstance(raw, list) else []
    targets = [a for a in attempts if a.get("x_role") == "target"]
    if not attempts or attempts[0].get("x_role") != "control":
        return Verdict(None, None, "no control handshake")
    if any(reached(t) for t in targets):
        return Verdict(False, None, "the target SNI's handshake passed")
    residual = bool(tk.get("x_residual"))
    if not reached(attempts[0]):
        if residual:
            return Verdict(None, None, "residual: the endpoint was still blocked from before")
        if attempts[0].get("failure") == TIMEOUT and _helper_reached(tk):
            return Verdict("quic", ALL_BLOCKED, "no QUIC with any name; the helper's passed")
        return Verdict(None, None, "no QUIC with the control SNI either: blocked or no QUIC")
    if not targets or any(t.get("failure") != TIMEOUT for t in targets):
        return Verdict(None, None, "a target failed otherwise than by a timeout")
    first_target = attempts.index(targets[0])
    later_controls = [a for a in attempts[first_target:] if a.get("x_role") == "control"]
    if all(reached(c) for c in later_controls):
        if len(targets) >= ROUNDS:
            return Verdict("quic", SNI_BLOCKED, "target timed out in every round, controls passed")
        return Verdict(None, None, f"only {len(targets)} of {ROUNDS} rounds")
    if later_controls and not reached(later_controls[0]) and _tcp_ok(tk):
        return Verdict(
            "quic",
            SNI_BLOCKED,
            "the endpoint went dark for QUIC right after the target SNI while TCP to it works",
            residual_blocking=True,
        )
    return Verdict(None, None, "the endpoint failed after the target: blocked or path down")
