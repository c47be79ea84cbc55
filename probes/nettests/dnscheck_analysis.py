"""dnscheck verdicts from test keys alone (pure functions: stored measurements can be re-judged).

Three questions, each answered only against a control that reached the thing in question:

1. Was the bootstrap lookup of the resolver's name interfered with? The probe's answers are
   judged against the control helper's DNS view of the name, the helper's TLS handshake (SNI =
   the name) with each of the probe's addresses and the helper's ASNs, by dns_consistency's
   rules (dns_consistency_analysis.analyze): ``dns.bootstrap_injected``, ``_known_forged``,
   ``_bogon``, ``_nxdomain``, ``_inconsistent``; a REFUSED, SERVFAIL or empty answer while the
   control resolves the name is ``dns.bootstrap_failure``.
2. Is the resolver blocked at an address? A TCP connect that was reset, refused or timed out
   while the helper connected to the same address and port is ``tcp_ip`` /
   ``tcp.connect_reset``, ``tcp.connect_refused``, ``tcp.connect_timeout``. A TLS handshake
   that was reset, timed out or cut (EOF) while the helper's handshake with the same SNI to the
   same endpoint passed is ``tls``: ``tls.sni_reset`` / ``tls.sni_timeout`` / ``tls.sni_eof``
   when the probe's own handshake with a control SNI to that endpoint reached TLS (the name is
   what is blocked), else ``tls.handshake_reset`` / ``_timeout`` / ``_eof`` (TLS to the
   endpoint is blocked whatever the name). A certificate the probe rejects while the helper's
   verifies is ``tls.intercepted``.
3. Does the resolver answer right? Its answers for the test domain against the helper's view
   of that domain, again by dns_consistency's rules: ``dns.injected`` (UDP: differing answers
   raced each other), ``dns.known_forged``, ``dns.bogon``, ``dns.nxdomain``,
   ``dns.inconsistent``.

Anything else is null: no control, the control failed too (the resolver is down), a failure
after the handshake (the helper does not speak DNS to the resolver), an IPv6 endpoint that
timed out on a probe with no working IPv6 endpoint.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from probes.nettests import dns_consistency_analysis as dca
from probes.nettests.verdict import Verdict

TCP_DETAILS = {
    "connection_reset": "tcp.connect_reset",
    "connection_refused": "tcp.connect_refused",
    "generic_timeout_error": "tcp.connect_timeout",
}
_TLS_KINDS = {"connection_reset": "reset", "generic_timeout_error": "timeout", "eof_error": "eof"}
INTERCEPTED = "tls.intercepted"
# Certificate failures (df-007): what an interceptor's certificate gives. Other ssl_ failures
# (an alert, e.g. a server that refuses our ALPN) say nothing about who answered.
CERTIFICATE_FAILURES = frozenset(
    {"ssl_invalid_hostname", "ssl_unknown_authority", "ssl_invalid_certificate"}
)
BOOTSTRAP_FAILURE = "dns.bootstrap_failure"
# Answers that are a censor's as often as a resolver's (a timeout is not: loss, a slow link).
BOOTSTRAP_FAILURES = frozenset({"dns_refused_error", "dns_servfail_error", "dns_no_answer"})
# Which blocked lookup names the measurement's verdict when several are blocked.
PRECEDENCE = ("tls", "tcp_ip", "dns")


@dataclass
class Analysis:
    blocking: str | bool | None
    blocking_detail: str | None
    bootstrap: Verdict
    lookups: dict[str, Verdict] = field(default_factory=dict)


def _resolver_queries(queries: Any) -> list[dict[str, Any]]:
    return [{**q, "x_role": dca.ROLE_RESOLVER} for q in queries or [] if isinstance(q, Mapping)]


def _dns_verdict(queries: Any, control: Mapping[str, Any], exempt: Any) -> dca.Verdict:
    keys = {"queries": _resolver_queries(queries), "control": control, "x_bogon_exempt": exempt}
    return dca.analyze(keys)


def bootstrap_verdict(tk: Mapping[str, Any]) -> Verdict:
    """Question 1. False when the resolver is an address (nothing was looked up)."""
    bootstrap = tk.get("bootstrap")
    if not isinstance(bootstrap, Mapping):
        return Verdict(False, None, "no bootstrap: the resolver is an address")
    control = (tk.get("control") or {}).get("resolver") or {}
    if not control.get("dns"):
        return Verdict(None, None, "no control view of the resolver's name")
    found = _dns_verdict(bootstrap.get("queries"), control, tk.get("x_bogon_exempt"))
    if found.blocking_detail:
        detail = "dns.bootstrap_" + found.blocking_detail.split(".", 1)[1]
        return Verdict("dns", detail, "; ".join(e.detail for e in found.evidence))
    _addrs, control_ok, _ = dca.control_view({"control": control})
    failure = tk.get("bootstrap_failure")
    if control_ok and failure in BOOTSTRAP_FAILURES:
        return Verdict("dns", BOOTSTRAP_FAILURE, f"{failure} while the control resolves")
    return Verdict(found.blocking, None, "" if found.blocking is False else "inconclusive")


def _entry(table: Any, endpoint: str) -> Mapping[str, Any] | None:
    entry = (table or {}).get(endpoint) if isinstance(table, Mapping) else None
    return entry if isinstance(entry, Mapping) else None


def reached_tls(failure: str | None) -> bool:
    """The handshake got as far as a certificate (a name mismatch still means TLS works)."""
    return failure is None or failure.startswith("ssl_")


def _connect_verdict(
    failure: str, c_tcp: Mapping[str, Any] | None, v6_ok: bool, ip6: bool
) -> Verdict:
    if c_tcp is None:
        return Verdict(None, None, "the control did not try this endpoint")
    if not c_tcp.get("status"):
        return Verdict(None, None, "the control could not connect either")
    if failure not in TCP_DETAILS:
        return Verdict(None, None, f"{failure}: a local network problem, not interference")
    if ip6 and failure == "generic_timeout_error" and not v6_ok:
        return Verdict(None, None, "IPv6 timed out and no IPv6 endpoint worked at the probe")
    return Verdict("tcp_ip", TCP_DETAILS[failure], "the control connected")


def _tls_verdict(lookup: Mapping[str, Any], c_tls: Mapping[str, Any] | None) -> Verdict:
    failure = str(lookup.get("failure"))
    if c_tls is None:
        return Verdict(None, None, "the control made no handshake with this endpoint")
    if not c_tls.get("status"):
        return Verdict(None, None, "the control's handshake failed too")
    if failure in CERTIFICATE_FAILURES:
        return Verdict("tls", INTERCEPTED, f"{failure} at the probe, valid for the control")
    kind = _TLS_KINDS.get(failure)
    if kind is None:
        return Verdict(None, None, f"{failure}: not a censor's signature")
    sni_probe = lookup.get("x_control_sni_handshake")
    if isinstance(sni_probe, Mapping) and reached_tls(sni_probe.get("failure")):
        return Verdict("tls", f"tls.sni_{kind}", "a control SNI passed the same endpoint")
    return Verdict("tls", f"tls.handshake_{kind}", "the control SNI failed too")


def lookup_verdict(
    lookup: Mapping[str, Any],
    control: Mapping[str, Any],
    domain_control: Mapping[str, Any],
    *,
    exempt: Any = None,
    v6_ok: bool = True,
) -> Verdict:
    """Questions 2 and 3 for one address of the resolver."""
    endpoint = str(lookup.get("x_endpoint") or "")
    operation = lookup.get("failed_operation")
    failure = lookup.get("failure")
    if operation == "connect":
        c_tcp = _entry(control.get("tcp_connect"), endpoint)
        return _connect_verdict(str(failure), c_tcp, v6_ok, endpoint.startswith("["))
    if operation == "tls_handshake":
        return _tls_verdict(lookup, _entry(control.get("tls_handshake"), endpoint))
    queries = lookup.get("queries") or []
    answered = any((q.get("x_responses") or q.get("answers")) for q in queries)
    if operation is not None and not answered:
        return Verdict(None, None, f"{failure} after the connection: no control speaks DNS to it")
    found = _dns_verdict(queries, domain_control, exempt)
    if found.blocking_detail:
        return Verdict(
            found.blocking, found.blocking_detail, "; ".join(e.detail for e in found.evidence)
        )
    encrypted = lookup.get("x_transport") in ("dot", "doh")
    if found.blocking is None and encrypted and failure is None:
        # An authenticated answer came back: the resolver is reachable; whether the answer
        # is right cannot be checked without the domain's control.
        return Verdict(False, None, "answered over verified TLS; answers unchecked")
    return Verdict(found.blocking, None, "" if found.blocking is False else "inconclusive")


def _v6_worked(lookups: Mapping[str, Any]) -> bool:
    return any(
        str(lk.get("x_endpoint") or "").startswith("[") and lk.get("failed_operation") != "connect"
        for lk in lookups.values()
        if isinstance(lk, Mapping)
    )


def analyze(tk: Mapping[str, Any]) -> Analysis:
    """The measurement's verdict: the bootstrap's if it was interfered with, else the first
    blocked address by PRECEDENCE, else false when an address worked, else null."""
    boot = bootstrap_verdict(tk)
    control = tk.get("control") or {}
    resolver_control = control.get("resolver") or {}
    domain_control = control.get("domain") or {}
    lookups = tk.get("lookups") or {}
    v6_ok = _v6_worked(lookups)
    verdicts = {
        key: lookup_verdict(
            lk, resolver_control, domain_control, exempt=tk.get("x_bogon_exempt"), v6_ok=v6_ok
        )
        for key, lk in sorted(lookups.items())
        if isinstance(lk, Mapping)
    }
    if boot.blocking not in (False, None):
        return Analysis(boot.blocking, boot.blocking_detail, boot, verdicts)
    blocked = [v for v in verdicts.values() if v.blocking not in (False, None)]
    if blocked:
        first = min(blocked, key=lambda v: PRECEDENCE.index(str(v.blocking)))
        return Analysis(first.blocking, first.blocking_detail, boot, verdicts)
    if any(v.blocking is False for v in verdicts.values()):
        return Analysis(False, None, boot, verdicts)
    return Analysis(None, None, boot, verdicts)
