"""TCP connect as an observation: the tcp_connect entry of ooni/spec df-005-tcpconnect."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from probes.net.failures import NetworkFailure, failure_from_exception
from probes.net.records import since

# Who may be connected to, for code that connects on a stranger's behalf (the control
# helper): set by `guarded_connects` for a task and the tasks it starts, consulted by
# `open_socket` with the exact address of every socket, so no parser, resolver or redirect
# between a URL and a connect can smuggle a forbidden address past it. Unset for the probe.
ConnectGuard = Callable[[str], bool]
_CONNECT_GUARD: ContextVar[ConnectGuard | None] = ContextVar("connect_guard", default=None)

# The failure a refused connect reports (backend.ssrf.FORBIDDEN_FAILURE, which imports us).
FORBIDDEN_CONNECT = "x_forbidden_address"


class ForbiddenConnect(NetworkFailure, OSError):
    """The connect guard refused this address; no packet was sent to it."""

    def __init__(self, ip: str, port: int) -> None:
        NetworkFailure.__init__(self, FORBIDDEN_CONNECT, f"refused to connect to {ip} port {port}")


@contextmanager
def guarded_connects(allows: ConnectGuard) -> Iterator[None]:
    """Within this block (and tasks started in it), open_socket connects only where
    ``allows(ip)`` says yes, to an address written as an IP literal."""
    token = _CONNECT_GUARD.set(allows)
    try:
        yield
    finally:
        _CONNECT_GUARD.reset(token)


def _guarded_address(ip: str, port: int) -> str:
    """The address to connect to under the guard, canonical, or ForbiddenConnect.

    Only a strict IP literal is accepted: loop.sock_connect would hand anything else to
    getaddrinfo, which reads names and numeric forms ("2130706433", "0177.1") the guard
    never saw.
    """
    allows = _CONNECT_GUARD.get()
    if allows is None:
        return ip
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        raise ForbiddenConnect(ip, port) from None
    if not allows(str(addr)):
        raise ForbiddenConnect(ip, port)
    return str(addr)


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
    ip = _guarded_address(ip, port)
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        async with asyncio.timeout(timeout):
            await asyncio.get_running_loop().sock_connect(sock, (ip, port))
        if _CONNECT_GUARD.get() is not None:  # the address the kernel connected to
            _guarded_address(str(sock.getpeername()[0]), port)
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
