"""A transparent TLS interceptor on the censor router, for chosen SNI names.

The censor's nat table redirects the censored vantage's HTTPS connections to the addresses of
the chosen domains to this process (iptables REDIRECT; the original destination comes back from
SO_ORIGINAL_DST). It reads the ClientHello without consuming it (MSG_PEEK) and then:

- SNI in ``intercept_sni``: terminates TLS with a leaf it signs with its *own* CA (the
  "national root" a censored user was made to install), opens TLS to the real server and
  relays, as a re-signing middlebox does;
- SNI in ``regional_cert_sni``: the same, but the leaf is signed by the lab's public CA with a
  key of its own: a CDN edge serving another certificate in the region, which is *not*
  interception and must not be reported as such;
- any other SNI: relays the bytes untouched (the genuine certificate reaches the vantage).

Blocking sockets and a thread per direction: the lab carries a handful of connections.
Run as ``python -m lab.interceptor --scenario FILE --state DIR --port N``.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import socket
import ssl
import sys
import threading
import time
from pathlib import Path

from lab import scenario as scenario_mod
from lab.ca import LeafMaker
from lab.matching import tls_hello_complete, tls_sni

PORT = 8443
INTERCEPTOR_CA = "interceptor-ca.pem"
INTERCEPTOR_KEY = "interceptor-ca-key.pem"
SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h
HELLO_WAIT_S = 3.0
HELLO_LIMIT = 16 * 1024
IO_TIMEOUT_S = 30.0


def original_dst(sock: socket.socket) -> tuple[str, int]:
    """Where the client meant to connect before REDIRECT (struct sockaddr_in)."""
    raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    return socket.inet_ntoa(raw[4:8]), int.from_bytes(raw[2:4], "big")


def peek_hello(sock: socket.socket) -> bytes:
    """The ClientHello's first record, left in the socket for whoever reads next."""
    deadline = time.monotonic() + HELLO_WAIT_S
    data = b""
    while time.monotonic() < deadline:
        data = sock.recv(HELLO_LIMIT, socket.MSG_PEEK)
        if not data or tls_hello_complete(data) or len(data) >= HELLO_LIMIT:
            return data
        time.sleep(0.005)
    return data


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while chunk := src.recv(65536):
            dst.sendall(chunk)
    except (OSError, ssl.SSLError):
        pass
    finally:
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.close()


def relay(a: socket.socket, b: socket.socket) -> None:
    """Copy both ways until either side closes."""
    other = threading.Thread(target=_pump, args=(b, a), daemon=True)
    other.start()
    _pump(a, b)
    other.join(IO_TIMEOUT_S)


class Interceptor:
    def __init__(self, scen: scenario_mod.Scenario, state: Path) -> None:
        self.intercept = set(scen.censor.intercept_sni)
        self.regional = set(scen.censor.regional_cert_sni)
        self.own_ca = LeafMaker(state / INTERCEPTOR_CA, state / INTERCEPTOR_KEY)
        self.public_ca = LeafMaker(state / "ca.pem", state / "ca-key.pem")
        self.upstream_ctx = ssl.create_default_context(cafile=str(state / "ca.pem"))
        self.certs = state / "interceptor-certs"
        self.certs.mkdir(exist_ok=True)
        self.contexts: dict[str, ssl.SSLContext] = {}
        self.lock = threading.Lock()
        self.counts = {"intercepted": 0, "regional": 0, "passed": 0, "errors": 0}

    def context_for(self, name: str) -> ssl.SSLContext:
        with self.lock:
            ctx = self.contexts.get(name)
            if ctx is None:
                maker = self.own_ca if name in self.intercept else self.public_ca
                cert, key = self.certs / f"{name}.pem", self.certs / f"{name}-key.pem"
                cert.write_bytes(maker.leaf_pem([name]))
                key.write_bytes(maker.key_pem())
                key.chmod(0o600)
                ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
                ctx.load_cert_chain(cert, key)
                self.contexts[name] = ctx
            return ctx

    def handle(self, client: socket.socket) -> None:
        upstream: socket.socket | None = None
        try:
            client.settimeout(IO_TIMEOUT_S)
            dst = original_dst(client)
            name = tls_sni(peek_hello(client))
            upstream = socket.create_connection(dst, timeout=IO_TIMEOUT_S)
            if name is None or name not in self.intercept | self.regional:
                self.counts["passed"] += 1
                relay(client, upstream)
                return
            self.counts["intercepted" if name in self.intercept else "regional"] += 1
            tls_client = self.context_for(name).wrap_socket(client, server_side=True)
            tls_up = self.upstream_ctx.wrap_socket(upstream, server_hostname=name)
            relay(tls_client, tls_up)
        except (OSError, ssl.SSLError):
            self.counts["errors"] += 1
        finally:
            for s in (client, upstream):
                if s is not None:
                    with contextlib.suppress(OSError):
                        s.close()

    def serve(self, port: int, stop: threading.Event) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("0.0.0.0", port))
        listener.listen(256)
        listener.settimeout(0.2)
        print("interceptor: ready", flush=True)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            threading.Thread(target=self.handle, args=(conn,), daemon=True).start()
        listener.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab.interceptor")
    parser.add_argument("--scenario", required=True)
    parser.add_argument("--state", required=True)
    parser.add_argument("--port", type=int, default=PORT)
    args = parser.parse_args(argv)
    try:
        scen = scenario_mod.load(args.scenario)
    except scenario_mod.ScenarioError as exc:
        print(f"interceptor: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda _s, _f: stop.set())
    Interceptor(scen, Path(args.state)).serve(args.port, stop)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
