"""What OONI's pipeline reads from a web_connectivity measurement, reproduced for our tests.

Written by us from ooni/data at commit c8fcc72954c5ff8d0f880d8a86d376b1f1cca8f4 (oonipipeline
5.0.0, analysis rules version 2), the same commit that produced
``../shared/data/ooni/oonipipeline_v5_fuzzy_analysis.jsonl``:

- ``oonipipeline/src/oonipipeline/transforms/measurement_transformer.py``: one DNS row per
  query answer (or one per query without answers), TCP rows only for addresses that parse,
  TLS ``is_certificate_valid`` only when ``no_tls_verify`` is false, rows merged by
  transaction id, then by IP (``consume_web_observations``), ``probe_asn`` read as
  ``int(probe_asn[2:])``;
- ``.../transforms/nettests/web_connectivity.py``: ``probe_analysis`` is ``blocking``
  (``false`` -> ``"false"``), the control's rows per address, hostnames of addresses only
  the control resolved taken from the input;
- ``.../analysis/web_analysis.py`` and ``.../analysis/rules.py``: the DNS layer's rule
  cascade, where ``dns_answers`` are the answers of ``system``/``getaddrinfo`` rows of the
  same measurement, hostname and address family, the control is pooled per hostname and day,
  and any failed ``system``/``getaddrinfo`` row scores 0.9 blocked when the control resolved
  the name (0.5 without a usable control).

Only what decides the DNS layer's score and the TLS certificate reading is reproduced; IP to
ASN look-ups answer nothing (as in the reference run), so the ASN rule never fires. The
failure-string rewording of ``normalize_failure`` is left out: the rules only ask whether a
failure is there.
"""

from __future__ import annotations

import csv
import ipaddress
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse, urlsplit

from probes.net.addresses import is_bogon

SYSTEM_ENGINES = ("system", "getaddrinfo")
# web_connectivity's blocking values OONI's tools know (ooni/spec ts-017), False included.
OONI_BLOCKING = (False, None, "dns", "tcp_ip", "http-failure", "http-diff")
SSL_INVALID = ("ssl_invalid_hostname", "ssl_unknown_authority", "ssl_invalid_certificate")


def _failure(value: Any) -> str | None:
    if not value:
        return None
    return "true" if value is True else str(value)


def _fix(address: str) -> str:
    return address.replace("[scrubbed]", "scrubbed")


def _host_port(address: str | None) -> tuple[str | None, int | None]:
    if not address:
        return None, None
    parts = urlsplit("//" + _fix(address))
    return parts.hostname, parts.port


def _is_ip(value: str | None) -> bool:
    if not value:
        return False
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


@dataclass
class Obs:
    """One DNS/TCP/TLS/HTTP observation before they are merged into rows."""

    kind: str
    ip: str | None = None
    tid: int | None = None
    hostname: str | None = None
    engine: str | None = None
    query_type: str | None = None
    failure: str | None = None
    answer: str | None = None
    server_name: str = ""
    cert_valid: bool | None = None


@dataclass
class Row:
    """One obs_web row, as far as the DNS and TLS rules read it."""

    uid: str
    day: str
    probe_cc: str
    hostname: str | None
    ip: str | None
    dns: Obs | None
    tls: Obs | None

    @property
    def family(self) -> str | None:
        """isIPv6String(ip) of the partition: NULL without an address, 0 for anything not v6."""
        if self.ip is None:
            return None
        return "v6" if _is_ip(self.ip) and ":" in self.ip else "v4"


@dataclass
class CtrlRow:
    hostname: str | None
    day: str
    ip: str | None = None
    dns_failure: str | None = None
    dns_success: bool = False
    tls_success: bool | None = None
    tls_failure: str | None = None


@dataclass
class Observed:
    """Every row of one measurement plus the reading of its header."""

    uid: str
    probe_asn: int
    probe_analysis: str | None
    rows: list[Row] = field(default_factory=list)
    ctrl: list[CtrlRow] = field(default_factory=list)


def _dns_obs(tk: Mapping[str, Any]) -> list[Obs]:
    out = []
    for q in tk.get("queries") or []:
        for a in q.get("answers") or [None]:
            answer = None
            if a:
                answer = a.get("ipv4") or a.get("ipv6") or a.get("hostname")
            out.append(
                Obs(
                    "dns",
                    tid=q.get("transaction_id"),
                    hostname=q["hostname"],
                    engine=q.get("engine"),
                    query_type=q["query_type"],
                    failure=_failure(q.get("failure")),
                    answer=answer,
                    ip=_fix(answer) if answer and _is_ip(_fix(answer)) else None,
                )
            )
    return out


def _tcp_obs(tk: Mapping[str, Any]) -> list[Obs]:
    out = []
    for c in tk.get("tcp_connect") or []:
        if "[scrubbed]" not in c["ip"] and not _is_ip(c["ip"]):
            continue  # the transformer logs and skips addresses that do not parse
        out.append(Obs("tcp", ip=_fix(c["ip"]), tid=c.get("transaction_id")))
    return out


def cert_valid(handshake: Mapping[str, Any]) -> bool | None:
    """measurement_to_tls_observation without a certificate store: only a handshake that
    says it verified (no_tls_verify false) tells anything about the certificate."""
    if handshake.get("no_tls_verify") is not False:
        return None
    failure = _failure(handshake.get("failure"))
    if failure in SSL_INVALID:
        return False
    return True if not failure else None


def _tls_obs(tk: Mapping[str, Any]) -> list[Obs]:
    out = []
    for h in tk.get("tls_handshakes") or []:
        ip, _port = _host_port(h.get("address"))
        out.append(
            Obs(
                "tls",
                ip=ip,
                tid=h.get("transaction_id"),
                server_name=h.get("server_name") or "",
                failure=_failure(h.get("failure")),
                cert_valid=cert_valid(h),
            )
        )
    return out


def _http_obs(tk: Mapping[str, Any]) -> list[Obs]:
    out = []
    for r in tk.get("requests") or []:
        if not r.get("request"):
            continue
        ip, _port = _host_port(r.get("address"))
        host = urlparse(r["request"].get("url") or "").hostname or ""
        out.append(Obs("http", ip=ip, tid=r.get("transaction_id"), hostname=host))
    return out


def _take(obs: list[Obs], tid: int | None, ip: str | None) -> Obs | None:
    """find_relevant_observations for one kind: by transaction id, else by IP; consumed."""
    found = next((o for o in obs if tid and o.tid == tid), None) if tid else None
    if found is None and obs and ip:
        found = next((o for o in obs if o.ip == ip), None)
    if found is not None:
        obs.remove(found)
    return found


def _row(base: dict[str, Any], parts: dict[str, Obs | None], hints: dict[str, str]) -> Row:
    dns, tcp, tls, http = (parts.get(k) for k in ("dns", "tcp", "tls", "http"))
    ips = [o.ip for o in (dns, tcp, tls, http) if o is not None and o.ip]
    ip = ips[0] if ips else None
    hostname = (dns.hostname if dns else None) or (http.hostname if http else None) or None
    if not hostname and tls and tls.server_name and not _is_ip(tls.server_name):
        hostname = tls.server_name
    if not hostname and ip:
        hostname = hints.get(ip)
    return Row(hostname=hostname, ip=ip, dns=dns, tls=tls, **base)


def observe(msmt: Mapping[str, Any], uid: str) -> Observed:
    """The rows the transformer writes for one web_connectivity measurement."""
    tk = msmt.get("test_keys") or {}
    blocking = tk.get("blocking")
    out = Observed(
        uid=uid,
        probe_asn=int(msmt["probe_asn"][len("AS") :]),
        probe_analysis="false" if blocking is False else blocking,
    )
    base = {
        "uid": uid,
        "day": msmt["measurement_start_time"][:10],
        "probe_cc": msmt.get("probe_cc", ""),
    }
    control = tk.get("control") or {}
    input_host = urlparse(msmt["input"]).hostname if isinstance(msmt.get("input"), str) else None
    hints = {a: input_host for a in (control.get("dns") or {}).get("addrs") or [] if input_host}
    tcp, tls, http = _tcp_obs(tk), _tls_obs(tk), _http_obs(tk)
    for d in _dns_obs(tk):
        parts = {
            "dns": d,
            "tcp": _take(tcp, d.tid, d.answer),
            "tls": _take(tls, d.tid, d.answer),
            "http": _take(http, d.tid, d.answer),
        }
        out.rows.append(_row(base, parts, hints))
    for t in list(tcp):
        parts = {"tcp": t, "tls": _take(tls, t.tid, t.ip), "http": _take(http, t.tid, t.ip)}
        out.rows.append(_row(base, parts, hints))
    for t in list(tls):
        out.rows.append(_row(base, {"tls": t, "http": _take(http, t.tid, t.ip)}, hints))
    for h in http:
        out.rows.append(_row(base, {"http": h}, hints))
    out.ctrl = _ctrl_rows(tk, input_host, base["day"])
    return out


def _ctrl_rows(tk: Mapping[str, Any], hostname: str | None, day: str) -> list[CtrlRow]:
    """make_web_control_observations, as far as the DNS rules read it."""
    control = tk.get("control")
    if tk.get("control_failure") or not control or not hostname:
        return []
    rows: list[CtrlRow] = []
    dns = control.get("dns") or {}
    if dns.get("failure"):
        rows.append(CtrlRow(hostname, day, dns_failure=dns["failure"]))
    dns_ips = set(dns.get("addrs") or [])
    by_addr: dict[str, CtrlRow] = {}
    for addr in control.get("tcp_connect") or {}:
        by_addr[addr] = CtrlRow(hostname, day, ip=_host_port(addr)[0])
    for addr, res in (control.get("tls_handshake") or {}).items():
        if addr not in by_addr:
            ip = _host_port(addr)[0]
            by_addr[addr] = CtrlRow(ip, day, ip=ip)  # sic: the transformer names it by its IP
        by_addr[addr].tls_failure = res.get("failure")
        by_addr[addr].tls_success = res.get("failure") is None
    mapped = set()
    for row in by_addr.values():
        if row.ip in dns_ips:
            row.dns_success = True
            mapped.add(row.ip)
        rows.append(row)
    rows.extend(CtrlRow(hostname, day, ip=ip, dns_success=True) for ip in dns_ips - mapped)
    return rows


# --- the DNS layer's rules ---------------------------------------------------------------


@dataclass
class Fingerprint:
    scope: str
    countries: set[str]


def dns_fingerprints(path: Path) -> dict[str, list[Fingerprint]]:
    """fingerprints_dns rows the analysis joins on (pattern_type 'full' only)."""
    out: dict[str, list[Fingerprint]] = defaultdict(list)
    with path.open(newline="", encoding="utf-8") as fh:
        for r in csv.DictReader(fh):
            if r.get("pattern_type") == "full":
                countries = {c.strip() for c in (r.get("expected_countries") or "").split(",")}
                out[r["pattern"]].append(Fingerprint(r.get("scope") or "", countries))
    return out


@dataclass
class Pool:
    """The control side of the analysis query, per (hostname, day)."""

    failures: int = 0
    successes: int = 0
    answers: set[str] = field(default_factory=set)
    tls_ok: set[str] = field(default_factory=set)
    tls_bad_cert: set[str] = field(default_factory=set)
    other_tls_ok: set[str] = field(default_factory=set)

    @property
    def rate(self) -> float | None:
        total = self.failures + self.successes
        return self.successes / total if total else None


def _pools(measurements: Iterable[Observed]) -> dict[tuple[str | None, str], Pool]:
    pools: dict[tuple[str | None, str], Pool] = {}
    others: dict[tuple[str | None, str], set[str]] = defaultdict(set)
    for m in measurements:
        for c in m.ctrl:
            p = pools.setdefault((c.hostname, c.day), Pool())
            p.failures += c.dns_failure is not None
            if c.dns_success and c.ip:
                p.successes += 1
                p.answers.add(c.ip)
            if c.tls_success and c.ip:
                p.tls_ok.add(c.ip)
            if c.tls_success is False and (c.tls_failure or "").startswith("ssl_") and c.ip:
                p.tls_bad_cert.add(c.ip)
        for r in m.rows:
            if r.tls and r.tls.cert_valid and r.ip:
                others[(r.hostname, r.day)].add(r.ip)
    for key, ips in others.items():
        if key in pools:  # the query joins the others onto the control, never the reverse
            pools[key].other_tls_ok |= ips
    return pools


def dns_blocked_max(
    measurements: list[Observed], fingerprints: Mapping[str, list[Fingerprint]] | None = None
) -> dict[str, tuple[float, str]]:
    """uid -> (max blocked score of the DNS layer, the rule that gave it)."""
    pools = _pools(measurements)
    fingerprints = fingerprints or {}
    out: dict[str, tuple[float, str]] = {}
    for m in measurements:
        answers: dict[tuple[str | None, str | None], list[Row]] = defaultdict(list)
        for r in m.rows:
            answers[(r.hostname, r.family)].append(r)
        best = (0.0, "none")
        for r in m.rows:
            same = answers[(r.hostname, r.family)]
            system = [x for x in same if x.dns and x.dns.engine in SYSTEM_ENGINES and _is_ip(x.ip)]
            score = _dns_rule(r, system, pools.get((r.hostname, r.day)) or Pool(), fingerprints)
            if score[0] > best[0]:
                best = score
        out[m.uid] = best
    return out


def _dns_rule(
    row: Row, system: list[Row], pool: Pool, fingerprints: Mapping[str, list[Fingerprint]]
) -> tuple[float, str]:
    """rules.DNS_RULES, first match wins; returns (blocked, rule_id)."""
    dns_answers = {x.dns.answer for x in system if x.dns and x.dns.answer}
    failure = row.dns.failure if row.dns else None
    engine = row.dns.engine if row.dns else None
    answer = row.dns.answer if row.dns else None
    bogon = any(is_bogon(str(x.ip)) for x in system)
    matches_ctrl = bool(pool.answers & dns_answers)
    if not dns_answers and failure is None:
        return 0.0, "no_dns_data"
    for fp in fingerprints.get(answer or "", []) if answer else []:
        if fp.scope != "fp" and row.probe_cc in fp.countries:
            return 1.0, "country_consistent_blockpage"
    if (pool.tls_ok | pool.other_tls_ok) & dns_answers:
        return 0.0, "tls_consistent_answer"
    if bogon and not matches_ctrl:
        return 0.95, "bogon_not_in_ctrl"
    if bogon and matches_ctrl:
        return 0.1, "bogon_in_ctrl"
    if pool.tls_bad_cert & dns_answers and not matches_ctrl:
        return 0.9, "tls_inconsistent_not_in_ctrl"
    if matches_ctrl:
        return 0.0, "answer_matches_ctrl"
    # answer_asn_matches_ctrl: needs IP-to-ASN data, which neither run has.
    if engine in SYSTEM_ENGINES and failure is not None:
        rate = pool.rate
        if rate is not None and rate <= 0.5:
            return 0.1, "dns_system_failure_ctrl_also_failing"
        if rate is not None and rate > 0.5:
            return 0.9, "dns_system_failure_ctrl_ok"
        return 0.5, "dns_system_failure_no_ctrl"
    if engine in SYSTEM_ENGINES:
        return 0.75, "dns_system_answer_unmatched"
    return 0.0, "none"
