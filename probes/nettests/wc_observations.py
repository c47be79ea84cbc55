"""web_connectivity 0.5 evidence: flat "web observations" and what they say against the control.

OONI's web_connectivity 0.5 (probe-cli internal/experiment/webconnectivitylte) no longer decides
from a fixed list of keys: it flattens every DNS lookup, TCP connect, TLS handshake and HTTP
round trip of a measurement into observations (one per address and endpoint transaction,
joined by ``transaction_id`` and the ``depth=N`` / ``fetch_body=`` / ``classic`` tags), pairs
each with what the control saw, and sorts the result into sets (unexpected failures, expected
failures, invalid addresses, the final response and its diff with the control's). This module
rebuilds those observations and sets from stored test keys; web_connectivity_v05 turns them
into the verdict and the ``x_*_flags``.

Source (read for facts, written here in our own words): ooni/probe-cli commit 7cb22410,
internal/minipipeline observation.go (ingestion and control cross-reference), analysis.go (the
sets and the linear order), classic.go (the getaddrinfo-only view), dnsdiff.go, httpdiff.go,
utils.go. Where we deliberately differ it is said at the spot and in docs/methodology.md.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from probes.nettests.web_connectivity_analysis import (
    COMMON_HEADERS,
    TITLE_MIN_WORD_BYTES,
    TITLE_RE,
    body_bytes,
    is_bogon,
)

# Addresses repeat across measurements (CDNs, the same sites): parsing each once is most of
# the ingestion's cost otherwise.
_bogon = functools.lru_cache(maxsize=1 << 16)(is_bogon)

AsnOf = Callable[[str], int]

DNS, TCP, TLS, HTTP = 0, 1, 2, 3  # observation types, in the order the linear sort uses
ORIGIN_DNS, ORIGIN_TH = "dns", "th"
# utils.go utilsEngineIsGetaddrinfo: the engines the classic (v0.4-like) view keeps.
SYSTEM_ENGINES = frozenset({"getaddrinfo", "golang_net_resolver"})
FAILURE_DNS_NO_ANSWER = "dns_no_answer"
MISCONFIGURED_V6_FAILURES = frozenset({"network_unreachable", "host_unreachable"})


_EMPTY: Mapping[str, Any] = {}


def _map(value: Any) -> Mapping[str, Any]:
    # Decoded JSON is a plain dict: test that first, the ABC check costs ~10x more.
    if type(value) is dict or isinstance(value, Mapping):
        return value
    return _EMPTY


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


as_map, as_list = _map, _list  # for the verdict module, which reads the same keys


def _fail(value: Any) -> str:
    """A stored failure as minipipeline keeps it: "" for success (null)."""
    return value if isinstance(value, str) else ""


def _tag(tags: Any, name: str) -> str | None:
    found = None
    for tag in _list(tags):
        if isinstance(tag, str) and tag.startswith(name + "="):
            found = tag[len(name) + 1 :]
    return found


def tag_depth(tags: Any) -> int | None:
    value = _tag(tags, "depth")
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def tag_fetch_body(tags: Any) -> bool | None:
    value = _tag(tags, "fetch_body")
    return None if value is None else value == "true"


def _int(value: Any) -> int | None:
    if type(value) is int:  # decoded JSON: the common case, without two isinstance calls
        return value
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _tags(tags: Any) -> tuple[int | None, bool | None, bool]:
    """(depth, fetch_body, classic) of an entry's tags in one pass: the last ``depth=`` and
    ``fetch_body=`` win, as `tag_depth` and `tag_fetch_body` read them."""
    if not isinstance(tags, list):
        return None, None, False
    depth_text = fetch_text = None
    classic = False
    for tag in tags:
        if isinstance(tag, str):
            if tag.startswith("depth="):
                depth_text = tag[6:]
            elif tag.startswith("fetch_body="):
                fetch_text = tag[11:]
            elif tag == "classic":
                classic = True
    depth = None
    if depth_text is not None:
        try:
            depth = int(depth_text)
        except ValueError:
            depth = None
    return depth, None if fetch_text is None else fetch_text == "true", classic


def join_host_port(ip: str, port: Any) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def web_title(body: bytes) -> str:
    """measurexlite.WebGetTitle: the first <title> of at most 512 characters, else ""."""
    found = TITLE_RE.search(body.decode("utf-8", errors="replace"))
    return found.group(1) if found else ""


@dataclass(slots=True)
class Observation:
    """One minipipeline WebObservation; None is Go's optional.None, "" a success."""

    type: int
    txid: int
    failure: str | None = None
    depth: int | None = None
    fetch_body: bool | None = None
    dns_txid: int | None = None
    dns_domain: str | None = None
    dns_failure: str | None = None
    dns_query_type: str | None = None
    dns_engine: str | None = None
    dns_classic: bool = False  # tagged "classic": the probe's own resolver (see classic_filter)
    dns_addrs: frozenset[str] | None = None
    ip_origin: str | None = None
    ip: str | None = None
    ip_bogon: bool | None = None
    endpoint_txid: int | None = None
    endpoint: str | None = None
    tcp_failure: str | None = None
    tls_failure: str | None = None
    tls_server_name: str | None = None
    http_failure: str | None = None
    http_url: str | None = None
    http_code: int | None = None
    http_body_length: int | None = None
    http_body_truncated: bool | None = None
    http_header_keys: frozenset[str] | None = None
    http_title: str | None = None
    http_location: str | None = None
    http_is_final: bool | None = None
    http_body: bytes | None = None  # ours: the body itself, for our similarity evidence
    ctrl_dns_domain: str | None = None
    ctrl_dns_failure: str | None = None
    ctrl_dns_addrs: frozenset[str] | None = None
    ctrl_tcp_failure: str | None = None
    ctrl_tls_failure: str | None = None
    ctrl_http_failure: str | None = None
    ctrl_http_code: int | None = None
    ctrl_http_body_length: int | None = None
    ctrl_http_header_keys: frozenset[str] | None = None
    ctrl_http_title: str | None = None


@dataclass
class ControlExpectations:
    dns_addrs: frozenset[str]
    final_response_failure: str | None


@dataclass
class Container:
    """observation.go WebObservationsContainer."""

    dns_failures: list[Observation] = field(default_factory=list)
    dns_successes: list[Observation] = field(default_factory=list)
    endpoints: dict[int, Observation] = field(default_factory=dict)
    expectations: ControlExpectations | None = None
    known_ips: dict[str, Observation] = field(default_factory=dict)

    def all(self) -> list[Observation]:
        return [*self.dns_failures, *self.dns_successes, *self.endpoints.values()]


def _resolved(answers: Any) -> list[str]:
    out: list[str] = []
    for answer in _list(answers):
        answer = _map(answer)
        kind = answer.get("answer_type")
        if kind == "A" and isinstance(answer.get("ipv4"), str):
            out.append(answer["ipv4"])
        elif kind == "AAAA" and isinstance(answer.get("ipv6"), str):
            out.append(answer["ipv6"])
    return out


def ingest(test_keys: Mapping[str, Any]) -> Container:
    """Build the container from test keys (IngestWebMeasurement).

    Hot in bulk analysis (every 0.5 measurement): each entry's keys and tags are read once.
    """
    c = Container()
    queries = [_map(q) for q in _list(test_keys.get("queries"))]
    resolved: list[tuple[Mapping[str, Any], frozenset[str]]] = []
    for q in queries:
        raw_failure = q.get("failure")
        if raw_failure is None:
            resolved.append((q, frozenset(_resolved(q.get("answers")))))
            continue
        failure = _fail(raw_failure)
        txid = _int(q.get("transaction_id")) or 0
        depth, _, classic = _tags(q.get("tags"))
        c.dns_failures.append(
            Observation(
                type=DNS,
                txid=txid,
                failure=failure,
                depth=depth,
                dns_txid=txid,
                dns_domain=str(q.get("hostname") or ""),
                dns_failure=failure,
                dns_query_type=str(q.get("query_type") or ""),
                dns_engine=str(q.get("engine") or ""),
                dns_classic=classic,
            )
        )
    known_ips = c.known_ips
    for q, addrs in resolved:
        if not addrs:
            continue
        txid = _int(q.get("transaction_id")) or 0
        depth, _, classic = _tags(q.get("tags"))
        domain = str(q.get("hostname") or "")
        query_type = str(q.get("query_type") or "")
        engine = str(q.get("engine") or "")
        for ip in sorted(addrs):
            obs = Observation(
                type=DNS,
                txid=txid,
                failure="",
                depth=depth,
                dns_txid=txid,
                dns_domain=domain,
                dns_failure="",
                dns_query_type=query_type,
                dns_engine=engine,
                dns_classic=classic,
                dns_addrs=addrs,
                ip_origin=ORIGIN_DNS,
                ip=ip,
                ip_bogon=_bogon(ip),
            )
            c.dns_successes.append(obs)
            if ip not in known_ips:
                known_ips[ip] = obs
    endpoints = c.endpoints
    for entry in _list(test_keys.get("tcp_connect")):
        entry = _map(entry)
        ip = str(entry.get("ip") or "")
        txid = _int(entry.get("transaction_id")) or 0
        base = known_ips.get(ip)
        status = entry.get("status")
        failure = _fail(
            status.get("failure") if type(status) is dict else _map(status).get("failure")
        )
        depth, fetch_body, _ = _tags(entry.get("tags"))
        obs = Observation(
            type=TCP,
            txid=txid,
            failure=failure,
            depth=depth,
            fetch_body=fetch_body,
            ip=ip,
            ip_bogon=_bogon(ip),
            endpoint_txid=txid,
            endpoint=join_host_port(ip, entry.get("port")),
            tcp_failure=failure,
        )
        if base is not None:  # the lookup that gave this address
            obs.dns_txid, obs.dns_domain = base.dns_txid, base.dns_domain
            obs.dns_failure, obs.dns_addrs = base.dns_failure, base.dns_addrs
            obs.ip_origin = base.ip_origin
        endpoints[txid] = obs
    for hs in _list(test_keys.get("tls_handshakes")):
        hs = _map(hs)
        found = endpoints.get(_int(hs.get("transaction_id")) or 0)
        if found is None:
            continue
        obs = found
        obs.type = TLS
        obs.failure = obs.tls_failure = _fail(hs.get("failure"))
        obs.tls_server_name = str(hs.get("server_name") or "")
    for req in _list(test_keys.get("requests")):
        req = _map(req)
        found = endpoints.get(_int(req.get("transaction_id")) or 0)
        if found is None:
            continue
        obs = found
        obs.type = HTTP
        obs.failure = obs.http_failure = _fail(req.get("failure"))
        obs.http_url = str(_map(req.get("request")).get("url") or "")
        if req.get("failure") is None:
            response = _map(req.get("response"))
            body = body_bytes(response.get("body")) or b""
            code = _int(response.get("code")) or 0
            headers = _map(response.get("headers"))
            obs.http_code = code
            obs.http_body = body
            obs.http_body_length = len(body)
            obs.http_body_truncated = bool(response.get("body_is_truncated"))
            obs.http_header_keys = frozenset(str(k) for k in headers)
            # http_title: computed for the final response only (_final_response), the one
            # the analysis compares; minipipeline computes it for every response.
            obs.http_location = next(
                (str(v) for k, v in headers.items() if str(k).lower() == "location"), None
            )
            obs.http_is_final = code // 100 in (2, 4, 5)
    request = _map(test_keys.get("x_control_request"))
    control = test_keys.get("control")
    # 0.5 stores control null when the helper failed; ours stores {} and control_failure.
    if (
        request
        and isinstance(control, Mapping)
        and control
        and not test_keys.get("control_failure")
    ):
        _ingest_control(c, str(request.get("http_request") or ""), control)
    return c


@functools.lru_cache(maxsize=1 << 14)
def go_hostname(url: str) -> str | None:
    """Go's url.Parse(u).Hostname(): the host without port or brackets, case kept."""
    try:
        netloc = urlsplit(url).netloc
    except ValueError:
        return None
    host = netloc.rsplit("@", 1)[-1]
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if ":" in host else host


def _ingest_control(c: Container, url: str, resp: Mapping[str, Any]) -> None:
    """IngestControlMessages: pair each observation with the control's view."""
    domain = go_hostname(url)
    if domain is None:
        return
    dns = _map(resp.get("dns"))
    dns_failure = _fail(dns.get("failure"))
    th_addrs = frozenset(a for a in _list(dns.get("addrs")) if isinstance(a, str))
    for obs in [*c.dns_failures, *c.dns_successes]:
        if obs.dns_domain != domain:
            continue
        obs.ctrl_dns_domain = domain
        obs.ctrl_dns_failure = dns_failure
        if dns_failure == "":
            obs.ctrl_dns_addrs = th_addrs
    for obs in c.endpoints.values():
        own = obs.dns_domain or ""
        if own == "" and obs.ip in th_addrs:
            obs.ip_origin = ORIGIN_TH
            obs.ctrl_dns_domain = domain
            obs.ctrl_dns_failure = dns_failure
            obs.ctrl_dns_addrs = th_addrs
            continue
        if own == "" or own != domain:
            continue
        obs.ctrl_dns_domain = domain
        obs.ctrl_dns_failure = dns_failure
        if dns_failure == "":
            obs.ctrl_dns_addrs = th_addrs
    tcp = _map(resp.get("tcp_connect"))
    tls = _map(resp.get("tls_handshake"))
    for obs in c.endpoints.values():
        endpoint = obs.endpoint or ""
        if endpoint in tcp:
            obs.ctrl_tcp_failure = _fail(_map(tcp[endpoint]).get("failure"))
        if obs.tls_server_name is not None and endpoint in tls:
            entry = _map(tls[endpoint])
            if entry.get("server_name") == obs.tls_server_name:
                obs.ctrl_tls_failure = _fail(entry.get("failure"))
    http = _map(resp.get("http_request"))
    http_failure = _fail(http.get("failure"))
    c.expectations = ControlExpectations(th_addrs, http_failure)
    everything = c.all()
    if http.get("failure") is not None:
        for obs in everything:
            obs.ctrl_http_failure = http_failure
        return
    # The control's one fetch, read once and shared (frozen) by every observation.
    code = _int(http.get("status_code")) or 0
    body_length = _int(http.get("body_length")) or 0
    header_keys = frozenset(str(k) for k in _map(http.get("headers")))
    title = str(http.get("title") or "")
    for obs in everything:
        obs.ctrl_http_failure = http_failure
        obs.ctrl_http_code = code
        obs.ctrl_http_body_length = body_length
        obs.ctrl_http_header_keys = header_keys
        obs.ctrl_http_title = title


def _classic_lookup(obs: Observation) -> bool:
    # classic.go keeps getaddrinfo's lookups. Ours also keeps a lookup tagged "classic" (the
    # probe's own resolver when the user configured one, `--dns-resolver`): in OONI's 0.5
    # measurements the tag is on exactly the getaddrinfo lookups, and its authors planned to
    # filter by it (the TODO in ClassicFilter), so OONI's data reads the same either way.
    return obs.dns_engine in SYSTEM_ENGINES or obs.dns_classic


def classic_filter(c: Container) -> Container:
    """classic.go ClassicFilter: the probe's own lookups and the fetching endpoints they fed."""
    out = Container(expectations=c.expectations)
    for obs in c.dns_successes:
        if _classic_lookup(obs):
            out.dns_successes.append(obs)
            out.known_ips[obs.ip or ""] = obs
    # Ours: a lookup that found addresses did not fail. A configured resolver's lookup is an A
    # and an AAAA query under one transaction (as 0.5 records its UDP lookups); a lost AAAA
    # beside a good A is the getaddrinfo lookup's success, not a failed classic lookup. OONI's
    # classic lookups are single getaddrinfo queries, which this cannot change.
    resolved = {o.dns_txid for o in out.dns_successes}
    out.dns_failures = [
        o for o in c.dns_failures if _classic_lookup(o) and o.dns_txid not in resolved
    ]
    for txid, obs in c.endpoints.items():
        if obs.ip_origin == ORIGIN_TH:
            continue
        if obs.ip_origin == ORIGIN_DNS and (obs.ip or "") not in out.known_ips:
            continue
        if not obs.fetch_body:
            continue
        out.endpoints[txid] = obs
    return out


# --- the analysis sets ----------------------------------------------------------------------


@dataclass
class WebAnalysis:
    """analysis.go WebAnalysis (the sets we use)."""

    expectations: ControlExpectations | None = None
    dns_success: set[int] = field(default_factory=set)
    dns_invalid: set[int] = field(default_factory=set)
    dns_valid: set[int] = field(default_factory=set)
    dns_bogon: set[int] = field(default_factory=set)
    dns_invalid_classic: set[int] = field(default_factory=set)
    dns_valid_classic: set[int] = field(default_factory=set)
    dns_unexpected_failure: set[int] = field(default_factory=set)
    dns_unexplained_failure: set[int] = field(default_factory=set)
    dns_experiment_failure: str | None = None
    dns_expected_failure: set[int] = field(default_factory=set)
    tcp_expected_failure: set[int] = field(default_factory=set)
    tcp_unexpected_failure: set[int] = field(default_factory=set)
    tcp_unexplained_failure: set[int] = field(default_factory=set)
    tls_expected_failure: set[int] = field(default_factory=set)
    tls_unexpected_failure: set[int] = field(default_factory=set)
    tls_unexplained_failure: set[int] = field(default_factory=set)
    http_unexpected_failure: set[int] = field(default_factory=set)
    http_unexplained_failure: set[int] = field(default_factory=set)
    final_tls_without_control: int | None = None
    final_tls_with_control: int | None = None
    final_tcp_without_control: int | None = None
    final_tcp_with_control: int | None = None
    final: Observation | None = None
    body_proportion: float | None = None
    status_code_match: bool | None = None
    title_different_words: frozenset[str] | None = None
    uncommon_headers_intersection: frozenset[str] | None = None
    linear: list[Observation] = field(default_factory=list)


def _dns_valid(obs: Observation, asn_of: AsnOf) -> bool | None:  # None: no control to compare with
    if obs.ctrl_dns_addrs is None:
        return None
    measured, control = obs.dns_addrs or frozenset(), obs.ctrl_dns_addrs
    if measured & control:
        return True
    ours = {asn_of(ip) for ip in measured} - {0}
    theirs = {asn_of(ip) for ip in control} - {0}
    return bool(ours & theirs)


def analyze_observations(c: Container, asn_of: AsnOf, *, linear: bool = False) -> WebAnalysis:
    wa = WebAnalysis(expectations=c.expectations)
    _dns_success(wa, c, asn_of)
    _dns_failures(wa, c)
    _tcp(wa, c)
    _tls(wa, c)
    _http_failures(wa, c)
    _final_response(wa, c)
    if linear:
        wa.linear = linear_order(c)
    return wa


def _dns_success(wa: WebAnalysis, c: Container, asn_of: AsnOf) -> None:
    seen: set[int] = set()
    for obs in c.dns_successes:
        txid = obs.dns_txid or 0
        if txid in seen:
            continue
        seen.add(txid)
        if obs.depth != 0:
            continue
        wa.dns_success.add(txid)
        if obs.ip_bogon:
            wa.dns_bogon.add(txid)
        valid = _dns_valid(obs, asn_of)
        if valid is None:
            continue
        (wa.dns_valid if valid else wa.dns_invalid).add(txid)
        (wa.dns_valid_classic if valid else wa.dns_invalid_classic).add(txid)
    # A successful TLS handshake vouches for the lookup that gave its address (not classic).
    for obs in c.endpoints.values():
        if obs.tls_failure != "" or not obs.dns_txid or obs.dns_txid <= 0:
            continue
        wa.dns_invalid.discard(obs.dns_txid)
        wa.dns_valid.add(obs.dns_txid)


def _dns_failures(wa: WebAnalysis, c: Container) -> None:
    seen: set[int] = set()
    for obs in c.dns_failures:
        txid = obs.dns_txid or 0
        if txid in seen:
            continue
        seen.add(txid)
        if obs.dns_engine == "doh":  # a DoH failure is about the DoH service (probe#2274)
            continue
        if obs.dns_query_type == "AAAA" and obs.dns_failure == FAILURE_DNS_NO_ANSWER:
            continue
        if obs.depth != 0:
            if obs.dns_failure:
                wa.dns_unexplained_failure.add(txid)
            continue
        if obs.dns_failure and wa.dns_experiment_failure is None:
            wa.dns_experiment_failure = obs.dns_failure
        if obs.ctrl_dns_failure is None:
            continue
        if obs.dns_failure and obs.ctrl_dns_failure:
            wa.dns_expected_failure.add(txid)
            continue
        if obs.ctrl_dns_failure:
            continue
        if obs.dns_failure:
            if (
                obs.dns_failure == FAILURE_DNS_NO_ANSWER
                and obs.ctrl_dns_addrs is not None
                and not obs.ctrl_dns_addrs
            ):
                wa.dns_expected_failure.add(txid)
                continue
            wa.dns_unexpected_failure.add(txid)


@functools.lru_cache(maxsize=1 << 16)
def ip_version(address: str) -> int:
    """4 or 6 for an IP address, 0 for anything else (cached: addresses repeat)."""
    try:
        return ipaddress.ip_address(address).version
    except ValueError:
        return 0


def _misconfigured_v6(obs: Observation) -> bool:
    if obs.tcp_failure not in MISCONFIGURED_V6_FAILURES:
        return False
    return ip_version(obs.ip or "") == 6


def _tcp(wa: WebAnalysis, c: Container) -> None:
    for obs in c.endpoints.values():
        if obs.tcp_failure is None:
            continue
        txid = obs.endpoint_txid or 0
        if obs.depth != 0:
            if not _misconfigured_v6(obs) and obs.tcp_failure:
                wa.tcp_unexplained_failure.add(txid)
            continue
        if obs.ctrl_tcp_failure is None:
            continue
        if obs.tcp_failure and obs.ctrl_tcp_failure:
            wa.tcp_expected_failure.add(txid)
            continue
        if obs.ctrl_tcp_failure:
            continue
        if obs.tcp_failure and not _misconfigured_v6(obs):
            wa.tcp_unexpected_failure.add(txid)


def _tls(wa: WebAnalysis, c: Container) -> None:
    for obs in c.endpoints.values():
        if obs.tls_failure is None:
            continue
        txid = obs.endpoint_txid or 0
        if obs.depth != 0:
            if obs.tls_failure:
                wa.tls_unexplained_failure.add(txid)
            continue
        if obs.ctrl_tls_failure is None:
            continue
        if obs.tls_failure and obs.ctrl_tls_failure:
            wa.tls_expected_failure.add(txid)
            continue
        if obs.ctrl_tls_failure:
            continue
        if obs.tls_failure:
            wa.tls_unexpected_failure.add(txid)


def _http_failures(wa: WebAnalysis, c: Container) -> None:
    for obs in c.endpoints.values():
        if obs.http_failure is None:
            continue
        txid = obs.endpoint_txid or 0
        if obs.ctrl_http_failure is None:
            if obs.http_failure:
                wa.http_unexplained_failure.add(txid)
            continue
        if obs.http_failure and not obs.ctrl_http_failure:
            wa.http_unexpected_failure.add(txid)


def _final_response(wa: WebAnalysis, c: Container) -> None:
    # Go walks a map and stops at the first final response; LTE makes at most one. We take
    # the lowest transaction id so that a measurement with several is read the same each time.
    obs = None
    for candidate in c.endpoints.values():  # the first of the lowest id, as a stable sort's
        if candidate.http_is_final and (
            obs is None or (candidate.endpoint_txid or 0) < (obs.endpoint_txid or 0)
        ):
            obs = candidate
    if obs is None:
        return
    wa.final = obs
    if obs.http_title is None and obs.http_body is not None:
        obs.http_title = web_title(obs.http_body)
    if obs.ctrl_http_failure is None:
        if obs.tls_failure == "":
            wa.final_tls_without_control = obs.endpoint_txid
        else:
            wa.final_tcp_without_control = obs.endpoint_txid
        return
    if obs.tls_failure is not None:
        wa.final_tls_with_control = obs.endpoint_txid
    else:
        wa.final_tcp_with_control = obs.endpoint_txid
    measured, control = obs.http_body_length or 0, obs.ctrl_http_body_length or 0
    if measured > 0 and obs.http_body_truncated is False and control > 0:
        wa.body_proportion = min(measured, control) / max(measured, control)
    code, ctrl_code = obs.http_code or 0, obs.ctrl_http_code or 0
    if code > 0 and ctrl_code > 0:
        good = code == ctrl_code
        # httpdiff.go: a mismatch only counts when the control got a 2xx.
        wa.status_code_match = good if good or ctrl_code // 100 == 2 else None
    if ctrl_code > 0:
        wa.uncommon_headers_intersection = uncommon_header_intersection(
            obs.http_header_keys or frozenset(), obs.ctrl_http_header_keys or frozenset()
        )
        wa.title_different_words = title_different_long_words(
            obs.http_title or "", obs.ctrl_http_title or ""
        )


def uncommon_header_intersection(ours: Iterable[str], theirs: Iterable[str]) -> frozenset[str]:
    a = {k.lower() for k in ours} - COMMON_HEADERS
    b = {k.lower() for k in theirs} - COMMON_HEADERS
    return frozenset(a & b)


def title_different_long_words(ours: str, theirs: str) -> frozenset[str]:
    def words(title: str) -> set[str]:
        return {w.lower() for w in title.split(" ") if len(w.encode()) >= TITLE_MIN_WORD_BYTES}

    return frozenset(words(ours) ^ words(theirs))


def linear_order(c: Container) -> list[Observation]:
    """NewLinearWebAnalysis: latest redirect first, then HTTP, TLS, TCP, DNS; successes first."""
    items = [*c.dns_failures, *c.dns_successes, *c.endpoints.values()]
    return sorted(
        items,
        key=lambda o: (
            -(o.depth if o.depth is not None else -1),
            -o.type,
            o.failure if o.failure is not None else "unknown_failure",
            -o.txid,
        ),
    )
