"""dns_consistency throughput on loopback: names per second with the listening window on.

    python -m bench.dns_throughput [--names 20000] [--concurrency 2048] [--window 0.5]
    python -m bench.dns_throughput --lab [--names 2000]      # as root: in the censor lab

In lab mode a generated scenario of --names domains is brought up and the probe runs inside
cs-vp-cn against the lab resolver, across the censor (which injects, forges NXDOMAIN and bogons
for its share of the names). The control resolver is the same lab resolver: the probe's work per
name is the same as with a trusted one, and the lab has no DNS server outside the censor.

A minimal UDP responder runs in its own process (answering every A query with 127.0.0.2 for the
probe's resolver, and again for the control resolver) so that the probe, not a test server, is
what is measured. The probe runs as `censorscope run dns_consistency` in a subprocess and the
figure is the rate its summary line reports (stored measurements included).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_ANSWER = b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04" + bytes([127, 0, 0, 2])


def responder(host: str, port: int) -> None:
    """Answer every query with one A record, echoing ID and question (no parsing library)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    sock.bind((host, port))
    while True:
        data, addr = sock.recvfrom(2048)
        if len(data) < 17:
            continue
        end = 12
        while end < len(data) and data[end]:
            end += data[end] + 1
        end += 5
        header = data[:2] + b"\x81\x80\x00\x01\x00\x01\x00\x00\x00\x00"
        sock.sendto(header + data[12:end] + _ANSWER, addr)


def _free_udp_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _report(label: str, args: argparse.Namespace, stdout: str, wall: float) -> int:
    match = re.search(r"(\d+) measured, (\d+) blocked, (\d+) inconclusive .*\(([\d.]+)/s\)", stdout)
    if not match:
        print(stdout, file=sys.stderr)
        return 1
    measured, blocked, inconclusive, rate = match.groups()
    print(
        f"dns_consistency {label}: {measured} names, window {args.window}s, "
        f"concurrency {args.concurrency}: {float(rate):.0f} names/s "
        f"(run loop), {int(measured) / wall:.0f} names/s (process wall incl. start-up); "
        f"{blocked} blocked, {inconclusive} inconclusive"
    )
    return 0


def lab_mode(args: argparse.Namespace) -> int:
    from bench.lab_throughput import lab_cpu_seconds
    from lab import scenario, topology

    scen = scenario.generate(args.names, args.seed)
    info = topology.up(scen, helper=False)
    cpu_before: dict[str, float] = {}
    cpu_after: dict[str, float] = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [
                *topology._censorscope_argv(), "run", "dns_consistency",
                "--results", str(Path(tmp) / "results"),
                "--resolver", info.resolver, "--control-resolver", info.resolver,
                "--listen-window", str(args.window), "--concurrency", str(args.concurrency),
                "--no-progress", "--timeout", "10", "--vantage", args.vantage,
            ]  # fmt: skip
            if not args.capture:
                cmd.append("--no-packet-capture")
            for d in scen.domains:
                cmd += ["--input", d.name]
            cpu_before = lab_cpu_seconds()
            started = time.monotonic()
            proc = info.run(args.vantage, cmd, timeout=600)
            wall = time.monotonic() - started
            cpu_after = lab_cpu_seconds()
    finally:
        topology.down()
    if proc.returncode != 0:
        print(proc.stdout, proc.stderr, file=sys.stderr)
        return 1
    status = _report(f"in the lab (cs-vp-{args.vantage})", args, proc.stdout, wall)
    # Which lab process could be the limit: its CPU seconds over the probe's wall time.
    busy = {
        name: (cpu_after[name] - cpu_before.get(name, 0.0)) / wall
        for name in cpu_after
        if cpu_after[name] - cpu_before.get(name, 0.0) > 0.05
    }
    print("lab processes busy (CPU s / probe wall s): "
          + ", ".join(f"{n} {b:.0%}" for n, b in sorted(busy.items())))  # fmt: skip
    return status


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--names", type=int, default=20000)
    ap.add_argument("--concurrency", type=int, default=2048)
    ap.add_argument("--window", type=float, default=0.5)
    ap.add_argument("--lab", action="store_true", help="run in the censor lab (root)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--vantage", default="cn", choices=["cn", "open"], help="lab mode only")
    ap.add_argument(
        "--no-packet-capture",
        dest="capture",
        action="store_false",
        help="switch off the answers' packet capture (on by default when privileged)",
    )
    args = ap.parse_args(argv)
    if args.lab:
        return lab_mode(args)
    host = "127.0.8.1"
    probe_port, control_port = _free_udp_port(host), _free_udp_port(host)
    servers = [
        multiprocessing.Process(target=responder, args=(host, port), daemon=True)
        for port in (probe_port, control_port)
    ]
    for server in servers:
        server.start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            names = Path(tmp) / "names.txt"
            inputs = [f"n{i}.bench.test" for i in range(args.names)]
            cmd = [
                sys.executable, "-c", "from probes.cli import main; main()",
                "run", "dns_consistency", "--results", str(Path(tmp) / "results"),
                "--dns-resolver", f"udp://{host}:{probe_port}",
                "--control-resolver", f"{host}:{control_port}",
                "--bogon-exempt", "127.0.0.0/8", "--listen-window", str(args.window),
                "--concurrency", str(args.concurrency), "--no-progress", "--timeout", "10",
            ]  # fmt: skip
            if not args.capture:
                cmd.append("--no-packet-capture")
            for name in inputs:
                cmd += ["--input", name]
            names.write_text("\n".join(inputs))
            started = time.monotonic()
            # Loopback resolvers of the bench's own: unattended, accepting the consent notice.
            env = {**os.environ, "CENSORSCOPE_CONSENT_INFORMED": "true"}
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
            wall = time.monotonic() - started
    finally:
        for server in servers:
            server.terminate()
    if proc.returncode != 0:
        print(proc.stdout, proc.stderr, file=sys.stderr)
        return 1
    match = re.search(
        r"(\d+) measured, (\d+) blocked, (\d+) inconclusive .*\(([\d.]+)/s\)", proc.stdout
    )
    if not match:
        print(proc.stdout, file=sys.stderr)
        return 1
    measured, blocked, inconclusive, rate = match.groups()
    print(
        f"dns_consistency loopback: {measured} names, window {args.window}s, "
        f"concurrency {args.concurrency}: {float(rate):.0f} names/s "
        f"(run loop), {int(measured) / wall:.0f} names/s (process wall incl. start-up); "
        f"{blocked} blocked, {inconclusive} inconclusive"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
