"""web_connectivity verdicts from test keys alone (OONI web_connectivity v0.4 semantics).

Pure functions: the input is a measurement's ``test_keys`` (OONI archival format: ``queries``,
``tcp_connect``, ``tls_handshakes``, ``requests`` newest first, ``control``, ``control_failure``,
``dns_experiment_failure``), the output the analysis keys OONI's probe writes
(``dns_consistency``, ``body_proportion``, ``body_length_match``, ``status_code_match``,
``headers_match``, ``title_match``, ``accessible``, ``blocking``) plus our ``blocking_detail``
and ``blocking_fingerprint``. Because nothing else is read, the same code re-derives verdicts
from stored measurements, ours or OONI's.

Sources (read for facts, written here in our own words): ooni/spec ts-017-web-connectivity.md
"Local processing"; ooni/probe-cli internal/experiment/webconnectivity (v0.4.3) dnsanalysis.go,
httpanalysis.go, summary.go; webconnectivitylte analysisdns.go and analysiscore.go (v0.5) for
the optional TLS/ip_info evidence and the "website down" outcomes; netxlite/bogon.go for bogons.
docs/methodology.md explains every step and each difference from OONI.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import ipaddress
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from probes.fingerprints import Fingerprints, Match

AsnLookup = Callable[[str], "int | None"]

# --- vocabulary -----------------------------------------------------------------------------

CONSISTENT = "consistent"
INCONSISTENT = "inconsistent"

BLOCKING_DNS = "dns"
BLOCKING_TCP_IP = "tcp_ip"
BLOCKING_HTTP_FAILURE = "http-failure"
BLOCKING_HTTP_DIFF = "http-diff"

# OONI failure strings (ooni/spec data-formats df-007-errors.md; netxlite/errorsgen).
FAILURE_NXDOMAIN = "dns_nxdomain_error"
FAILURE_ANDROID_NO_DATA = "android_dns_cache_no_data"  # means NXDOMAIN on Android, ooni/probe#2029
FAILURE_REFUSED = "connection_refused"
FAILURE_RESET = "connection_reset"
FAILURE_EOF = "eof_error"
FAILURE_TIMEOUT = "generic_timeout_error"
FAILURE_SSL_INVALID_HOSTNAME = "ssl_invalid_hostname"
FAILURE_SSL_INVALID_CERTIFICATE = "ssl_invalid_certificate"
FAILURE_SSL_UNKNOWN_AUTHORITY = "ssl_unknown_authority"
SYSTEM_RESOLVER_ENGINES = frozenset({"system", "getaddrinfo"})
NXDOMAIN_FAILURES = frozenset({FAILURE_NXDOMAIN, FAILURE_ANDROID_NO_DATA})
# What the test helper writes for NXDOMAIN: model.THDNSNameError ("dns_name_error"); newer
# helpers may send the probe-side string, which we accept too.
CONTROL_NXDOMAIN_FAILURES = frozenset({"dns_name_error", FAILURE_NXDOMAIN})

# summary.go: request failures v0.4 classifies as "http-failure" (nxdomain -> "dns" separately).
# Any other failure string leaves blocking null ("let us be conservative").
HTTP_FAILURES = frozenset(
    {
        FAILURE_REFUSED,
        FAILURE_RESET,
        FAILURE_EOF,
        FAILURE_TIMEOUT,
        FAILURE_SSL_INVALID_HOSTNAME,
        FAILURE_SSL_INVALID_CERTIFICATE,
        FAILURE_SSL_UNKNOWN_AUTHORITY,
    }
)

# httpanalysis.go HTTPBodyLengthChecks: bodyProportionFactor; ts-017 "body_length_match".
# The match requires proportion strictly greater than this.
BODY_PROPORTION_THRESHOLD = 0.7
# httpanalysis.go HTTPTitleMatch: minWordLength, "5 is the average word length for english";
# measured in UTF-8 bytes as Go's len() does.
TITLE_MIN_WORD_BYTES = 5
# measurexlite/web.go WebGetTitle: (?i)<title>([^<]{1,512})</title> (MK used 1..128).
TITLE_RE = re.compile(r"<title>([^<]{1,512})</title>", re.IGNORECASE)
# httpanalysis.go HTTPHeadersMatch: headers so common their presence says nothing.
COMMON_HEADERS = frozenset(
    {
        "date",
        "content-type",
        "server",
        "cache-control",
        "vary",
        "set-cookie",
        "location",
        "expires",
        "x-powered-by",
        "content-encoding",
        "last-modified",
        "accept-ranges",
        "pragma",
        "x-frame-options",
        "etag",
        "x-content-type-options",
        "age",
        "via",
        "p3p",
        "x-xss-protection",
        "content-language",
        "cf-ray",
        "strict-transport-security",
        "link",
        "x-varnish",
    }
)

# Bogons: the ipinfo.io/bogon list that netxlite/bogon.go (IsBogon) uses. 6to4 (2002::/16) and
# Teredo (2001::/32) addresses are bogons when the IPv4 address they embed is one, which
# netxlite spells out prefix by prefix; we compute it.
BOGON_V4 = tuple(
    ipaddress.IPv4Network(n)
    for n in (
        "0.0.0.0/8",  # "this" network
        "10.0.0.0/8",  # private use
        "100.64.0.0/10",  # carrier-grade NAT
        "127.0.0.0/8",  # loopback
        "169.254.0.0/16",  # link local
        "172.16.0.0/12",  # private use
        "192.0.0.0/24",  # IETF protocol assignments
        "192.0.2.0/24",  # TEST-NET-1
        "192.168.0.0/16",  # private use
        "198.18.0.0/15",  # benchmark testing
        "198.51.100.0/24",  # TEST-NET-2
        "203.0.113.0/24",  # TEST-NET-3
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved
        "255.255.255.255/32",  # limited broadcast
    )
)
BOGON_V6 = tuple(
    ipaddress.IPv6Network(n)
    for n in (
        "::/128",  # unspecified
        "::1/128",  # loopback
        "::ffff:0:0/96",  # IPv4-mapped
        "::/96",  # IPv4-compatible
        "100::/64",  # remotely triggered black hole
        "2001:10::/28",  # ORCHID
        "2001:db8::/32",  # documentation
        "fc00::/7",  # unique local
        "fe80::/10",  # link local
        "fec0::/10",  # site local (deprecated)
        "ff00::/8",  # multicast
    )
)


def is_bogon(address: str) -> bool:
    """True for addresses that must never be a public web server's (netxlite.IsBogon)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return True  # netxlite: a non-IP is a bogon
    if isinstance(ip, ipaddress.IPv4Address):
        return any(ip in net for net in BOGON_V4)
    if any(ip in net for net in BOGON_V6):
        return True
    embedded = ip.sixtofour or (ip.teredo[0] if ip.teredo else None)
    return embedded is not None and is_bogon(str(embedded))


# --- reading test keys ----------------------------------------------------------------------


_EMPTY: Mapping[str, Any] = {}


def _map(value: Any) -> Mapping[str, Any]:
    # Decoded JSON is a plain dict: test its type first, as the ABC check costs ~10x more and
    # this runs a few dozen times per measurement.
    if type(value) is dict or isinstance(value, Mapping):
        return value
    return _EMPTY


def _list(value: Any) -> Sequence[Any]:
    return value if isinstance(value, list) else []


def body_bytes(body: Any) -> bytes | None:
    """A stored body as bytes: a string, or {"format": "base64", "data": ...} (df-001)."""
    if isinstance(body, str):
        return body.encode("utf-8", errors="surrogatepass")
    if isinstance(body, Mapping) and body.get("format") == "base64":
        data = str(body.get("data") or "")
        try:
            return base64.b64decode(data + "=" * (-len(data) % 4))
        except (binascii.Error, ValueError):
            # Some old measurements carry broken base64 (ooni/backend test data); keep the
            # raw text so lengths stay meaningful rather than dropping the body.
            return data.encode("ascii", errors="replace")
    return None


def header_names(headers: Any) -> set[str]:
    """Lower-cased header names from a map or a list of [name, value] pairs."""
    if isinstance(headers, Mapping):
        return {str(k).lower() for k in headers}
    return {
        str(pair[0]).lower() for pair in _list(headers) if isinstance(pair, list | tuple) and pair
    }


def header_values(headers: Any) -> dict[str, list[str]]:
    """Header values as text (base64 values decoded), for fingerprint matching."""
    out: dict[str, list[str]] = {}
    pairs = headers.items() if isinstance(headers, Mapping) else _list(headers)
    for pair in pairs:
        if not isinstance(pair, list | tuple) or len(pair) < 2:
            continue
        name, values = str(pair[0]), pair[1]
        for value in values if isinstance(values, list) else [values]:
            raw = body_bytes(value)
            if raw is not None:
                out.setdefault(name, []).append(raw.decode("utf-8", errors="replace"))
    return out


def _hostname(url: str | None) -> str | None:
    """Lower-case host of a URL, internationalised names in their IDNA (xn--) form."""
    if not url:
        return None
    try:
        host = urlsplit(url).hostname
    except ValueError:
        return None
    if host and not host.isascii():
        with contextlib.suppress(UnicodeError):  # keep the raw name; it will not match
            host = host.encode("idna").decode("ascii")
    return host


def _is_ip(host: str | None) -> bool:
    if not host:
        return False
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def target_url(test_keys: Mapping[str, Any], url: str | None = None) -> str | None:
    """The measured URL: given, else the first request's URL, else the control request's."""
    if url:
        return url
    requests = _list(test_keys.get("requests"))
    if requests:
        first = _map(_map(requests[-1]).get("request")).get("url")
        if isinstance(first, str) and first:
            return first
    ctrl_req = _map(test_keys.get("x_control_request")).get("http_request")
    return ctrl_req if isinstance(ctrl_req, str) else None


def _system_queries(test_keys: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The system resolver's queries: the only DNS step of v0.4.

    v0.5 keys also carry UDP and DoH lookups (engine "udp", "doh"); v0.4's DNS step used only
    the system resolver (engine "system", "getaddrinfo" in v0.5), so we keep those when
    present. Keys without an engine field (old formats) are used whole.
    """
    queries = [_map(q) for q in _list(test_keys.get("queries"))]
    system = [q for q in queries if q.get("engine") in SYSTEM_RESOLVER_ENGINES]
    return system or queries


def probe_addresses(test_keys: Mapping[str, Any], hostname: str | None) -> dict[str, int]:
    """IP -> ASN (0 unknown) of the probe's A/AAAA answers for the target hostname."""
    out: dict[str, int] = {}
    for query in _system_queries(test_keys):
        qhost = query.get("hostname")
        if hostname and isinstance(qhost, str) and qhost.rstrip(".").lower() != hostname:
            continue
        for answer in _list(query.get("answers")):
            answer = _map(answer)
            ip = answer.get("ipv4") or answer.get("ipv6")
            if isinstance(ip, str) and ip:
                asn = answer.get("asn")
                out[ip] = asn if isinstance(asn, int) else 0
    return out


def _cname_targets(test_keys: Mapping[str, Any]) -> list[str]:
    names = []
    for query in _list(test_keys.get("queries")):
        for answer in _list(_map(query).get("answers")):
            answer = _map(answer)
            if answer.get("answer_type") == "CNAME" and isinstance(answer.get("hostname"), str):
                names.append(answer["hostname"])
    return names


# --- DNS ------------------------------------------------------------------------------------


def dns_consistency(
    test_keys: Mapping[str, Any], hostname: str | None, asn_lookup: AsnLookup | None = None
) -> str:
    """dnsanalysis.go DNSAnalysis, plus v0.5's TLS evidence when the keys carry it.

    Consistent when the target is an IP; when both lookups failed with NXDOMAIN; when any
    non-zero ASN is shared; when any IP is shared; (our addition, from v0.5) when a probe
    address was proven legitimate by the probe's own TLS handshake for the host. ASNs come
    from ``asn_lookup``, else from the keys (answers' ``asn``, v0.5 ``control.ip_info``, which
    oohelperd fills for the probe's addresses as well as its own: OONI's same-ASN rule).
    Otherwise inconsistent.
    """
    if _is_ip(hostname):
        return CONSISTENT
    control_dns = _map(_map(test_keys.get("control")).get("dns"))
    probe_failure = test_keys.get("dns_experiment_failure")
    control_failure = control_dns.get("failure")
    if probe_failure and control_failure:
        if control_failure in CONTROL_NXDOMAIN_FAILURES and probe_failure in NXDOMAIN_FAILURES:
            return CONSISTENT
        return INCONSISTENT
    probe = probe_addresses(test_keys, hostname)
    control_addrs = [a for a in _list(control_dns.get("addrs")) if isinstance(a, str) and a]
    ip_info = _map(_map(test_keys.get("control")).get("ip_info"))

    def control_asn(ip: str) -> int:
        if asn_lookup is not None:
            return asn_lookup(ip) or 0
        asn = _map(ip_info.get(ip)).get("asn")
        return asn if isinstance(asn, int) else 0

    def probe_asn(ip: str) -> int:
        # The helper looks up the probe's addresses too (ip_info flag 1), as OONI's v0.5 uses.
        if asn_lookup is not None:
            return asn_lookup(ip) or probe[ip] or control_asn(ip)
        return probe[ip] or control_asn(ip)

    control_asns = {control_asn(ip) for ip in control_addrs} - {0}
    if control_asns & ({probe_asn(ip) for ip in probe} - {0}):
        return CONSISTENT
    if set(probe) & set(control_addrs):
        return CONSISTENT
    if any(_tls_validated(test_keys, ip, hostname) for ip in probe):
        return CONSISTENT
    return INCONSISTENT


def _tls_validated(test_keys: Mapping[str, Any], ip: str, hostname: str | None) -> bool:
    """The probe completed a TLS handshake with ``ip`` for ``hostname`` (a CA vouched for it).

    This is the probe's own evidence, as analysisdns.go uses it. We deliberately ignore the
    helper's ip_info flag 8 ("valid for domain"): in probe-cli's netem QA the censor's address
    carries it too (web_connectivity_netem_qa_synthetic.jsonl:20 and :47).
    """
    for hs in _list(test_keys.get("tls_handshakes")):
        hs = _map(hs)
        address = hs.get("address")
        if hs.get("failure") is None and isinstance(address, str) and hostname:
            host = address.rsplit(":", 1)[0].strip("[]")
            if host == ip and hs.get("server_name") == hostname:
                return True
    return False


# --- HTTP -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class HTTPComparison:
    """httpanalysis.go HTTPAnalysisResult: the final response against the control's."""

    body_length_match: bool | None = None
    body_proportion: float = 0.0
    status_code_match: bool | None = None
    headers_match: bool | None = None
    title_match: bool | None = None


def _final_response(test_keys: Mapping[str, Any]) -> Mapping[str, Any] | None:
    requests = _list(test_keys.get("requests"))
    return _map(_map(requests[0]).get("response")) if requests else None


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def compare_http(test_keys: Mapping[str, Any]) -> HTTPComparison:
    """Body length, status, headers and title of requests[0] against control.http_request."""
    response = _final_response(test_keys)
    if response is None:
        return HTTPComparison()
    control = _map(_map(test_keys.get("control")).get("http_request"))
    control_length = _int(control.get("body_length"))
    control_code = _int(control.get("status_code"))
    code = _int(response.get("code"))
    truncated = bool(response.get("body_is_truncated"))
    body = body_bytes(response.get("body")) or b""

    body_match: bool | None = None
    proportion = 0.0
    if control_length > 0 and not truncated and len(body) > 0:
        small, large = sorted((len(body), control_length))
        proportion = small / large
        body_match = proportion > BODY_PROPORTION_THRESHOLD

    status_match: bool | None = None
    if control_code > 0 and code > 0:
        if code == control_code:
            status_match = True
        elif control_code // 100 != 5:
            # A 5xx at the helper says the helper had trouble: no verdict (httpanalysis.go).
            status_match = False

    headers_match: bool | None = None
    if code > 0 and control_code > 0:
        ours = header_names(response.get("headers"))
        theirs = header_names(control.get("headers"))
        headers_match = ours == theirs or bool((ours & theirs) - COMMON_HEADERS)

    title_match: bool | None = None
    if code > 0 and control_code > 0 and not truncated:
        found = TITLE_RE.search(body.decode("utf-8", errors="replace"))
        if found:
            title_match = _titles_match(found.group(1), str(control.get("title") or ""))
    return HTTPComparison(body_match, proportion, status_match, headers_match, title_match)


def _titles_match(probe_title: str, control_title: str) -> bool:
    """Every long word of either title appears in the other (order ignored), httpanalysis.go."""

    def words(title: str) -> set[str]:
        return {
            w.lower() for w in title.split(" ") if len(w.encode("utf-8")) >= TITLE_MIN_WORD_BYTES
        }

    return words(probe_title) == words(control_title)


# --- verdict --------------------------------------------------------------------------------


@dataclass(frozen=True)
class WebConnectivityVerdict:
    """The analysis keys of one measurement."""

    dns_consistency: str | None
    http: HTTPComparison
    accessible: bool | None
    blocking: str | bool | None
    blocking_detail: str | None = None
    blocking_fingerprint: str | None = None
    website_down: bool = False
    fingerprint_matches: tuple[Match, ...] = field(default=())

    def as_test_keys(self) -> dict[str, Any]:
        """Exactly OONI's analysis keys plus blocking_detail (+ blocking_fingerprint)."""
        keys: dict[str, Any] = {
            "dns_consistency": self.dns_consistency,
            "body_proportion": self.http.body_proportion,
            "body_length_match": self.http.body_length_match,
            "status_code_match": self.http.status_code_match,
            "headers_match": self.http.headers_match,
            "title_match": self.http.title_match,
            "accessible": self.accessible,
            "blocking": self.blocking,
            "blocking_detail": self.blocking_detail,
        }
        if self.blocking_fingerprint is not None:
            keys["blocking_fingerprint"] = self.blocking_fingerprint
        return keys


def _tcp_counts(test_keys: Mapping[str, Any]) -> tuple[int, int]:
    entries = [_map(_map(e).get("status")) for e in _list(test_keys.get("tcp_connect"))]
    return len(entries), sum(1 for s in entries if s.get("success") is True)


@dataclass(frozen=True)
class FinalFetch:
    """What v0.4's summary looks at: the last request of the redirect chain."""

    url: str
    failure: str | None
    chain_length: int


def final_fetch(test_keys: Mapping[str, Any], url: str | None = None) -> FinalFetch | None:
    """requests[0], with ``http_experiment_failure`` standing in when it has no failure.

    In v0.4 keys the two failures are the same. v0.5 keys record no request for a redirect
    whose connections all failed (requests[0] is then the successful 30x) or for a TLS
    handshake that failed; ``http_experiment_failure`` still names the failure, so we use it
    to rebuild the v0.4 view.
    """
    requests = _list(test_keys.get("requests"))
    experiment_failure = test_keys.get("http_experiment_failure")
    if not isinstance(experiment_failure, str):
        experiment_failure = None
    if requests:
        final = _map(requests[0])
        failure = final.get("failure")
        request_url = str(_map(final.get("request")).get("url") or url or "")
        return FinalFetch(
            request_url, failure if isinstance(failure, str) else experiment_failure, len(requests)
        )
    if experiment_failure is not None:
        return FinalFetch(url or "", experiment_failure, 1)
    return None


def _endpoint(ip: str, port: Any) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def _all_connects_failed_everywhere(test_keys: Mapping[str, Any]) -> bool:
    """Every probe connect failed and so did the helper's to the same endpoint."""
    control_tcp = _map(_map(test_keys.get("control")).get("tcp_connect"))
    entries = [_map(e) for e in _list(test_keys.get("tcp_connect"))]
    if not entries or not control_tcp:
        return False
    for entry in entries:
        ctrl = _map(control_tcp.get(_endpoint(str(entry.get("ip")), entry.get("port"))))
        if _map(entry.get("status")).get("failure") is None or not ctrl:
            return False
        if ctrl.get("status") is True or ctrl.get("failure") is None:
            return False
    return True


def _no_addresses_anywhere(test_keys: Mapping[str, Any]) -> bool:
    """Neither the probe nor the helper found any address (expired domain, ooni/probe#2290)."""
    control = _map(test_keys.get("control"))
    if any(_list(q.get("answers")) for q in _system_queries(test_keys)):
        return False
    if _list(test_keys.get("tcp_connect")) or _list(test_keys.get("tls_handshakes")):
        return False
    return not _list(_map(control.get("dns")).get("addrs")) and not _map(control.get("tcp_connect"))


def _tls_broken_everywhere(test_keys: Mapping[str, Any]) -> bool:
    """Every TLS handshake failed at the probe and the helper the same way (ooni/probe#2300)."""
    control_tls = _map(_map(test_keys.get("control")).get("tls_handshake"))
    handshakes = [_map(h) for h in _list(test_keys.get("tls_handshakes"))]
    if not handshakes or not control_tls:
        return False
    for hs in handshakes:
        ctrl = _map(control_tls.get(str(hs.get("address"))))
        if hs.get("failure") is None or not ctrl or ctrl.get("failure") != hs.get("failure"):
            return False
    return True


def website_down(test_keys: Mapping[str, Any]) -> bool:
    """analysiscore.go's three "website down" cases: a failure the helper saw as well."""
    return (
        _no_addresses_anywhere(test_keys)
        or _all_connects_failed_everywhere(test_keys)
        or _tls_broken_everywhere(test_keys)
    )


@dataclass(frozen=True)
class _Summary:
    accessible: bool | None
    reason: str | None
    website_down: bool = False


_DOWN = _Summary(False, None, website_down=True)
_UNKNOWN = _Summary(None, None)


def summarize(
    test_keys: Mapping[str, Any],
    consistency: str | None,
    http: HTTPComparison,
    *,
    url: str | None = None,
    flag_website_down: bool = True,
) -> _Summary:
    """summary.go Summarize: the first matching rule decides (see docs/methodology.md).

    With ``flag_website_down`` an outcome v0.4 leaves unknown (or calls "tcp_ip") becomes
    "down, not blocked" when the helper failed the same way (v0.5 analysiscore.go).
    """

    def unknown() -> _Summary:
        return _DOWN if flag_website_down and website_down(test_keys) else _UNKNOWN

    fetch = final_fetch(test_keys, url)
    # 1. An HTTPS fetch that succeeded reached the real server (ooni/probe#2661: so server-side
    #    blocking of HTTPS sites is never flagged).
    if fetch is not None and fetch.failure is None and fetch.url.startswith("https://"):
        return _Summary(True, None)
    # 2. Without the control we cannot compare anything.
    if test_keys.get("control_failure") is not None or not _map(test_keys.get("control")):
        return _UNKNOWN
    dns_failure = test_keys.get("dns_experiment_failure")
    # 3. NXDOMAIN at the probe and at the control: the name is gone. v0.4 says accessible;
    #    v0.5 (analysiscore.go "website down") says accessible=false, blocking=false.
    if dns_failure in NXDOMAIN_FAILURES and consistency == CONSISTENT:
        return _DOWN if flag_website_down else _Summary(True, None)
    # 4. NXDOMAIN at the probe only: DNS blocking.
    if dns_failure in NXDOMAIN_FAILURES:
        return _Summary(False, BLOCKING_DNS)
    # 5. Every TCP connect failed: the IPs are blocked, or the DNS lied about them.
    attempts, successes = _tcp_counts(test_keys)
    if attempts > 0 and successes == 0 and consistency is not None:
        if consistency == INCONSISTENT:
            return _Summary(False, BLOCKING_DNS)
        if flag_website_down and _all_connects_failed_everywhere(test_keys):
            return _DOWN
        return _Summary(False, BLOCKING_TCP_IP)
    # 6. The control could not fetch the page, or we have no fetch: nothing to compare.
    if _map(_map(test_keys.get("control")).get("http_request")).get("failure") is not None:
        return unknown()
    if fetch is None:
        return unknown()
    # 7. The fetch failed: classify by failure string.
    if fetch.failure is not None:
        reason: str | None = None
        if fetch.failure == FAILURE_NXDOMAIN:
            reason = BLOCKING_DNS  # a later redirect's name did not resolve
        elif fetch.failure in HTTP_FAILURES:
            reason = BLOCKING_HTTP_FAILURE
        if reason is None:
            return unknown()
        if fetch.chain_length == 1 and consistency == INCONSISTENT:
            reason = BLOCKING_DNS
        return _Summary(False, reason)
    # 8. The fetch succeeded: same status and one of body length, headers, title -> fine.
    if http.status_code_match and (
        http.body_length_match or http.headers_match or http.title_match
    ):
        return _Summary(True, None)
    if consistency == INCONSISTENT:
        return _Summary(False, BLOCKING_DNS)
    return _Summary(False, BLOCKING_HTTP_DIFF)


# --- evidence names -------------------------------------------------------------------------


def _fingerprint_matches(
    test_keys: Mapping[str, Any], hostname: str | None, fingerprints: Fingerprints
) -> tuple[list[Match], list[Match]]:
    dns: list[Match] = []
    for value in [*probe_addresses(test_keys, hostname), *_cname_targets(test_keys)]:
        dns.extend(fingerprints.match_dns(value))
    http: list[Match] = []
    for request in _list(test_keys.get("requests")):
        response = _map(_map(request).get("response"))
        http.extend(
            fingerprints.match_http(
                body_bytes(response.get("body")), header_values(response.get("headers"))
            )
        )
    return dns, http


def _best(matches: Sequence[Match]) -> Match | None:
    real = [m for m in matches if not m.is_false_positive]
    return max(real, key=lambda m: m.confidence_no_fp) if real else None


def _tcp_detail(test_keys: Mapping[str, Any]) -> str:
    failures = {
        _map(_map(e).get("status")).get("failure") for e in _list(test_keys.get("tcp_connect"))
    }
    if failures and failures <= {FAILURE_REFUSED, FAILURE_RESET}:
        return "tcp.rst"
    if failures == {FAILURE_TIMEOUT}:
        return "tcp.timeout"
    return "tcp.connect_failure"


def _failed_in_tls(test_keys: Mapping[str, Any], failure: str, url: str) -> bool:
    if failure.startswith("ssl_"):
        return True
    if not url.startswith("https://"):
        return False
    return any(_map(hs).get("failure") is not None for hs in _list(test_keys.get("tls_handshakes")))


def _http_failure_detail(test_keys: Mapping[str, Any], url: str | None) -> str:
    fetch = final_fetch(test_keys, url)
    failure = str(fetch.failure if fetch else "")
    if _failed_in_tls(test_keys, failure, fetch.url if fetch else ""):
        return "tls.sni_reset" if failure == FAILURE_RESET else "tls.handshake_failure"
    return {
        FAILURE_RESET: "http.reset",
        FAILURE_TIMEOUT: "http.timeout",
        FAILURE_EOF: "http.eof",
        FAILURE_REFUSED: "http.refused",
    }.get(failure, "http.failure")


def _dns_detail(
    test_keys: Mapping[str, Any], hostname: str | None, dns_fp: Match | None, url: str | None
) -> str:
    if dns_fp is not None:
        return "dns.known_forged"
    if any(is_bogon(ip) for ip in probe_addresses(test_keys, hostname)):
        return "dns.bogon"
    fetch = final_fetch(test_keys, url)
    final_failure = fetch.failure if fetch else None
    if (
        test_keys.get("dns_experiment_failure") in NXDOMAIN_FAILURES
        or final_failure == FAILURE_NXDOMAIN
    ):
        return "dns.nxdomain"
    return "dns.inconsistent"


# --- entry point ----------------------------------------------------------------------------


def analyze(
    test_keys: Mapping[str, Any] | None,
    *,
    url: str | None = None,
    fingerprints: Fingerprints | None = None,
    asn_lookup: AsnLookup | None = None,
    flag_website_down: bool = True,
) -> WebConnectivityVerdict:
    """Derive the verdict of one web_connectivity measurement from its test keys.

    ``url`` is the measurement's ``input`` (found in the keys when omitted). ``asn_lookup``
    maps an IP to its ASN; without it only ASNs stored in the keys are used.
    ``flag_website_down=False`` gives exactly v0.4's answers for a site that is down
    everywhere ("tcp_ip", or accessible for NXDOMAIN at both ends); the default gives v0.5's
    (blocking false, accessible false).
    """
    if not isinstance(test_keys, Mapping):
        return WebConnectivityVerdict(None, HTTPComparison(), None, None)
    url = target_url(test_keys, url)
    hostname = _hostname(url)
    control_ok = test_keys.get("control_failure") is None and bool(_map(test_keys.get("control")))
    consistency = dns_consistency(test_keys, hostname, asn_lookup) if control_ok else None
    http = compare_http(test_keys)
    summary = summarize(test_keys, consistency, http, url=url, flag_website_down=flag_website_down)
    blocking: str | bool | None = summary.reason
    if summary.accessible or summary.website_down:
        blocking = False  # summary.go DetermineBlocking; analysiscore.go website-down cases

    dns_fps: list[Match] = []
    http_fps: list[Match] = []
    if fingerprints is not None:
        dns_fps, http_fps = _fingerprint_matches(test_keys, hostname, fingerprints)
    dns_fp, http_fp = _best(dns_fps), _best(http_fps)

    accessible = summary.accessible
    # A known block page (or a known forged DNS answer) confirms blocking even where v0.4's
    # comparisons pass (e.g. a block page served with the same headers and status as the
    # site): OONI's fastpath marks such measurements "confirmed" the same way. Patterns of
    # scope `fp` never count (blocking_matches drops them).
    if blocking is False and not summary.website_down and (dns_fp or http_fp):
        accessible = False
        if dns_fp is not None or consistency == INCONSISTENT:
            blocking = BLOCKING_DNS
        else:
            blocking = BLOCKING_HTTP_DIFF

    detail: str | None = None
    named = dns_fp or http_fp
    if blocking == BLOCKING_DNS:
        detail = _dns_detail(test_keys, hostname, dns_fp, url)
    elif blocking == BLOCKING_TCP_IP:
        detail = _tcp_detail(test_keys)
    elif blocking == BLOCKING_HTTP_FAILURE:
        detail = _http_failure_detail(test_keys, url)
    elif blocking == BLOCKING_HTTP_DIFF:
        detail = "http.blockpage" if http_fp is not None else "http.diff"
    return WebConnectivityVerdict(
        dns_consistency=consistency,
        http=http,
        accessible=accessible,
        blocking=blocking,
        blocking_detail=detail,
        blocking_fingerprint=named.name if named is not None else None,
        website_down=summary.website_down,
        fingerprint_matches=tuple(dns_fps + http_fps),
    )
