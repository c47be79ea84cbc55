"""dnscheck: can this encrypted (or plain) DNS resolver be reached, and does it answer right?

Modelled on OONI's dnscheck (ooni/spec nettests/ts-028-dnscheck.md; probe-cli
internal/experiment/dnscheck, test version 0.9.2). The input is a resolver URL:
``https://NAME[:PORT]/PATH`` (DoH), ``dot://NAME[:PORT]`` (DoT, also ``tls://``),
``tcp://HOST[:PORT]``, ``udp://HOST[:PORT]``, ``doq://NAME[:PORT]`` (DNS over QUIC, RFC 9250).
Steps, with OONI's test keys:

1. ``bootstrap``: the resolver's name through the probe's resolver (the system's, or
   ``--resolver``), as OONI does with its system resolver; ``bootstrap_failure``.
2. ``lookups``: for each bootstrap address (plus ``default_addrs``), the test domain
   (``domain``, default example.org) through that address with the resolver's name as SNI and
   Host, keyed like OONI's ``dot://8.8.4.4:853``; each with its ``tcp_connect``,
   ``tls_handshakes`` and ``queries`` records and ``failed_operation``. Before a TLS lookup,
   one handshake with a control SNI (``control_sni``, default example.com) to the same
   endpoint tells SNI blocking apart from TLS blocking (``x_control_sni_handshake``).
3. ``control``: the control helper's view of the resolver's name (DNS, TCP connect and TLS
   handshake with the resolver's name to each probe address on the resolver's port, ASNs) and
   of the test domain (DNS, and TLS checks of the resolver's answers that the control did not
   give), while the lookups run.

The verdict comes from dnscheck_analysis.analyze, which reads only these test keys.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import dns.exception
import dns.name

from probes.net.addresses import format_host_port, is_ip
from probes.net.dns import resolve, resolve_retrying
from probes.net.dns_endpoint import Endpoint, lookup
from probes.net.tls import tls_handshake
from probes.nettests.base import EXIT_HELPER_UNREACHABLE, Nettest, ProbeContext, SetupError
from probes.nettests.control import ControlClient
from probes.nettests.dns_consistency_analysis import bogon_check, query_addresses
from probes.nettests.dnscheck_analysis import analyze

# OONI's dnscheck defaults (probe-cli internal/experiment/dnscheck/dnscheck.go).
DEFAULT_DOMAIN = "example.org"
DEFAULT_CONTROL_SNI = "example.com"  # as OONI's sni_blocking
_SCHEMES = {
    "https": ("doh", 443),
    "dot": ("dot", 853),
    "tls": ("dot", 853),
    "tcp": ("tcp", 53),
    "doq": ("doq", 853),
    "udp": ("udp", 53),
}
# Shares of the per-input budget (--timeout, 30 s by default). OONI gives the bootstrap 10 s and
# each lookup 15 s; ours add up within the budget so that each step's own timeout fires (and
# names the step) before the runner abandons the input: bootstrap, then the control SNI
# handshake and the lookup, while the helper is asked; the controls end by CONTROL_SHARE.
BOOTSTRAP_SHARE = 0.2
SNI_PROBE_SHARE = 0.1
LOOKUP_SHARE = 0.35
CONTROL_SHARE = 0.95
# The bootstrap over UDP keeps listening this long after its first answer (forged answers
# race the genuine one; dns_consistency's default).
DEFAULT_LISTEN_WINDOW = 0.5
# Addresses measured per resolver at most (OONI: no limit, ten at a time).
MAX_ADDRESSES = 16
# The helper checks at most this many of the resolver's answers for the test domain.
MAX_TLS_CHECKS = 16


@dataclass(frozen=True)
class ResolverURL:
    """A parsed input."""

    url: str
    scheme: str
    transport: str
    host: str  # a name or an IP (no brackets)
    port: int
    explicit_port: bool
    path: str

    @property
    def host_is_ip(self) -> bool:
        return is_ip(self.host)

    def lookup_key(self, ip: str) -> str:
        """OONI's key for the lookup through ``ip`` (makeResolverURL): the URL with the name
        replaced by the address; the port only when the input had one."""
        host = f"[{ip}]" if ":" in ip else ip
        if self.explicit_port:
            host = f"{host}:{self.port}"
        return f"{self.scheme}://{host}{self.path if self.transport == 'doh' else ''}"


def parse_resolver_url(text: str) -> ResolverURL:
    """Raises ValueError naming what is wrong."""
    text = text.strip()
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme not in _SCHEMES:
        raise ValueError(f"unknown scheme {parts.scheme!r} (use https, dot, doq, tcp or udp)")
    transport, default_port = _SCHEMES[scheme]
    host = (parts.hostname or "").rstrip(".").lower()
    if not host:
        raise ValueError("a resolver URL needs a host")
    try:
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"bad port: {exc}") from None
    if not is_ip(host):
        try:
            dns.name.from_text(host)
        except dns.exception.DNSException as exc:
            raise ValueError(f"{host!r} is not a valid name: {exc}") from None
    path = parts.path or "/dns-query"
    if parts.query:
        path += "?" + parts.query
    return ResolverURL(text, scheme, transport, host, port or default_port, port is not None, path)


class DNSCheck(Nettest):
    name = "dnscheck"
    version = "0.1.0"

    def __init__(self, ctx: ProbeContext) -> None:
        super().__init__(ctx)
        opts = ctx.options
        self.domain = str(opts.get("domain") or DEFAULT_DOMAIN).rstrip(".").lower()
        self.control_sni = str(opts.get("control_sni") or DEFAULT_CONTROL_SNI)
        self.default_addrs = [a for a in str(opts.get("default_addrs") or "").split() if a]
        window = opts.get("listen_window")
        self.listen_window = DEFAULT_LISTEN_WINDOW if window is None else float(window)
        self.bogon_exempt = [str(c) for c in opts.get("bogon_exempt") or []]
        self.control: ControlClient | None = None
        self.helper_failure: str | None = None
        self._domain_control: dict[str, Any] | None = None
        self._domain_lock = asyncio.Lock()

    async def setup(self) -> None:
        try:
            dns.name.from_text(self.domain)
        except dns.exception.DNSException as exc:
            raise SetupError(f"dnscheck --domain {self.domain!r}: {exc}") from exc
        bad = [a for a in self.default_addrs if not is_ip(a)]
        if bad:
            raise SetupError(f"dnscheck default_addrs: not IP addresses: {', '.join(bad)}")
        if not self.ctx.helpers:
            self.warnings.append("no control helper: every verdict is null")
            return
        self.control = ControlClient.for_context(self.ctx)
        problem = await self.control.choose()
        if problem:
            self.helper_failure = self.control.unreachable_failure
            await self.control.aclose()
            self.control = None
            self.warnings.append(f"control helper unreachable ({problem}): verdicts are null")
            self.exit_status = EXIT_HELPER_UNREACHABLE

    async def close(self) -> None:
        if self.control is not None:
            await self.control.aclose()

    @classmethod
    def input_problem(cls, input_: str) -> str | None:
        try:
            parse_resolver_url(input_)
        except ValueError as exc:
            return str(exc)
        return None

    async def measure(self, input_: str | None) -> dict[str, Any]:
        assert input_ is not None  # the runner checked it with input_problem()
        target = parse_resolver_url(input_)
        t_zero = time.monotonic()
        keys: dict[str, Any] = {
            "domain": self.domain,
            "x_default_addrs": " ".join(self.default_addrs),
            "x_residual": False,
            "x_transport": target.transport,
            "x_control_sni": self.control_sni,
            "bootstrap": None,
            "bootstrap_failure": None,
            "lookups": {},
            "control": {},
            "control_failure": self.helper_failure,
        }
        if self.bogon_exempt:
            keys["x_bogon_exempt"] = self.bogon_exempt
        addrs = await self._bootstrap(target, keys, t_zero)
        for extra in self.default_addrs:
            if extra not in addrs:
                addrs.append(extra)
        addrs = addrs[:MAX_ADDRESSES]
        lookups = [self._lookup(target, ip, t_zero) for ip in addrs]
        deadline = t_zero + self.ctx.timeout * CONTROL_SHARE

        async def lookups_then_domain_control() -> None:
            results = await asyncio.gather(*lookups)
            for ip, lookup_keys in zip(addrs, results, strict=True):
                keys["lookups"][target.lookup_key(ip)] = lookup_keys
            await _until(deadline, self._domain_control_for(keys), keys)

        # The helper may take long over the resolver (its GET to a DoT or DNS-over-TCP port
        # waits for the server to give up): the test domain's control does not wait for it.
        await asyncio.gather(
            _until(deadline, self._resolver_control(target, addrs, keys), keys),
            lookups_then_domain_control(),
        )
        verdict = analyze(keys)
        keys["x_verdicts"] = {
            "bootstrap": verdict.bootstrap.as_dict(),
            "lookups": {k: v.as_dict() for k, v in verdict.lookups.items()},
        }
        keys["blocking"], keys["blocking_detail"] = verdict.blocking, verdict.blocking_detail
        return keys

    async def _bootstrap(
        self, target: ResolverURL, keys: dict[str, Any], t_zero: float
    ) -> list[str]:
        """OONI's bootstrap: the resolver's name through the probe's own resolver."""
        if target.host_is_ip:
            return [target.host]
        timeout = max(0.5, self.ctx.timeout * BOOTSTRAP_SHARE)
        records: list[dict[str, Any]] = []
        addrs: list[str] = []
        failure: str | None = None
        if self.ctx.resolver:
            # A and AAAA at once; a query that timed out is asked once more (a lost datagram
            # must not decide the bootstrap), each attempt with half the share.
            results = await asyncio.gather(
                *(
                    resolve_retrying(
                        target.host,
                        query_type=query_type,
                        resolver=self.ctx.resolver,
                        timeout=timeout,
                        t_zero=t_zero,
                        listen_window=self.listen_window,
                    )
                    for query_type in ("A", "AAAA")
                )
            )
            for result in results:
                for record in result.queries:
                    record.setdefault("x_responses", [])
                result.queries[-1]["x_responses"] = result.extra_responses
                records.extend(result.queries)
                addrs.extend(a for a in result.addrs if a not in addrs)
            failure = None if addrs else (results[0].failure or "dns_no_answer")
        else:
            result = await resolve(target.host, query_type="ANY", timeout=timeout, t_zero=t_zero)
            records = result.queries
            addrs = list(result.addrs)
            failure = None if addrs else result.failure
        keys["bootstrap"] = {
            "agent": "",
            "failed_operation": None if addrs else "resolve",
            "failure": failure,
            "network_events": None,
            "queries": records,
            "requests": None,
            "tcp_connect": None,
            "tls_handshakes": None,
        }
        keys["bootstrap_failure"] = failure
        return addrs

    async def _lookup(self, target: ResolverURL, ip: str, t_zero: float) -> dict[str, Any]:
        name = "" if target.host_is_ip else target.host
        http_host = (
            target.host if not target.explicit_port else format_host_port(target.host, target.port)
        )
        ep = Endpoint(
            target.transport,
            ip,
            target.port,
            server_name=name or ip,
            http_host=http_host,
            path=target.path,
        )
        timeout = max(0.5, self.ctx.timeout * LOOKUP_SHARE)
        sni_probe = None
        if target.transport in ("dot", "doh"):
            sni_timeout = max(0.5, self.ctx.timeout * SNI_PROBE_SHARE)
            handshake = await tls_handshake(
                ip, target.port, self.control_sni, timeout=sni_timeout, t_zero=t_zero, verify=False
            )
            sni_probe = handshake.record
        result = await lookup(
            ep,
            self.domain,
            timeout=timeout,
            t_zero=t_zero,
            ca_file=self.ctx.ca_file,
            listen_window=self.listen_window,
        )
        return {
            "agent": "",
            "failed_operation": result.failed_operation,
            "failure": result.failure,
            "network_events": result.network_events,
            "queries": result.queries,
            "requests": None,
            "tcp_connect": result.tcp_connect,
            "tls_handshakes": result.tls_handshakes,
            **({"quic_handshakes": result.quic_handshakes} if target.transport == "doq" else {}),
            "x_endpoint": ep.address,
            "x_transport": target.transport,
            "x_control_sni_handshake": sni_probe,
        }

    async def _resolver_control(
        self, target: ResolverURL, addrs: list[str], keys: dict[str, Any]
    ) -> None:
        """The helper's view of the resolver: its name's addresses, and a TCP connect (and, for
        DoT/DoH, a TLS handshake with the resolver's name) to each of ours on its port."""
        if self.control is None or target.transport == "udp":
            return
        scheme = "https" if target.transport in ("dot", "doh", "doq") else "http"
        host = f"[{target.host}]" if ":" in target.host else target.host
        path = target.path if target.transport == "doh" else "/"
        url = f"{scheme}://{host}:{target.port}{path}"
        endpoints = [format_host_port(a, target.port) for a in addrs]
        result = await self.control.measure(url, endpoints, {})
        if result.failure is not None:
            keys["control_failure"] = result.failure
            return
        doc = result.control
        # The helper speaks no QUIC: its TCP view of a DoQ port says nothing about DoQ (and an
        # empty one must not count as "does not serve the name" for the bootstrap's check).
        checks = () if target.transport == "doq" else ("tcp_connect", "tls_handshake")
        view = {k: doc.get(k) or {} for k in checks}
        if not target.host_is_ip:
            view["dns"] = doc.get("dns") or {}
            if isinstance(doc.get("ip_info"), dict):
                view["ip_info"] = doc["ip_info"]
        keys["control"]["resolver"] = view

    async def _domain_control_for(self, keys: dict[str, Any]) -> None:
        """The helper's view of the test domain: asked once per run, and again for an input
        whose resolver gave addresses the control did not (to check them with TLS)."""
        if self.control is None:
            return
        async with self._domain_lock:
            if self._domain_control is None:
                result = await self.control.measure(f"http://{self.domain}/", [], {})
                if result.failure is not None:
                    keys["control_failure"] = result.failure
                    return
                self._domain_control = _domain_view(result.control)
        base = self._domain_control
        known = set(base.get("dns", {}).get("addrs") or [])
        bogon = bogon_check(keys)
        ours: list[str] = []
        for lk in keys["lookups"].values():
            for query in lk.get("queries") or []:
                ours.extend(a for a in query_addresses(query) if a not in ours)
        unconfirmed = [a for a in ours if a not in known and not bogon(a)][:MAX_TLS_CHECKS]
        if not unconfirmed:
            keys["control"]["domain"] = base
            return
        endpoints = [format_host_port(a, 443) for a in unconfirmed]
        result = await self.control.measure(f"https://{self.domain}/", endpoints, {})
        if result.failure is not None:
            keys["control_failure"] = result.failure
            keys["control"]["domain"] = {"dns": base.get("dns")}
            return
        keys["control"]["domain"] = _domain_view(result.control)

    def timeout_keys(self, input_: str | None, failure: str) -> dict[str, Any]:
        return {"failure": failure, "blocking": None, "blocking_detail": None}


async def _until(deadline: float, step: Coroutine[Any, Any, None], keys: dict[str, Any]) -> None:
    """Run a control step until ``deadline`` (time.monotonic(), the event loop's clock): a
    helper that answers late must not cost the measurement its own results."""
    try:
        async with asyncio.timeout_at(deadline):
            await step
    except TimeoutError:
        keys["control_failure"] = "generic_timeout_error"


def _domain_view(doc: dict[str, Any]) -> dict[str, Any]:
    view = {k: doc.get(k) or {} for k in ("dns", "tcp_connect", "tls_handshake")}
    if isinstance(doc.get("ip_info"), dict):
        view["ip_info"] = doc["ip_info"]
    return view
