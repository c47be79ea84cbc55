"""dns_consistency verdicts from test keys alone.

Pure functions over a measurement's ``test_keys`` (the ``queries`` of every resolver with every
datagram each one received in ``x_responses``, the control resolver's ``control_queries`` and the
control helper's ``control``), so stored measurements can be re-judged with better rules.

Evidence, strongest first (the first one found names ``blocking_detail``):

- ``dns.injected``: one query got several *differing* valid answers (a forged answer raced the
  genuine one), or valid answers that arrived with different IP TTLs (packet capture: two
  senders), or an address that runs no DNS server answered at all.
- ``dns.known_forged``: an answer is a known censor address (OONI's DNS fingerprints).
- ``dns.bogon``: an answer is a bogon the control did not also give.
- ``dns.nxdomain``: NXDOMAIN while the control resolves the name.
- ``dns.inconsistent``: no address in common with the control, and the control helper's TLS
  handshake to each of the probe's addresses (SNI = the name) failed, so the address does not
  serve the name. A CDN or geo-DNS answer passes that handshake and does not count.

A probe answer in the same network (non-zero ASN) as one of the control's answers is consistent
too, OONI's same-ASN rule (probe-cli webconnectivity dnsanalysis.go): the ASNs are the helper's
``control.ip_info``, which oohelperd fills for its own addresses and for the probe's. It settles
the answers no TLS handshake could check (no helper handshake, or a helper before oohelperd's
TLS step), which would otherwise be ``dns.inconsistent_unverified`` and a null verdict; a failed
handshake for the name stays the stronger evidence and is not overruled by the ASN.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from probes.fingerprints import Fingerprints, blocking_matches
from probes.net.addresses import is_bogon

BLOCKING_DNS = "dns"
INJECTED = "dns.injected"
KNOWN_FORGED = "dns.known_forged"
BOGON = "dns.bogon"
NXDOMAIN = "dns.nxdomain"
INCONSISTENT = "dns.inconsistent"
# Different addresses, but no control TLS handshake could tell a CDN from a lie: inconclusive.
UNVERIFIED = "dns.inconsistent_unverified"
# Order of strength: what a reader should see first when several apply.
PRECEDENCE = (INJECTED, KNOWN_FORGED, BOGON, NXDOMAIN, INCONSISTENT)

ROLE_RESOLVER = "resolver"
ROLE_PROBE_ADDRESS = "probe_address"
NXDOMAIN_RCODE = 3
NXDOMAIN_FAILURES = frozenset({"dns_nxdomain_error", "dns_name_error"})


@dataclass
class Evidence:
    kind: str
    resolver: str
    detail: str

    def as_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "resolver": self.resolver, "detail": self.detail}


@dataclass
class Verdict:
    blocking: str | bool | None
    blocking_detail: str | None
    evidence: list[Evidence] = field(default_factory=list)
    inconsistent: list[str] = field(default_factory=list)  # resolvers whose answers differ


def _answer_values(answers: Iterable[Mapping[str, Any]]) -> list[str]:
    out = []
    for answer in answers:
        value = answer.get("ipv4") or answer.get("ipv6") or answer.get("hostname")
        if isinstance(value, str):
            out.append(value)
    return out


def _signature(response: Mapping[str, Any]) -> tuple[Any, frozenset[str]]:
    """What makes two answers 'the same': rcode and the set of addresses/targets."""
    return response.get("rcode"), frozenset(_answer_values(response.get("answers") or []))


def _valid(query: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [r for r in query.get("x_responses") or [] if r.get("valid")]


def ip_ttls(responses: Iterable[Mapping[str, Any]]) -> list[str]:
    """The distinct IP TTLs (packet capture) of a query's valid answers, in order of arrival.

    One host sends its answers over one path, so they arrive with one TTL; a second TTL is a
    second sender on the path (an injector a few hops away).
    """
    out: list[str] = []
    for response in responses:
        ttl = response.get("ip_ttl")
        if isinstance(ttl, int) and not isinstance(ttl, bool) and str(ttl) not in out:
            out.append(str(ttl))
    return out


def query_addresses(query: Mapping[str, Any]) -> list[str]:
    """Every address of every valid answer the query got (or of its record, for getaddrinfo)."""
    responses = _valid(query)
    out: list[str] = []
    sources = [r.get("addrs") or [] for r in responses]
    if not responses:
        sources = [[a.get("ipv4") or a.get("ipv6") for a in query.get("answers") or []]]
    for addrs in sources:
        out.extend(a for a in addrs if isinstance(a, str) and a not in out)
    return out


def control_view(test_keys: Mapping[str, Any]) -> tuple[set[str], bool, bool]:
    """(control addresses, control resolved, control said NXDOMAIN) from resolver and helper."""
    addrs: set[str] = set()
    nxdomain = False
    for query in test_keys.get("control_queries") or []:
        addrs.update(query_addresses(query))
        nxdomain |= query.get("failure") in NXDOMAIN_FAILURES
    helper_dns = (test_keys.get("control") or {}).get("dns") or {}
    addrs.update(a for a in helper_dns.get("addrs") or [] if isinstance(a, str))
    nxdomain |= helper_dns.get("failure") in NXDOMAIN_FAILURES
    return addrs, bool(addrs), nxdomain and not addrs


def control_asns(test_keys: Mapping[str, Any]) -> dict[str, int]:
    """IP -> non-zero ASN from the helper's ``ip_info`` (oohelperd since 2022; ours with a
    GeoIP database); empty when the helper sent none."""
    ip_info = (test_keys.get("control") or {}).get("ip_info")
    if not isinstance(ip_info, Mapping):
        return {}
    out = {}
    for ip, info in ip_info.items():
        asn = info.get("asn") if isinstance(info, Mapping) else None
        if isinstance(ip, str) and isinstance(asn, int) and not isinstance(asn, bool) and asn > 0:
            out[ip] = asn
    return out


def same_network(addrs: Iterable[str], control_addrs: set[str], asns: Mapping[str, int]) -> bool:
    """True when a probe answer shares a known ASN with a control answer (OONI's rule)."""
    control_networks = {asns[a] for a in control_addrs if a in asns}
    return any(asns.get(a) in control_networks for a in addrs)


def tls_valid_addresses(test_keys: Mapping[str, Any]) -> set[str] | None:
    """Addresses whose TLS handshake from the control succeeded for the name.

    None when the helper checked nothing (no helper, or it failed): nothing is known. An
    endpoint the helper could not even connect to counts as not valid.
    """
    control = test_keys.get("control") or {}
    attempted = control.get("tcp_connect")
    handshakes = control.get("tls_handshake") or {}
    if not isinstance(attempted, Mapping) or not attempted:
        return None
    if not handshakes and any(
        isinstance(e, Mapping) and e.get("status") for e in attempted.values()
    ):
        return None  # it connected but made no handshake (oohelperd: only on port 443)
    valid = set()
    for endpoint, entry in handshakes.items():
        if isinstance(entry, Mapping) and entry.get("status"):
            valid.add(endpoint.rpartition(":")[0].strip("[]"))
    return valid


# Answers repeat (a censor's few forged addresses, a resolver's CDN pool): caching the bogon
# test per address saves parsing it again for every name of a large run.
_is_bogon = functools.lru_cache(maxsize=65536)(is_bogon)


@functools.lru_cache(maxsize=256)
def _bogon_checker(exempt_cidrs: tuple[str, ...]) -> Callable[[str], bool]:
    exempt = []
    for cidr in exempt_cidrs:
        try:
            exempt.append(ipaddress.ip_network(cidr, strict=False))
        except ValueError:
            continue

    @functools.lru_cache(maxsize=65536)
    def check(address: str) -> bool:
        if not _is_bogon(address):
            return False
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return True
        return not any(ip in net for net in exempt if net.version == ip.version)

    return check


def bogon_check(test_keys: Mapping[str, Any]) -> Callable[[str], bool]:
    """is_bogon, except for networks the run declared real (``x_bogon_exempt``: a lab's or a
    loopback test's "internet" lives in private space, where every answer would be a bogon)."""
    exempt = test_keys.get("x_bogon_exempt") or []
    return _bogon_checker(tuple(str(c) for c in exempt))


def _fingerprinted(values: Iterable[str], fingerprints: Fingerprints | None) -> list[str]:
    if fingerprints is None:
        return []
    names: list[str] = []
    for value in values:
        names.extend(m.name for m in blocking_matches(fingerprints.match_dns(value)))
    return names


def _query_evidence(
    query: Mapping[str, Any],
    control_addrs: set[str],
    control_ok: bool,
    tls_valid: set[str] | None,
    fingerprints: Fingerprints | None,
    bogon: Callable[[str], bool] = _is_bogon,
    asns: Mapping[str, int] | None = None,
) -> list[Evidence]:
    resolver = str(query.get("resolver_address") or query.get("engine") or "")
    found: list[Evidence] = []
    responses = _valid(query)
    if query.get("x_role") == ROLE_PROBE_ADDRESS:
        if responses:
            found.append(
                Evidence(INJECTED, resolver, f"{len(responses)} answer(s) from a non-resolver")
            )
        return found
    signatures = {_signature(r) for r in responses}
    if len(signatures) > 1:
        found.append(Evidence(INJECTED, resolver, f"{len(signatures)} differing answers"))
    ttls = ip_ttls(responses)
    if len(ttls) > 1:
        found.append(Evidence(INJECTED, resolver, "answers' IP TTLs differ: " + ",".join(ttls)))
    values = [v for r in responses for v in _answer_values(r.get("answers") or [])]
    values += _answer_values(query.get("answers") or []) if not responses else []
    forged = _fingerprinted(values, fingerprints)
    if forged:
        found.append(Evidence(KNOWN_FORGED, resolver, ",".join(sorted(set(forged)))))
    addrs = query_addresses(query)
    bogons = [a for a in addrs if bogon(a) and a not in control_addrs]
    if bogons:
        found.append(Evidence(BOGON, resolver, ",".join(bogons)))
    said_nxdomain = query.get("failure") in NXDOMAIN_FAILURES or any(
        r.get("rcode") == NXDOMAIN_RCODE for r in responses
    )
    if said_nxdomain and control_ok:
        found.append(Evidence(NXDOMAIN, resolver, "NXDOMAIN while the control resolves"))
    if addrs and control_ok and not set(addrs) & control_addrs:
        # CDNs and geo-DNS give other addresses: only an address the control cannot complete a
        # valid TLS handshake with for this name counts.
        if tls_valid is None:
            if not same_network(addrs, control_addrs, asns or {}):
                found.append(Evidence(UNVERIFIED, resolver, ",".join(addrs)))
        elif not set(addrs) & tls_valid:
            found.append(Evidence(INCONSISTENT, resolver, ",".join(addrs)))
    return found


def analyze(test_keys: Mapping[str, Any], fingerprints: Fingerprints | None = None) -> Verdict:
    """The verdict for one name from its test keys."""
    control_addrs, control_ok, _control_nx = control_view(test_keys)
    tls_valid = tls_valid_addresses(test_keys)
    evidence: list[Evidence] = []
    inconsistent: list[str] = []
    answered = False
    bogon = bogon_check(test_keys)
    asns = control_asns(test_keys)
    for query in test_keys.get("queries") or []:
        found = _query_evidence(
            query, control_addrs, control_ok, tls_valid, fingerprints, bogon, asns
        )
        evidence.extend(found)
        if query.get("x_role") != ROLE_PROBE_ADDRESS:
            answered |= query.get("failure") is None or bool(_valid(query))
            addr = str(query.get("resolver_address") or query.get("engine") or "")
            if found and addr not in inconsistent:
                inconsistent.append(addr)
    kinds = {e.kind for e in evidence}
    detail = next((k for k in PRECEDENCE if k in kinds), None)
    if detail is not None:
        return Verdict(BLOCKING_DNS, detail, evidence, inconsistent)
    control_failed = not control_ok and not _control_nx
    if control_failed or not answered or UNVERIFIED in kinds:
        # No control to compare with, or no resolver answered at all: nothing to conclude.
        return Verdict(None, None, evidence, inconsistent)
    return Verdict(False, None, evidence, inconsistent)
