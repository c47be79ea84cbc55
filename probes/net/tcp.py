"""TCP connect as an observation: the tcp_connect entry of ooni/spec df-005-tcpconnect."""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass, field
from typing import Any

from probes.net.failures import failure_from_exception
from probes.net.records import since


@dataclass
class TCPResult:
    ip: str
    port: int
    failure: str | None
    t0: float
    t: float
    record: dict[str, Any] = field(default_factory=dict)  # df-005 tcp_connect entry


async def open_socket(ip: str, port: int, timeout: float) -> socket.socket:
    """Connect a non-blocking socket to ip:port; raises on failure (used by tls.py too).

    No name resolution happens here: the caller chose the address, which is the point
    of measuring (the censor may have answered DNS differently).
    """
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        async with asyncio.timeout(timeout):
            await asyncio.get_running_loop().sock_connect(sock, (ip, port))
    except BaseException:
        sock.close()
        raise
    return sock


def tcp_record(ip: str, port: int, failure: str | None, t0: float, t: float) -> dict[str, Any]:
    """The df-005 entry; ``blocked`` is left null for the nettest's analysis to decide."""
    return {
        "ip": ip,
        "port": port,
        "status": {"success": failure is None, "failure": failure, "blocked": None},
        "t0": t0,
        "t": t,
    }


async def tcp_connect(ip: str, port: int, *, timeout: float, t_zero: float) -> TCPResult:
    """Connect to ip:port and close at once; never raises on network failure."""
    t0 = since(t_zero)
    failure: str | None = None
    try:
        sock = await open_socket(ip, port, timeout)
    except (OSError, TimeoutError) as exc:
        failure = failure_from_exception(exc)
    else:
        sock.close()
    t = since(t_zero)
    return TCPResult(ip, port, failure, t0, t, tcp_record(ip, port, failure, t0, t))
