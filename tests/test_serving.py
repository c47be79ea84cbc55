"""Slow and greedy clients against the helper and the collector (issue 13, item 3).

Real uvicorn servers on loopback with short configured limits; raw sockets play the slowloris
clients. "Closed in time" means the server hung up before a generous multiple of the
configured timeout: a bound on behaviour, not a performance figure.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.responses import JSONResponse, StreamingResponse
from uvicorn.protocols.http.h11_impl import H11Protocol

from backend.collector import CollectorConfig
from backend.collector import create_app as collector_app
from backend.helper import HelperConfig, create_app
from backend.serving import (
    ClientRateLimit,
    QuietDisconnect,
    ServerLimits,
    client_key,
    limited_protocol,
    server_config,
)
from probes.net.dns import resolve
from probes.net.resolver_pool import ResolverPool
from tests.loopback.control_helper import uvicorn_on
from tests.test_collector_support import CollectorProcess, make_token

SHORT = 0.5  # the configured timeouts, seconds
PATIENCE = 10 * SHORT  # how long a test waits for the server to hang up


@contextmanager
def serve(app: Any, limits: ServerLimits, *, plain: bool = False) -> Iterator[int]:
    """`app` under uvicorn on 127.0.0.1 within `limits` (plain: uvicorn's own settings)."""
    kw: dict[str, Any] = {"log_level": "warning", "lifespan": "off"}
    config = uvicorn.Config(app, **kw) if plain else server_config(app, limits, **kw)
    with uvicorn_on(config) as port:
        yield port


def connect(port: int, source: str = "127.0.0.1") -> socket.socket:
    sock = socket.create_connection(
        ("127.0.0.1", port), timeout=PATIENCE, source_address=(source, 0)
    )
    return sock


def hung_up(sock: socket.socket, trickle: bytes = b"") -> bool:
    """Whether the server closes `sock` within PATIENCE (sending `trickle` a byte at a time
    meanwhile); what it sent before closing is ignored (a 503 or 408 is a close too)."""
    deadline = time.monotonic() + PATIENCE
    sock.settimeout(0.1)
    sent = 0
    try:
        while time.monotonic() < deadline:
            if sent < len(trickle):
                sock.send(trickle[sent : sent + 1])
                sent += 1
            try:
                if sock.recv(65536) == b"":
                    return True
            except TimeoutError:
                continue
    except (ConnectionResetError, BrokenPipeError):
        return True
    finally:
        sock.close()
    return False


def helper_app() -> Any:
    return create_app(HelperConfig(timeout=30.0))  # the app's own body timeout out of the way


def slow_app() -> FastAPI:
    app = FastAPI()

    @app.get("/slow")
    async def slow() -> JSONResponse:
        await asyncio.sleep(4 * SHORT)  # the app is slow, not the client
        return JSONResponse({"ok": True})

    return app


LIMITS = ServerLimits(header_timeout=SHORT, body_timeout=SHORT, keep_alive=1, client_rate=0)
SLOW_CLIENTS = {
    "idle": (b"", b""),
    "request line only": (b"POST / HTTP/1.1\r\n", b""),
    "head trickled a byte at a time": (b"", b"POST / HTTP/1.1\r\nHost: x\r\n" + b"X-A: b\r\n" * 40),
    "body never finished": (
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b'Content-Length: 1000\r\n\r\n{"http_request": ',
        b"",
    ),
    "body trickled": (
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n",
        b"x" * 200,
    ),
}


@pytest.mark.parametrize("kind", list(SLOW_CLIENTS))
def test_helper_hangs_up_on_slow_clients(kind: str) -> None:
    first, trickle = SLOW_CLIENTS[kind]
    with serve(helper_app(), LIMITS) as port:
        sock = connect(port)
        sock.sendall(first)
        assert hung_up(sock, trickle), kind


@pytest.mark.parametrize("kind", ["idle", "head trickled a byte at a time", "body trickled"])
def test_the_h11_protocol_hangs_up_too(kind: str) -> None:
    """Without httptools uvicorn speaks h11; the limits hold on it as well."""
    first, trickle = SLOW_CLIENTS[kind]
    app = QuietDisconnect(helper_app())
    config = uvicorn.Config(
        app, http=limited_protocol(LIMITS, H11Protocol), log_level="warning", lifespan="off"
    )
    with uvicorn_on(config) as port:
        sock = connect(port)
        sock.sendall(first)
        assert hung_up(sock, trickle), kind


def test_uvicorn_alone_keeps_them_open() -> None:
    """What the limits fix: plain uvicorn still holds an idle socket after PATIENCE."""
    with serve(helper_app(), LIMITS, plain=True) as port:
        sock = connect(port)
        sock.sendall(b"POST / HTTP/1.1\r\n")
        assert not hung_up(sock)


def test_idle_keep_alive_connection_is_closed() -> None:
    with serve(helper_app(), LIMITS) as port:
        sock = connect(port)
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")
        assert hung_up(sock)


def test_a_slow_app_is_not_a_slow_client() -> None:
    with serve(slow_app(), LIMITS) as port:
        reply = httpx.get(f"http://127.0.0.1:{port}/slow", timeout=PATIENCE)
        again = httpx.get(f"http://127.0.0.1:{port}/slow", timeout=PATIENCE)
    assert reply.json() == {"ok": True} and again.status_code == 200


def test_a_client_that_stops_reading_is_let_go() -> None:
    """A response the client never reads: uvicorn would wait on the full buffer forever."""
    finished = threading.Event()
    app = FastAPI()

    @app.get("/big")
    async def big() -> StreamingResponse:
        async def chunks() -> AsyncIterator[bytes]:
            try:
                for _ in range(4096):  # 256 MB, far past every socket buffer
                    yield b"x" * 65536
            finally:  # sent, or given up on (starlette cancels a stream on disconnect)
                finished.set()

        return StreamingResponse(chunks())

    limits = ServerLimits(send_timeout=SHORT, client_rate=0)
    with serve(app, limits) as port:
        sock = connect(port)
        sock.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")  # and never read
        done = finished.wait(PATIENCE)
        sock.close()
    assert done


def test_collector_app_hangs_up_on_slow_clients(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"alpha {make_token()}\n")
    app = collector_app(CollectorConfig(data=tmp_path / "data", tokens=tokens))
    with serve(app, LIMITS) as port:
        idle = connect(port)
        partial = connect(port)
        partial.sendall(b"POST /report HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\n{")
        assert hung_up(idle) and hung_up(partial)


def test_collector_command_runs_within_limits(tmp_path: Path) -> None:
    """`censorscope collector` itself: an idle socket goes within its header timeout (10 s)."""
    tokens = tmp_path / "tokens"
    tokens.write_text(f"alpha {make_token()}\n")
    proc = CollectorProcess(data=tmp_path / "data", tokens=tokens).start()
    try:
        sock = socket.create_connection(("127.0.0.1", proc.port))
        sock.settimeout(3 * ServerLimits().header_timeout)
        try:
            closed = sock.recv(1) == b""
        except TimeoutError:
            closed = False
        sock.close()
    finally:
        proc.stop()
    assert closed


# --- connection limits -------------------------------------------------------------------------


def test_connections_past_the_limit_get_503_and_are_closed() -> None:
    limits = ServerLimits(header_timeout=30, max_connections=5, client_rate=0)
    with serve(helper_app(), limits) as port:
        held = [connect(port) for _ in range(5)]
        time.sleep(0.2)  # let the server accept them all
        extra = [connect(port) for _ in range(20)]
        answers = [s.recv(4096) for s in extra]
        for s in held + extra:
            s.close()
    assert all(a.startswith(b"HTTP/1.1 503") for a in answers)
    assert all(b"connection: close" in a for a in answers)


def test_one_client_cannot_take_every_connection() -> None:
    limits = ServerLimits(header_timeout=30, max_connections_per_client=3, client_rate=0)
    with serve(helper_app(), limits) as port:
        held = [connect(port) for _ in range(3)]
        time.sleep(0.2)
        fourth = connect(port)
        other = connect(port, source="127.0.0.2")
        other.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        refused, served = fourth.recv(4096), other.recv(4096)
        for s in [*held, fourth, other]:
            s.close()
    assert refused.startswith(b"HTTP/1.1 503")
    assert served.startswith(b"HTTP/1.1 200")


def test_connections_are_given_back() -> None:
    """Closed connections no longer count: after a burst of 503s the server takes new ones."""
    limits = ServerLimits(header_timeout=SHORT, max_connections=4, client_rate=0)
    with serve(helper_app(), limits) as port:
        burst = [connect(port) for _ in range(40)]
        for s in burst:
            hung_up(s)
        reply = httpx.get(f"http://127.0.0.1:{port}/", timeout=5)
    assert reply.status_code == 200


# --- the request rate per client ---------------------------------------------------------------


def test_rate_limit_answers_429_per_client() -> None:
    limits = ServerLimits(client_rate=0.5, client_burst=3)
    with serve(helper_app(), limits) as port:
        url = f"http://127.0.0.1:{port}/"
        with httpx.Client() as client:
            replies = [client.get(url) for _ in range(5)]
        transport = httpx.HTTPTransport(local_address="127.0.0.2")
        with httpx.Client(transport=transport) as other:
            elsewhere = other.get(url)
    assert [r.status_code for r in replies] == [200, 200, 200, 429, 429]
    assert int(replies[3].headers["retry-after"]) >= 1
    assert elsewhere.status_code == 200


def test_rate_limit_counts_a_trusted_proxys_forwarded_client() -> None:
    """What docs/deployment.md says: from a peer uvicorn trusts (127.0.0.1 by default) the
    rate limit counts X-Forwarded-For's client; from any other peer the header counts for
    nothing, so a client cannot pick its own bucket."""
    limits = ServerLimits(client_rate=0.5, client_burst=1)
    with serve(helper_app(), limits) as port:
        url = f"http://127.0.0.1:{port}/"
        with httpx.Client() as proxy:
            first, second = (
                proxy.get(url, headers={"x-forwarded-for": ip}) for ip in ("192.0.2.1", "192.0.2.2")
            )
        transport = httpx.HTTPTransport(local_address="127.0.0.3")
        with httpx.Client(transport=transport) as stranger:
            spoofed = [
                stranger.get(url, headers={"x-forwarded-for": ip})
                for ip in ("192.0.2.3", "192.0.2.4")
            ]
    assert first.status_code == second.status_code == 200
    assert [r.status_code for r in spoofed] == [200, 429]


def test_rate_limit_refills_and_forgets_old_clients() -> None:
    now = [0.0]
    limit = ClientRateLimit(slow_app(), rate=2.0, burst=2, max_clients=2, clock=lambda: now[0])
    assert [limit._take("a") for _ in range(3)] == [0.0, 0.0, 0.5]
    now[0] = 1.0
    assert limit._take("a") == 0.0  # two tokens back after a second
    limit._take("b")
    limit._take("c")
    assert list(limit._buckets) == ["b", "c"]


def test_client_key_groups_ipv6_by_64() -> None:
    assert client_key(("2001:db8:1:2::5", 1)) == client_key(("2001:db8:1:2:ffff::9", 2))
    assert client_key(("2001:db8:1:3::5", 1)) != client_key(("2001:db8:1:2::5", 1))
    assert client_key(("::ffff:192.0.2.1", 1)) == "192.0.2.1"


# --- the resolver pool -------------------------------------------------------------------------


def test_slow_lookups_cannot_starve_the_resolver_or_the_loop() -> None:
    release = threading.Event()

    def lookup(host: str, port: Any, family: int, type: int) -> list[tuple[Any, ...]]:
        if host.startswith("slow"):
            release.wait(30)  # a name whose servers never answer
        return [(family, type, 6, "", ("192.0.2.7", 0))]

    pool = ResolverPool(2, lookup=lookup)

    async def run() -> tuple[list[str | None], str | None, int, list[str]]:
        slow = [
            await resolve(f"slow{i}.test", timeout=SHORT, t_zero=0, pool=pool) for i in range(2)
        ]
        busy = pool.busy  # the callers gave up; the threads have not
        refused = await resolve("fast.test", timeout=SHORT, t_zero=0, pool=pool)
        loop_free = await asyncio.wait_for(asyncio.to_thread(lambda: 1), SHORT)
        release.set()
        while pool.busy:
            await asyncio.sleep(0.01)
        after = await resolve("fast.test", timeout=SHORT, t_zero=0, pool=pool)
        assert loop_free == 1
        return [r.failure for r in slow], refused.failure, busy, after.addrs

    slow, refused, busy, after = asyncio.run(run())
    pool.close()
    assert slow == ["generic_timeout_error"] * 2
    assert busy == 2
    assert refused == "generic_timeout_error"  # at once, not queued behind the slow ones
    assert after == ["192.0.2.7"]


def test_helper_uses_its_own_resolver_pool() -> None:
    config = HelperConfig(resolver_threads=3)
    assert config.resolver_pool.threads == 3 and config.resolver_pool is config.resolver_pool


def test_helper_app_lets_its_resolver_threads_go_when_it_stops() -> None:
    """The pool's threads end with the app; a config serving a later app gets a new pool."""
    from fastapi.testclient import TestClient

    config = HelperConfig(resolver_threads=2)
    with TestClient(create_app(config)):
        pool = config.resolver_pool
    assert pool._executor._shutdown  # type: ignore[attr-defined]
    assert config.resolver_pool is not pool
    config.close_resolver_pool()
