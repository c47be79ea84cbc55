"""The lab internet's servers, one asyncio process in cs-internet.

Authoritative DNS (only on the resolver addresses, so every other address has no DNS server:
a probe can use them to detect injection), HTTP on 80/8080 and HTTPS on 443 on every local
address (AnyIP routes), serving a page per scenario domain and echoing anything else, and a
TCP echo on port 7, and the message platform (Platform) on PLATFORM_V4/V6:PLATFORM_PORT.
Encrypted DNS for dnscheck, answering from the same zone on every address: DNS over HTTPS
(POST /dns-query, RFC 8484) on 443 and DNS over TLS (RFC 7858) on 853; plain DNS over UDP
stays on the resolver addresses alone.
Run as `python -m lab.servers --scenario FILE --state DIR`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import itertools
import json
import re
import signal
import socket
import ssl
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset

from lab import addresses, ech, matching, quic_server
from lab import scenario as scenario_mod
from lab.ca import LeafMaker
from lab.http_head import HTML, response_head

HEAD_LIMIT = 64 * 1024
BODY_LIMIT = 1024 * 1024


def page_for(domain: scenario_mod.Domain) -> bytes:
    """A deterministic page with a <title>, long enough for body-length comparisons (and at
    least the domain's ``page_kib``: a page larger than a censor's freeze point)."""
    paragraphs = max(40, domain.page_kib * 1024 // 40 + 1)
    filler = "".join(
        f"<p>Paragraph {i} of {domain.name}: lab content.</p>\n" for i in range(paragraphs)
    )
    return (
        f"<!doctype html><html><head><title>{domain.title}</title></head><body>"
        f"<h1>{domain.title}</h1>\n{filler}</body></html>\n"
    ).encode()


def large_object(size: int = scenario_mod.LARGE_OBJECT_BYTES) -> bytes:
    """The download nettest's object: deterministic bytes that do not compress."""
    pattern = bytes((i * 131 + 7) % 251 for i in range(4096))
    return (pattern * (size // len(pattern) + 1))[:size]


ANSWER_CACHE_LIMIT = 100_000
PREPARED_CERTIFICATES = 5_000  # ~1.2 ms each at start-up; the lab waits 20 s for "ready"


class Zone:
    """Answers DNS queries for the scenario's domains.

    Replies are cached by the query's bytes after its ID: the zone never changes while the
    lab runs, and parsing with dnspython costs ~0.3 ms a query, which at thousands of queries
    a second would make this server the bottleneck of every throughput benchmark.
    """

    def __init__(self, scen: scenario_mod.Scenario) -> None:
        self.records = {d.name: d for d in scen.domains}
        self._cache: dict[bytes, bytes | None] = {}

    def answer(self, wire: bytes) -> bytes | None:
        if len(wire) < 12:
            return None
        key = wire[2:]
        if key in self._cache:
            tail = self._cache[key]
            return None if tail is None else wire[:2] + tail
        reply = self._answer(wire)
        if len(self._cache) >= ANSWER_CACHE_LIMIT:
            self._cache.clear()
        self._cache[key] = None if reply is None else reply[2:]
        return reply

    def _answer(self, wire: bytes) -> bytes | None:
        try:
            query = dns.message.from_wire(wire)
        except Exception:
            return None
        reply = dns.message.make_response(query)
        reply.flags |= dns.flags.AA | dns.flags.RA
        if not query.question:
            reply.set_rcode(dns.rcode.FORMERR)
            return reply.to_wire()
        q = query.question[0]
        name = q.name.to_text().rstrip(".").lower()
        d = self.records.get(name)
        if d is None:
            reply.set_rcode(dns.rcode.NXDOMAIN)
        elif q.rdtype == dns.rdatatype.A:
            reply.answer.append(dns.rrset.from_text(q.name, 300, "IN", "A", d.a))
        elif q.rdtype == dns.rdatatype.AAAA:
            reply.answer.append(dns.rrset.from_text(q.name, 300, "IN", "AAAA", d.aaaa))
        elif q.rdtype == dns.rdatatype.HTTPS and d.scheme == "https":
            reply.answer.append(ech.https_rrset(q.name, d.name))  # ech_check's real ECH
        return reply.to_wire()


class DnsUdp(asyncio.DatagramProtocol):
    def __init__(self, zone: Zone) -> None:
        self.zone = zone
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        reply = self.zone.answer(data)
        if reply is not None and self.transport is not None:
            self.transport.sendto(reply, addr)


@dataclass
class Request:
    method: str
    target: str
    headers: dict[str, str]  # names lower-cased
    head: bytes  # as received, the blank line included
    body: bytes


async def read_request(reader: asyncio.StreamReader) -> Request | None:
    """One HTTP/1.1 request: its head and a Content-Length body (at most BODY_LIMIT bytes);
    None when the peer closed or the head is over HEAD_LIMIT. A bad Content-Length raises
    ValueError, a short body IncompleteReadError: the caller drops the connection."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        return None
    if len(head) > HEAD_LIMIT:
        return None
    lines = head.decode("latin-1").split("\r\n")
    method, target = [*lines[0].split(" "), "", ""][:2]
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    length = min(int(headers.get("content-length", "0") or 0), BODY_LIMIT)
    body = await reader.readexactly(length) if length else b""
    return Request(method, target, headers, head, body)


DNS_MESSAGE = "application/dns-message"
DOT_PORT = 853
DOT_IDLE_S = 2.0  # RFC 7766 section 6.2.3: close idle connections (a helper's GET, too)


class Web:
    """HTTP(S) handler: a domain's page when Host names one that is up, a DoH answer for a
    POST to /dns-query, otherwise an echo; on the censor's block-page server address, the
    block page whatever the Host."""

    def __init__(self, scen: scenario_mod.Scenario, zone: Zone | None = None) -> None:
        self.pages = {d.name: page_for(d) for d in scen.domains if d.block != "down"}
        self.zone = zone
        self.blockpage = scen.censor.blockpage_html()
        self.blockpage_status = scen.censor.blockpage_status
        # Sites with a QUIC server (lab.quic_server) advertise it over HTTPS, as real ones do.
        self.h3 = set(self.pages) if scen.censor.quic_servers else set()
        self.large = large_object()

    def _response(self, request: Request, local: str, keep: bool, tls: bool = False) -> bytes:
        if local in (addresses.BLOCKPAGE_V4, addresses.BLOCKPAGE_V6):
            return (
                response_head(self.blockpage_status, HTML, len(self.blockpage), keep_alive=keep)
                + self.blockpage
            )
        doh = request.method == "POST" and request.target.split("?")[0] == "/dns-query"
        answer = self.zone.answer(request.body) if doh and self.zone is not None else None
        if answer is not None:
            return response_head(200, DNS_MESSAGE, len(answer), keep_alive=keep) + answer
        if request.method == "GET" and request.target == scenario_mod.LARGE_OBJECT_PATH:
            head = response_head(200, "application/octet-stream", len(self.large), keep_alive=keep)
            return head + self.large
        host = request.headers.get("host", "").lower()
        host = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
        page = self.pages.get(host)
        if page is not None:
            alt_svc = quic_server.ALT_SVC if tls and host in self.h3 else ""
            return response_head(200, HTML, len(page), keep_alive=keep, alt_svc=alt_svc) + page
        content = request.head + request.body
        return response_head(200, "text/plain; charset=latin-1", len(content), keep_alive=keep) + (
            content
        )

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sockname = writer.get_extra_info("sockname")
        local = str(sockname[0]).split("%")[0].removeprefix("::ffff:") if sockname else ""
        try:
            while True:
                request = await read_request(reader)
                if request is None:
                    return
                keep = request.headers.get("connection", "").lower() != "close"
                tls = writer.get_extra_info("sslcontext") is not None
                writer.write(self._response(request, local, keep, tls))
                await writer.drain()
                if not keep:
                    return
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            return
        finally:
            with contextlib.suppress(Exception):
                writer.close()


_RELAY_PATH = re.compile(r"^/relay/([A-Za-z0-9_-]{1,64})(?:\?after=(\d+))?$")
MAILBOX_LIMIT = 1000  # messages kept per mailbox (the helper relay's default)
# The account a message is sent from (probes/channels/relay.py SENDER_HEADER; the lab imports
# nothing from probes/, DESIGN 6).
SENDER_HEADER = "X-Censorscope-Sender"


class Platform:
    """A message platform speaking the helper relay's protocol (probes/channels/relay.py).

    POST /relay/{box} {"text": ...} sends, GET /relay/{box}?after=N receives. The scenario's
    [platform] rules apply only to senders of its `regions`, as a national platform filters its
    own region's users: that is the ground truth message_delivery and isolation are checked
    against. A sender that names a registered account (X-Censorscope-Sender) has that account's
    region wherever it connects from (WeChat judges by the phone number an account was
    registered with, Citizen Lab's "One App, Two Systems"); one that names none has the region
    of its address (the cn subnet is "CN"). Matching is on the lower-cased text, every word of
    a combination present (as the helper relay's rules).
    """

    def __init__(self, scen: scenario_mod.Scenario) -> None:
        self.rules = scen.platform.keywords
        self.action = scen.platform.action
        self.platform = scen.platform
        self.cn = [
            ipaddress.ip_network(addresses.CN_SUBNET_V4),
            ipaddress.ip_network(addresses.CN_SUBNET_V6),
        ]
        self.boxes: dict[str, list[dict[str, object]]] = {}
        self.ids = itertools.count(1)
        self.stats = {"sent": 0, "dropped": 0, "rejected": 0, "modified": 0}

    def sender_region(self, peer: str, sender: str | None) -> str:
        """The region the platform files a sender under: its account's, else its address's."""
        if sender:
            registered = self.platform.account_region(sender)
            if registered is not None:
                return registered
        addr = ipaddress.ip_address(peer.split("%", 1)[0])
        return "CN" if any(addr in net for net in self.cn) else ""

    def _censored(self, region: str, text: str) -> tuple[str, ...] | None:
        if region not in self.platform.regions:
            return None
        return matching.keyword_match(text.lower(), self.rules)

    def post(
        self, box: str, peer: str, body: bytes, sender: str | None = None
    ) -> tuple[int, dict[str, object]]:
        try:
            text = json.loads(body)["text"]
        except (ValueError, KeyError, TypeError):
            return 400, {"error": 'body must be {"text": "..."}'}
        if not isinstance(text, str):
            return 400, {"error": "text must be a string"}
        self.stats["sent"] += 1
        message_id = next(self.ids)
        rule = self._censored(self.sender_region(peer, sender), text)
        if rule is not None:
            if self.action == "reject":
                self.stats["rejected"] += 1
                return 403, {"error": "message content denied"}
            if self.action == "drop":
                self.stats["dropped"] += 1
                return 200, {"id": message_id}  # acknowledged like any other: a silent drop
            self.stats["modified"] += 1
            for word in rule:
                text = re.sub(re.escape(word), "*" * len(word), text, flags=re.IGNORECASE)
        box_list = self.boxes.setdefault(box, [])
        box_list.append({"id": message_id, "text": text})
        del box_list[:-MAILBOX_LIMIT]
        return 200, {"id": message_id}

    def get(self, box: str, after: int) -> tuple[int, dict[str, object]]:
        return 200, {"messages": [m for m in self.boxes.get(box, []) if int(m["id"]) > after]}  # type: ignore[call-overload]

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = str(writer.get_extra_info("peername")[0])
        try:
            while True:
                request = await read_request(reader)
                if request is None:
                    return
                m = _RELAY_PATH.match(request.target)
                doc: dict[str, object]
                if m is None:
                    status, doc = 404, {"error": "no such mailbox path"}
                elif request.method == "POST":
                    sender = request.headers.get(SENDER_HEADER.lower())
                    status, doc = self.post(m.group(1), peer, request.body, sender)
                elif request.method == "GET":
                    status, doc = self.get(m.group(1), int(m.group(2) or 0))
                else:
                    status, doc = 405, {"error": "POST or GET"}
                content = json.dumps(doc).encode()
                writer.write(
                    (
                        f"HTTP/1.1 {status} {'OK' if status == 200 else 'Error'}\r\n"
                        "Server: cs-lab-platform\r\nContent-Type: application/json\r\n"
                        f"Content-Length: {len(content)}\r\n\r\n"
                    ).encode()
                    + content
                )
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            return
        finally:
            with contextlib.suppress(Exception):
                writer.close()


async def dot(zone: Zone, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """DNS over TLS: RFC 7766 framing (a two-byte length, then the message) inside TLS."""
    try:
        while True:
            async with asyncio.timeout(DOT_IDLE_S):
                length = int.from_bytes(await reader.readexactly(2), "big")
                query = await reader.readexactly(length)
            reply = zone.answer(query)
            if reply is None:
                return
            writer.write(len(reply).to_bytes(2, "big") + reply)
            await writer.drain()
    except (TimeoutError, ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
        return
    finally:
        with contextlib.suppress(Exception):
            writer.close()


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


DNS_RECEIVE_BUFFER = 8 * 1024 * 1024


def _enlarge_receive_buffer(sock: socket.socket | None) -> None:
    """Room for bursts of thousands of queries (a dns_consistency run at concurrency 2,048):
    with the default ~200 KB buffer the kernel dropped 10% of them (UDP RcvbufErrors).
    SO_RCVBUFFORCE (root, which the lab is) passes net.core.rmem_max."""
    if sock is None:
        return
    for option in (getattr(socket, "SO_RCVBUFFORCE", None), socket.SO_RCVBUF):
        if option is None:
            continue
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, DNS_RECEIVE_BUFFER)
            return
        except OSError:
            continue


def tls_context(state: Path, names: Iterable[str] = ()) -> ssl.SSLContext:
    """A server context that picks a certificate per SNI name.

    The scenario's ``names`` (the first PREPARED_CERTIFICATES) get theirs at start-up, any
    other name on first use: making a certificate while a probe waits cost a quarter of this
    server's CPU in the throughput benchmark, where every input is a new name.
    """
    maker = LeafMaker(state / "ca.pem", state / "ca-key.pem")
    certs = state / "certs"
    certs.mkdir(exist_ok=True)
    key_file = certs / "leaf-key.pem"
    key_file.write_bytes(maker.key_pem())
    contexts: dict[str, ssl.SSLContext] = {}

    def context_for(name: str) -> ssl.SSLContext:
        ctx = contexts.get(name)
        if ctx is None:
            cert_file = certs / f"{name}.pem"
            cert_file.write_bytes(maker.leaf_pem([name]))
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(cert_file, key_file)
            ctx.num_tickets = 0  # no client resumes: tickets would be CPU for nothing
            contexts[name] = ctx
        return ctx

    default = context_for("lab.example")
    for name in itertools.islice(names, PREPARED_CERTIFICATES):
        context_for(name.lower())

    def on_sni(sslobj: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
        if name:
            sslobj.context = context_for(name.lower())

    default.sni_callback = on_sni
    return default


async def serve(scen: scenario_mod.Scenario, state: Path) -> None:
    loop = asyncio.get_running_loop()
    zone = Zone(scen)
    web = Web(scen, zone)
    servers: list[asyncio.AbstractServer] = []
    transports: list[asyncio.BaseTransport] = []
    for ip in (addresses.RESOLVER_V4, addresses.RESOLVER_V6):
        fam = socket.AF_INET6 if ":" in ip else socket.AF_INET
        transport, _ = await loop.create_datagram_endpoint(
            lambda: DnsUdp(zone), local_addr=(ip, 53), family=fam
        )
        _enlarge_receive_buffer(transport.get_extra_info("socket"))
        transports.append(transport)
    ctx = tls_context(state, [d.name for d in scen.domains])
    for port in (80, 8080):
        servers.append(await asyncio.start_server(web.handle, host=None, port=port, backlog=1024))
    servers.append(
        await asyncio.start_server(web.handle, host=None, port=443, ssl=ctx, backlog=1024)
    )
    servers.append(
        await asyncio.start_server(
            lambda r, w: dot(zone, r, w), host=None, port=DOT_PORT, ssl=ctx, backlog=1024
        )
    )
    servers.append(await asyncio.start_server(echo, host=None, port=addresses.ECHO_PORT))
    # A wildcard bind, like the web ports (AnyIP IPv6 addresses cannot be bound one by one);
    # PLATFORM_V4/V6 are the platform's names in the address plan.
    platform = Platform(scen)
    servers.append(
        await asyncio.start_server(platform.handle, host=None, port=addresses.PLATFORM_PORT)
    )
    quic = await quic_server.serve_sites(scen, state)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("servers: ready", flush=True)
    await stop.wait()
    for s in servers:
        s.close()
    for t in transports:
        t.close()
    for q in quic:
        q.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab.servers")
    parser.add_argument("--scenario", required=True)
    parser.add_argument("--state", required=True)
    args = parser.parse_args(argv)
    try:
        scen = scenario_mod.load(args.scenario)
    except scenario_mod.ScenarioError as exc:
        print(f"servers: {exc}", file=sys.stderr)
        return 2
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(serve(scen, Path(args.state)))
    return 0


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when installed: it halves this server's CPU per connection."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


if __name__ == "__main__":
    raise SystemExit(main())
