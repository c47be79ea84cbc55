"""probes.net.packets: filters and the clean "unavailable" answer (capture tests: to come)."""

from __future__ import annotations

from probes.net import packets


def test_filter() -> None:
    assert packets.flow_filter("2001:db8::1", 443) == "ip6 host 2001:db8::1 and tcp port 443"


def test_unavailable_is_a_reason_or_none() -> None:
    reason = packets.capture_unavailable()
    assert reason is None or (isinstance(reason, str) and reason)
