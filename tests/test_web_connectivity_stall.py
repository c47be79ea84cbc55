"""web_connectivity 0.5.29's byte curve and `http.stalled`, with real servers on loopback: a
1 MiB object behind a relay that stops forwarding a name's server bytes after 16 KiB (as
Russia's TSPU does), for the probe only (run as a command; the control helper, in this
process, gets the whole object). Decided on bytes and on the gap before the deadline, never on
a measured duration."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from backend.helper_config import HelperConfig
from probes.nettests.wc_stall import STALL_IDLE_S, stalled_at
from tests.loopback import FakeDNSServer, ServerThread
from tests.loopback.certs import TestCA
from tests.loopback.control_helper import free_port_on, running_helper
from tests.loopback.throttle import ObjectServer, SniShaper

CENSORSCOPE = [sys.executable, "-m", "probes.cli"]
FREEZE_AT = 16 * 1024
RELAY_IP = "127.0.0.5"


@pytest.fixture(scope="module")
def world() -> Iterator[dict[str, Any]]:
    ca = TestCA()
    port = free_port_on([RELAY_IP])
    with ServerThread("wc-stall") as servers:
        origin = servers.start(ObjectServer(ca))
        servers.start(
            SniShaper(
                RELAY_IP,
                ("127.0.0.1", origin.port),
                freeze_after={"frozen.test": FREEZE_AT},
                port=port,
                spare_own=True,
            )
        )
        zone = {"frozen.test": [RELAY_IP], "open.test": [RELAY_IP]}
        dns = servers.start(FakeDNSServer("127.0.0.3", 0, zone))
        config = HelperConfig(resolver=dns.address, allow_private=True, ca_file=ca.ca_pem_path)
        with running_helper(config) as helper_url:
            yield {"port": port, "ca": ca, "dns": dns, "helper": helper_url}


def _measure(world: dict[str, Any], results: Path, host: str) -> dict[str, Any]:
    url = f"https://{host}:{world['port']}/large.bin"
    cmd = [
        *CENSORSCOPE, "run", "web_connectivity", "--input", url, "--results", str(results),
        "--no-progress", "--resolver", world["dns"].address, "--helper", world["helper"],
        "--ca-file", world["ca"].ca_pem_path, "--timeout", "10",
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    [path] = results.glob("raw/date=*/vantage=*/test_name=web_connectivity/*.jsonl")
    [line] = path.read_bytes().splitlines()
    measurement = json.loads(line)
    assert measurement["test_version"] == "0.5.29"
    keys: dict[str, Any] = measurement["test_keys"]
    return keys


def _curve(keys: dict[str, Any]) -> list[dict[str, Any]]:
    return [e for e in keys["network_events"] if e["operation"] == "bytes_received_cumulative"]


def test_a_body_frozen_for_the_probe_is_stalled(world: dict[str, Any], tmp_path: Path) -> None:
    keys = _measure(world, tmp_path, "frozen.test")
    assert keys["http_experiment_failure"] == "generic_timeout_error"
    assert (keys["blocking"], keys["blocking_detail"]) == ("http-failure", "http.stalled")
    curve = _curve(keys)
    # The relay forwarded exactly FREEZE_AT bytes of the server's side, TLS included.
    assert stalled_at(keys) == max(e["num_bytes"] for e in curve) == FREEZE_AT
    assert all("fetch_body=true" in e["tags"] for e in curve)


def test_a_whole_body_has_a_curve_and_no_stall(world: dict[str, Any], tmp_path: Path) -> None:
    keys = _measure(world, tmp_path, "open.test")
    assert keys["blocking"] is False and keys["http_experiment_failure"] is None
    curve = _curve(keys)
    counts = [e["num_bytes"] for e in curve]
    assert counts == sorted(counts) and counts[-1] > 1 << 20
    assert stalled_at(keys) is None


def _events(*spec: tuple[str, float, int | None]) -> list[dict[str, Any]]:
    out = []
    for op, t, n in spec:
        e: dict[str, Any] = {"operation": op, "t": t, "failure": None}
        if n is not None:
            e["num_bytes"] = n
        out.append(e)
    return out


def test_only_bytes_then_silence_until_the_deadline_is_a_stall() -> None:
    idle = STALL_IDLE_S + 0.5

    def keys(last_t: float, last_n: int) -> dict[str, Any]:
        events = _events(
            ("http_transaction_start", 0.0, None),
            ("http_wrote_headers", 0.1, None),
            ("bytes_received_cumulative", 0.1, 3000),
            ("bytes_received_cumulative", last_t, last_n),
            ("http_transaction_done", 1.0 + idle, None),
        )
        events[-1]["failure"] = "generic_timeout_error"
        return {"http_experiment_failure": "generic_timeout_error", "network_events": events}

    assert stalled_at(keys(1.0, 16000)) == 16000
    # Still receiving at the deadline: slow, not stalled.
    assert stalled_at(keys(1.0 + idle - 0.1, 16000)) is None
    # A few hundred bytes after the request (session tickets) say nothing.
    assert stalled_at(keys(1.0, 3500)) is None
    assert stalled_at({**keys(1.0, 16000), "http_experiment_failure": "connection_reset"}) is None
