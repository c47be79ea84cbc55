"""Plain clients run inside a vantage to see what the censor does (tests and by hand).

Deliberately independent of the probe: the lab checks its censor with its own simple clients.
Each command prints one JSON object. Run inside a namespace, e.g.
`ip netns exec cs-vp-cn python -m lab.client http --ip 11.1.0.8 --host keyword-reset.example`.
"""

from __future__ import annotations

import argparse
import json
import re
import socket
import ssl
import sys
import time
from typing import Any

import dns.message
import dns.rdatatype


def _family(ip: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in ip else socket.AF_INET


def _outcome(exc: BaseException) -> str:
    if isinstance(exc, ConnectionResetError):
        return "reset"
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, TimeoutError | socket.timeout):
        return "timeout"
    if isinstance(exc, ssl.SSLError):
        return "tls_error"
    return f"error:{type(exc).__name__}"


def _connect(ip: str, port: int, timeout: float) -> socket.socket:
    sock = socket.socket(_family(ip), socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.connect((ip, port))
    return sock


def _read_all(sock: socket.socket | ssl.SSLSocket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def _response(data: bytes) -> dict[str, Any]:
    head, _, body = data.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0].decode("latin-1")
    m = re.search(rb"<title>(.*?)</title>", body, re.IGNORECASE | re.DOTALL)
    parts = status_line.split()
    return {
        "status": int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None,
        "title": m.group(1).decode("utf-8", "replace") if m else None,
        "body_length": len(body),
    }


def http(args: argparse.Namespace) -> dict[str, Any]:
    """GET with the request optionally cut into two TCP segments at byte --split."""
    request = (
        f"GET {args.path} HTTP/1.1\r\nHost: {args.host}\r\nUser-Agent: cs-lab-client\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    result: dict[str, Any] = {
        "ip": args.ip,
        "port": args.port,
        "host": args.host,
        "path": args.path,
    }
    try:
        sock = _connect(args.ip, args.port, args.timeout)
    except OSError as exc:
        return {**result, "outcome": "connect_" + _outcome(exc)}
    try:
        if args.split:
            sock.sendall(request[: args.split])
            time.sleep(0.05)  # the first segment leaves before the second is written
            sock.sendall(request[args.split :])
        else:
            sock.sendall(request)
        data = _read_all(sock)
    except OSError as exc:
        return {**result, "outcome": _outcome(exc)}
    finally:
        sock.close()
    if not data:
        return {**result, "outcome": "eof"}
    return {**result, "outcome": "ok", **_response(data)}


def tls(args: argparse.Namespace) -> dict[str, Any]:
    """TLS handshake with --sni to --ip, trusting the lab CA; then GET / over it."""
    result: dict[str, Any] = {"ip": args.ip, "port": args.port, "sni": args.sni}
    ctx = ssl.create_default_context(cafile=args.ca)
    try:
        raw = _connect(args.ip, args.port, args.timeout)
    except OSError as exc:
        return {**result, "outcome": "connect_" + _outcome(exc)}
    try:
        with ctx.wrap_socket(raw, server_hostname=args.sni) as sock:
            sock.sendall(
                f"GET / HTTP/1.1\r\nHost: {args.sni}\r\nConnection: close\r\n\r\n".encode()
            )
            data = _read_all(sock)
    except (OSError, ssl.SSLError) as exc:
        return {**result, "outcome": _outcome(exc)}
    finally:
        raw.close()
    return {**result, "outcome": "ok", **_response(data)}


def tcp(args: argparse.Namespace) -> dict[str, Any]:
    try:
        _connect(args.ip, args.port, args.timeout).close()
    except OSError as exc:
        return {"ip": args.ip, "port": args.port, "outcome": _outcome(exc)}
    return {"ip": args.ip, "port": args.port, "outcome": "ok"}


def dns_query(args: argparse.Namespace) -> dict[str, Any]:
    """One UDP query; every answer that arrives within --wait seconds, in arrival order."""
    query = dns.message.make_query(args.name, args.type)
    sock = socket.socket(_family(args.server), socket.SOCK_DGRAM)
    sock.sendto(query.to_wire(), (args.server, 53))
    answers: list[dict[str, Any]] = []
    deadline = time.monotonic() + args.wait
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            data, _ = sock.recvfrom(65535)
        except TimeoutError:
            break
        except OSError as exc:  # e.g. ICMP port unreachable from an address with no DNS server
            answers.append({"error": _outcome(exc)})
            break
        reply = dns.message.from_wire(data)
        addrs = [
            rd.to_text()
            for rrset in reply.answer
            for rd in rrset
            if rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA)
        ]
        answers.append({"rcode": dns.rcode.to_text(reply.rcode()), "addrs": addrs})
    return {"name": args.name, "server": args.server, "type": args.type, "answers": answers}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab.client")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("http")
    p.add_argument("--ip", required=True)
    p.add_argument("--port", type=int, default=80)
    p.add_argument("--host", required=True)
    p.add_argument("--path", default="/")
    p.add_argument("--split", type=int, default=0, help="cut the request into 2 segments here")
    p.add_argument("--timeout", type=float, default=3.0)
    p.set_defaults(fn=http)
    p = sub.add_parser("tls")
    p.add_argument("--ip", required=True)
    p.add_argument("--port", type=int, default=443)
    p.add_argument("--sni", required=True)
    p.add_argument("--ca", required=True)
    p.add_argument("--timeout", type=float, default=3.0)
    p.set_defaults(fn=tls)
    p = sub.add_parser("tcp")
    p.add_argument("--ip", required=True)
    p.add_argument("--port", type=int, default=80)
    p.add_argument("--timeout", type=float, default=3.0)
    p.set_defaults(fn=tcp)
    p = sub.add_parser("dns")
    p.add_argument("name")
    p.add_argument("--server", required=True)
    p.add_argument("--type", default="A")
    p.add_argument("--wait", type=float, default=1.0)
    p.set_defaults(fn=dns_query)
    args = parser.parse_args(argv)
    json.dump(args.fn(args), sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
