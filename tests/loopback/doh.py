"""A DNS-over-HTTPS server (RFC 8484, POST application/dns-message) on loopback.

uvicorn with a certificate from the test CA serves a zone through dnspython messages, so the
probe's DoH path is exercised against real HTTPS and real DNS wire format.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import uvicorn
from fastapi import FastAPI, Request, Response

from tests.loopback.certs import TestCA

DNS_MESSAGE = "application/dns-message"


def doh_app(zone: dict[str, list[str]]) -> FastAPI:
    app = FastAPI()
    names = {name.lower().rstrip("."): ips for name, ips in zone.items()}

    @app.post("/dns-query")
    async def query(request: Request) -> Response:
        if request.headers.get("content-type") != DNS_MESSAGE:
            return Response(status_code=415)
        message = dns.message.from_wire(await request.body())
        reply = dns.message.make_response(message)
        question = message.question[0]
        ips = names.get(question.name.to_text().lower().rstrip("."))
        if ips is None:
            reply.set_rcode(dns.rcode.NXDOMAIN)
        elif question.rdtype == dns.rdatatype.A:
            v4 = [ip for ip in ips if ":" not in ip]
            if v4:
                reply.answer.append(dns.rrset.from_text_list(question.name, 60, "IN", "A", v4))
        return Response(content=reply.to_wire(want_shuffle=False), media_type=DNS_MESSAGE)

    return app


@contextmanager
def running_doh(
    ca: TestCA, zone: dict[str, list[str]], host: str = "127.0.0.5", names: tuple[str, ...] = ()
) -> Iterator[str]:
    """Serve DoH on https://HOST:PORT/dns-query with a certificate for HOST (and ``names``);
    yield the URL."""
    leaf = ca.ca.issue_cert(host, *names)
    cert_path = Path(ca.directory) / f"doh-{host}.pem"
    key_path = Path(ca.directory) / f"doh-{host}.key"
    leaf.cert_chain_pems[0].write_to_path(str(cert_path))
    leaf.private_key_pem.write_to_path(str(key_path))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((host, 0))
    sock.listen(64)
    config = uvicorn.Config(
        doh_app(zone),
        log_level="warning",
        lifespan="off",
        ssl_certfile=str(cert_path),
        ssl_keyfile=str(key_path),
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("DoH server did not start")
        time.sleep(0.01)
    try:
        yield f"https://{host}:{sock.getsockname()[1]}/dns-query"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
