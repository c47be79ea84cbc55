"""The lab censor's QUIC rule: drop a flow whose Initial names a blocked SNI, residually.

Modelled on the Great Firewall's QUIC censorship as measured by Zohaib et al. (USENIX
Security 2025; gfw.report): the censor decrypts the client's Initial (lab.quic_initial), reads
the SNI, and for a name on its list drops the flow's packets for a while (it cannot forge a
reset for UDP). The scope of that residual block is the scenario's `quic_residual_scope`:
``"triple"`` (client IP, server IP, server port: every later connection from the client to that
server port, whatever its source port, as the paper reports) or ``"flow"`` (the 4-tuple only;
a new source port gets through, as a summary of the same paper puts it: "block a given flow
for 2 minutes"); `quic_residual_seconds` is its length (default 180 s).

Up to MAX_INITIALS datagrams of a flow are read, so a ClientHello split over two Initials is
still put together (the GFW of the paper reads only the first one: a probe must not rely on a
censor that can be fooled). Pure logic over parsed packets, like lab.censor.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lab import matching
from lab.quic_initial import (
    NotInitial,
    assemble,
    client_hello_sni,
    crypto_fragments,
    is_initial,
    open_initial,
)

MAX_INITIALS = 4
FLOW_IDLE_S = 60.0

FlowKey = tuple[str, int, str, int]  # client ip, client port, server ip, server port


@dataclass
class _Flow:
    fragments: list[tuple[int, bytes]] = field(default_factory=list)
    seen: int = 0
    done: bool = False
    last: float = 0.0


@dataclass
class QuicFilter:
    """The QUIC rule's state: flows being read and the residual blocks in force."""

    blocked: set[str]
    residual_seconds: float = 180.0
    scope: str = "triple"  # or "flow"
    flows: dict[FlowKey, _Flow] = field(default_factory=dict)
    residual: dict[tuple, float] = field(default_factory=dict)

    def _key(self, flow: FlowKey) -> tuple:
        return (flow[0], flow[2], flow[3]) if self.scope == "triple" else flow

    def blocked_now(self, flow: FlowKey, now: float) -> bool:
        until = self.residual.get(self._key(flow))
        return until is not None and until > now

    def from_client(self, flow: FlowKey, payload: bytes, now: float) -> str:
        """'quic_residual' (drop), 'quic_sni' (the trigger: drop and block) or 'pass'."""
        if self.blocked_now(flow, now):
            return "quic_residual"
        if not is_initial(payload):
            return "pass"
        state = self.flows.get(flow)
        if state is None:
            if len(self.flows) > 10_000:
                self.gc(now)
            state = self.flows[flow] = _Flow()
        state.last = now
        if state.done or state.seen >= MAX_INITIALS:
            return "pass"
        state.seen += 1
        try:
            state.fragments += crypto_fragments(open_initial(payload).frames)
        except NotInitial:
            return "pass"
        sni = client_hello_sni(assemble(state.fragments))
        if sni is None:
            return "pass"
        state.done = True
        if matching.host_matches(sni, self.blocked) is None:
            return "pass"
        self.residual[self._key(flow)] = now + self.residual_seconds
        return "quic_sni"

    def from_server(self, flow: FlowKey, now: float) -> bool:
        """Whether the server's packet of this flow (keyed from the client's side) passes."""
        return not self.blocked_now(flow, now)

    def gc(self, now: float) -> None:
        self.flows = {k: f for k, f in self.flows.items() if now - f.last < FLOW_IDLE_S}
        self.residual = {k: t for k, t in self.residual.items() if t > now}
