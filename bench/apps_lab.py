"""Messaging-app endpoint lists for the censor lab, and the verdicts they must get at cn.

The lab has no WhatsApp, Telegram, Signal or Facebook servers; the apps' endpoint lists
(probes.nettests.apps_endpoints) are pointed at the scenario's own domains instead, one named
endpoint set per case: every target on open domains (expected: not blocked), or one role of the
app on a domain the censor blocks by IP (`blackhole`), by SNI (`sni_rst`, https targets only)
or by DNS (`dns_inject`, `dns_blockpage`: answers outside the set's `prefixes`, the lab's domain
networks; `dns_nxdomain`; `dns_bogon`), placed so that OONI's anomaly for the app fires (a
WhatsApp endpoint set is blocked only when every endpoint is; Telegram's TCP blocking only when
every data centre is). Ports: the lab serves HTTP on 80 and 8080 and HTTPS on 443 on every
address, so WhatsApp's endpoints use 443 and 80 (not 5222) and Telegram's data centres 80 and
8080 (not 443, which speaks TLS in the lab).

Used by bench.accuracy (the four nettests' truth) and tests/lab/test_apps_in_lab.py.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterator
from itertools import cycle
from typing import Any

from lab import addresses
from lab import scenario as scenario_mod

APPS = ("whatsapp", "telegram", "signal", "facebook_messenger")
DNS_TRUTH = {
    "dns_inject": ("dns", "dns.inconsistent"),
    "dns_blockpage": ("dns", "dns.inconsistent"),
    "dns_nxdomain": ("dns", "dns.nxdomain"),
    "dns_bogon": ("dns", "dns.bogon"),
}
IP_TRUTH = ("tcp_ip", "tcp.connect_timeout")
SNI_TRUTH = ("tls", "tls.sni_reset")
DEFAULT_OPEN_SETS = 20
FB_TCP = ("b_api", "b_graph", "edge", "external_cdn", "scontent_cdn", "star")


def lab_prefixes() -> list[str]:
    """The networks every scenario domain's addresses come from, those of domains that are
    down included (a server that is down still has the app's address)."""
    nets = []
    for down in (False, True):
        nets.append(ipaddress.ip_network(f"{addresses.domain_v4(0, down=down)}/16", strict=False))
        nets.append(ipaddress.ip_network(f"{addresses.domain_v6(0, down=down)}/48", strict=False))
    return [str(n) for n in dict.fromkeys(nets)]


def open_names(scen: scenario_mod.Scenario) -> list[str]:
    """Domains the censor leaves alone whatever the protocol (no keyword in the name, no
    interception, not SNI-listed)."""
    special = set(scen.tls_sni_names()) | set(scen.censor.blocked_sni)
    words = [w for k in scen.censor.keywords for w in k]
    return [
        d.name
        for d in scen.domains
        if d.block == "none" and d.name not in special and not any(w in d.name for w in words)
    ]


def _open_set(app: str, opens: Iterator[str], scen: scenario_mod.Scenario) -> dict[str, Any]:
    def https() -> str:
        return f"https://{next(opens)}/"

    if app == "whatsapp":
        a, b = next(opens), next(opens)
        return {
            "registration": https() + "v2/register",
            "web": https(),
            "endpoints": [f"tcpconnect://{h}:{p}" for h in (a, b) for p in (443, 80)],
        }
    if app == "telegram":
        ips = [scen.domain(next(opens)).a for _ in range(2)]
        return {
            "web": https(),
            "datacenters": [f"http://{ip}:{p}/" for ip in ips for p in (80, 8080)],
        }
    if app == "signal":
        return {"backend": [https() for _ in range(4)], "uptime": f"dnslookup://{next(opens)}"}
    out: dict[str, Any] = {s: f"tcpconnect://{next(opens)}:443" for s in FB_TCP}
    out["stun"] = f"dnslookup://{next(opens)}"
    return out


def _blocked_set(
    app: str, base: dict[str, Any], d: scenario_mod.Domain, kind: str, turn: int
) -> dict[str, Any] | None:
    """``base`` with one role moved onto the blocked domain ``d`` (None: the app has no
    target this censor behaviour can be seen on)."""
    out = dict(base)
    name = d.name
    if app == "whatsapp":
        role = ("registration", "web", "endpoints")[turn % (2 if kind == "sni" else 3)]
        if role == "endpoints":
            out["endpoints"] = [f"tcpconnect://{name}:{p}" for p in (443, 80)]
        else:
            out[role] = f"https://{name}/" + ("v2/register" if role == "registration" else "")
    elif app == "telegram":
        if kind == "ip" and turn % 2 == 0:
            out["datacenters"] = [f"http://{d.a}:{p}/" for p in (80, 8080)]
        else:
            out["web"] = f"https://{name}/"
    elif app == "signal":
        backend = list(base["backend"])
        backend[turn % len(backend)] = f"https://{name}/"
        out["backend"] = backend
    else:
        if kind == "sni":
            return None  # OONI's facebook_messenger makes no TLS handshake
        services = FB_TCP + (("stun",) if kind == "dns" else ())
        service = services[turn % len(services)]
        out[service] = f"dnslookup://{name}" if service == "stun" else f"tcpconnect://{name}:443"
    return out


def endpoint_sets(
    scen: scenario_mod.Scenario,
    app: str,
    n_open: int = DEFAULT_OPEN_SETS,
    blocked: list[scenario_mod.Domain] | None = None,
    control: bool = False,
) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """(the app's endpoint sets as TOML tables, set name -> truth at cn); one blocked set per
    domain of ``blocked`` (default: every domain of the scenario) the censor blocks. With
    ``control`` (the probe runs with a control helper), also one set per domain that is down
    everywhere, placed as a blackholed one and expected not blocked (the helper fails too)."""
    opens = open_names(scen)
    if len(opens) < 2:
        raise ValueError(f"scenario {scen.name}: too few open domains for the app endpoint sets")
    names = cycle(opens)
    prefixes = lab_prefixes()
    tables: list[dict[str, Any]] = []
    truth: dict[str, dict[str, Any]] = {}

    def add(name: str, table: dict[str, Any], verdict: tuple[Any, Any], mechanism: str) -> None:
        tables.append(
            {"name": name, "source": f"lab scenario {scen.name}", "prefixes": prefixes, **table}
        )
        truth[name] = {
            "blocking": verdict[0],
            "blocking_detail": verdict[1],
            "mechanism": mechanism,
        }

    for i in range(n_open):
        add(f"open-{i}", _open_set(app, names, scen), (False, None), "none")
    turn = 0
    for d in scen.domains if blocked is None else blocked:
        if d.block == "blackhole":
            kind, verdict = "ip", IP_TRUTH
        elif d.block == "sni_rst":
            kind, verdict = "sni", SNI_TRUTH
        elif d.block in DNS_TRUTH:
            kind, verdict = "dns", DNS_TRUTH[d.block]
        elif d.block == "down" and control:
            kind, verdict = "ip", (False, None)
        else:
            continue
        table = _blocked_set(app, _open_set(app, names, scen), d, kind, turn)
        turn += 1
        if table is not None:
            label = "down" if d.block == "down" else kind
            add(f"{label}-{d.name}", table, verdict, d.block)
    return tables, truth


def to_toml(app: str, tables: list[dict[str, Any]], updated: str = "2026-12-07") -> str:
    """An endpoints file with the sets as ``[[APP]]`` tables (JSON strings and arrays are valid
    TOML values)."""
    lines = [f'updated = "{updated}"']
    for table in tables:
        lines += ["", f"[[{app}]]"]
        lines += [f"{key} = {json.dumps(value)}" for key, value in table.items()]
    return "\n".join(lines) + "\n"
