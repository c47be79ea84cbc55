"""web_connectivity 0.5 verdicts: OONI's "classic" engine and its x_ flags, then ours on top.

Two layers, both pure functions of stored test keys:

1. ``v05_keys``: what OONI's web_connectivity 0.5 writes (probe-cli webconnectivitylte
   analysisclassic.go + analysisext.go over the minipipeline sets of wc_observations):
   ``dns_consistency``, the HTTP diff keys, ``blocking``, ``accessible``, ``x_dns_flags``,
   ``x_blocking_flags``, ``x_null_null_flags``. Reproduced to the bit on OONI's 57 0.5
   measurements in ../shared/data/ooni (tests/test_web_connectivity_v05.py).
2. ``analyze_v05``: our verdict, which starts from v0.5's and departs from it only where the
   evidence says more (docs/methodology.md "web_connectivity 0.5 and where we differ"):
   a control that is partial (the helper's DNS failed, its TCP worked) counts for what it saw;
   an inconsistent DNS answer with a page of another length and title is not excused by shared
   header names; a known block page or a reference page (x_reference) decides between
   ``dns``/``http-diff`` and accessible.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from probes.fingerprints import Fingerprints, Match
from probes.nettests import wc_observations as wo
from probes.nettests.wc_observations import as_list as _list
from probes.nettests.wc_observations import as_map as _map
from probes.nettests.wc_stall import control_fetched_past, stalled_at
from probes.nettests.web_connectivity_analysis import (
    BODY_PROPORTION_THRESHOLD,
    CONTROL_NXDOMAIN_FAILURES,
    AsnLookup,
    body_bytes,
    header_values,
    is_bogon,
    target_url,
)

# analysiscore.go: x_blocking_flags bits.
FLAG_DNS, FLAG_TCP_IP, FLAG_TLS, FLAG_HTTP, FLAG_HTTP_DIFF, FLAG_SUCCESS = (
    1 << i for i in range(6)
)
# x_dns_flags bits.
DNS_BOGON, DNS_UNEXPECTED_FAILURE, DNS_UNEXPECTED_ADDRS = 1, 2, 4
# x_null_null_flags bits.
NN_DNS_FAILURE, NN_TCP_FAILURE, NN_TLS_FAILURE, NN_SUCCESSFUL_HTTPS, NN_GHOST_DNS = (
    1 << i for i in range(5)
)

# Our similarity threshold: shingle Jaccard at or above this is "the same page". Measured on
# loopback pages and OONI's bodies (docs/benchmarks.md); a block page shares almost no
# 4-word shingles with the site it replaces, a dynamic page most of them.
SIMILARITY_SAME_PAGE = 0.5
SHINGLE_WORDS = 4
_WORD_RE = re.compile(r"[\w']+", re.UNICODE)
_TAG_RE = re.compile(r"<(script|style)\b.*?</\1>|<[^>]+>", re.IGNORECASE | re.DOTALL)


@dataclass
class V05Keys:
    """The analysis keys web_connectivity 0.5 writes."""

    dns_consistency: str | None = None
    dns_experiment_failure: str | None = None
    http_experiment_failure: str | None = None
    body_proportion: float = 0.0
    body_length_match: bool | None = None
    status_code_match: bool | None = None
    headers_match: bool | None = None
    title_match: bool | None = None
    blocking: str | bool | None = None
    accessible: bool | None = None
    x_dns_flags: int = 0
    x_blocking_flags: int = 0
    x_null_null_flags: int = 0
    # Not keys: what the decision rested on, for our layer.
    final: wo.Observation | None = field(default=None, repr=False)
    rule: str = ""
    container: wo.Container | None = field(default=None, repr=False, compare=False)

    def as_test_keys(self) -> dict[str, Any]:
        return {
            "dns_consistency": self.dns_consistency,
            "body_proportion": self.body_proportion,
            "body_length_match": self.body_length_match,
            "status_code_match": self.status_code_match,
            "headers_match": self.headers_match,
            "title_match": self.title_match,
            "accessible": self.accessible,
            "blocking": self.blocking,
            "x_dns_flags": self.x_dns_flags,
            "x_blocking_flags": self.x_blocking_flags,
            "x_null_null_flags": self.x_null_null_flags,
        }


def asn_function(test_keys: Mapping[str, Any], asn_lookup: AsnLookup | None) -> wo.AsnOf:
    """IP -> ASN: the given lookup, else the probe's answers' ``asn``, else control.ip_info.

    The table of known ASNs is built on the first call: most measurements never ask (their
    addresses overlap the control's), and bulk analysis reads every measurement.
    """
    known: dict[str, int] | None = None

    def known_asns() -> dict[str, int]:
        table: dict[str, int] = {}
        for query in _list(test_keys.get("queries")):
            for answer in _list(_map(query).get("answers")):
                answer = _map(answer)
                ip, asn = answer.get("ipv4") or answer.get("ipv6"), answer.get("asn")
                if isinstance(ip, str) and isinstance(asn, int) and asn > 0:
                    table.setdefault(ip, asn)
        for ip, info in _map(_map(test_keys.get("control")).get("ip_info")).items():
            asn = _map(info).get("asn")
            if isinstance(asn, int) and asn > 0:
                table.setdefault(str(ip), asn)
        return table

    def asn_of(ip: str) -> int:
        nonlocal known
        if asn_lookup is not None:
            found = asn_lookup(ip)
            if found:
                return found
        if known is None:
            known = known_asns()
        return known.get(ip, 0)

    return asn_of


# --- layer 1: OONI's v0.5 ------------------------------------------------------------------


def _ext_flags(keys: V05Keys, wa: wo.WebAnalysis, asn_of: wo.AsnOf) -> None:
    """analysisext.go: the x_ flags from every lookup and endpoint, not only getaddrinfo's."""
    if wa.dns_bogon:
        keys.x_dns_flags |= DNS_BOGON
    if wa.dns_unexpected_failure:
        keys.x_blocking_flags |= FLAG_DNS
        keys.x_dns_flags |= DNS_UNEXPECTED_FAILURE
    if wa.dns_invalid:
        keys.x_blocking_flags |= FLAG_DNS
        keys.x_dns_flags |= DNS_UNEXPECTED_ADDRS
    if wa.tcp_unexpected_failure:
        keys.x_blocking_flags |= FLAG_TCP_IP
    if wa.tls_unexpected_failure:
        keys.x_blocking_flags |= FLAG_TLS
    if wa.http_unexpected_failure:
        keys.x_blocking_flags |= FLAG_HTTP
    has_final = any(
        v is not None
        for v in (
            wa.final_tcp_without_control,
            wa.final_tls_without_control,
            wa.final_tls_with_control,
            wa.final_tcp_with_control,
        )
    )
    exp = wa.expectations
    if not has_final and exp is not None and exp.final_response_failure == "":
        # Redirect errors the control's successful fetch explains (analysisExtRedirectErrors).
        if wa.dns_unexplained_failure:
            keys.x_blocking_flags |= FLAG_DNS
        if wa.tcp_unexplained_failure:
            keys.x_blocking_flags |= FLAG_TCP_IP
        if wa.tls_unexplained_failure:
            keys.x_blocking_flags |= FLAG_TLS
        if wa.http_unexplained_failure:
            keys.x_blocking_flags |= FLAG_HTTP
    if wa.final_tcp_without_control is not None:
        pass  # no control to compare with: no flag
    elif wa.final_tls_without_control is not None:
        keys.x_null_null_flags |= NN_SUCCESSFUL_HTTPS
        keys.x_blocking_flags |= FLAG_SUCCESS
    elif wa.final_tls_with_control is not None:
        keys.x_blocking_flags |= FLAG_SUCCESS
    elif wa.final_tcp_with_control is not None:
        diff = _DiffValues.of(wa)
        keys.x_blocking_flags |= FLAG_HTTP_DIFF if diff.is_diff() else FLAG_SUCCESS
    if wa.dns_expected_failure:
        keys.x_null_null_flags |= NN_DNS_FAILURE
    if wa.tcp_expected_failure:
        keys.x_null_null_flags |= NN_TCP_FAILURE
    if wa.tls_expected_failure:
        keys.x_null_null_flags |= NN_TLS_FAILURE
    if exp is not None and not exp.dns_addrs and wa.dns_success:
        keys.x_null_null_flags |= NN_GHOST_DNS


@dataclass
class _DiffValues:
    body_proportion: float | None
    body_length_match: bool | None
    status_code_match: bool | None
    headers_match: bool | None
    title_match: bool | None

    @classmethod
    def of(cls, wa: wo.WebAnalysis) -> _DiffValues:
        prop = wa.body_proportion
        return cls(
            prop,
            None if prop is None else prop > BODY_PROPORTION_THRESHOLD,
            wa.status_code_match,
            None
            if wa.uncommon_headers_intersection is None
            else len(wa.uncommon_headers_intersection) > 0,
            None if wa.title_different_words is None else not wa.title_different_words,
        )

    def is_diff(self) -> bool:
        """analysishttpdiff.go: same status and one of length, uncommon headers, title."""
        if self.status_code_match:
            return not (self.body_length_match or self.headers_match or self.title_match)
        return True


def _dns_consistency(wa: wo.WebAnalysis) -> str | None:
    if (
        not wa.dns_unexpected_failure
        and not wa.dns_invalid_classic
        and (wa.dns_valid_classic or wa.dns_expected_failure)
    ):
        return "consistent"
    if (
        wa.dns_invalid_classic
        or wa.dns_unexpected_failure
        or (wa.dns_success and wa.expectations is not None and not wa.expectations.dns_addrs)
    ):
        return "inconsistent"
    return None


@functools.lru_cache(maxsize=1 << 16)
def _loopback(addr: str) -> bool | None:
    """Whether an address is a loopback one; None when it is not an address (cached)."""
    try:
        return ipaddress.ip_address(addr).is_loopback
    except ValueError:
        return None


def _only_loopback(addrs: frozenset[str] | None) -> bool:
    count = 0
    for addr in addrs or ():
        loopback = _loopback(addr)
        if loopback is None:
            continue
        if not loopback:
            return False
        count += 1
    return count > 0


class _Outcome:
    """The classic engine's setters (analysisclassic.go), which DNS inconsistency overrides."""

    def __init__(self, keys: V05Keys) -> None:
        self.keys = keys

    def _inconsistent(self) -> bool:
        return self.keys.dns_consistency == "inconsistent"

    def false(self, rule: str) -> None:
        self.keys.blocking, self.keys.accessible, self.keys.rule = False, True, rule

    def null(self, rule: str) -> None:
        self.keys.rule = rule
        if self._inconsistent():
            self.keys.blocking, self.keys.accessible = "dns", False
        else:
            self.keys.blocking, self.keys.accessible = None, None

    def blocked(self, kind: str, rule: str) -> None:
        self.keys.rule = rule
        self.keys.blocking = "dns" if self._inconsistent() else kind
        self.keys.accessible = False

    def down(self, rule: str) -> None:
        self.keys.rule = rule
        if self._inconsistent():
            self.keys.blocking, self.keys.accessible = "dns", False
        else:
            self.keys.blocking, self.keys.accessible = False, False


def _walk(wa: wo.WebAnalysis, keys: V05Keys, diff: _DiffValues) -> None:
    """analysisClassicComputeBlockingAccessible: the first observation that explains it."""
    out = _Outcome(keys)
    for e in wa.linear:
        if e.http_is_final:
            keys.final = e
            if e.tls_failure == "":
                return out.false("final response over TLS")
            if e.ctrl_http_failure is None:
                return out.null("final response, no control")
            if not diff.is_diff():
                return out.false("final response matches the control")
            return out.blocked("http-diff", "final response differs from the control")
        if e.type == wo.HTTP and e.failure:
            keys.http_experiment_failure = e.failure
            if e.ctrl_http_failure is None:
                return out.null("HTTP failure, no control")
            if e.ctrl_http_failure:
                return out.down("HTTP failure at the probe and the control")
            return out.blocked("http-failure", "HTTP failure at the probe only")
        if e.type == wo.TLS and e.failure:
            keys.http_experiment_failure = e.failure
            if e.ctrl_tls_failure is None:
                if e.ctrl_http_failure is None:
                    return out.null("TLS failure, no control")
                return out.blocked("http-failure", "TLS failure, the control fetched the page")
            if e.ctrl_tls_failure:
                return out.down("TLS failure at the probe and the control")
            return out.blocked("http-failure", "TLS failure at the probe only")
        if e.type == wo.TCP and e.failure:
            keys.http_experiment_failure = e.failure
            if e.ctrl_tcp_failure is None:
                if e.ctrl_http_failure is None:
                    return out.null("TCP failure, no control")
                return out.blocked("http-failure", "TCP failure, the control fetched the page")
            if e.ctrl_tcp_failure:
                return out.down("TCP failure at the probe and the control")
            return out.blocked("tcp_ip", "TCP failure at the probe only")
        if e.type == wo.DNS and e.failure:
            if e.ctrl_dns_failure is None:
                keys.http_experiment_failure = e.failure
                if e.ctrl_http_failure is None:
                    return out.false("DNS failure, no control")
                return out.blocked("dns", "DNS failure, the control fetched the page")
            if e.ctrl_dns_failure:
                keys.http_experiment_failure = e.failure
                return out.down("DNS failure at the probe and the control")
            if (
                e.failure == wo.FAILURE_DNS_NO_ANSWER
                and e.ctrl_dns_addrs is not None
                and not e.ctrl_dns_addrs
            ):
                return out.down("no answer at the probe, no addresses at the control")
            keys.http_experiment_failure = e.failure
            return out.blocked("dns", "DNS failure at the probe only")
        if (
            e.type == wo.DNS
            and e.failure == ""
            and e.ctrl_dns_failure == ""
            and e.dns_addrs is not None
            and e.ctrl_dns_addrs is not None
            and _only_loopback(e.dns_addrs)
        ):
            if not _only_loopback(e.ctrl_dns_addrs):
                return out.blocked("dns", "only loopback addresses at the probe")
            return out.down("only loopback addresses at the probe and the control")


def v05_keys(
    test_keys: Mapping[str, Any],
    asn_lookup: AsnLookup | None = None,
    container: wo.Container | None = None,
) -> V05Keys:
    """Exactly what web_connectivity 0.5's classic engine writes for these observations."""
    asn_of = asn_function(test_keys, asn_lookup)
    full = container if container is not None else wo.ingest(test_keys)
    keys = V05Keys(container=full)
    keys.http_experiment_failure = _str(test_keys.get("http_experiment_failure"))
    keys.dns_experiment_failure = _str(test_keys.get("dns_experiment_failure"))
    _ext_flags(keys, wo.analyze_observations(full, asn_of), asn_of)
    wa = wo.analyze_observations(wo.classic_filter(full), asn_of, linear=True)
    keys.dns_consistency = _dns_consistency(wa)
    if wa.dns_experiment_failure:
        keys.dns_experiment_failure = wa.dns_experiment_failure
    diff = _DiffValues.of(wa)
    keys.body_proportion = diff.body_proportion or 0.0
    keys.body_length_match = diff.body_length_match
    keys.status_code_match = diff.status_code_match
    keys.headers_match = diff.headers_match
    keys.title_match = diff.title_match
    _walk(wa, keys, diff)
    return keys


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


# --- layer 2: ours ------------------------------------------------------------------------


def page_shingles(body: bytes) -> set[tuple[str, ...]]:
    """Word 4-grams of a page's visible text (tags, scripts and styles removed)."""
    text = _TAG_RE.sub(" ", body.decode("utf-8", errors="replace"))
    words = [w.lower() for w in _WORD_RE.findall(text)]
    if len(words) < SHINGLE_WORDS:
        return {tuple(words)} if words else set()
    return {tuple(words[i : i + SHINGLE_WORDS]) for i in range(len(words) - SHINGLE_WORDS + 1)}


def page_similarity(a: bytes, b: bytes) -> float:
    """Jaccard index of the two pages' shingle sets (1.0: same text, 0.0: nothing shared)."""
    sa, sb = page_shingles(a), page_shingles(b)
    if not sa and not sb:
        return 1.0 if a.strip() == b.strip() else 0.0
    return len(sa & sb) / len(sa | sb)


def reference_body(test_keys: Mapping[str, Any]) -> bytes | None:
    """The body of our reference fetch (x_reference: the page through the helper's or a
    TLS-validated address), when the probe made one and it succeeded."""
    ref = test_keys.get("x_reference")
    if not isinstance(ref, dict) or ref.get("failure") is not None:
        return None
    response = ref.get("response")
    if not isinstance(response, dict):
        return None
    code = response.get("code")
    if not isinstance(code, int) or isinstance(code, bool) or code // 100 != 2:
        return None
    return body_bytes(response.get("body"))


@dataclass
class V05Verdict:
    """Our verdict on web_connectivity 0.5 evidence, with OONI's v0.5 keys beside it."""

    ooni: V05Keys
    blocking: str | bool | None
    accessible: bool | None
    blocking_detail: str | None
    blocking_fingerprint: str | None = None
    similarity: float | None = None
    partial_control: bool = False
    why: str = ""
    fingerprint_matches: tuple[Match, ...] = ()
    website_down: bool = False
    # A reference page (x_reference) could change this verdict and there is none: the probe
    # fetches one then and decides again.
    wants_reference: bool = False

    def as_test_keys(self) -> dict[str, Any]:
        keys = self.ooni.as_test_keys()
        keys.update(
            {
                "accessible": self.accessible,
                "blocking": self.blocking,
                "blocking_detail": self.blocking_detail,
                "x_v05_blocking": self.ooni.blocking,
                "x_v05_accessible": self.ooni.accessible,
            }
        )
        if self.blocking_fingerprint is not None:
            keys["blocking_fingerprint"] = self.blocking_fingerprint
        if self.similarity is not None:
            keys["x_reference_similarity"] = round(self.similarity, 4)
        if self.partial_control:
            keys["x_partial_control"] = True
        return keys


def helper_dns_lost(test_keys: Mapping[str, Any]) -> bool:
    """The helper's lookup failed for a reason other than "the name does not exist" (a lost
    datagram, a timeout, a server failure): the control is partial, not negative. Its
    connects to the probe's addresses still say what they saw."""
    control = test_keys.get("control")
    if not isinstance(control, dict):
        return False
    dns = control.get("dns")
    failure = dns.get("failure") if isinstance(dns, dict) else None
    return isinstance(failure, str) and failure not in CONTROL_NXDOMAIN_FAILURES


def _partial_container(test_keys: Mapping[str, Any]) -> wo.Container:
    """The observations with the helper's lost DNS (and the fetch it could not make) unknown
    instead of failed; its TCP and TLS results stay."""
    container = wo.ingest(test_keys)
    for obs in container.all():
        obs.ctrl_dns_domain = obs.ctrl_dns_failure = None
        obs.ctrl_dns_addrs = None
        obs.ctrl_http_failure = obs.ctrl_http_title = None
        obs.ctrl_http_code = obs.ctrl_http_body_length = None
        obs.ctrl_http_header_keys = None
    container.expectations = None
    return container


def _validated_by_tls(container: wo.Container, hostname: str | None) -> bool:
    """A system-resolver address completed a TLS handshake for the name (ts-017 E001)."""
    for obs in container.endpoints.values():
        if obs.tls_failure == "" and obs.tls_server_name == hostname and obs.ip_origin == "dns":
            return True
    return False


def _fingerprints(
    test_keys: Mapping[str, Any], fingerprints: Fingerprints | None
) -> tuple[list[Match], list[Match]]:
    if fingerprints is None:
        return [], []
    dns: list[Match] = []
    for query in _list(test_keys.get("queries")):
        for answer in _list(_map(query).get("answers")):
            answer = _map(answer)
            value = answer.get("ipv4") or answer.get("ipv6") or answer.get("hostname")
            if isinstance(value, str):
                dns.extend(fingerprints.match_dns(value))
    http: list[Match] = []
    for request in _list(test_keys.get("requests")):
        response = _map(request).get("response")
        if isinstance(response, dict):
            http.extend(
                fingerprints.match_http(
                    body_bytes(response.get("body")), header_values(response.get("headers"))
                )
            )
    return dns, http


def _best(matches: list[Match]) -> Match | None:
    real = [m for m in matches if not m.is_false_positive]
    return max(real, key=lambda m: m.confidence_no_fp) if real else None


def _detail(keys: V05Keys, blocking: str | bool | None, test_keys: Mapping[str, Any]) -> str | None:
    if blocking == "dns":
        failure = keys.dns_experiment_failure or keys.http_experiment_failure
        if failure in ("dns_nxdomain_error", "android_dns_cache_no_data"):
            return "dns.nxdomain"
        if keys.x_dns_flags & DNS_BOGON:
            return "dns.bogon"
        # The probe's own lookup (or a redirect's) failed where the helper's did not.
        if keys.dns_experiment_failure or (failure or "").startswith("dns_"):
            return "dns.failure"
        return "dns.inconsistent"
    if blocking == "tcp_ip":
        failures = {
            f
            for e in _list(test_keys.get("tcp_connect"))
            if isinstance(f := _map(_map(e).get("status")).get("failure"), str)
        }
        if failures and failures <= {"connection_refused", "connection_reset"}:
            return "tcp.rst"
        if failures == {"generic_timeout_error"}:
            return "tcp.timeout"
        return "tcp.connect_failure"
    if blocking == "http-failure":
        failure = keys.http_experiment_failure or ""
        tls_failures = {
            f
            for hs in _list(test_keys.get("tls_handshakes"))
            if isinstance(f := _map(hs).get("failure"), str)
        }
        if keys.x_blocking_flags & FLAG_TLS or failure.startswith("ssl_") or tls_failures:
            # A handshake reset names the SNI reset even when a later connection met the
            # censor's after-effect (refused, timed out) instead.
            reset = "connection_reset" in tls_failures or failure == "connection_reset"
            return "tls.sni_reset" if reset else "tls.handshake_failure"
        stall = stalled_at(test_keys) if failure == "generic_timeout_error" else None
        if stall is not None and control_fetched_past(test_keys, stall):
            return "http.stalled"  # bytes came, then froze (probes/nettests/wc_stall.py)
        return {
            "connection_reset": "http.reset",
            "generic_timeout_error": "http.timeout",
            "eof_error": "http.eof",
            "connection_refused": "http.refused",
        }.get(failure, "http.failure")
    if blocking == "http-diff":
        return "http.diff"
    return None


def _observations(keys: V05Keys, test_keys: Mapping[str, Any]) -> wo.Container:
    """The observations v0.5's keys were computed from (their addresses are never changed)."""
    return keys.container if keys.container is not None else wo.ingest(test_keys)


def analyze_v05(
    test_keys: Mapping[str, Any] | None,
    *,
    url: str | None = None,
    fingerprints: Fingerprints | None = None,
    asn_lookup: AsnLookup | None = None,
) -> V05Verdict:
    """Our verdict for a web_connectivity 0.5 measurement (see the module docstring)."""
    if not isinstance(test_keys, Mapping):
        return V05Verdict(V05Keys(), None, None, None)
    url = target_url(test_keys, url) or str(
        _map(test_keys.get("x_control_request")).get("http_request") or ""
    )
    hostname = wo.go_hostname(url) if url else None
    ooni = v05_keys(test_keys, asn_lookup)
    blocking, accessible, why = ooni.blocking, ooni.accessible, f"v0.5: {ooni.rule}"
    partial = wants_reference = False

    ref = reference_body(test_keys)

    def similar_to_reference(final: wo.Observation | None) -> float | None:
        if final is None or final.http_body is None or ref is None:
            return None
        return page_similarity(final.http_body, ref)

    # 1. A partial control: what the helper did see still decides (issue 14, item 3).
    if helper_dns_lost(test_keys):
        partial = True
        container = _partial_container(test_keys)
        redo = v05_keys(test_keys, asn_lookup, container)
        blocking, accessible = redo.blocking, redo.accessible
        why = f"partial control (helper DNS lost): {redo.rule}"
        # v0.5 reads the helper's empty answer as "ghost DNS" (inconsistent, x_null_null_flags
        # 16); the helper only lost it. Our DNS verdict is what the probe's own TLS proves.
        ooni.dns_consistency = redo.dns_consistency
        if ooni.dns_consistency is None and _validated_by_tls(container, hostname):
            ooni.dns_consistency = "consistent"
        ooni.final = redo.final
        similarity = similar_to_reference(redo.final)
        if blocking is None and similarity is not None and similarity >= SIMILARITY_SAME_PAGE:
            blocking, accessible = False, True
            why += f"; the reference page is the same (similarity {similarity:.2f})"
        cleartext = redo.final is not None and redo.final.tls_failure != ""
        wants_reference = blocking is None and cleartext and ref is None

    # 1b. v0.5 calls a failed lookup accessible when there is no control at all (classic
    #     engine rule 5.1.1): with nothing to compare, we say unknown.
    if ooni.rule == "DNS failure, no control":
        blocking, accessible, why = None, None, "DNS failure and no control: unknown"

    # 2. Inconsistent DNS and a page of another length and title: shared header names do
    #    not excuse it (the block page may come from the same server software).
    final = ooni.final
    similarity = similar_to_reference(final)
    inconsistent = ooni.dns_consistency == "inconsistent" or bool(
        ooni.x_dns_flags & DNS_UNEXPECTED_ADDRS
    )
    if (
        blocking is False
        and accessible
        and inconsistent
        and final is not None
        and final.tls_failure != ""
        and ooni.body_length_match is False
        and ooni.title_match is False
    ):
        wants_reference = ref is None
        if similarity is not None and similarity >= SIMILARITY_SAME_PAGE:
            why = f"inconsistent DNS, the reference page is the same (similarity {similarity:.2f})"
        else:
            blocking, accessible = "dns", False
            why = "inconsistent DNS and a page of another length and title" + (
                f" (reference similarity {similarity:.2f})" if similarity is not None else ""
            )

    # 2b. A body that froze part way while the control fetched all of it: the censor let the
    #     start through (v0.5 calls it down: a timeout after a good handshake).
    stall = stalled_at(test_keys)
    if stall is not None and blocking in (False, None) and control_fetched_past(test_keys, stall):
        blocking, accessible = "http-failure", False
        why = f"the body froze after {stall} bytes; the control fetched it whole"

    # 3. Known block pages and forged answers confirm blocking the comparisons missed.
    dns_fps, http_fps = _fingerprints(test_keys, fingerprints)
    dns_fp, http_fp = _best(dns_fps), _best(http_fps)
    down = blocking is False and accessible is False
    if not down and blocking in (False, None) and (dns_fp or http_fp):
        blocking = "dns" if dns_fp or inconsistent else "http-diff"
        accessible = False
        why = f"fingerprint {(dns_fp or http_fp).name}"  # type: ignore[union-attr]
    detail = _detail(ooni, blocking, test_keys)
    if blocking == "http-diff" and http_fp is not None:
        detail = "http.blockpage"
    if blocking == "dns" and dns_fp is not None:
        detail = "dns.known_forged"
    if (
        blocking == "dns"
        and detail == "dns.inconsistent"
        and any(is_bogon(o.ip or "") for o in _observations(ooni, test_keys).dns_successes)
    ):
        detail = "dns.bogon"
    named = dns_fp or http_fp
    return V05Verdict(
        ooni=ooni,
        blocking=blocking,
        accessible=accessible,
        blocking_detail=detail,
        blocking_fingerprint=named.name if named is not None else None,
        similarity=similarity,
        partial_control=partial,
        why=why,
        fingerprint_matches=tuple(dns_fps + http_fps),
        website_down=blocking is False and accessible is False,
        wants_reference=wants_reference,
    )
