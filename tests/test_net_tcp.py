from __future__ import annotations

import time

import pytest

from probes.net.tcp import tcp_connect
from tests.loopback import LoopbackSuite

pytestmark = pytest.mark.anyio


async def test_connect_success_record(loopback: LoopbackSuite) -> None:
    t_zero = time.monotonic()
    res = await tcp_connect(loopback.host, loopback.http.port, timeout=5, t_zero=t_zero)
    assert res.failure is None
    assert 0 <= res.t0 <= res.t
    assert res.record == {
        "ip": loopback.host,
        "port": loopback.http.port,
        "status": {"success": True, "failure": None, "blocked": None},
        "t0": res.t0,
        "t": res.t,
    }


async def test_connect_refused(loopback: LoopbackSuite) -> None:
    res = await tcp_connect(loopback.host, loopback.closed_port, timeout=5, t_zero=time.monotonic())
    assert res.failure == "connection_refused"
    assert res.record["status"] == {
        "success": False,
        "failure": "connection_refused",
        "blocked": None,
    }


async def test_connect_ipv6_loopback_refused() -> None:
    from tests.loopback import closed_port

    try:
        port = closed_port("::1")
    except OSError:
        pytest.skip("no IPv6 loopback here")
    res = await tcp_connect("::1", port, timeout=5, t_zero=time.monotonic())
    assert res.failure == "connection_refused"
