"""web_connectivity measurements of ours, taken on loopback with the *system* resolver.

OONI's pipeline scores the DNS layer only from lookups whose engine is the system resolver
("system", "getaddrinfo"), so these runs use no ``--resolver``. Every name is "localhost",
which getaddrinfo answers from /etc/hosts: no DNS query leaves the machine. (Where
/etc/hosts maps localhost to 127.0.0.1 only, the AAAA half of the lookup finds nothing: the
case that made OONI's pipeline call our correct measurements DNS-blocked.)

Two control helpers (separate ``censorscope helper`` processes, each with its own fake DNS
server) give two views of "localhost":

- the *truthful* helper sees localhost at 127.0.0.1, as the probe does: the sites there are
  reachable (http, https), down (a closed port), or fail TLS everywhere (a wrong certificate
  name) — none of them is blocked;
- the *other* helper sees localhost at 127.0.0.2, where the real page is, while the probe's
  127.0.0.1 serves a block page on the same port: a DNS answer the control never gives, i.e.
  DNS blocking as a censor's resolver produces it.

``loopback_measurements`` returns every stored measurement with ``x_expected`` (the truth:
``"dns"`` or ``False``) added by the caller's side, never by the probe.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.loopback.certs import TestCA
from tests.loopback.control_helper import free_port_on, wait_http
from tests.loopback.dns_server import FakeDNSServer
from tests.loopback.runner import ServerThread
from tests.loopback.web import WebServer, closed_port

CENSORSCOPE = [sys.executable, "-m", "probes.cli"]
HOST = "localhost"


@contextmanager
def _helper(dns: FakeDNSServer, ca: TestCA) -> Iterator[str]:
    port = free_port_on(["127.0.0.1"])
    proc = subprocess.Popen(
        [
            *CENSORSCOPE,
            "helper",
            "--listen",
            f"127.0.0.1:{port}",
            "--resolver",
            dns.address,
            "--allow-private",
            "--ca-file",
            ca.ca_pem_path,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}/"
        wait_http(url)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def _run(results: Path, helper: str, ca: TestCA, inputs: list[str]) -> None:
    cmd = [
        *CENSORSCOPE,
        "run",
        "web_connectivity",
        "--results",
        str(results),
        "--no-progress",
        "--helper",
        helper,
        "--ca-file",
        ca.ca_pem_path,
        "--timeout",
        "10",
    ]
    for url in inputs:
        cmd += ["--input", url]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    if proc.returncode != 0:
        raise RuntimeError(f"probe run failed ({proc.returncode}): {proc.stderr[-2000:]}")


def _stored(results: Path) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for path in sorted(results.glob("raw/date=*/vantage=*/test_name=*/*.jsonl")):
        out.extend(json.loads(line) for line in path.read_bytes().splitlines() if line.strip())
    return out


def loopback_measurements(results: Path | None = None) -> list[dict[str, Any]]:
    """Measure the loopback sites; each stored measurement gets ``x_expected`` (the truth)."""
    results = results or Path(tempfile.mkdtemp(prefix="pipeline-world-"))
    ca = TestCA(results / "ca")
    servers = ServerThread("pipeline-world")
    try:
        web = servers.start(WebServer("127.0.0.1", 0, title="The real site"))
        tls = servers.start(WebServer("127.0.0.1", 0, ca=ca, title="The real site"))
        wrong = servers.start(WebServer("127.0.0.1", 0, ca=ca, cert_hosts=["wrong.example"]))
        lie_port = free_port_on(["127.0.0.1", "127.0.0.2"])
        servers.start(WebServer("127.0.0.1", lie_port, behaviour="blockpage", blockpage_status=451))
        servers.start(WebServer("127.0.0.2", lie_port, title="The real site"))
        truthful = servers.start(FakeDNSServer("127.0.0.3", 0, {HOST: ["127.0.0.1"]}))
        elsewhere = servers.start(FakeDNSServer("127.0.0.3", 0, {HOST: ["127.0.0.2"]}))
        unblocked = [
            f"http://{HOST}:{web.port}/",
            f"https://{HOST}:{tls.port}/",
            f"https://{HOST}:{wrong.port}/",
            f"http://{HOST}:{closed_port('127.0.0.1')}/",
        ]
        with _helper(truthful, ca) as helper:
            _run(results / "truthful", helper, ca, unblocked)
        with _helper(elsewhere, ca) as helper:
            _run(results / "dnslie", helper, ca, [f"http://{HOST}:{lie_port}/"])
    finally:
        servers.close()
    out = []
    for m in _stored(results / "truthful"):
        out.append({**m, "x_expected": False})
    for m in _stored(results / "dnslie"):
        out.append({**m, "x_expected": "dns"})
    return out
