"""Nettest-specific `run` options reach the nettest (real CLI process, loopback TLS server)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.loopback import ServerThread, TestCA, WebServer
from tests.loopback.web import closed_port

CENSORSCOPE = [sys.executable, "-m", "probes"]


def test_sni_endpoint_control_sni_and_pcap_reach_sni_blocking(
    test_ca: TestCA, tmp_path: Path
) -> None:
    servers = ServerThread("sni-options")
    try:
        web = servers.start(WebServer("127.0.0.2", 0, ca=test_ca))
        dead_helper = f"http://127.0.0.1:{closed_port('127.0.0.1')}/"
        proc = subprocess.run(
            [*CENSORSCOPE, "run", "sni_blocking", "--input", "site.test",
             "--sni-endpoint", web.address, "--control-sni", "control.test",
             "--ca-file", test_ca.ca_pem_path, "--helper", dead_helper,
             "--pcap", str(tmp_path / "pcap"), "--results", str(tmp_path / "r"),
             "--no-progress", "--timeout", "10"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    finally:
        servers.close()
    assert proc.returncode == 0, proc.stderr
    [path] = list((tmp_path / "r").glob("raw/*/*/*/*.jsonl"))
    keys = json.loads(path.read_text().splitlines()[0])["test_keys"]
    assert keys["endpoint"] == web.address
    assert keys["control_sni"] == "control.test"
    assert keys["blocking"] is False
    if os.geteuid() == 0:  # capture needs CAP_NET_RAW; without it the run notes it and goes on
        assert keys["packet_capture"] == "ok"
        assert list((tmp_path / "pcap").glob("*.pcap"))
    else:
        assert keys["packet_capture"] == "unavailable"


def test_no_packet_capture_reaches_tcp_connect(tmp_path: Path) -> None:
    closed = f"127.0.0.2:{closed_port('127.0.0.2')}"
    proc = subprocess.run(
        [*CENSORSCOPE, "run", "tcp_connect", "--input", closed, "--no-packet-capture",
         "--results", str(tmp_path / "r"), "--no-progress", "--timeout", "5"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 3, proc.stderr  # measured; OONI's helpers are unreachable here
    [path] = list((tmp_path / "r").glob("raw/*/*/*/*.jsonl"))
    keys = json.loads(path.read_text().splitlines()[0])["test_keys"]
    # Switched off, nothing is captured or noted (on, it would say "ok" or "unavailable").
    assert "packet_capture" not in keys and "x_packets" not in keys
