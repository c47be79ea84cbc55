"""A helper that loses its DNS answer: the probe asks again, and decides what it can.

Issue 14: under 2% loss the helper's lookup lost a datagram and answered `dns.failure` with no
addresses and a failed fetch, while its TCP connects to the probe's addresses worked; six
accessible sites came out null. Here our real helper runs behind a relay that, for the first
request (or every request) of a URL, rewrites its answer to that lossy shape, and the probe
runs against real servers on loopback.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from backend.helper_config import HelperConfig
from tests.loopback import FakeDNSServer, ServerThread, WebServer
from tests.loopback.control_helper import free_port_on, running_asgi, running_helper

CENSORSCOPE = [sys.executable, "-m", "probes.cli"]
LOST = {"failure": "unknown_error", "addrs": []}
FETCH_FAILED = {
    "body_length": -1,
    "failure": "dns_lookup_error",
    "title": "",
    "headers": {},
    "status_code": -1,
}


class LossyRelay:
    """ASGI app: forwards control requests to the real helper; loses the DNS answer of the
    first ``lose`` requests for each URL (as a lost datagram would)."""

    def __init__(self, upstream: str, lose: int) -> None:
        self.upstream, self.lose = upstream, lose
        self.seen: dict[str, int] = {}

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        async with httpx.AsyncClient() as client:
            if scope["method"] == "GET":
                reply = await client.get(self.upstream)
                data = reply.json()
            else:
                reply = await client.post(self.upstream, content=body, timeout=20)
                data = reply.json()
                url = json.loads(body)["http_request"]
                self.seen[url] = self.seen.get(url, 0) + 1
                if self.seen[url] <= self.lose:
                    data["dns"], data["http_request"], data["ip_info"] = LOST, FETCH_FAILED, {}
        payload = json.dumps(data).encode()
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": payload})


@pytest.fixture(scope="module")
def world() -> Iterator[dict[str, Any]]:
    port = free_port_on(["127.0.0.2"])
    closed = free_port_on(["127.0.0.2"])
    servers = ServerThread("wc-partial-control")
    try:
        servers.start(WebServer("127.0.0.2", port, title="Daily Example News", paragraphs=5))
        dns = servers.start(FakeDNSServer("127.0.0.3", 0, {"news.test": ["127.0.0.2"]}))
        config = HelperConfig(resolver=dns.address, allow_private=True)
        with running_helper(config) as helper_url:
            once, always = LossyRelay(helper_url, 1), LossyRelay(helper_url, 1_000)
            with running_asgi(once) as once_url, running_asgi(always) as always_url:
                yield {
                    "port": port,
                    "closed": closed,
                    "dns": dns,
                    "once": once_url,
                    "always": always_url,
                }
    finally:
        servers.close()


def _measure(world: dict[str, Any], results: Path, helper: str, port: int) -> dict[str, Any]:
    url = f"http://news.test:{port}/"
    cmd = [
        *CENSORSCOPE, "run", "web_connectivity", "--input", url, "--results", str(results),
        "--no-progress", "--resolver", world["dns"].address, "--helper", helper,
        "--timeout", "10",
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    [path] = results.glob("raw/date=*/vantage=*/test_name=web_connectivity/*.jsonl")
    [line] = path.read_bytes().splitlines()
    return dict(json.loads(line)["test_keys"])


def test_a_lost_helper_answer_is_asked_again(world: dict[str, Any], tmp_path: Path) -> None:
    keys = _measure(world, tmp_path, world["once"], world["port"])
    assert keys["x_control_asked_again"] is True
    assert keys["control"]["dns"]["addrs"] == ["127.0.0.2"]
    assert keys["blocking"] is False and keys["accessible"] is True
    assert "x_partial_control" not in keys


def test_a_partial_control_still_decides_what_it_saw(world: dict[str, Any], tmp_path: Path) -> None:
    """The helper keeps losing its answer; its connects still count: nothing listens, the
    helper's connect is refused like the probe's, so the site is down, not "ghost DNS"."""
    keys = _measure(world, tmp_path, world["always"], world["closed"])
    assert keys["x_control_asked_again"] is True and keys["x_partial_control"] is True
    assert keys["control"]["dns"] == LOST
    # v0.5 reads the helper's empty answer as ghost DNS and blames DNS.
    assert keys["x_v05_blocking"] == "dns" and keys["x_null_null_flags"] & 16
    # Both sides could not connect (nothing listens): the site is down, not blocked.
    assert keys["blocking"] is False and keys["accessible"] is False


def test_a_partial_control_does_not_blame_an_open_site(
    world: dict[str, Any], tmp_path: Path
) -> None:
    keys = _measure(world, tmp_path, world["always"], world["port"])
    assert keys["x_partial_control"] is True
    assert keys["x_v05_blocking"] == "dns"  # 0.5: ghost DNS and a page without a control page
    # Ours: no control page and no https reference on this port: unknown, never blocked.
    assert keys["blocking"] is None and keys["accessible"] is None
