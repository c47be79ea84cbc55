"""`--ca-file` adds to the system's trust store, it does not replace it.

A test cannot add a CA to this machine's roots, so the "system" roots are a private CA handed to
OpenSSL through SSL_CERT_FILE (and an empty SSL_CERT_DIR) in a subprocess, and `--ca-file` is a
second private CA: a server signed by either must verify, for a measured handshake, for the
helper/collector client (JSONClient) and for DNS over TLS. And every nettest that talks to a
control helper trusts `--ca-file` for that helper too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from backend.helper import HelperConfig
from probes.nettests.base import Nettest, ProbeContext
from probes.nettests.dns_consistency import DNSConsistency
from probes.nettests.sni_blocking import SNIBlocking
from probes.nettests.tcp_connect import TCPConnect
from probes.nettests.tls_interception import TLSInterception
from probes.nettests.web_connectivity import WebConnectivity
from tests.loopback import TestCA
from tests.loopback.control_helper import running_helper

ROOT = Path(__file__).resolve().parents[1]

_CLIENT = """
import asyncio, json, sys, time
from probes.net.http import JSONClient
from probes.net.tls import tls_handshake
from tests.loopback import TestCA, WebServer

async def main(system_dir, extra_dir, extra_pem):
    servers = {"system": WebServer(ca=TestCA(system_dir)), "extra": WebServer(ca=TestCA(extra_dir))}
    for server in servers.values():
        await server.start()
    out = {}
    client = JSONClient(ca_file=extra_pem)
    for name, server in servers.items():
        tls = await tls_handshake(server.host, server.port, "localhost", timeout=5,
                                  t_zero=time.monotonic(), ca_file=extra_pem)
        reply = await client.get_json(server.url("/", host="localhost"), timeout=5)
        out[name] = {"handshake": tls.failure, "json_client": reply.failure,
                     "status": reply.status_code}
    await client.aclose()
    print(json.dumps(out))

asyncio.run(main(*sys.argv[1:]))
"""


def test_ca_file_adds_to_the_system_roots(tmp_path: Path) -> None:
    system, extra = TestCA(tmp_path / "system"), TestCA(tmp_path / "extra")
    (tmp_path / "no-certs").mkdir()
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "SSL_CERT_FILE": system.ca_pem_path,
        "SSL_CERT_DIR": str(tmp_path / "no-certs"),
    }
    argv = [sys.executable, "-c", _CLIENT, str(system.directory), str(extra.directory)]
    done = subprocess.run(
        [*argv, extra.ca_pem_path], env=env, cwd=ROOT, capture_output=True, text=True,
        timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    for name in ("system", "extra"):
        assert result[name] == {"handshake": None, "json_client": None, "status": 200}, result


@pytest.mark.anyio
@pytest.mark.parametrize(
    "nettest", [TCPConnect, WebConnectivity, SNIBlocking, TLSInterception, DNSConsistency]
)
async def test_nettests_trust_ca_file_for_their_helper(
    tmp_path: Path, nettest: type[Nettest]
) -> None:
    """A helper whose certificate comes from --ca-file's CA is reachable (before, the helper
    connection ignored --ca-file and every measurement got a control failure)."""
    ca = TestCA(tmp_path / "ca")
    with running_helper(HelperConfig(allow_private=True), tls=ca) as url:
        ctx = ProbeContext(vantage="t", helpers=[url], timeout=10, ca_file=ca.ca_pem_path)
        test = nettest(ctx)
        await test.setup()
        try:
            control = getattr(test, "control", None)
            assert control is not None, test.warnings
            assert control.unreachable_failure is None, test.warnings
            assert not any("unreachable" in w for w in test.warnings), test.warnings
        finally:
            await test.close()


@pytest.mark.parametrize("content", [None, b"not a certificate\n"])
def test_a_bad_ca_file_is_bad_input_before_measuring(tmp_path: Path, content: bytes | None) -> None:
    """A missing or non-PEM --ca-file: exit 2 naming it, nothing stored, no traceback."""
    ca = tmp_path / "ca.pem"
    if content is not None:
        ca.write_bytes(content)
    proc = subprocess.run(
        [sys.executable, "-m", "probes", "run", "tcp_connect", "--input", "127.0.0.1:9",
         "--ca-file", str(ca), "--helper", "http://127.0.0.1:9/", "--no-progress",
         "--results", str(tmp_path / "r")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert f"CA file {ca}" in proc.stderr and "Traceback" not in proc.stderr
    assert not list((tmp_path / "r").glob("raw/*/*/*/*.jsonl"))


def test_isolate_names_a_bad_ca_file_too(tmp_path: Path) -> None:
    text = tmp_path / "m.txt"
    text.write_text("hello world\n")
    config = tmp_path / "c.toml"
    config.write_text(f'[probe]\nca_file = "{tmp_path / "missing.pem"}"\n')
    proc = subprocess.run(
        [sys.executable, "-m", "probes", "isolate", "--channel", "http-path", "--text", str(text),
         "--config", str(config), "--helper", "http://127.0.0.1:9/",
         "--results", str(tmp_path / "r")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "missing.pem" in proc.stderr and "Traceback" not in proc.stderr
