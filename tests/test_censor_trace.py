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


def test_default_budget_fits_default_pacing() -> None:
    # hops x probes x wait + hops x pause per run, the pauses between runs, and the setup
    per_run = ct.DEFAULT_MAX_TTL * (
        ct.DEFAULT_STEP_PAUSE_S + ct.PROBES_PER_STEP * ct.MAX_STEP_WAIT_S
    )
    needed = ct.DEFAULT_RUNS * per_run + (ct.DEFAULT_RUNS - 1) * ct.DEFAULT_RUN_PAUSE_S
    budget = ct.CensorTrace.default_budget({})
    assert budget >= needed + 3 * ct.MAX_STEP_WAIT_S  # and room for the retried DNS lookup
    assert budget == ct.trace_budget() == 660.0
    # the budget follows the pacing chosen, and 0 s pauses are a choice, not "unset"
    assert (
        ct.CensorTrace.default_budget(
            {"trace_max_ttl": 5, "trace_runs": 1, "trace_step_pause": 0.0, "trace_run_pause": None}
        )
        == 5 * (0 + 2 * ct.MAX_STEP_WAIT_S) + ct.SETUP_ALLOWANCE_S
    )
    # with that budget a setup gives no "budget too short" warning; with the probe's 30 s it does
    opts = {"trace_keyword": "falun"}
    quiet = ct.CensorTrace(
        ProbeContext(
            timeout=budget,
            options=opts,
        )
    )
    asyncio.run(quiet.setup())
    assert not any("budget" in w for w in quiet.warnings)
    short = ct.CensorTrace(ProbeContext(timeout=30.0, options=opts))
    asyncio.run(short.setup())
    assert any("budget is short" in w for w in short.warnings)


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A loopback HTTP server that reads requests and never answers (every step times out)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    srv.settimeout(0.2)
    stop = threading.Event()
    held: list[socket.socket] = []

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            held.append(conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield srv.getsockname()[1]
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    srv.close()


def _trace(port: int, timeout: float, max_ttl: int, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setattr(ct, "capture_unavailable", lambda: "needs root or CAP_NET_RAW")
    ctx = ProbeContext(timeout=timeout, options={"trace_keyword": "falun", "trace_runs": 1,
                                                 "trace_max_ttl": max_ttl,
                                                 "trace_step_pause": 0.0})  # fmt: skip
    test = ct.CensorTrace(ctx)

    async def go() -> dict[str, Any]:
        await test.setup()
        return await test.measure(f"http://127.0.0.1:{port}/")

    return asyncio.run(go())


def test_budget_out_before_the_censor_is_null_not_false(
    silent_server: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # wait = 0.1 s per request; 30 hops x 2 requests cannot fit 1 s: the trace stops early
    keys = _trace(silent_server, 1.0, 30, monkeypatch)
    assert 0 < len(keys["hops"]) < 30
    assert keys["blocking"] is None and keys["failure"] == "generic_timeout_error"
    assert keys["x_budget_exhausted"] is True


def test_trace_that_ran_every_ttl_without_interference_is_false(
    silent_server: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = _trace(silent_server, 1.0, 2, monkeypatch)  # 2 hops x 2 x 0.1 s fit
    assert [h["ttl"] for h in keys["hops"]] == [1, 2]
    assert keys["blocking"] is False and keys["x_budget_exhausted"] is False
