"""download verdicts from test keys alone (pure: stored measurements can be re-judged).

The transfers alternate a target (the input's name as SNI) and a control (another SNI, same
server address, same object, same path). Only what the control proves is blamed on the name:

- ``throttling`` / ``stalled``: every target transfer that got past the TLS handshake stopped
  receiving (no byte for the stall window) before its end, while a control transfer went past
  the point where the targets stopped and no control stalled. Russia's TSPU freezes TLS
  connections to foreign hosting so after 16-20 KB (issue 16); the point is ``stalled_at``.
- ``throttling`` / ``throttled``: in every round the target's rate is at most THROTTLE_RATIO
  (1/10) of the rate of the control fetched right after it. OONI calls a 10x (or larger)
  slowdown "extreme throttling", the kind it sets out to detect (probe-cli
  docs/design/dd-007-throttling.md); Twitter's throttling in Russia brought transfers to about
  130-150 kbit/s against several Mbit/s unthrottled (Xue et al., "Throttling Twitter", IMC
  2021). Each target is compared with its own round's control: both met the same load.
- ``tls`` / ``tls.sni_reset``, ``_timeout``, ``_eof``: every target handshake failed so while
  a control handshake with another SNI to the same address passed (as dnscheck and
  sni_blocking name it).
- false: in some round the target's rate is above the threshold.
- null: no control transfer completed, a control stalled as well (the path, not the name),
  the object is too small to time (below MIN_RATE_BYTES), or the evidence is mixed.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

THROTTLE_RATIO = 0.1
# A rate is only read from a transfer of at least this many bytes after the request: shorter
# ones are dominated by round trips and slow start, not by the path's rate.
MIN_RATE_BYTES = 64 * 1024
_TLS_KINDS = {"connection_reset": "reset", "generic_timeout_error": "timeout", "eof_error": "eof"}
MOVING = ("complete", "time_cap")  # transfers whose rate is known


@dataclass
class Verdict:
    blocking: str | bool | None
    blocking_detail: str | None
    why: str
    target_rate: float | None = None  # bytes/s, the best target transfer
    control_rate: float | None = None  # bytes/s, the median control transfer
    stalled_at: int | None = None  # bytes received by the target transfers when they froze
    ratio: float | None = None  # the largest per-round ratio of target to control rate

    def as_dict(self) -> dict[str, Any]:
        ratio = self.ratio
        return {
            "blocking": self.blocking,
            "blocking_detail": self.blocking_detail,
            "why": self.why,
            "target_rate": None if self.target_rate is None else round(self.target_rate, 1),
            "control_rate": None if self.control_rate is None else round(self.control_rate, 1),
            "rate_ratio": None if ratio is None else round(ratio, 4),
            "stalled_at": self.stalled_at,
        }


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def payload_bytes(transfer: Mapping[str, Any]) -> int:
    """Bytes received after the request was written (the response, TLS records included)."""
    return max(0, _int(transfer.get("bytes_received")) - _int(transfer.get("bytes_at_request")))


def transfer_rate(transfer: Mapping[str, Any]) -> float | None:
    """Bytes per second from the request to the last byte; None when there is nothing to time."""
    t_request, t_last = _num(transfer.get("t_request")), _num(transfer.get("t_last_byte"))
    size = payload_bytes(transfer)
    if t_request is None or t_last is None or t_last <= t_request or size <= 0:
        return None
    return size / (t_last - t_request)


def _transfers(tk: Mapping[str, Any], role: str) -> list[Mapping[str, Any]]:
    return [
        t for t in tk.get("transfers") or [] if isinstance(t, Mapping) and t.get("role") == role
    ]


def _handshake_verdict(targets: list[Mapping[str, Any]]) -> Verdict:
    kinds = {_TLS_KINDS.get(str(t.get("failure"))) for t in targets}
    if len(kinds) == 1 and None not in kinds:
        kind = kinds.pop()
        return Verdict("tls", f"tls.sni_{kind}", "a control SNI completed to the same address")
    return Verdict(None, None, "the target's handshakes failed, not with a censor's signature")


def analyze(tk: Mapping[str, Any]) -> Verdict:
    """The measurement's verdict (see the module docstring)."""
    targets, controls = _transfers(tk, "target"), _transfers(tk, "control")
    if not targets or not controls:
        return Verdict(None, None, "no transfers")
    controls_ok = [c for c in controls if c.get("ended") in MOVING]
    if not controls_ok:
        return Verdict(None, None, "no control transfer completed")
    if any(c.get("ended") == "stalled" for c in controls):
        return Verdict(None, None, "a control transfer stalled too: the path, not the name")
    reached = [t for t in targets if t.get("failed_operation") not in ("connect", "tls_handshake")]
    if not reached:
        if all(t.get("failed_operation") == "tls_handshake" for t in targets):
            return _handshake_verdict(targets)
        return Verdict(None, None, "the target address could not be reached")
    control_rates = [r for c in controls_ok if (r := transfer_rate(c)) is not None]
    control_rate = statistics.median(control_rates) if control_rates else None
    stalled = [t for t in reached if t.get("ended") == "stalled"]
    if stalled:
        point = max(_int(t.get("bytes_received")) for t in stalled)
        if len(stalled) < len(reached):
            return Verdict(None, None, "some target transfers stalled, others did not")
        if max(_int(c.get("bytes_received")) for c in controls_ok) <= point:
            return Verdict(None, None, "no control got past the point where the targets froze")
        why = f"every target transfer froze after {point} bytes; the control went on"
        return Verdict("throttling", "stalled", why, None, control_rate, point)
    moving = [t for t in reached if t.get("ended") in MOVING]
    if len(moving) < len(reached):
        failures = sorted({str(t.get("failure")) for t in reached if t not in moving})
        return Verdict(None, None, f"target transfers failed: {', '.join(failures)}")
    if min(payload_bytes(c) for c in controls_ok) < MIN_RATE_BYTES:
        return Verdict(None, None, f"the object is under {MIN_RATE_BYTES} bytes: too small to time")
    ratios = round_ratios(tk)
    target_rates = [r for t in moving if (r := transfer_rate(t)) is not None]
    if not ratios or not target_rates or control_rate is None:
        return Verdict(None, None, "no rate could be measured")
    worst = max(ratios)  # the round where the target came closest to its control
    found = Verdict(False, None, "", max(target_rates), control_rate, None, worst)
    if worst <= THROTTLE_RATIO:
        found.blocking, found.blocking_detail = "throttling", "throttled"
        found.why = f"in every round the target's rate was at most {worst:.3f} of the control's"
    else:
        found.why = f"in one round the target's rate was {worst:.2f} of the control's"
    return found


def round_ratios(tk: Mapping[str, Any]) -> list[float]:
    """Per round, the target's rate over the rate of the control fetched right after it: the
    two met the same load on the path (a busy link or server slows both), which rates from
    other moments need not have."""
    ratios = []
    pending: Mapping[str, Any] | None = None
    for t in tk.get("transfers") or []:
        if not isinstance(t, Mapping):
            continue
        if t.get("role") == "target":
            pending = t
        elif t.get("role") == "control" and pending is not None:
            target, control = transfer_rate(pending), transfer_rate(t)
            both = pending.get("ended") in MOVING and t.get("ended") in MOVING
            if both and target is not None and control:
                ratios.append(target / control)
            pending = None
    return ratios
