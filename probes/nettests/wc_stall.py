"""Did web_connectivity's body fetch stall? Evidence from its byte curve alone (pure).

web_connectivity 0.5 samples each connection's bytes received, as OONI's probe does
(``bytes_received_cumulative`` network events, probe-cli internal/throttling), from the request
on, and keeps the last count at the time of its last byte. A fetch that timed out is *stalled*
when, after its request, more than MIN_STALLED_BYTES arrived (more than a TLS 1.3 server's
session tickets: the server was answering) and then nothing for at least STALL_IDLE_S until
the deadline. Russia's TSPU freezes TLS to foreign hosting so after 16-20 KB (issue 16). A fetch
still receiving when its time ran out (a slow or throttled one) is not stalled: it stays a
timeout. The download nettest measures throttling against a control.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

BYTES_RECEIVED = "bytes_received_cumulative"
TIMEOUT = "generic_timeout_error"
STALL_IDLE_S = 2.0
MIN_STALLED_BYTES = 4096


def _last_timed_out_transaction(events: list[Any]) -> list[Mapping[str, Any]]:
    """The events of the last HTTP transaction that ended in a timeout (in order)."""
    maps = [e for e in events if isinstance(e, Mapping)]
    for end in range(len(maps) - 1, -1, -1):
        e = maps[end]
        if e.get("operation") == "http_transaction_done" and e.get("failure") == TIMEOUT:
            start = end
            while start > 0 and maps[start].get("operation") != "http_transaction_start":
                start -= 1
            return maps[start : end + 1]
    return []


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def stalled_at(test_keys: Mapping[str, Any]) -> int | None:
    """The bytes the timed-out body fetch had received when it froze, or None."""
    if test_keys.get("http_experiment_failure") != TIMEOUT:
        return None
    events = test_keys.get("network_events")
    mine = _last_timed_out_transaction(events if isinstance(events, list) else [])
    if not mine:
        return None
    t_done = _num(mine[-1].get("t"))
    requests = [_num(e.get("t")) for e in mine if e.get("operation") == "http_wrote_headers"]
    curve = [
        (t, int(n))
        for e in mine
        if e.get("operation") == BYTES_RECEIVED
        and (t := _num(e.get("t"))) is not None
        and (n := _num(e.get("num_bytes"))) is not None
    ]
    if t_done is None or not requests or requests[0] is None or not curve:
        return None
    t_request = requests[0]
    at_request = max((n for t, n in curve if t <= t_request), default=0)
    t_last, last = max(curve, key=lambda point: point[1])
    if last - at_request <= MIN_STALLED_BYTES or t_done - t_last < STALL_IDLE_S:
        return None
    return last


def control_fetched_past(test_keys: Mapping[str, Any], point: int) -> bool:
    """The control helper fetched the body without failure, longer than ``point`` bytes."""
    control = test_keys.get("control")
    request = control.get("http_request") if isinstance(control, Mapping) else None
    if not isinstance(request, Mapping) or request.get("failure") is not None:
        return False
    length = _num(request.get("body_length"))
    return length is not None and length > point
