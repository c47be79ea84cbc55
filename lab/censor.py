"""The censor's decisions: given one queued packet, what to forge and whether to pass it.

Pure logic (no NFQUEUE, no sockets) so it can be tested with built packets; lab.censord runs
it on the router. Decisions follow the scenario file, the lab's ground truth.
"""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass, field

import dns.flags
import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from lab import addresses, matching
from lab.http_head import HTML, response_head
from lab.packets import (
    ACK,
    FIN,
    PSH,
    RST,
    SYN,
    TCP,
    UDP,
    Packet,
    PacketError,
    build_tcp,
    build_udp,
    parse,
)
from lab.quic_censor import QuicFilter
from lab.scenario import SHAPED_KINDS, Scenario

MAX_INSPECT = 16 * 1024  # bytes of a client stream the censor looks at before giving up
FLOW_IDLE_S = 300.0
# The SNI shaper's queue: a server packet that would wait longer than this is dropped (a
# token-bucket filter's latency limit, as tc's tbf has), so TCP sees loss and backs off.
SHAPER_MAX_DELAY_S = 1.0


@dataclass
class Decision:
    """Forged packets to send, then the verdict for the original (after delay_s)."""

    accept: bool = True
    forged: list[bytes] = field(default_factory=list)
    delay_s: float = 0.0
    reason: str = ""
    # Applied as decided even by an on-path censor (another box of the same censor, in-path,
    # as blackholes and the IP throttle are): the QUIC rule's drops (UDP has no reset to race,
    # and the GFW drops QUIC so) and the SNI shaper's delays and drops.
    in_path: bool = False


@dataclass
class Flow:
    """A client->server TCP stream being reassembled and inspected."""

    next_seq: int | None
    data: bytearray = field(default_factory=bytearray)
    pending: dict[int, bytes] = field(default_factory=dict)
    done: bool = False  # inspected enough: pass everything
    killed: bool = False  # reset or answered by the censor: drop the server's packets
    dropped: bool = False  # silently dropped (ech_drop): the client's packets are dropped too
    last: float = 0.0
    shape: str | None = None  # "throttle_sni" or "stall_sni": the SNI named one
    server_next: int | None = None  # the server's first data sequence number (ISN + 1)
    free_at: float = 0.0  # the shaper: when the flow's link is next free


class Censor:
    """State and rules of one censor; `decide` is called once per queued packet."""

    def __init__(self, scenario: Scenario) -> None:
        self.s = scenario
        c = scenario.censor
        self.cn_nets = [
            ipaddress.ip_network(addresses.CN_SUBNET_V4),
            ipaddress.ip_network(addresses.CN_SUBNET_V6),
        ]
        self.dns_inject = {d.name for d in scenario.by_block("dns_inject")}
        self.dns_nxdomain = {d.name for d in scenario.by_block("dns_nxdomain")}
        self.dns_bogon = {d.name for d in scenario.by_block("dns_bogon")}
        self.http_hosts = {d.name for d in scenario.by_block("http_rst")}
        self.blockpage_hosts = {d.name for d in scenario.by_block("blockpage")}
        self.sni = {d.name for d in scenario.by_block("sni_rst")} | set(c.blocked_sni)
        self.ech_drop = set(c.ech_drop_sni)
        self.ech_rst = set(c.ech_rst_sni)
        self.keywords = c.keywords
        self.keyword_at = set(c.keyword_placements)
        self.flows: dict[tuple[str, int, str, int], Flow] = {}
        self.residual: dict[tuple[str, str, int], float] = {}
        self.ip_id = 0
        self.stats: dict[str, int] = {}
        body = c.blockpage_html()
        # The same head as the sites' server software (lab.http_head): status and header names
        # match the site's, as with a filter built into the stack that serves the sites.
        self.blockpage = response_head(c.blockpage_status, HTML, len(body), keep_alive=False) + body
        self.dns_blockpage = {d.name for d in scenario.by_block("dns_blockpage")}
        self.shaped = {d.name: d.block for d in scenario.domains if d.block in SHAPED_KINDS}
        self._last_gc = 0.0
        self.quic = QuicFilter(
            set(c.quic_blocked_sni), c.quic_residual_seconds, c.quic_residual_scope
        )

    # -- helpers -------------------------------------------------------------------------
    def is_cn(self, ip: str) -> bool:
        addr = ipaddress.ip_address(ip)
        return any(addr in net for net in self.cn_nets)

    def _count(self, what: str) -> None:
        self.stats[what] = self.stats.get(what, 0) + 1

    def _next_id(self) -> int:
        self.ip_id = (self.ip_id + 1) & 0xFFFF
        return self.ip_id

    def _name_in(self, qname: str, names: set[str]) -> bool:
        return matching.host_matches(qname, names) is not None

    # -- entry point ---------------------------------------------------------------------
    def decide(self, raw: bytes, now: float) -> Decision:
        try:
            pkt = parse(raw)
        except PacketError:
            return Decision(reason="unparsed")
        delay = self.s.faults.delay_ms / 1000.0
        if now - self._last_gc > 30.0:
            self._gc(now)
        from_cn, to_cn = self.is_cn(pkt.src), self.is_cn(pkt.dst)
        if not (from_cn or to_cn):
            return Decision(delay_s=delay, reason="exempt")
        if pkt.proto == UDP and from_cn and pkt.dport == 53:
            d = self._dns(pkt)
        elif pkt.proto == TCP and from_cn:
            d = self._tcp_from_client(pkt, now)
        elif pkt.proto == TCP:
            flow = self.flows.get((pkt.dst, pkt.dport, pkt.src, pkt.sport))
            if flow is not None and pkt.flags & SYN:
                flow.server_next = (pkt.seq + 1) & 0xFFFFFFFF
            if flow is not None and flow.shape and not flow.killed and pkt.payload:
                d = self._shape(flow, pkt, now)
            else:
                d = Decision(accept=not (flow and flow.killed), reason="server")
        elif pkt.proto == UDP and self.quic.blocked:
            d = self._quic(pkt, now, from_cn)
        else:
            d = Decision(reason="other")
        d.delay_s += delay
        if self.s.censor.mode == "on-path" and from_cn:
            d.delay_s += self.s.censor.onpath_server_delay_ms / 1000.0
        if d.reason not in ("server", "other", "pass"):
            self._count(d.reason)
        return d

    def _gc(self, now: float) -> None:
        self._last_gc = now
        self.flows = {k: f for k, f in self.flows.items() if now - f.last < FLOW_IDLE_S}
        self.residual = {k: t for k, t in self.residual.items() if t > now}
        self.quic.gc(now)

    def _quic(self, pkt: Packet, now: float, from_cn: bool) -> Decision:
        """lab.quic_censor's rule: the trigger and the residually blocked flow are dropped."""
        if from_cn:
            flow = (pkt.src, pkt.sport, pkt.dst, pkt.dport)
            verdict = self.quic.from_client(flow, pkt.payload, now)
            return Decision(accept=verdict == "pass", reason=verdict, in_path=True)
        accept = self.quic.from_server((pkt.dst, pkt.dport, pkt.src, pkt.sport), now)
        reason = "other" if accept else "quic_residual_server"
        return Decision(accept=accept, reason=reason, in_path=True)

    # -- DNS -----------------------------------------------------------------------------
    def _dns(self, pkt: Packet) -> Decision:
        try:
            query = dns.message.from_wire(pkt.payload)
            question = query.question[0]
        except Exception:  # any malformed query is simply forwarded
            return Decision(reason="pass")
        qname = question.name.to_text().rstrip(".").lower()
        c = self.s.censor
        keyword = "dns" in self.keyword_at and matching.keyword_match(qname, self.keywords)
        if keyword or self._name_in(qname, self.dns_inject):
            forged = []
            for i in range(c.dns_injectors):
                digest = hashlib.sha256(f"{qname}/{i}".encode()).digest()
                ip = c.inject_pool[digest[0] % len(c.inject_pool)]
                # GFW-style: an A record even when AAAA was asked.
                forged.append(self._dns_reply(pkt, query, "A", ip, ttl=64 + i * 13))
            return Decision(forged=forged, reason="keyword_dns" if keyword else "dns_inject")
        if self._name_in(qname, self.dns_nxdomain):
            return Decision(
                accept=False,
                forged=[self._dns_reply(pkt, query, None, None)],
                reason="dns_nxdomain",
            )
        if self._name_in(qname, self.dns_blockpage):
            # The censor's resolver sends the name to its block-page server.
            if question.rdtype == dns.rdatatype.AAAA:
                answer = self._dns_reply(pkt, query, "AAAA", addresses.BLOCKPAGE_V6)
            else:
                answer = self._dns_reply(pkt, query, "A", addresses.BLOCKPAGE_V4)
            return Decision(accept=False, forged=[answer], reason="dns_blockpage")
        if self._name_in(qname, self.dns_bogon):
            if question.rdtype == dns.rdatatype.AAAA:
                answer = self._dns_reply(pkt, query, "AAAA", "fd00:10:10:34::35")
            else:
                answer = self._dns_reply(pkt, query, "A", c.bogon)
            return Decision(accept=False, forged=[answer], reason="dns_bogon")
        return Decision(reason="pass")

    def _dns_reply(
        self,
        pkt: Packet,
        query: dns.message.Message,
        rtype: str | None,
        ip: str | None,
        ttl: int = 64,
    ) -> bytes:
        reply = dns.message.make_response(query)
        reply.flags |= dns.flags.RA
        if rtype is None:
            reply.set_rcode(dns.rcode.NXDOMAIN)
        else:
            rrset = dns.rrset.from_text(query.question[0].name, 300, "IN", rtype, ip)
            reply.answer.append(rrset)
        return build_udp(
            pkt.dst, pkt.src, pkt.dport, pkt.sport, reply.to_wire(), ttl=ttl, ip_id=self._next_id()
        )

    # -- TCP -----------------------------------------------------------------------------
    def _tcp_from_client(self, pkt: Packet, now: float) -> Decision:
        key = (pkt.src, pkt.sport, pkt.dst, pkt.dport)
        c = self.s.censor
        if pkt.flags & SYN and not pkt.flags & ACK:
            until = self.residual.get((pkt.src, pkt.dst, pkt.dport))
            if until is not None and until > now:
                if c.residual_action == "drop":
                    return Decision(accept=False, reason="residual_drop")
                rst = build_tcp(
                    pkt.dst,
                    pkt.src,
                    pkt.dport,
                    pkt.sport,
                    0,
                    pkt.seq + 1,
                    RST | ACK,
                    ip_id=self._next_id(),
                )
                return Decision(accept=False, forged=[rst], reason="residual_rst")
            known = self.flows.get(key)
            if known is None or known.next_seq != (pkt.seq + 1) & 0xFFFFFFFF or known.data:
                self.flows[key] = Flow(next_seq=(pkt.seq + 1) & 0xFFFFFFFF, last=now)
            # else a retransmitted SYN (it can cross the server's SYN-ACK): keep what was seen
            return Decision(reason="pass")
        flow = self.flows.get(key)
        if flow is None:
            # Mid-stream without a SYN seen (censor restarted): inspect from here.
            flow = self.flows[key] = Flow(next_seq=None, last=now)
        flow.last = now
        if flow.killed:
            return Decision(accept=not flow.dropped, reason="pass")
        if flow.done or not pkt.payload:
            if pkt.flags & (RST | FIN):
                flow.done = True
            return Decision(reason="pass")
        stream = self._reassemble(flow, pkt)
        if flow.shape is None and self.shaped:
            self._mark_shaped(flow, stream)
        verdict = self._inspect(stream, pkt)
        if verdict is None:
            if len(flow.data) >= MAX_INSPECT:
                flow.done = True
            return Decision(reason="pass")
        flow.killed = True
        self.residual[(pkt.src, pkt.dst, pkt.dport)] = now + c.residual_seconds
        if verdict == "ech_drop":
            # TSPU-style: nothing forged, the hello and everything after it are dropped.
            flow.dropped = True
            return Decision(accept=False, reason=verdict)
        end = pkt.seq + len(pkt.payload)
        to_server = [
            build_tcp(pkt.src, pkt.dst, pkt.sport, pkt.dport, seq, 0, RST, ip_id=self._next_id())
            for seq in (pkt.seq, end)
        ]
        if verdict == "blockpage":
            page = build_tcp(
                pkt.dst,
                pkt.src,
                pkt.dport,
                pkt.sport,
                pkt.ack,
                end,
                PSH | ACK | FIN,
                self.blockpage,
                ip_id=self._next_id(),
                window=65535,
            )
            return Decision(accept=False, forged=[page, *to_server], reason="blockpage")
        to_client = build_tcp(
            pkt.dst, pkt.src, pkt.dport, pkt.sport, pkt.ack, end, RST | ACK, ip_id=self._next_id()
        )
        return Decision(accept=False, forged=[to_client, *to_server], reason=verdict)

    # -- SNI throttling and stalling ---------------------------------------------------------
    def _mark_shaped(self, flow: Flow, stream: bytes) -> None:
        sni = matching.tls_sni(stream)
        if sni is None:
            return
        name = matching.host_matches(sni, set(self.shaped))
        if name is not None:
            flow.shape = self.shaped[name]
            self._count(f"{flow.shape}_flow")

    def _shape(self, flow: Flow, pkt: Packet, now: float) -> Decision:
        """A server data packet of a shaped flow: frozen past ``stall_after_bytes`` of the
        server's stream (stall_sni), or paced to ``throttle_sni_kib_per_s`` (throttle_sni)."""
        c = self.s.censor
        if flow.shape == "stall_sni":
            if flow.server_next is None:  # no SYN-ACK seen: count from the first data seen
                flow.server_next = pkt.seq
            end = (pkt.seq + len(pkt.payload) - flow.server_next) & 0xFFFFFFFF
            if end > c.stall_after_bytes and end < 0x80000000:
                return Decision(accept=False, reason="stall_drop", in_path=True)
            return Decision(reason="server")
        departs = max(now, flow.free_at)
        if departs - now > SHAPER_MAX_DELAY_S:
            return Decision(accept=False, reason="throttle_drop", in_path=True)
        flow.free_at = departs + len(pkt.payload) / (c.throttle_sni_kib_per_s * 1024)
        return Decision(delay_s=departs - now, reason="throttle", in_path=True)

    def _reassemble(self, flow: Flow, pkt: Packet) -> bytes:
        """The contiguous client stream so far (or this segment alone without reassembly)."""
        if not self.s.censor.reassemble:
            return pkt.payload
        if flow.next_seq is None:
            flow.next_seq = pkt.seq
        offset = (pkt.seq - flow.next_seq) & 0xFFFFFFFF
        if offset >= 0x80000000:  # retransmission of bytes already seen
            overlap = (flow.next_seq - pkt.seq) & 0xFFFFFFFF
            if overlap < len(pkt.payload):
                flow.data += pkt.payload[overlap:]
                flow.next_seq = (flow.next_seq + len(pkt.payload) - overlap) & 0xFFFFFFFF
        elif offset == 0:
            flow.data += pkt.payload
            flow.next_seq = (flow.next_seq + len(pkt.payload)) & 0xFFFFFFFF
        else:
            flow.pending[pkt.seq] = pkt.payload
        while flow.next_seq in flow.pending:
            chunk = flow.pending.pop(flow.next_seq)
            flow.data += chunk
            flow.next_seq = (flow.next_seq + len(chunk)) & 0xFFFFFFFF
        return bytes(flow.data)

    def _inspect(self, stream: bytes, pkt: Packet) -> str | None:
        """'http_rst', 'keyword_rst', 'sni_rst', 'keyword_sni_rst', 'ech_rst', 'ech_drop',
        'blockpage' or None."""
        if matching.looks_like_http(stream):
            request_line, host = matching.http_fields(stream)
            path, query = matching.request_target(request_line)
            fields = {"path": path, "query": query, "host": host or ""}
            text = " ".join(v for k, v in fields.items() if k in self.keyword_at)
            if matching.keyword_match(text, self.keywords):
                return "keyword_rst"
            if host is not None:
                if matching.host_matches(host, self.http_hosts):
                    return "http_rst"
                if matching.host_matches(host, self.blockpage_hosts):
                    return "blockpage"
            return None
        sni = matching.tls_sni(stream)
        if sni is not None and matching.host_matches(sni, self.sni):
            return "sni_rst"
        if (
            sni is not None
            and (self.ech_drop or self.ech_rst)
            and matching.ECH_EXTENSION in (matching.tls_extensions(stream) or ())
        ):
            if matching.host_matches(sni, self.ech_rst):
                return "ech_rst"
            # An on-path censor cannot drop: the rule then does nothing (and taints nothing).
            if self.s.censor.mode == "in-path" and matching.host_matches(sni, self.ech_drop):
                return "ech_drop"
        if sni and "sni" in self.keyword_at and matching.keyword_match(sni, self.keywords):
            return "keyword_sni_rst"
        return None
