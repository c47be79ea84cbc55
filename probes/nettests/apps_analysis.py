"""The messaging-app nettests' verdicts: OONI's test keys, then `blocking` / `blocking_detail`.

Two pure steps, so that the analysis can re-derive both from stored measurements, ours and
OONI's:

1. ``ooni_keys(app, targets)``: OONI's test keys from the per-target outcomes, by probe-cli's
   rules (internal/experiment/{whatsapp,telegram,signal,fbmessenger}, commit 7cb22410):
   - whatsapp: ``registration_server_status`` / ``whatsapp_web_status`` are "blocked" when
     that one request failed; an endpoint host is in ``whatsapp_endpoints_blocked`` when every
     port listed for it failed (OONI: both of 443 and 5222), and ``whatsapp_endpoints_status``
     is "ok" as soon as one endpoint connected;
   - telegram: ``telegram_http_blocking`` when no data-centre request succeeded,
     ``telegram_tcp_blocking`` when moreover every one failed at the TCP connect;
     ``telegram_web_status`` "blocked" when the web GET failed;
   - signal: ``signal_backend_status`` "blocked" when any backend request failed (the uptime
     lookup is recorded and ignored, as OONI does);
   - facebook_messenger: per service, ``facebook_X_dns_consistent`` false when the lookup
     failed or an answer is not Facebook's, else ``facebook_X_reachable`` false when the
     connect failed; ``facebook_dns_blocking`` / ``facebook_tcp_blocking`` when any was.
2. ``analyze(app, test_keys)``: OONI's anomaly (probe-cli's MeasurementSummaryKeys for the
   app) decides whether the app is blocked, and so does a DNS answer that is a bogon or
   outside the app's networks unless a verified handshake with the name proved it genuine
   (``dns_tampered``: OONI's spec leaves that judgement to its pipeline, ts-018); the failing
   targets say how, by the operation
   that failed (``x_targets`` in our measurements; in OONI's, inferred from the failure string
   and the stored records):

   - a DNS answer that is a bogon: ``dns`` / ``dns.bogon``;
   - a DNS answer outside the app's networks: ``dns`` / ``dns.inconsistent``;
   - the lookup failed: ``dns`` / ``dns.nxdomain``, ``dns.no_answer``, ``dns.refused``,
     ``dns.servfail``, ``dns.timeout``, ``dns.failure``;
   - the connect failed: ``tcp_ip`` / ``tcp.connect_timeout``, ``_reset``, ``_refused``,
     ``tcp.connect_failure``;
   - a certificate the probe rejects: ``tls`` / ``tls.intercepted``;
   - a handshake reset, timed out or cut (EOF): ``tls`` / ``tls.sni_reset`` (``_timeout``,
     ``_eof``) when a handshake with a control SNI to the same address reached TLS, else
     ``tls.handshake_reset`` (``_timeout``, ``_eof``);
   - the HTTP exchange failed: ``http-failure`` / ``http.reset``, ``http.timeout``,
     ``http.eof``, ``http.failure``.

   When several targets are blocked, the first by PRECEDENCE names the verdict. Null when the
   test keys lack OONI's keys (an abandoned input).
3. The control (ours only, with ``--helper``): a failing target whose step failed at the
   control helper too (``x_control``: the helper could not resolve the name, connect to the
   same address and port, complete the handshake or the request) is down everywhere, not
   blocked (``down_everywhere``); when every failing target of the anomaly is, the verdict is
   ``false`` and the analysis counts the measurement as down. A forged DNS answer
   (``dns_tampered``) is blocking whatever the control says.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from probes.nettests import dns_consistency_analysis as dca

PRECEDENCE = ("dns", "tcp_ip", "tls", "http-failure")
FB_SERVICES = ("stun", "b_api", "b_graph", "edge", "external_cdn", "scontent_cdn", "star")
CERTIFICATE_FAILURES = frozenset(
    {"ssl_invalid_hostname", "ssl_unknown_authority", "ssl_invalid_certificate"}
)
_KINDS = {"connection_reset": "reset", "generic_timeout_error": "timeout", "eof_error": "eof"}
_DNS = {
    "dns_nxdomain_error": "dns.nxdomain",
    "dns_no_answer": "dns.no_answer",
    "android_dns_cache_no_data": "dns.no_answer",
    "dns_refused_error": "dns.refused",
    "dns_servfail_error": "dns.servfail",
    "generic_timeout_error": "dns.timeout",
}
_TCP = {
    "generic_timeout_error": "tcp.connect_timeout",
    "connection_reset": "tcp.connect_reset",
    "connection_refused": "tcp.connect_refused",
}


@dataclass(frozen=True)
class Verdict:
    blocking: str | bool | None
    blocking_detail: str | None = None
    why: str = ""
    down: bool = False  # OONI's anomaly, explained by targets down at the control too


# --- 1. OONI's keys from the targets' outcomes --------------------------------------------------


def _failed(t: Mapping[str, Any]) -> bool:
    return t.get("failure") is not None or bool(t.get("x_dns_inconsistent"))


def _host(url: str) -> str:
    return url.split("://", 1)[-1].rsplit(":", 1)[0].split("/", 1)[0]


def ooni_keys(app: str, targets: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """OONI's app keys from ``x_targets`` entries ({role, target, failed_operation, failure,
    x_dns_inconsistent})."""
    by_role: dict[str, list[Mapping[str, Any]]] = {}
    for t in targets:
        by_role.setdefault(str(t.get("role")), []).append(t)
    if app == "whatsapp":
        return _whatsapp(by_role)
    if app == "telegram":
        return _telegram(by_role)
    if app == "signal":
        return _signal(by_role)
    return _facebook(by_role)


def _status(ts: list[Mapping[str, Any]]) -> tuple[str, str | None]:
    failure = next((t.get("failure") for t in ts if t.get("failure") is not None), None)
    return ("blocked", failure) if failure is not None else ("ok", None)


def _whatsapp(by_role: dict[str, list[Mapping[str, Any]]]) -> dict[str, Any]:
    reg_status, reg_failure = _status(by_role.get("registration", []))
    web_status, web_failure = _status(by_role.get("web", []))
    endpoints = by_role.get("endpoints", [])
    ports: dict[str, int] = {}
    failures: dict[str, int] = {}
    for t in endpoints:
        host = _host(str(t.get("target")))
        ports[host] = ports.get(host, 0) + 1
        failures[host] = failures.get(host, 0) + (t.get("failure") is not None)
    blocked = [h for h in ports if failures[h] >= ports[h]]
    ok = any(t.get("failure") is None for t in endpoints)
    inconsistent = sorted(
        {_host(str(t.get("target"))) for t in endpoints if t.get("x_dns_inconsistent")}
    )
    return {
        "registration_server_failure": reg_failure,
        "registration_server_status": reg_status,
        "whatsapp_endpoints_blocked": blocked,
        "whatsapp_endpoints_dns_inconsistent": inconsistent,
        "whatsapp_endpoints_status": "ok" if ok else "blocked",
        "whatsapp_web_failure": web_failure,
        "whatsapp_web_status": web_status,
    }


def _telegram(by_role: dict[str, list[Mapping[str, Any]]]) -> dict[str, Any]:
    dcs = by_role.get("datacenters", [])
    http_ok = any(t.get("failure") is None for t in dcs)
    tcp_blocked = not http_ok and all(t.get("failed_operation") == "connect" for t in dcs)
    web_status, web_failure = _status(by_role.get("web", []))
    return {
        "telegram_http_blocking": not http_ok,
        "telegram_tcp_blocking": tcp_blocked,
        "telegram_web_failure": web_failure,
        "telegram_web_status": web_status,
    }


def _signal(by_role: dict[str, list[Mapping[str, Any]]]) -> dict[str, Any]:
    status, failure = _status(by_role.get("backend", []))
    return {"signal_backend_status": status, "signal_backend_failure": failure}


def _facebook(by_role: dict[str, list[Mapping[str, Any]]]) -> dict[str, Any]:
    keys: dict[str, Any] = {}
    dns_blocking = tcp_blocking = False
    for service in FB_SERVICES:
        consistent: bool | None = None
        reachable: bool | None = None
        for t in by_role.get(service, []):
            if t.get("failed_operation") == "resolve" or t.get("x_dns_inconsistent"):
                consistent, dns_blocking = False, True
                continue
            consistent = True
            if service == "stun":
                continue  # a lookup only: OONI leaves facebook_stun_reachable null
            reachable = t.get("failed_operation") != "connect"
            tcp_blocking = tcp_blocking or not reachable
        keys[f"facebook_{service}_dns_consistent"] = consistent
        keys[f"facebook_{service}_reachable"] = reachable
    keys["facebook_dns_blocking"] = dns_blocking
    keys["facebook_tcp_blocking"] = tcp_blocking
    return keys


# --- 2. the verdict -----------------------------------------------------------------------------


def anomaly(app: str, tk: Mapping[str, Any]) -> bool | None:
    """probe-cli's MeasurementSummaryKeys anomaly for the app; None without its keys."""
    if app == "whatsapp":
        names = ("registration_server_status", "whatsapp_web_status", "whatsapp_endpoints_status")
        if not any(n in tk for n in names):
            return None
        return any(tk.get(n) == "blocked" for n in names)
    if app == "telegram":
        if "telegram_http_blocking" not in tk and "telegram_web_status" not in tk:
            return None
        web = tk.get("telegram_web_failure") is not None
        return bool(web or tk.get("telegram_http_blocking") or tk.get("telegram_tcp_blocking"))
    if app == "signal":
        if "signal_backend_status" not in tk:
            return None
        return tk.get("signal_backend_status") == "blocked"
    if app == "facebook_messenger":
        if "facebook_dns_blocking" not in tk and "facebook_tcp_blocking" not in tk:
            return None
        return tk.get("facebook_dns_blocking") is True or tk.get("facebook_tcp_blocking") is True
    raise ValueError(f"not a messaging-app nettest: {app!r}")


def classify(
    operation: str | None,
    failure: str | None,
    *,
    inconsistent: bool = False,
    bogon: bool = False,
    control_sni_reached: bool | None = None,
) -> Verdict:
    """One failing target's blocking type and detail (the table in the module docstring)."""
    if bogon:
        return Verdict("dns", "dns.bogon", "a bogon DNS answer")
    if inconsistent:
        return Verdict("dns", "dns.inconsistent", "a DNS answer outside the app's networks")
    text = str(failure)
    if operation == "resolve":
        return Verdict("dns", _DNS.get(text, "dns.failure"), text)
    if operation == "connect":
        return Verdict("tcp_ip", _TCP.get(text, "tcp.connect_failure"), text)
    if operation == "tls_handshake":
        if text in CERTIFICATE_FAILURES:
            return Verdict("tls", "tls.intercepted", text)
        kind = _KINDS.get(text)
        if kind is None:
            return Verdict("tls", "tls.handshake_failure", text)
        prefix = "tls.sni_" if control_sni_reached else "tls.handshake_"
        return Verdict("tls", prefix + kind, text)
    kind = _KINDS.get(text)
    return Verdict("http-failure", f"http.{kind}" if kind else "http.failure", text)


def reached_tls(failure: Any) -> bool:
    """A handshake that got as far as a certificate (a name mismatch still means TLS works)."""
    return failure is None or str(failure).startswith("ssl_")


def _blocking_roles(app: str, tk: Mapping[str, Any]) -> set[str]:
    """The roles whose failures make OONI's anomaly."""
    if app == "whatsapp":
        roles = {
            "registration": tk.get("registration_server_status") == "blocked",
            "web": tk.get("whatsapp_web_status") == "blocked",
            "endpoints": tk.get("whatsapp_endpoints_status") == "blocked",
        }
    elif app == "telegram":
        roles = {
            "web": tk.get("telegram_web_failure") is not None,
            "datacenters": bool(tk.get("telegram_http_blocking")),
        }
    elif app == "signal":
        roles = {"backend": True}
    else:
        return set(FB_SERVICES)
    return {r for r, on in roles.items() if on}


def _first(verdicts: Iterable[Verdict]) -> Verdict | None:
    found = [v for v in verdicts if v.blocking in PRECEDENCE]
    if not found:
        return None
    return min(found, key=lambda v: PRECEDENCE.index(str(v.blocking)))


# Roles recorded and never judged (probe-cli signal.go ignores the uptime lookup).
IGNORED_ROLES = {"signal": frozenset({"uptime"})}


def dns_tampered(app: str, t: Mapping[str, Any]) -> bool:
    """A target whose answers are a bogon or outside the app's networks, and nothing proved
    them genuine: OONI's spec leaves the legitimacy of an answer to the pipeline (ts-018), and
    only a verified TLS handshake with the name (an https target that worked) settles it."""
    if t.get("role") in IGNORED_ROLES.get(app, frozenset()):
        return False
    if not (t.get("x_dns_inconsistent") or t.get("x_bogon")):
        return False
    proved = str(t.get("target", "")).startswith("https://") and t.get("failure") is None
    return not proved


def _from_targets(
    app: str, tk: Mapping[str, Any], targets: list[Any], found: bool
) -> Verdict | None:
    roles = _blocking_roles(app, tk) if found else set()
    failing = [
        t for t in targets if isinstance(t, Mapping) and t.get("role") in roles and _failed(t)
    ]
    down = [t for t in failing if down_everywhere(t) and not dns_tampered(app, t)]
    verdicts = [
        classify(
            t.get("failed_operation"),
            t.get("failure"),
            inconsistent=bool(t.get("x_dns_inconsistent")),
            bogon=bool(t.get("x_bogon")),
            control_sni_reached=t.get("x_control_sni_reached"),
        )
        for t in targets
        if isinstance(t, Mapping) and ((t in failing and t not in down) or dns_tampered(app, t))
    ]
    found_first = _first(verdicts)
    if found_first is None and failing and len(down) == len(failing):
        names = ", ".join(str(t.get("target")) for t in down)
        return Verdict(False, None, f"down at the control helper too: {names}", down=True)
    return found_first


# OONI's measurements: which step failed, from the failure string and the stored records.


def _records_failing(tk: Mapping[str, Any], key: str, failure: str) -> bool:
    for item in tk.get(key) or []:
        if not isinstance(item, Mapping):
            continue
        status = item.get("status") if key == "tcp_connect" else item
        if isinstance(status, Mapping) and status.get("failure") == failure:
            return True
    return False


def infer_operation(tk: Mapping[str, Any], failure: str) -> str:
    """The step a stored failure most likely came from (OONI's app keys keep only the string)."""
    if failure.startswith("dns_") or failure == "android_dns_cache_no_data":
        return "resolve"
    if failure.startswith("ssl_"):
        return "tls_handshake"
    if failure == "connection_refused" or _records_failing(tk, "tcp_connect", failure):
        return "connect"
    if _records_failing(tk, "tls_handshakes", failure):
        return "tls_handshake"
    return "http_round_trip"


# Lookups OONI records and ignores: Signal's uptime name answers 127.0.0.1 on purpose
# (probe-cli signal.go skips "dnslookup://uptime.signal.org").
IGNORED_HOSTS = {"signal": frozenset({"uptime.signal.org"})}


def _bogon_answered(app: str, tk: Mapping[str, Any]) -> bool:
    bogon = dca.bogon_check(tk)
    ignored = IGNORED_HOSTS.get(app, frozenset())
    for q in tk.get("queries") or []:
        if not isinstance(q, Mapping) or q.get("hostname") in ignored:
            continue
        for a in q.get("answers") or []:
            addr = a.get("ipv4") or a.get("ipv6") if isinstance(a, Mapping) else None
            if isinstance(addr, str) and bogon(addr):
                return True
    return False


def _first_tcp_failure(tk: Mapping[str, Any]) -> str:
    for item in tk.get("tcp_connect") or []:
        status = item.get("status") if isinstance(item, Mapping) else None
        if isinstance(status, Mapping) and status.get("failure"):
            return str(status["failure"])
    return "unknown_failure"


def _from_ooni_keys(app: str, tk: Mapping[str, Any]) -> Verdict | None:
    if _bogon_answered(app, tk):
        return Verdict("dns", "dns.bogon", "a bogon DNS answer")
    failures: list[Verdict] = []

    def add(failure: Any) -> None:
        if isinstance(failure, str) and failure:
            failures.append(classify(infer_operation(tk, failure), failure))

    if app == "whatsapp":
        if tk.get("registration_server_status") == "blocked":
            add(tk.get("registration_server_failure"))
        if tk.get("whatsapp_web_status") == "blocked":
            add(tk.get("whatsapp_web_failure"))
        if tk.get("whatsapp_endpoints_status") == "blocked":
            failures.append(classify("connect", _first_tcp_failure(tk)))
    elif app == "telegram":
        add(tk.get("telegram_web_failure"))
        if tk.get("telegram_tcp_blocking"):
            failures.append(classify("connect", _first_tcp_failure(tk)))
        elif tk.get("telegram_http_blocking"):
            failures.append(Verdict("http-failure", "http.failure", "no data centre answered"))
    elif app == "signal":
        add(tk.get("signal_backend_failure"))
    else:
        if tk.get("facebook_dns_blocking"):
            nx = any(
                isinstance(q, Mapping) and q.get("failure") == "dns_nxdomain_error"
                for q in tk.get("queries") or []
            )
            failures.append(
                Verdict("dns", "dns.nxdomain" if nx else "dns.inconsistent", "facebook_dns")
            )
        if tk.get("facebook_tcp_blocking"):
            failures.append(classify("connect", _first_tcp_failure(tk)))
    return _first(failures)


def analyze(app: str, tk: Mapping[str, Any]) -> Verdict:
    """The measurement's blocking and blocking_detail (module docstring, step 2)."""
    found = anomaly(app, tk)
    if found is None:
        return Verdict(None, None, "no app test keys")
    targets = tk.get("x_targets")
    if isinstance(targets, list):
        verdict = _from_targets(app, tk, targets, found)
    elif found:
        verdict = _from_ooni_keys(app, tk)
    else:
        verdict = None
    if verdict is not None:
        return verdict
    if not found:
        return Verdict(False, None, "")
    return Verdict("http-failure", "http.failure", "blocked, but no failing step recorded")


# --- 3. The control helper's view of a failing target (ours only) --------------------------------


def control_url(target: str) -> str:
    """The URL the helper is asked about for a target: its own for http(s); for a bare TCP
    endpoint an http URL with its port (the helper, like oohelperd, measures the URL's port);
    for a lookup an https URL (only the helper's DNS answer is read)."""
    scheme, _, rest = target.partition("://")
    if scheme in ("http", "https"):
        return target
    host = rest.split("/", 1)[0]
    return f"http://{host}/" if scheme == "tcpconnect" else f"https://{host}/"


def control_view(doc: Mapping[str, Any], endpoints: Sequence[str]) -> dict[str, Any]:
    """What a target keeps of the helper's answer: its DNS, its connects and handshakes to the
    target's own endpoints, and how its request ended (not the body or headers)."""
    tcp, tls = _mapping(doc.get("tcp_connect")), _mapping(doc.get("tls_handshake"))
    http = _mapping(doc.get("http_request"))
    return {
        "dns": _mapping(doc.get("dns")),
        "tcp_connect": {ep: tcp.get(ep) for ep in endpoints},  # None: the helper did not try
        "tls_handshake": {ep: tls[ep] for ep in endpoints if ep in tls},
        "http_request": {k: http.get(k) for k in ("failure", "status_code") if k in http},
    }


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _failure_at(entry: Any) -> str | None:
    if not isinstance(entry, Mapping):
        return None
    failure = entry.get("failure")
    return failure if isinstance(failure, str) and failure else None


def down_everywhere(t: Mapping[str, Any]) -> bool:
    """Whether the helper failed the step the probe failed, on the same address and port (a
    lookup: the same name). Unknown (no control, or the helper did not try that endpoint):
    False, and the target counts as blocked, as in OONI's verdict."""
    control = t.get("x_control")
    if not isinstance(control, Mapping) or t.get("failure") is None:
        return False
    operation = t.get("failed_operation")
    http_failed = _failure_at(control.get("http_request")) is not None
    if operation == "resolve":
        dns = control.get("dns")
        # oohelperd reports a name without addresses as no failure and no addrs
        no_address = isinstance(dns, Mapping) and dns.get("addrs") == []
        return _failure_at(dns) is not None or no_address
    if operation == "connect":  # the helper was asked about every address the probe tried
        tried = list(_mapping(control.get("tcp_connect")).values())
        return bool(tried) and all(_failure_at(e) is not None for e in tried)
    if operation == "tls_handshake":
        handshake = _mapping(control.get("tls_handshake")).get(str(t.get("x_endpoint")))
        if isinstance(handshake, Mapping):
            return _failure_at(handshake) is not None
        return http_failed  # a helper that makes no handshake on this port (oohelperd: 443 only)
    return http_failed


def in_networks(address: str, prefixes: Iterable[Any]) -> bool:
    """Whether an answer is one of the app's own addresses."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in prefixes if net.version == ip.version)
