"""python -m tests.loopback: run the loopback servers as a separate process.

Prints one JSON line (where each server listens, the CA PEM path) and serves until
SIGINT/SIGTERM, so the probe can be run as a real subprocess against them.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading

from tests.loopback.certs import TestCA
from tests.loopback.dns_server import MODES, FakeDNSServer
from tests.loopback.suite import DEFAULT_KEYWORD, start_suite


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.loopback", description=__doc__)
    ap.add_argument("--host", default="127.0.0.2", help="address every server binds")
    ap.add_argument("--ca-dir", help="directory for ca.pem/ca.key (reused when present)")
    ap.add_argument("--keyword", default=DEFAULT_KEYWORD, help="keyword that triggers resets")
    ap.add_argument("--zone", help='JSON file {"name": ["ip", ...]} for the DNS server')
    ap.add_argument("--dns-mode", choices=MODES, default="truthful")
    ap.add_argument("--dns-port", type=int, default=0)
    ap.add_argument("--lies", help='JSON file {"name" or "*": ["ip", ...]} for lying modes')
    ap.add_argument("--targets", nargs="*", help="names the DNS mode applies to (default all)")
    ap.add_argument("--nxdomain", nargs="*", default=[], help="names always NXDOMAIN")
    args = ap.parse_args(argv)

    zone = _load_json(args.zone) if args.zone else {}
    lies = _load_json(args.lies) if args.lies else None
    dns = FakeDNSServer(
        args.host,
        args.dns_port,
        zone,
        args.dns_mode,
        lies=lies,
        targets=args.targets,
        nxdomain=args.nxdomain,
    )
    suite = start_suite(args.host, ca=TestCA(args.ca_dir), keyword=args.keyword, dns=dns)
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    print(json.dumps(suite.describe()), flush=True)
    try:
        done.wait()
    finally:
        suite.close()
    return 0


def _load_json(path: str) -> dict[str, list[str]]:
    with open(path, encoding="utf-8") as fh:
        data = json.load(fh)
    if not isinstance(data, dict):
        raise SystemExit(f"{path}: expected a JSON object of name -> [ip, ...]")
    return data


if __name__ == "__main__":
    sys.exit(main())
