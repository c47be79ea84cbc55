"""censor_trace: at which hop does the censor sit? (an application-layer traceroute).

For TTL = 1..``trace_max_ttl`` we open a TCP connection to the target with the kernel's full
TTL (the handshake must complete), then lower the socket's IP TTL to the step's value and send
an HTTP request carrying the keyword in its path; separately, a control request of the same
shape with a benign word of the same length. A request whose TTL runs out draws an ICMP
time-exceeded from the hop where it expired (captured, as root, to learn that hop's address);
a reset or an answer that comes back for the keyword while the control's request expired on
the way was made by a box on the path that saw the keyword. The censor hop is the smallest TTL
at which that happens (CenTrace, Sundara Raman et al., IMC 2022).

Two complications. A censor that reads packets *after* its router's forwarding decision (an
iptables FORWARD hook, like the lab's) never sees a request that expires at its own router, so
the trace first sees it one hop later, at the server's hop if the censor is the last router;
there the injected reset's own IP TTL dates it: a forged packet sent with a usual initial TTL
(64, 128, 255) that arrives unchanged came from the adjacent hop, and so on. Censors that copy
the probe's TTL into their injected packet break that dating (the reset arrives with a TTL no
larger than the probe's): it is then noted (``ttl_copied``) and only the trace is used.

Pacing as CenTrace: ``trace_step_pause`` seconds between TTL steps, ``trace_run_pause`` between
repeated runs to the same endpoint (a censor keeps blocking a triggered endpoint for a while:
residual censorship) and ``trace_runs`` runs; a run stops at the first interference, since later
steps would only meet that residual blocking. Runs that do not fit the per-input budget
(``--timeout``) are skipped and counted. Confidence is the share of runs that agree on the hop.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import struct
import time
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import urlsplit

from probes.net.addresses import format_host_port, is_ip
from probes.net.dns import resolve_retrying
from probes.net.packets import UNAVAILABLE, Capture, capture_unavailable, route_iface
from probes.nettests.base import Nettest, SetupError

# Traceroute's default maximum hop count (traceroute(8) -m).
DEFAULT_MAX_TTL = 30
# CenTrace repeats each trace to ride out path variance; three runs out-vote one odd run.
DEFAULT_RUNS = 3
# Seconds between TTL steps, and between runs to one endpoint: CenTrace paces both and makes
# them configurable; the run pause must outlast residual blocking (~90 s is reported for the
# GFW; the lab's default scenario keeps 30 s).
DEFAULT_STEP_PAUSE_S = 1.0
DEFAULT_RUN_PAUSE_S = 100.0
# How long one TTL-limited request waits for an answer: a share of the per-input budget, at
# most MAX_STEP_WAIT_S (an answer from any hop on Earth arrives well within a second).
STEP_WAIT_SHARE = 0.1
MAX_STEP_WAIT_S = 2.0
# Initial TTLs stacks use (Linux/macOS 64, Windows 128, many routers 255): an injected
# packet's distance is the smallest of them at or above its TTL, minus its TTL.
INITIAL_TTLS = (64, 128, 255)
# Requests sent per TTL step: the control and the keyword, one after the other.
PROBES_PER_STEP = 2
# Budget kept for resolving the target (resolve_retrying asks up to three times, each waiting
# one step wait) and for starting and stopping the capture.
SETUP_ALLOWANCE_S = 3 * MAX_STEP_WAIT_S + 4.0


def trace_budget(
    max_ttl: int = DEFAULT_MAX_TTL,
    runs: int = DEFAULT_RUNS,
    step_pause: float = DEFAULT_STEP_PAUSE_S,
    run_pause: float = DEFAULT_RUN_PAUSE_S,
    wait: float = MAX_STEP_WAIT_S,
) -> float:
    """Seconds a trace needs when every step waits its full time (an expired request is
    answered by nobody): hops x (pause + probes x wait) per run, the pauses between runs, and
    the setup. The default (3 x 30 x (1 + 2 x 2) + 2 x 100 + 10 = 660 s) is censor_trace's
    per-input budget when --timeout is not given; the probe-wide 30 s would stop a default
    trace at about the sixth hop."""
    per_run = max_ttl * (step_pause + PROBES_PER_STEP * wait)
    return runs * per_run + (runs - 1) * run_pause + SETUP_ALLOWANCE_S


DEFAULT_PORT = 80
# Outcomes of one request.
REACHED = ("response", "closed")  # the request got to something that answered it
CONNECT_FAILED = ("connect_reset", "connect_failed")


@dataclass
class Probe:
    """One TTL-limited request and what came back for it."""

    role: str  # "keyword" or "control"
    ttl: int
    outcome: str  # response, closed, reset, timeout, connect_reset, connect_failed
    sport: int | None = None
    status: int | None = None
    icmp_from: str | None = None  # who sent the ICMP time-exceeded (captured)
    rst_ttl: int | None = None  # IP TTL of the reset that arrived (captured)
    server_ttl: int | None = None  # IP TTL of the server's SYN-ACK (captured)

    def keys(self) -> dict[str, Any]:
        out = asdict(self)
        del out["role"], out["ttl"], out["sport"]
        return out


def control_word(keyword: str) -> str:
    """A benign word as long as the keyword, so both requests have the same shape."""
    base = "benignword"
    return (base * (len(keyword) // len(base) + 1))[: len(keyword)] or "x"


def request_bytes(host: str, path: str) -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: censorscope\r\n"
        "Accept: */*\r\nConnection: close\r\n\r\n"
    ).encode()


def distance(ttl: int) -> int:
    """Hops a packet travelled, assuming it left with the nearest usual initial TTL."""
    initial = next((i for i in INITIAL_TTLS if i >= ttl), 255)
    return initial - ttl


def interference(keyword: dict[str, Any], control: dict[str, Any]) -> str | None:
    """What the path did to the keyword request at one TTL (None: nothing the control lacks).

    "reset": the keyword drew a reset the control did not; "response": the keyword got an
    answer although the control's request of that TTL expired on the way (time-exceeded or
    silence), so a box before the server answered.
    """
    k, c = keyword["outcome"], control["outcome"]
    if c in CONNECT_FAILED or k in CONNECT_FAILED:
        return None
    if k == "reset" and c != "reset":
        return "reset"
    if k in REACHED and c == "timeout":
        return "response"
    return None


def locate(hops: list[dict[str, Any]]) -> dict[str, Any]:
    """Where one run's trace puts the censor (pure: works on the ``hops`` test keys).

    Returns ``censor_hop`` (None when no interference), ``kind`` ("reset"/"response"),
    ``first_interference_ttl``, ``endpoint_ttl`` (first TTL at which the control reached the
    server), ``injected`` (the reset is proven forged), ``ttl_copied`` and ``tainted`` (a
    handshake was refused: residual blocking from an earlier trigger spoils the run).
    """
    out: dict[str, Any] = {"censor_hop": None, "kind": None, "first_interference_ttl": None,
                           "endpoint_ttl": None, "injected": False, "ttl_copied": False,
                           "tainted": False}  # fmt: skip
    by_ttl = {h["ttl"]: h for h in hops}
    for hop in sorted(hops, key=lambda h: h["ttl"]):
        k, c = hop["keyword"], hop["control"]
        if out["endpoint_ttl"] is None and c["outcome"] in REACHED:
            out["endpoint_ttl"] = hop["ttl"]
        if c["outcome"] in CONNECT_FAILED or k["outcome"] == "connect_reset":
            out["tainted"] = True
            return out
        kind = interference(k, c)
        if kind is None:
            continue
        t = hop["ttl"]
        out.update(kind=kind, first_interference_ttl=t)
        censor = {"ttl": t, "address": hop_address(hop), "located_by": "trace",
                  "at_endpoint_hop": False}  # fmt: skip
        rst_ttl = k.get("rst_ttl")
        server_ttl = k.get("server_ttl") or c.get("server_ttl")
        if kind == "response" or (rst_ttl is not None and rst_ttl != server_ttl):
            out["injected"] = True
        if rst_ttl is not None and rst_ttl <= t:
            # The censor copied the probe's TTL: the reset's TTL says nothing of its distance.
            out["ttl_copied"] = True
        elif c["outcome"] in REACHED:
            # The control reached the server at this TTL: the censor is the last router (read
            # after its forwarding decision) or the server itself. A forged reset dates itself.
            censor["at_endpoint_hop"] = True
            censor["address"] = None
            if out["injected"] and rst_ttl is not None:
                h = distance(rst_ttl) + 1
                if h < t:
                    censor.update(ttl=h, address=hop_address(by_ttl.get(h)),
                                  located_by="injected_ttl", at_endpoint_hop=False)  # fmt: skip
        out["censor_hop"] = censor
        return out
    return out


def hop_address(hop: dict[str, Any] | None) -> str | None:
    """The address that answered with time-exceeded at this hop (control first)."""
    if hop is None:
        return None
    return hop["address"]


def combine(located: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The censor hop most runs agree on, with ``confidence`` = their share of the runs."""
    usable = [loc for loc in located if not loc["tainted"]]
    if not usable:
        return None
    votes = Counter(
        (loc["censor_hop"]["ttl"], loc["censor_hop"]["address"]) if loc["censor_hop"] else None
        for loc in usable
    )
    best, count = votes.most_common(1)[0]
    if best is None:
        return None
    first = next(loc["censor_hop"] for loc in usable
                 if loc["censor_hop"] and loc["censor_hop"]["ttl"] == best[0])  # fmt: skip
    return {**first, "confidence": round(count / len(usable), 3), "runs": len(usable)}


def _set_ttl(sock: socket.socket, family: int, ttl: int) -> None:
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, ttl)
    else:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, ttl)


def send_probe(
    ip: str, port: int, payload: bytes, ttl: int, role: str, *, connect_timeout: float, wait: float
) -> Probe:
    """Connect with the full TTL, then send ``payload`` with IP TTL ``ttl`` (blocking: run in
    a thread). The socket is aborted with a reset of its own so no retransmission lingers."""
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    try:
        sock.settimeout(connect_timeout)
        try:
            sock.connect((ip, port))
        except (ConnectionResetError, ConnectionRefusedError):
            return Probe(role, ttl, "connect_reset")
        except OSError:
            return Probe(role, ttl, "connect_failed")
        sport = sock.getsockname()[1]
        _set_ttl(sock, family, ttl)
        sock.settimeout(wait)
        try:
            sock.sendall(payload)
            data = sock.recv(65536)
        except ConnectionResetError:
            return Probe(role, ttl, "reset", sport)
        except TimeoutError:
            return Probe(role, ttl, "timeout", sport)
        except OSError as exc:
            outcome = "reset" if exc.errno == errno.EPIPE else "timeout"
            return Probe(role, ttl, outcome, sport)
        if not data:
            return Probe(role, ttl, "closed", sport)
        status = None
        parts = data.split(b" ", 2)
        if len(parts) >= 2 and parts[0].startswith(b"HTTP/") and parts[1].isdigit():
            status = int(parts[1])
        return Probe(role, ttl, "response", sport, status)
    finally:
        sock.close()


def annotate(probes: list[Probe], packets: list[Any], server_ip: str, port: int) -> None:
    """Fill each probe's ICMP sender, reset TTL and SYN-ACK TTL from the captured packets,
    matched by the probe's local port (the ICMP error quotes our TCP header)."""
    from scapy.layers.inet import ICMP, IP, TCP, IPerror, TCPerror
    from scapy.layers.inet6 import ICMPv6TimeExceeded, IPv6

    by_port = {p.sport: p for p in probes if p.sport is not None}
    for pkt in packets:
        if TCPerror in pkt and (
            (ICMP in pkt and pkt[ICMP].type == 11) or ICMPv6TimeExceeded in pkt
        ):
            probe = by_port.get(pkt[TCPerror].sport)
            src = pkt[IP].src if IP in pkt and IPerror in pkt else None
            if IPv6 in pkt:
                src = pkt[IPv6].src
            if probe is not None and probe.icmp_from is None:
                probe.icmp_from = src
            continue
        if TCP not in pkt or pkt[TCP].sport != port:
            continue
        net = pkt[IP] if IP in pkt else pkt.getlayer(IPv6)
        if net is None or net.src != server_ip:
            continue
        probe = by_port.get(pkt[TCP].dport)
        if probe is None:
            continue
        ttl = net.ttl if IP in pkt else net.hlim
        flags = int(pkt[TCP].flags)
        if flags & 0x12 == 0x12 and probe.server_ttl is None:
            probe.server_ttl = ttl
        elif flags & 0x04 and probe.rst_ttl is None:
            probe.rst_ttl = ttl


def trace_filter(ip: str, port: int) -> str:
    """ICMP errors to us and the endpoint's TCP packets."""
    if ":" in ip:
        return f"icmp6 or (ip6 src host {ip} and tcp src port {port})"
    return f"(icmp and icmp[0] = 11) or (ip src host {ip} and tcp src port {port})"


def _given(value: Any, default: float) -> Any:
    """An option's value when set (0 is a value), else the default."""
    return default if value is None else value


class CensorTrace(Nettest):
    name = "censor_trace"
    version = "0.1.0"

    @classmethod
    def default_budget(cls, options: dict[str, Any]) -> float:
        """The per-input budget that fits the chosen pacing (used when --timeout is unset)."""
        return trace_budget(
            int(options.get("trace_max_ttl") or DEFAULT_MAX_TTL),
            int(options.get("trace_runs") or DEFAULT_RUNS),
            float(_given(options.get("trace_step_pause"), DEFAULT_STEP_PAUSE_S)),
            float(_given(options.get("trace_run_pause"), DEFAULT_RUN_PAUSE_S)),
        )

    async def setup(self) -> None:
        opts = self.ctx.options
        self.keyword = str(opts.get("trace_keyword") or "").strip()
        if not self.keyword:
            raise SetupError("censor_trace needs a keyword (--keyword WORD)")
        self.control_word = str(opts.get("trace_control_word") or control_word(self.keyword))
        if self.control_word == self.keyword:
            raise SetupError("the control word must differ from the keyword")
        self.max_ttl = int(opts.get("trace_max_ttl") or DEFAULT_MAX_TTL)
        self.runs = int(opts.get("trace_runs") or DEFAULT_RUNS)
        self.step_pause = float(_given(opts.get("trace_step_pause"), DEFAULT_STEP_PAUSE_S))
        self.run_pause = float(_given(opts.get("trace_run_pause"), DEFAULT_RUN_PAUSE_S))
        wait = min(MAX_STEP_WAIT_S, self.ctx.timeout * STEP_WAIT_SHARE)
        needed = trace_budget(self.max_ttl, self.runs, self.step_pause, self.run_pause, wait)
        if self.ctx.timeout < needed:
            self.warnings.append(
                f"censor_trace: a {self.ctx.timeout:g} s budget is short of the {needed:.0f} s "
                "this pacing may need; a trace the budget stops before the censor's hop is "
                "stored as inconclusive (null)"
            )
        self.capture = bool(opts.get("packet_capture", True))
        self.unavailable = capture_unavailable() if self.capture else "disabled"
        if self.unavailable and self.capture:
            self.warnings.append(
                f"packet capture unavailable: {self.unavailable}; no hop addresses"
            )

    @classmethod
    def input_problem(cls, input_: str) -> str | None:
        parts = urlsplit(input_)
        if parts.scheme != "http" or not parts.hostname:
            return "needs an http:// URL (the keyword goes into its path)"
        return None

    async def measure(self, input_: str | None) -> dict[str, Any]:
        assert input_ is not None  # the runner checked it with input_problem()
        t_zero = time.monotonic()
        deadline = t_zero + self.ctx.timeout
        parts = urlsplit(input_)
        host, port = (parts.hostname or "").lower(), parts.port or DEFAULT_PORT
        wait = min(MAX_STEP_WAIT_S, self.ctx.timeout * STEP_WAIT_SHARE)
        keys: dict[str, Any] = {"keyword": self.keyword, "control_word": self.control_word,
                                "queries": [], "hops": [], "censor_hop": None}  # fmt: skip
        if is_ip(host.strip("[]")):
            ip = host.strip("[]")
        else:
            # A lost datagram must not end the input: a timed-out query is asked again.
            dns = await resolve_retrying(
                host, resolver=self.ctx.resolver, timeout=wait, t_zero=t_zero
            )
            keys["queries"] = dns.queries
            if not dns.addrs:
                keys.update(failure=dns.failure, blocking=None, blocking_detail=None)
                return keys
            ip = dns.addrs[0]
        keys["endpoint"] = format_host_port(ip, port)
        keys["packet_capture"] = "ok" if self.unavailable is None else UNAVAILABLE
        if self.unavailable:
            keys["x_packet_capture_reason"] = self.unavailable
        base = parts.path.rstrip("/")
        requests = {
            "keyword": request_bytes(parts.netloc, f"{base}/{self.keyword}"),
            "control": request_bytes(parts.netloc, f"{base}/{self.control_word}"),
        }
        runs: list[dict[str, Any]] = []
        for run in range(self.runs):
            if run:
                # A run costs at least two waits; do not start one the budget cannot hold.
                if time.monotonic() + self.run_pause + 2 * wait > deadline:
                    break
                await asyncio.sleep(self.run_pause)
            hops, exhausted = await self._run(ip, port, requests, wait, deadline)
            runs.append({"hops": hops, "exhausted": exhausted, **locate(hops)})
        keys["x_runs"] = [{k: v for k, v in r.items() if k != "hops"} for r in runs]
        keys["x_budget_exhausted"] = any(r["exhausted"] for r in runs)
        keys["x_runs_planned"] = self.runs
        censor = combine(runs)
        keys["censor_hop"] = censor
        agreeing = [r for r in runs if censor and r["censor_hop"]
                    and r["censor_hop"]["ttl"] == censor["ttl"]]  # fmt: skip
        chosen = (agreeing or runs)[0] if runs else None
        if chosen is not None:
            keys["hops"] = chosen["hops"]
            keys["x_ttl_copied"] = chosen["ttl_copied"]
            keys["x_first_interference_ttl"] = chosen["first_interference_ttl"]
            keys["x_endpoint_ttl"] = chosen["endpoint_ttl"]
        if censor is None:
            # `false` needs a run that went all the way (to the server or the last TTL): a run
            # the budget stopped never reached the hops where the censor may sit.
            usable = [r for r in runs if not r["tainted"]]
            complete = [r for r in usable if not r["exhausted"]]
            blocking: Any = False if complete else None
            keys.update(blocking=blocking, blocking_detail=None)
            if usable and not complete:
                keys["failure"] = "generic_timeout_error"
            elif not usable:
                keys["failure"] = "residual_blocking: every run's handshake was refused"
            return keys
        if chosen is not None and chosen["kind"] == "response":
            detail = "http.response_injected"
        else:
            detail = "tcp.rst_injected" if chosen and chosen["injected"] else "http.reset"
        keys.update(blocking="http-failure", blocking_detail=detail)
        return keys

    async def _run(
        self, ip: str, port: int, requests: dict[str, bytes], wait: float, deadline: float
    ) -> tuple[list[dict[str, Any]], bool]:
        """One trace: control then keyword at each TTL until interference or the endpoint;
        and whether the budget stopped it first."""
        capture = None
        if self.unavailable is None:
            capture = Capture(trace_filter(ip, port), route_iface(ip))
            try:
                await capture.start()
            except OSError:
                capture = None
        pairs: list[tuple[Probe, Probe]] = []
        exhausted = False
        try:
            for ttl in range(1, self.max_ttl + 1):
                step = PROBES_PER_STEP * wait
                if time.monotonic() + (self.step_pause if ttl > 1 else 0) + step > deadline:
                    exhausted = True
                    break
                if ttl > 1:
                    await asyncio.sleep(self.step_pause)
                probes = {}
                for role in ("control", "keyword"):
                    probes[role] = await asyncio.to_thread(
                        send_probe, ip, port, requests[role], ttl, role,
                        connect_timeout=wait, wait=wait,
                    )  # fmt: skip
                pair = (probes["keyword"], probes["control"])
                pairs.append(pair)
                k, c = pair[0].outcome, pair[1].outcome
                done = c in CONNECT_FAILED or k == "connect_reset"
                if done or interference(asdict(pair[0]), asdict(pair[1])) is not None:
                    break
                if c in REACHED and k in REACHED:
                    break  # both reached the server: nothing on the path minded the keyword
        finally:
            packets = await capture.stop() if capture is not None else []
        if packets:
            annotate([p for pair in pairs for p in pair], packets, ip, port)
        return [
            {
                "ttl": k.ttl,
                "address": c.icmp_from or k.icmp_from,
                "keyword": k.keys(),
                "control": c.keys(),
            }
            for k, c in pairs
        ], exhausted
