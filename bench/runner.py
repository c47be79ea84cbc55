"""Throughput and memory of `censorscope run web_connectivity` against loopback servers.

Everything runs on this machine: a DNS server that answers every name with 127.0.0.2 and an
HTTP server there (one process), the control helper (`censorscope helper`, another process)
and the probe (a third), so the figures include the real cost of the control requests.
Prints inputs/s and the probe's peak RSS for each list length.

    python -m bench.runner                   # 1,000 and 100,000 inputs
    python -m bench.runner --sizes 1000 --concurrency 64
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HOST = "127.0.0.2"


def _serve(ready: multiprocessing.synchronize.Event, info: dict[str, str]) -> None:
    """The servers' process: a wildcard DNS server and a plain HTTP site on one event loop."""
    import dns.message
    import dns.rrset

    from tests.loopback import FakeDNSServer, ServerThread, WebServer

    def wildcard(query: dns.message.Message) -> list[tuple[float, dns.message.Message | bytes]]:
        response = dns.message.make_response(query)
        question = query.question[0]
        if question.rdtype == 1:  # A
            response.answer.append(dns.rrset.from_text(question.name, 60, "IN", "A", HOST))
        return [(0.0, response)]

    thread = ServerThread("bench-servers")
    dns_server = thread.start(FakeDNSServer(HOST, 0, {}, handler=wildcard))
    web = thread.start(WebServer(HOST, 0, title="Benchmark site"))
    info["dns"] = dns_server.address
    info["port"] = str(web.port)
    ready.set()
    while True:
        time.sleep(3600)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_http(url: str) -> None:
    for _ in range(200):
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not come up")


def _write_list(path: Path, size: int, port: int) -> None:
    with open(path, "w", encoding="utf-8") as out:
        out.write("url,category_code,category_description,date_added,source,notes\n")
        for i in range(size):
            out.write(f"http://site{i}.bench.test:{port}/,NEWS,News Media,2026-01-01,bench,\n")


def run_one(
    size: int, concurrency: int, dns: str, port: int, helper: str, workdir: Path
) -> dict[str, float]:
    testlist = workdir / f"list-{size}.csv"
    _write_list(testlist, size, port)
    results = workdir / f"results-{size}"
    cmd = [
        sys.executable,
        "-m",
        "probes.cli",
        "run",
        "web_connectivity",
        "--testlist",
        str(testlist),
        "--results",
        str(results),
        "--resolver",
        dns,
        "--helper",
        helper,
        "--no-progress",
        "--concurrency",
        str(concurrency),
        "--timeout",
        "20",
    ]
    usage_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    # Loopback servers of the bench's own: an unattended run that accepts the consent notice.
    env = {**os.environ, "CENSORSCOPE_CONSENT_INFORMED": "true"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    elapsed = time.monotonic() - started
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    before, peak_kib = usage_before.ru_maxrss, usage.ru_maxrss
    cpu = (usage.ru_utime + usage.ru_stime) - (usage_before.ru_utime + usage_before.ru_stime)
    if proc.returncode != 0:
        raise RuntimeError(f"probe failed ({proc.returncode}): {proc.stderr[-2000:]}")
    stored = blocked = 0
    for path in results.glob("raw/*/*/*/*.jsonl"):
        with open(path, "rb") as lines:
            for line in lines:
                stored += 1
                blocked += json.loads(line)["test_keys"].get("blocking") is not False
    return {
        "inputs": size,
        "stored": stored,
        "not_accessible": blocked,
        "seconds": round(elapsed, 2),
        "inputs_per_s": round(size / elapsed, 1),
        # CPU seconds of the probe alone: the rest of the 2 cores went to the helper and servers.
        "probe_cpu_s": round(cpu, 2),
        # ru_maxrss of children is the largest of any child waited so far: the probe's, since
        # the helper and servers are still running (RSS grows monotonically with size if at all).
        "probe_peak_rss_mib": round(max(peak_kib, before) / 1024, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 100_000])
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()

    manager = multiprocessing.Manager()
    info = manager.dict()
    ready = multiprocessing.Event()
    servers = multiprocessing.Process(target=_serve, args=(ready, info), daemon=True)
    servers.start()
    if not ready.wait(30):
        raise RuntimeError("servers did not start")
    helper_port = _free_port()
    helper = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "probes.cli",
            "helper",
            "--listen",
            f"127.0.0.1:{helper_port}",
            "--resolver",
            info["dns"],
            "--allow-private",
            "--client-rate=0",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    helper_url = f"http://127.0.0.1:{helper_port}/"
    try:
        _wait_http(helper_url)
        print(
            f"# web_connectivity on loopback, {os.cpu_count()} cores, "
            f"concurrency {args.concurrency}"
        )
        with tempfile.TemporaryDirectory(prefix="censorscope-bench-") as tmp:
            for size in args.sizes:
                row = run_one(
                    size, args.concurrency, info["dns"], int(info["port"]), helper_url, Path(tmp)
                )
                print(json.dumps(row), flush=True)
    finally:
        helper.terminate()
        helper.wait(10)
        servers.terminate()
    return 0


if __name__ == "__main__":
    sys.exit(main())
