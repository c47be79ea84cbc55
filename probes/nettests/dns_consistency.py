"""dns_consistency: do the resolvers we can reach tell the truth about a name?

For each name (an input, or the host of a test-list URL) we query every chosen resolver directly
(UDP, TCP, DoT, DoH or the system's getaddrinfo) and, over UDP, keep listening after the first
answer so that forged answers racing the genuine one are caught (every datagram is kept with its
rcode, TTLs, arrival time and wire bytes). Optionally we also query addresses that run no DNS
server: any answer from them was injected on the path. The control is a trusted resolver
(`control_resolver`) and/or the control helper, which also tries a TLS handshake for the name
with each address our resolvers gave, so that CDN and geo-DNS answers are told apart from lies.
The verdict comes from `dns_consistency_analysis.analyze`, which reads only these test keys.

Options (ProbeContext.options, set by `censorscope run`): ``dns_resolvers`` (specs, see
`parse_resolver`), ``control_resolver``, ``dns_probe_addresses``, ``listen_window`` (seconds),
``tls_port`` (where the helper checks TLS; 443), ``bogon_exempt`` (CIDRs that hold real
servers in a lab or on loopback, so their addresses are not bogons), ``packet_capture``
(default on: with CAP_NET_RAW, every UDP answer's IP TTL and IP-ID, from one run-wide capture,
probes.net.dns_packets) and ``pcap_dir`` (keep that capture as one pcap for the run).
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import re
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

import dns.exception
import dns.name

from probes.fingerprints import FingerprintError, Fingerprints
from probes.net.addresses import format_host_port, is_ip, parse_host_port
from probes.net.dns import DNS_ATTEMPTS as NET_DNS_ATTEMPTS
from probes.net.dns import DNSResult, resolve
from probes.net.dns_packets import DNSCapture, capture_unavailable
from probes.net.packets import UNAVAILABLE, pcap_path
from probes.nettests.base import EXIT_HELPER_UNREACHABLE, Nettest, ProbeContext, SetupError
from probes.nettests.control import SAME_ASN_FEATURE, ControlClient, note_degraded
from probes.nettests.dns_consistency_analysis import (
    ROLE_PROBE_ADDRESS,
    ROLE_RESOLVER,
    analyze,
    bogon_check,
    query_addresses,
)

# Forged answers from an on-path injector arrive within about one round trip of the genuine one,
# before or after it; half a second covers the round trips of most paths (GFW injections are
# seen tens of milliseconds apart) without making each name cost much.
DEFAULT_LISTEN_WINDOW = 0.5
# Share of the per-input budget for one DNS attempt; a UDP query that timed out is asked again,
# up to probes.net.dns.DNS_ATTEMPTS times in all (see there).
DNS_TIMEOUT_SHARE = 0.1
DNS_ATTEMPTS = NET_DNS_ATTEMPTS
# At most this many of the probe's addresses are sent to the helper for TLS checks (the
# helper's own limit is 64 endpoints per request).
MAX_TLS_CHECKS = 16
QUERY_TYPE = "A"
DEFAULT_TLS_PORT = 443
_SCHEMES = {"udp": "udp", "tcp": "tcp", "tls": "dot", "dot": "dot", "https": "doh"}
_T = TypeVar("_T")
# A name that is certainly valid and not an IP address (letters in its last label), checked
# without dnspython; anything else goes through dns.name.from_text.
_PLAIN_NAME = re.compile(r"(?:[a-z0-9_-]{1,63}\.)*(?=[0-9]*[a-z_-])[a-z0-9_-]{1,63}")


@dataclass(frozen=True)
class ResolverSpec:
    """Where and how to ask: transport ("system", "udp", "tcp", "dot", "doh") and address."""

    transport: str
    address: str | None  # "ip:port", a DoH URL, or None for the system resolver

    @property
    def label(self) -> str:
        return self.address or "system"


def parse_resolver(spec: str) -> ResolverSpec:
    """``system``, ``IP[:PORT]`` (UDP), ``udp://``, ``tcp://``, ``tls://`` (DoT) or a DoH URL.

    Raises ValueError naming what is wrong.
    """
    spec = spec.strip()
    if spec == "system":
        return ResolverSpec("system", None)
    scheme, sep, rest = spec.partition("://")
    if not sep:
        scheme, rest = "udp", spec
    transport = _SCHEMES.get(scheme.lower())
    if transport is None:
        raise ValueError(f"unknown scheme {scheme!r} (use udp, tcp, tls, https or system)")
    if transport == "doh":
        if not urlsplit(spec).hostname:
            raise ValueError("a DoH resolver needs a URL with a host")
        return ResolverSpec("doh", spec)
    host, port = parse_host_port(rest.rstrip("/"), 853 if transport == "dot" else 53)
    if not is_ip(host):
        raise ValueError(f"{host!r} is not an IP address")
    return ResolverSpec(transport, format_host_port(host, port))


def name_of(input_: str) -> str:
    """The name to resolve: the input itself, or a URL's host."""
    if "://" in input_:
        return (urlsplit(input_).hostname or "").rstrip(".").lower()
    return input_.strip().rstrip(".").lower()


def _responses_of(result: DNSResult) -> list[dict[str, Any]]:
    """Every answer the query got: each UDP datagram, or the one TCP/DoT/DoH reply."""
    if result.extra_responses:
        return result.extra_responses
    record = result.queries[0] if result.queries else {}
    if result.engine in ("tcp", "dot", "doh") and record.get("raw_response"):
        return [
            {
                "t": result.t,
                "raw": record["raw_response"],
                "rcode": result.rcode,
                "answers": result.answers,
                "addrs": result.addrs,
                "valid": True,
                "id_match": True,
            }
        ]
    return []


class DNSConsistency(Nettest):
    name = "dns_consistency"
    version = "0.1.0"

    def __init__(self, ctx: ProbeContext) -> None:
        super().__init__(ctx)
        opts = ctx.options
        # A bad option is reported by setup() (SetupError there becomes exit status 2).
        self._config_error: str | None = None
        self.resolvers: list[ResolverSpec] = [ResolverSpec("system", None)]
        self.control_resolver: ResolverSpec | None = None
        self.probe_addresses: list[ResolverSpec] = []
        try:
            specs = [parse_resolver(s) for s in opts.get("dns_resolvers") or []]
            if ctx.resolver:
                specs.insert(0, parse_resolver(ctx.resolver))
            control = opts.get("control_resolver")
            self.control_resolver = parse_resolver(control) if control else None
            self.probe_addresses = [
                parse_resolver(a) for a in opts.get("dns_probe_addresses") or []
            ]
            self.resolvers = specs or self.resolvers
            for cidr in opts.get("bogon_exempt") or []:
                ipaddress.ip_network(cidr, strict=False)
        except ValueError as exc:
            self._config_error = f"dns_consistency option: {exc}"
        if any(p.transport != "udp" for p in self.probe_addresses):
            self._config_error = "--dns-probe-address takes IP[:PORT] (UDP)"
        window = opts.get("listen_window")
        self.listen_window = DEFAULT_LISTEN_WINDOW if window is None else float(window)
        self.tls_port = int(opts.get("tls_port") or DEFAULT_TLS_PORT)
        self.bogon_exempt = [str(c) for c in opts.get("bogon_exempt") or []]
        self.dns_timeout = max(0.5, ctx.timeout * DNS_TIMEOUT_SHARE)
        self.fingerprints: Fingerprints | None = None
        self.control: ControlClient | None = None
        self.helper_failure: str | None = None
        self.exit_status = 0
        self.packet_capture = bool(opts.get("packet_capture", True))
        self.pcap_dir = opts.get("pcap_dir")
        self.capture: DNSCapture | None = None
        self.capture_keys: dict[str, Any] = {}

    @property
    def resolver_ip(self) -> str:
        first = self.resolvers[0]
        if first.transport in ("udp", "tcp", "dot") and first.address:
            return parse_host_port(first.address, 53)[0]
        # The system resolver: as located (probes/vantage.py); DoH has no single address.
        return self.ctx.resolver_ip if first.transport == "system" else ""

    async def setup(self) -> None:
        if self._config_error:
            raise SetupError(self._config_error)
        try:
            if self.ctx.fingerprint_files:
                self.fingerprints = Fingerprints.from_files(self.ctx.fingerprint_files)
        except (FingerprintError, OSError) as exc:
            raise SetupError(f"fingerprints: {exc}") from exc
        if self.ctx.helpers:
            self.control = ControlClient.for_context(self.ctx)
            problem = await self.control.choose()
            if problem:
                # Asking an unreachable helper again for every name would only add timeouts.
                self.helper_failure = self.control.unreachable_failure
                await self.control.aclose()
                self.control = None
                self.warnings.append(f"control helper unreachable ({problem})")
                if self.control_resolver is None:
                    self.exit_status = EXIT_HELPER_UNREACHABLE
        elif self.control_resolver is None:
            self.warnings.append(
                "no control (give --helper or --control-resolver): verdicts are null "
                "unless the evidence needs no control (injection, fingerprints, bogons)"
            )
        self._start_capture()

    def _udp_servers(self) -> list[tuple[str, int]]:
        specs = [*self.resolvers, *self.probe_addresses, self.control_resolver]
        return [
            parse_host_port(spec.address, 53)
            for spec in specs
            if spec is not None and spec.transport == "udp" and spec.address
        ]

    def _start_capture(self) -> None:
        """One capture for the whole run, open before the first query (or a note why not)."""
        if not self.packet_capture:
            return
        servers = self._udp_servers()
        if not any(":" not in ip for ip, _ in servers):
            # Nothing to capture (getaddrinfo, TCP, DoT, DoH or IPv6 only): not worth a warning.
            reason = "no resolver over IPv4 UDP to capture answers from"
            self.capture_keys = {"packet_capture": UNAVAILABLE, "x_packet_capture_reason": reason}
            return
        why = capture_unavailable()
        if why is None:
            try:
                pcap = pcap_path(self.pcap_dir, self.name, "run")
                capture = DNSCapture(servers, pcap)
                capture.start()
            except OSError as exc:
                why = f"cannot capture: {exc}"
            else:
                self.capture = capture
                self.capture_keys = {"packet_capture": "ok"}
                if pcap:
                    self.capture_keys["x_pcap"] = pcap
                return
        self.warnings.append(f"packet capture unavailable: {why}")
        self.capture_keys = {"packet_capture": UNAVAILABLE, "x_packet_capture_reason": why}

    async def close(self) -> None:
        if self.control is not None:
            await self.control.aclose()
        if self.capture is not None:
            self.capture.close()
            self.capture = None

    @classmethod
    def input_problem(cls, input_: str) -> str | None:
        try:
            name = name_of(input_)
        except ValueError as exc:
            return f"not a valid URL: {exc}"
        if not name:
            return "needs a domain name or a URL with a host"
        if len(name) <= 253 and _PLAIN_NAME.fullmatch(name):
            return None
        if is_ip(name.strip("[]")):
            return "is an IP address: there is nothing to resolve"
        try:
            dns.name.from_text(name)
        except dns.exception.DNSException as exc:
            return f"not a valid domain name: {exc}"
        return None

    async def _query(
        self, name: str, spec: ResolverSpec, role: str, t_zero: float, *, window: float
    ) -> list[dict[str, Any]]:
        """Query one resolver (retrying a UDP timeout once); every attempt's record is kept."""
        records: list[dict[str, Any]] = []
        attempts = DNS_ATTEMPTS if spec.transport == "udp" and role == ROLE_RESOLVER else 1
        for _ in range(attempts):
            result = await resolve(
                name,
                query_type=QUERY_TYPE,
                resolver=spec.address,
                transport="udp" if spec.transport == "system" else spec.transport,
                timeout=self.dns_timeout,
                t_zero=t_zero,
                listen_window=window,
                ca_file=self.ctx.ca_file,
                capture=self.capture,
            )
            record = result.queries[0]
            record["x_role"] = role
            record["x_transport"] = spec.transport
            record["x_responses"] = _responses_of(result)
            records.append(record)
            if result.failure != "generic_timeout_error":
                break
        return records

    async def _control_view(self, name: str, addrs: list[str], keys: dict[str, Any]) -> None:
        """Ask the helper for its DNS view and a TLS handshake with each of our addresses."""
        if self.control is None:
            return
        if self.tls_port == DEFAULT_TLS_PORT:
            url = f"http://{name}/"
        else:
            url = f"https://{name}:{self.tls_port}/"
        endpoints = [format_host_port(a, self.tls_port) for a in addrs[:MAX_TLS_CHECKS]]
        result = await self.control.measure(url, endpoints, {})
        keys["control_failure"] = result.failure
        if result.failure is None:
            doc = result.control
            keys["control"] = {
                "dns": doc.get("dns"),
                "tcp_connect": doc.get("tcp_connect") or {},
                "tls_handshake": doc.get("tls_handshake") or {},
            }
            if isinstance(doc.get("ip_info"), dict):  # ASNs for OONI's same-ASN rule
                keys["control"]["ip_info"] = doc["ip_info"]
            elif (doc.get("dns") or {}).get("addrs"):  # oohelperd before Aug 2022
                note_degraded(keys, doc, {"ip_info": SAME_ASN_FEATURE})
            if isinstance(doc.get("x_tls_certificates"), dict):
                keys["control"]["x_tls_certificates"] = doc["x_tls_certificates"]
            if not keys["control"]["tls_handshake"] and self.tls_port != DEFAULT_TLS_PORT:
                keys.setdefault("x_control_degraded", {})["tls_handshake"] = (
                    f"the helper's TLS check of our addresses on port {self.tls_port} "
                    "(oohelperd handshakes only on 443): differing answers stay inconclusive"
                )

    async def measure(self, input_: str | None) -> dict[str, Any]:
        assert input_ is not None  # the runner checked it with input_problem()
        name = name_of(input_)
        t_zero = time.monotonic()
        keys: dict[str, Any] = {
            "domain": name,
            "queries": [],
            "control_resolver": self.control_resolver.label if self.control_resolver else None,
            "control_queries": [],
            "control": {},
            "control_failure": self.helper_failure,
            "x_listen_window": self.listen_window,
        }
        if self.bogon_exempt:
            keys["x_bogon_exempt"] = self.bogon_exempt
        keys.update(self.capture_keys)
        probe_steps = [
            self._query(name, spec, ROLE_RESOLVER, t_zero, window=self.listen_window)
            for spec in self.resolvers
        ] + [
            self._query(name, spec, ROLE_PROBE_ADDRESS, t_zero, window=self.listen_window)
            for spec in self.probe_addresses
        ]
        control_step = (
            self._query(name, self.control_resolver, "control", t_zero, window=0.0)
            if self.control_resolver
            else None
        )
        steps = [*probe_steps, *([control_step] if control_step else [])]
        gathered = await _concurrently(steps)
        if control_step:
            keys["control_queries"] = gathered.pop()
        for records in gathered:
            keys["queries"].extend(records)
        # The helper checks only the addresses the control resolver did not confirm.
        confirmed = {a for q in keys["control_queries"] for a in query_addresses(q)}
        ours: list[str] = []
        for query in keys["queries"]:
            if query["x_role"] == ROLE_RESOLVER:
                ours.extend(a for a in query_addresses(query) if a not in ours)
        # Bogons cannot serve a public name: they are evidence already, not worth a check.
        bogon = bogon_check(keys)
        unconfirmed = [a for a in ours if a not in confirmed and not bogon(a)]
        await self._control_view(name, unconfirmed, keys)
        self._summarise(keys)
        return keys

    def _summarise(self, keys: dict[str, Any]) -> None:
        """OONI's legacy dns_consistency keys, then our verdict."""
        resolvers = [q for q in keys["queries"] if q["x_role"] == ROLE_RESOLVER]
        keys["errors"] = {
            q["resolver_address"] or "system": q["failure"] for q in resolvers if q["failure"]
        }
        keys["successful"] = sorted(
            {q["resolver_address"] or "system" for q in resolvers if not q["failure"]}
        )
        keys["failed"] = sorted(set(keys["errors"]) - set(keys["successful"]))
        verdict = analyze(keys, self.fingerprints)
        keys["inconsistent"] = [r or "system" for r in verdict.inconsistent]
        keys["dns_evidence"] = [e.as_dict() for e in verdict.evidence]
        keys["blocking"] = verdict.blocking
        keys["blocking_detail"] = verdict.blocking_detail

    def timeout_keys(self, input_: str | None, failure: str) -> dict[str, Any]:
        return {"failure": failure, "blocking": None, "blocking_detail": None}


async def _concurrently(steps: list[Coroutine[Any, Any, _T]]) -> list[_T]:
    """asyncio.gather, except that the last step runs in the calling task: one task fewer per
    name (with one resolver and a control: one task instead of two, and no gathering future)."""
    if not steps:
        return []
    tasks = [asyncio.ensure_future(step) for step in steps[:-1]]
    try:
        last = await steps[-1]
        return [*[await task for task in tasks], last]
    except BaseException:
        for task in tasks:
            task.cancel()
        raise


def decode_raw(response: dict[str, Any]) -> bytes:
    """The wire bytes of one kept answer (for re-parsing in analysis)."""
    return base64.b64decode(response.get("raw") or "")
