"""The control helper under a real uvicorn on a background thread, for in-process tests."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn

from backend.helper import HelperConfig, create_app
from tests.loopback.certs import TestCA


@contextmanager
def running_helper(
    config: HelperConfig, host: str = "127.0.0.1", *, tls: TestCA | None = None
) -> Iterator[str]:
    """Serve the helper app on ``host`` (a free port) and yield its base URL; with ``tls``,
    over HTTPS with a certificate from that CA for ``host`` and localhost."""
    with running_asgi(create_app(config), host, tls=tls) as url:
        yield url


@contextmanager
def running_asgi(app: Any, host: str = "127.0.0.1", *, tls: TestCA | None = None) -> Iterator[str]:
    """Serve any ASGI app on ``host`` (a free port) and yield its base URL."""
    options: dict[str, Any] = {}
    if tls is not None:
        pem = tls.directory / f"helper-{host}.pem"
        tls.ca.issue_cert(host, "localhost").private_key_and_cert_chain_pem.write_to_path(str(pem))
        options = {"ssl_certfile": str(pem)}
    config = uvicorn.Config(
        app, log_level="warning", lifespan="off", interface="asgi3", server_header=False, **options
    )
    with uvicorn_on(config, host) as port:
        yield f"{'https' if tls else 'http'}://{host}:{port}/"


@contextmanager
def uvicorn_on(config: uvicorn.Config, host: str = "127.0.0.1") -> Iterator[int]:
    """Run a uvicorn server with ``config`` on ``host`` (a free port) and yield the port."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((host, 0))
    sock.listen(2048)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    try:
        yield int(sock.getsockname()[1])
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def wait_http(url: str, deadline: float = 20.0) -> None:
    """Until ``url`` answers 200 (a helper or site started as a separate process)."""
    import urllib.request

    end = time.monotonic() + deadline
    while time.monotonic() < end:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


def free_port_on(hosts: list[str]) -> int:
    """A TCP port free on every one of these addresses."""
    for _ in range(50):
        with socket.socket() as first:
            first.bind((hosts[0], 0))
            port = int(first.getsockname()[1])
        ok = True
        for host in hosts[1:]:
            with socket.socket() as other:
                try:
                    other.bind((host, port))
                except OSError:
                    ok = False
                    break
        if ok:
            return port
    raise RuntimeError("no common free port")
