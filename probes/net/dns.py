"""DNS lookups as observations: the ``queries`` entries of ooni/spec df-002-dnst.

UDP is implemented here on an asyncio datagram socket rather than with a stub
resolver library because censors *inject* answers: a forged response races the
real one, and a stub resolver keeps only the first. With ``listen_window`` > 0 we
keep the socket open after the first valid answer and record every datagram that
arrives (OONI v0.5 calls these duplicate responses). TCP, DoT and DoH go through
dnspython, where injection of a second answer is not possible in the same way.
"""

from __future__ import annotations

import asyncio
import functools
import socket
import ssl
from dataclasses import dataclass, field
from typing import Any, Protocol

import dns.asyncquery
import dns.exception
import dns.message
import dns.rcode
import dns.rdatatype

from probes.net import dns_wire
from probes.net import failures as F
from probes.net.addresses import format_host_port, parse_host_port
from probes.net.failures import failure_from_exception
from probes.net.records import b64, since
from probes.net.resolver_pool import ResolverPool
from probes.net.tls import client_context, verifying_context

DNS_PORT = 53
DOT_PORT = 853
TRANSPORTS = ("udp", "tcp", "doh", "dot")

_RCODE_FAILURES: dict[int, str] = {
    dns.rcode.NXDOMAIN: F.DNS_NXDOMAIN_ERROR,
    dns.rcode.REFUSED: F.DNS_REFUSED_ERROR,
    dns.rcode.SERVFAIL: F.DNS_SERVFAIL_ERROR,
}


@dataclass
class DNSResult:
    domain: str
    query_type: str
    failure: str | None
    addrs: list[str] = field(default_factory=list)
    answers: list[dict[str, Any]] = field(default_factory=list)  # df-002 answer entries
    queries: list[dict[str, Any]] = field(default_factory=list)  # df-002 'queries' entries
    t0: float = 0.0
    t: float = 0.0
    resolver: str | None = None  # "ip:port", a DoH URL, or None for the system resolver
    # Every datagram received for the query, first valid one included, in arrival order:
    # {"t", "rcode", "answers", "addrs", "raw" (base64 wire), "valid", "id_match"}.
    extra_responses: list[dict[str, Any]] = field(default_factory=list)
    engine: str = "udp"
    rcode: int | None = None
    # UDP only: the query's transaction ID and our socket's port, which identify its answers
    # among captured packets (probes.net.dns_packets).
    query_id: int | None = None
    local_port: int | None = None
    # UDP: how many times the query was sent (retransmitted on the same socket, same ID).
    transmissions: int = 1


def answers_of(msg: dns.message.Message) -> list[dict[str, Any]]:
    """df-002 answer entries (A, AAAA, CNAME; others by their text form)."""
    out: list[dict[str, Any]] = []
    for rrset in msg.answer:
        for rd in rrset:
            entry: dict[str, Any] = {
                "answer_type": dns.rdatatype.to_text(rd.rdtype),
                "ttl": int(rrset.ttl),
            }
            if rd.rdtype == dns.rdatatype.A:
                entry["ipv4"] = rd.address
            elif rd.rdtype == dns.rdatatype.AAAA:
                entry["ipv6"] = rd.address
            elif rd.rdtype == dns.rdatatype.CNAME:
                entry["hostname"] = rd.target.to_text()
            else:
                entry["hostname"] = rd.to_text()
            out.append(entry)
    return out


def _addrs_of(answers: list[dict[str, Any]], query_type: str) -> list[str]:
    key = "ipv6" if query_type == "AAAA" else "ipv4"
    return [a[key] for a in answers if a["answer_type"] == query_type and key in a]


def _failure_of(rcode: int, addrs: list[str]) -> str | None:
    if rcode != dns.rcode.NOERROR:
        return _RCODE_FAILURES.get(rcode, F.DNS_SERVER_MISBEHAVING)
    return None if addrs else F.DNS_NO_ANSWER


def _query_record(
    res: DNSResult, resolver_address: str, raw: bytes | None, answers: list[dict[str, Any]]
) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "answers": answers,
        "engine": res.engine,
        "failure": res.failure,
        "hostname": res.domain,
        "query_type": res.query_type,
        "resolver_hostname": None,
        "resolver_port": None,
        "resolver_address": resolver_address,
        "t0": res.t0,
        "t": res.t,
    }
    if raw is not None:
        rec["raw_response"] = b64(raw)
    if res.rcode is not None:
        rec["rcode"] = res.rcode
    if res.transmissions > 1:
        rec["x_transmissions"] = res.transmissions
    return rec


@dataclass(slots=True)
class _Question:
    """One query's wire bytes and what a response must echo (ID, name, type)."""

    id: int
    qname_wire: bytes  # uncompressed wire form of the name
    qtype: int
    wire: bytes
    message: dns.message.Message | None = None  # built only when dnspython must judge a reply

    def as_message(self) -> dns.message.Message:
        if self.message is None:
            self.message = dns.message.from_wire(self.wire)
        return self.message


def _question(domain: str, query_type: str) -> _Question:
    """Encode the query ourselves for plain names (dnspython's make_query cost ~35 us)."""
    qtype = dns_wire.QTYPES.get(query_type)
    qname = dns_wire.encode_qname(domain) if qtype else None
    if qtype is None or qname is None:
        query = dns.message.make_query(domain, query_type)
        q = query.question[0]
        return _Question(query.id, q.name.to_wire() or b"", int(q.rdtype), query.to_wire(), query)
    qid = dns_wire.new_id()
    return _Question(qid, qname, qtype, dns_wire.encode_query(qname, qtype, qid))


class _Listener:
    """A connected UDP socket read by the event loop: every datagram with its arrival time.

    Plain socket + add_reader rather than create_datagram_endpoint: a transport and protocol
    per query cost ~40 us more, which showed at thousands of queries per second.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, ip: str, port: int, t_zero: float):
        self.loop, self.t_zero = loop, t_zero
        self.datagrams: list[tuple[float, bytes]] = []
        self.error: OSError | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.sock = socket.socket(
            socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_DGRAM
        )
        self.reading = False
        try:
            self.sock.setblocking(False)
            self.sock.connect((ip, port))
            loop.add_reader(self.sock.fileno(), self._readable)
            self.reading = True
        except BaseException:
            self.sock.close()
            raise

    @property
    def local_port(self) -> int:
        return int(self.sock.getsockname()[1])

    def _readable(self) -> None:
        # One datagram per call: the loop calls again while more are queued (level-triggered),
        # and a second recv would mostly raise BlockingIOError, which costs more than a call.
        try:
            self.datagrams.append((since(self.t_zero), self.sock.recv(65535)))
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:  # e.g. ICMP port unreachable on a connected socket
            self.error = exc
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def wait(self) -> None:
        """Until at least one more datagram (or an error) arrived."""
        self.waiter = self.loop.create_future()
        try:
            await self.waiter
        finally:
            self.waiter = None

    def close(self) -> None:
        if self.reading:
            self.loop.remove_reader(self.sock.fileno())
            self.reading = False
        self.sock.close()


def _parse_response(question: _Question, query_type: str, t: float, data: bytes) -> dict[str, Any]:
    """One datagram as an x_responses entry; the fast reader first, dnspython otherwise."""
    entry: dict[str, Any] = {"t": t, "raw": b64(data), "valid": False, "id_match": False}
    reply = dns_wire.parse_reply(data)
    if reply is not None:
        entry.update(
            rcode=reply.rcode,
            answers=reply.answers,
            addrs=_addrs_of(reply.answers, query_type),
            id_match=reply.id == question.id,
            valid=dns_wire.is_response_to(reply, question.id, question.qname_wire, question.qtype),
        )
        return entry
    try:
        msg = dns.message.from_wire(data)
    except Exception as exc:  # dnspython raises DNSException subclasses for bad wire data
        entry.update(rcode=None, answers=[], addrs=[], error=failure_from_exception(exc))
        return entry
    answers = answers_of(msg)
    entry.update(
        rcode=int(msg.rcode()),
        answers=answers,
        addrs=_addrs_of(answers, query_type),
        id_match=msg.id == question.id,
        valid=question.as_message().is_response(msg),
    )
    return entry


async def _first_valid(
    listener: _Listener, question: _Question, query_type: str, parsed: list[dict[str, Any]]
) -> tuple[dict[str, Any], bytes]:
    """Parse datagrams as they come until a valid response; raises the socket's error."""
    while True:
        while len(parsed) < len(listener.datagrams):
            t, data = listener.datagrams[len(parsed)]
            entry = _parse_response(question, query_type, t, data)
            parsed.append(entry)
            if entry["valid"]:
                return entry, data
        if listener.error is not None:
            raise listener.error
        await listener.wait()


async def _await_answer(
    listener: _Listener,
    question: _Question,
    res: DNSResult,
    parsed: list[dict[str, Any]],
    timeout: float,
    transmissions: int,
) -> tuple[dict[str, Any], bytes]:
    """The first valid answer within `timeout`, sending the query again (same socket, same ID)
    every timeout/transmissions seconds while none came, as a stub resolver retransmits: an
    answer to any transmission counts, a slow answer to the first one included."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    interval = timeout / max(1, transmissions)
    while True:
        last = res.transmissions >= transmissions
        limit = deadline if last else min(deadline, loop.time() + interval)
        try:
            async with asyncio.timeout_at(limit):
                return await _first_valid(listener, question, res.query_type, parsed)
        except TimeoutError:
            if last or loop.time() >= deadline:
                raise
        listener.sock.send(question.wire)
        res.transmissions += 1


class AnswerCapture(Protocol):
    """What _resolve_udp needs of a packet capture (probes.net.dns_packets.DNSCapture)."""

    def begin(self, local_port: int) -> None: ...

    def finish(
        self, local_port: int, entries: list[dict[str, Any]], datagrams: list[bytes]
    ) -> None: ...


async def _resolve_udp(
    res: DNSResult,
    ip: str,
    port: int,
    timeout: float,
    t_zero: float,
    listen_window: float,
    capture: AnswerCapture | None = None,
    transmissions: int = 1,
) -> tuple[bytes | None, list[dict[str, Any]]]:
    loop = asyncio.get_running_loop()
    question = _question(res.domain, res.query_type)
    listener = _Listener(loop, ip, port, t_zero)
    first: dict[str, Any] | None = None
    first_raw: bytes | None = None
    parsed: list[dict[str, Any]] = []  # each datagram parsed once, in arrival order
    res.query_id = question.id
    try:
        res.local_port = listener.local_port
        if capture is not None:
            capture.begin(res.local_port)
        listener.sock.send(question.wire)
        try:
            first, first_raw = await _await_answer(
                listener, question, res, parsed, timeout, transmissions
            )
        except (TimeoutError, OSError) as exc:
            res.failure = failure_from_exception(exc)
        if first is not None and listen_window > 0:
            await asyncio.sleep(listen_window)
    except BaseException:
        if capture is not None and res.local_port is not None:
            capture.finish(res.local_port, [], [])
        raise
    finally:
        listener.close()
    res.extra_responses = parsed + [
        _parse_response(question, res.query_type, t, d)
        for t, d in listener.datagrams[len(parsed) :]
    ]
    if capture is not None and res.local_port is not None:
        datagrams = [d for _, d in listener.datagrams]
        capture.finish(res.local_port, res.extra_responses, datagrams)
    if first is None:
        return None, []
    res.rcode = first["rcode"]
    res.addrs = list(first["addrs"])
    res.failure = _failure_of(first["rcode"], res.addrs)
    return first_raw, list(first["answers"])


@functools.lru_cache(maxsize=16)
def _doh_context(ca_file: str | None) -> ssl.SSLContext:
    """One verifying context per CA file for DoH: building one per query (system roots loaded
    each time) cost more than the query. Not tls.client_context's: httpcore sets ALPN on the
    context it is given."""
    return verifying_context(ca_file)


async def _resolve_lib(
    res: DNSResult,
    transport: str,
    resolver: str,
    timeout: float,
    ca_file: str | None,
) -> tuple[bytes | None, list[dict[str, Any]]]:
    """TCP, DoT and DoH through dnspython; raises on network failure."""
    query = dns.message.make_query(res.domain, res.query_type)
    if transport == "doh":
        # An SSLContext, not a CA path: httpx deprecated verify=<str>.
        reply = await dns.asyncquery.https(
            query, resolver, timeout=timeout, verify=_doh_context(ca_file)
        )
    else:
        ip, port = parse_host_port(resolver, DOT_PORT if transport == "dot" else DNS_PORT)
        if transport == "tcp":
            reply = await dns.asyncquery.tcp(query, ip, timeout=timeout, port=port)
        else:
            # DoT by IP: no name to check (RFC 7858 opportunistic/strict by SPKI)
            ctx = client_context(ca_file, check_hostname=False)
            reply = await dns.asyncquery.tls(query, ip, timeout=timeout, port=port, ssl_context=ctx)
    answers = answers_of(reply)
    res.rcode = reply.rcode()
    res.addrs = _addrs_of(answers, res.query_type)
    res.failure = _failure_of(res.rcode, res.addrs)
    return reply.to_wire(), answers


# query_type of one getaddrinfo call for every family (AF_UNSPEC). OONI's probe (measurexlite,
# web_connectivity 0.5) records such a lookup as one entry, query_type "ANY", engine
# "getaddrinfo", with the answers of both families and a failure only when the whole lookup
# failed. ooni/data's pipeline reads a failure on any system/getaddrinfo entry as DNS
# interference, so a missing family must not be written as a failed query of its own.
QUERY_ANY = "ANY"
_FAMILIES = {"A": socket.AF_INET, "AAAA": socket.AF_INET6, QUERY_ANY: socket.AF_UNSPEC}


async def _resolve_system(
    res: DNSResult, timeout: float, pool: ResolverPool | None = None
) -> list[dict[str, Any]]:
    """getaddrinfo in the loop's thread pool (or `pool`), as OONI's "getaddrinfo" engine.

    "A" and "AAAA" ask for one family; "ANY" makes one lookup for both (AF_UNSPEC).
    """
    family = _FAMILIES[res.query_type]  # resolve() checked it
    async with asyncio.timeout(timeout):
        if pool is not None:
            infos = await pool.getaddrinfo(res.domain, None, family=family, type=socket.SOCK_STREAM)
        else:
            infos = await asyncio.get_running_loop().getaddrinfo(
                res.domain, None, family=family, type=socket.SOCK_STREAM
            )
    addrs: list[str] = []
    for info in infos:
        addr = str(info[4][0])
        if addr not in addrs:
            addrs.append(addr)
    res.addrs = addrs
    res.failure = None if addrs else F.DNS_NO_ANSWER
    return [
        {"answer_type": "AAAA", "ipv6": a, "ttl": None}
        if ":" in a
        else {"answer_type": "A", "ipv4": a, "ttl": None}
        for a in addrs
    ]


async def resolve(
    domain: str,
    *,
    query_type: str = "A",
    resolver: str | None = None,
    transport: str = "udp",
    timeout: float = 5.0,
    t_zero: float,
    listen_window: float = 0.0,
    ca_file: str | None = None,
    capture: AnswerCapture | None = None,
    pool: ResolverPool | None = None,
    transmissions: int = 1,
) -> DNSResult:
    """Resolve ``domain``; never raises on network failure.

    ``resolver``: None for the system resolver (getaddrinfo; ``query_type`` "ANY" makes one
    lookup for both families), else "IP", "IP:PORT", "[v6]:PORT", or for DoH the URL.
    ``listen_window`` (UDP only): seconds to keep listening after the first valid answer.
    ``ca_file``: trust anchors for DoH/DoT (tests use a private CA). ``capture`` (UDP only):
    a run-wide packet capture that adds each answer's IP TTL and
    IP-ID to its ``extra_responses`` entry.
    ``pool``: the system resolver's threads (probes.net.resolver_pool; default the loop's
    executor). ``transmissions`` (UDP only): times the query may be sent, again every
    ``timeout / transmissions`` seconds without a valid answer (recorded as
    ``x_transmissions``).
    """
    domain = domain.rstrip(".")
    query_type = query_type.upper()
    if resolver is None and query_type not in _FAMILIES:
        raise ValueError(f"the system resolver answers A, AAAA or ANY, not {query_type!r}")
    res = DNSResult(domain=domain, query_type=query_type, failure=None, t0=since(t_zero))
    raw: bytes | None = None
    answers: list[dict[str, Any]] = []
    resolver_address = ""
    try:
        if resolver is None:
            res.engine = "getaddrinfo"
            answers = await _resolve_system(res, timeout, pool)
        elif transport == "udp":
            ip, port = parse_host_port(resolver, DNS_PORT)
            resolver_address = res.resolver = format_host_port(ip, port)
            raw, answers = await _resolve_udp(
                res, ip, port, timeout, t_zero, listen_window, capture, transmissions
            )
        elif transport in TRANSPORTS:
            res.engine = transport
            if transport == "doh":
                resolver_address = res.resolver = resolver
            else:
                ip, port = parse_host_port(resolver, DOT_PORT if transport == "dot" else 53)
                resolver_address = res.resolver = format_host_port(ip, port)
            raw, answers = await _resolve_lib(res, transport, resolver, timeout, ca_file)
        else:
            raise ValueError(f"unknown DNS transport {transport!r}; use one of {TRANSPORTS}")
    except (OSError, TimeoutError, EOFError, dns.exception.DNSException) as exc:
        res.failure = failure_from_exception(exc)
    except Exception as exc:  # dnspython's DoH path raises httpx errors too
        if isinstance(exc, ValueError) and "transport" in str(exc):
            raise
        res.failure = failure_from_exception(exc)
    res.t = since(t_zero)
    res.answers = answers
    res.queries = [_query_record(res, resolver_address, raw, answers)]
    return res


# Sends of a query without an answer (resolve_retrying: retransmitted on one socket, so an
# earlier send's late answer still counts and a short interval costs only a duplicate query):
# one lost datagram must not decide a measurement. glibc's stub resolver tries twice
# (`attempts:2` in resolv.conf(5)); at 2% loss each way two lost sends in a row still befall ~1
# query in 600, about one null verdict per 300-name run at two vantages in the lab
# (bench.accuracy, docs/benchmarks.md), and three still left one null in two such runs; four.
DNS_ATTEMPTS = 4


async def resolve_retrying(
    domain: str, *, timeout: float, attempts: int = DNS_ATTEMPTS, **kw: Any
) -> DNSResult:
    """resolve(), asking again while the query times out, within ``timeout`` in all.

    Over UDP the query is sent up to ``attempts`` times on one socket (every timeout/attempts
    seconds without an answer) and an answer to any of them counts until ``timeout``: a slow
    resolver is not cut off by the retransmission. Other transports (the system resolver,
    TCP, DoH, DoT) make sequential attempts of an equal share each, every attempt's record
    kept in ``queries``.
    """
    if kw.get("resolver") is not None and kw.get("transport", "udp") == "udp":
        return await resolve(domain, timeout=timeout, transmissions=attempts, **kw)
    per_attempt = timeout / attempts
    result = await resolve(domain, timeout=per_attempt, **kw)
    for _ in range(attempts - 1):
        if result.failure != "generic_timeout_error":
            break
        retry = await resolve(domain, timeout=per_attempt, **kw)
        retry.queries = result.queries + retry.queries
        result = retry
    return result


async def resolve_both(domain: str, **kw: Any) -> list[DNSResult]:
    """A and AAAA concurrently (web_connectivity needs both); the caller merges addrs."""
    kw.pop("query_type", None)
    a, aaaa = await asyncio.gather(
        resolve(domain, query_type="A", **kw), resolve(domain, query_type="AAAA", **kw)
    )
    return [a, aaaa]
