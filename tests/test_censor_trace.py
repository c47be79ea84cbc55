"""censor_trace without the lab: the hop analysis on built traces, and an unprivileged run
against a loopback server that resets keyword requests (no capture: it must degrade, not fail)."""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from probes.nettests import censor_trace as ct
from probes.nettests.base import ProbeContext, SetupError


def _p(outcome: str, icmp: str | None = None, rst_ttl: int | None = None,
       server_ttl: int | None = 63) -> dict[str, Any]:  # fmt: skip
    return {"outcome": outcome, "status": 200 if outcome == "response" else None,
            "icmp_from": icmp, "rst_ttl": rst_ttl, "server_ttl": server_ttl}  # fmt: skip


def _hop(ttl: int, keyword: dict[str, Any], control: dict[str, Any]) -> dict[str, Any]:
    return {"ttl": ttl, "address": control["icmp_from"] or keyword["icmp_from"],
            "keyword": keyword, "control": control}  # fmt: skip


def test_censor_before_the_server_is_the_first_hop_that_resets() -> None:
    hops = [
        _hop(1, _p("timeout", "192.0.2.1"), _p("timeout", "192.0.2.1")),
        _hop(2, _p("reset", rst_ttl=62), _p("timeout", "198.51.100.1")),
    ]
    found = ct.locate(hops)
    assert found["censor_hop"] == {"ttl": 2, "address": "198.51.100.1", "located_by": "trace",
                                   "at_endpoint_hop": False}  # fmt: skip
    assert (found["kind"], found["injected"], found["endpoint_ttl"]) == ("reset", True, None)


def test_censor_behind_its_router_is_dated_by_the_reset_ttl() -> None:
    """The lab's case: interference appears where the control reaches the server."""
    hops = [
        _hop(1, _p("timeout", "10.77.1.1"), _p("timeout", "10.77.1.1")),
        _hop(2, _p("reset", rst_ttl=64), _p("response")),
    ]
    found = ct.locate(hops)
    assert found["censor_hop"]["ttl"] == 1
    assert found["censor_hop"]["address"] == "10.77.1.1"
    assert found["censor_hop"]["located_by"] == "injected_ttl"
    assert (found["first_interference_ttl"], found["endpoint_ttl"]) == (2, 2)


def test_reset_with_the_servers_ttl_stays_at_the_endpoint_hop() -> None:
    hops = [
        _hop(1, _p("timeout", "10.0.0.1"), _p("timeout", "10.0.0.1")),
        _hop(2, _p("reset", rst_ttl=63), _p("response")),
    ]
    found = ct.locate(hops)
    assert found["injected"] is False
    assert found["censor_hop"] == {"ttl": 2, "address": None, "located_by": "trace",
                                   "at_endpoint_hop": True}  # fmt: skip


def test_copied_ttl_is_noted_and_not_used_for_dating() -> None:
    hops = [
        _hop(1, _p("timeout", "10.0.0.1"), _p("timeout", "10.0.0.1")),
        _hop(2, _p("timeout", "10.0.0.2"), _p("timeout", "10.0.0.2")),
        _hop(3, _p("reset", rst_ttl=2), _p("response")),
    ]
    found = ct.locate(hops)
    assert found["ttl_copied"] is True
    assert found["censor_hop"]["ttl"] == 3
    assert found["censor_hop"]["located_by"] == "trace"


def test_injected_answer_while_the_control_expired() -> None:
    hops = [_hop(1, _p("response"), _p("timeout", "10.0.0.1"))]
    found = ct.locate(hops)
    assert (found["kind"], found["injected"]) == ("response", True)
    assert found["censor_hop"]["ttl"] == 1


def test_no_interference_and_tainted_runs() -> None:
    clean = [_hop(1, _p("response"), _p("response"))]
    assert ct.locate(clean)["censor_hop"] is None
    tainted = [_hop(1, _p("connect_reset"), _p("connect_reset"))]
    assert ct.locate(tainted)["tainted"] is True
    assert ct.combine([ct.locate(tainted)]) is None


def test_combine_reports_the_share_of_agreeing_runs() -> None:
    at = {"ttl": 3, "address": "10.0.0.3", "located_by": "trace", "at_endpoint_hop": False}
    other = {**at, "ttl": 4, "address": "10.0.0.4"}
    runs = [{"censor_hop": h, "tainted": False} for h in (at, at, other)]
    best = ct.combine(runs)
    assert best is not None
    assert (best["ttl"], best["confidence"], best["runs"]) == (3, 0.667, 3)
    assert ct.combine([{"censor_hop": None, "tainted": False}] * 2) is None


def test_distance_and_control_word() -> None:
    assert (ct.distance(64), ct.distance(60), ct.distance(120), ct.distance(250)) == (0, 4, 8, 5)
    word = ct.control_word("falun")
    assert len(word) == 5 and word != "falun"


@pytest.fixture
def resetting_server() -> Iterator[int]:
    """A loopback HTTP server that aborts (RST) a request carrying 'falun', answers others."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    srv.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(2)
                data = conn.recv(4096)
                if b"falun" in data:
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                else:
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield srv.getsockname()[1]
    stop.set()
    thread.join()
    srv.close()


def test_unprivileged_run_degrades(resetting_server: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ct, "capture_unavailable", lambda: "needs root or CAP_NET_RAW")
    ctx = ProbeContext(timeout=5.0, options={"trace_keyword": "falun", "trace_max_ttl": 3,
                                             "trace_step_pause": 0.0, "trace_runs": 1})  # fmt: skip
    test = ct.CensorTrace(ctx)

    async def go() -> dict[str, Any]:
        await test.setup()
        return await test.measure(f"http://127.0.0.1:{resetting_server}/")

    keys = asyncio.run(go())
    assert keys["packet_capture"] == "unavailable"
    assert any("packet capture unavailable" in w for w in test.warnings)
    # Loopback is one hop: TTL 1 reaches the server, which resets the keyword only.
    assert [h["ttl"] for h in keys["hops"]] == [1]
    assert keys["hops"][0]["address"] is None
    assert (keys["hops"][0]["keyword"]["outcome"], keys["hops"][0]["control"]["outcome"]) == (
        "reset",
        "response",
    )
    assert (keys["blocking"], keys["blocking_detail"]) == ("http-failure", "http.reset")
    assert keys["censor_hop"]["ttl"] == 1 and keys["censor_hop"]["at_endpoint_hop"] is True


def test_keyword_is_required() -> None:
    with pytest.raises(SetupError):
        asyncio.run(ct.CensorTrace(ProbeContext()).setup())
    assert ct.CensorTrace.input_problem("https://example.com/") is not None
    assert ct.CensorTrace.input_problem("http://example.com/") is None
