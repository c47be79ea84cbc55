"""iptables rules of the censor router, generated from the scenario (iptables-restore text).

Stateless, cheap decisions (blackholes, throttling, loss) stay in the kernel; everything that
needs payload inspection or forging is queued to lab.censord. Only the censored vantage's
traffic is queued, so cs-vp-open crosses the same router untouched (except by faults).
"""

from __future__ import annotations

import ipaddress

from lab import addresses as A
from lab.scenario import Scenario

QUEUE_NUM = 0
CHAIN = "CS_LAB"
INTERCEPT_PORT = 8443  # lab.interceptor's listening port in cs-censor


def _endpoint(value: str) -> tuple[str, int | None]:
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        port = rest.lstrip(":")
        return host, int(port) if port else None
    if value.count(":") == 1:
        host, port = value.split(":")
        return host, int(port)
    return value, None


def blackholes(scen: Scenario) -> list[tuple[str, int | None]]:
    """(IP, port or None) pairs dropped for the censored vantage."""
    out: list[tuple[str, int | None]] = []
    for d in scen.by_block("blackhole"):
        out += [(d.a, None), (d.aaaa, None)]
    out += [_endpoint(e) for e in scen.censor.blackhole]
    return out


def iptables_rules(scen: Scenario, version: int) -> str:
    """The filter table for iptables-restore (version 4) or ip6tables-restore (version 6)."""
    cn = A.CN_SUBNET_V4 if version == 4 else A.CN_SUBNET_V6
    helper = A.HELPER_V4 if version == 4 else None
    q = f"-j NFQUEUE --queue-num {QUEUE_NUM}"
    lines = [
        "*filter",
        ":INPUT ACCEPT [0:0]",
        ":FORWARD ACCEPT [0:0]",
        ":OUTPUT ACCEPT [0:0]",
        f":{CHAIN} - [0:0]",
        f"-A FORWARD -j {CHAIN}",
    ]
    if scen.faults.loss > 0:
        lines.append(
            f"-A {CHAIN} -m statistic --mode random --probability {scen.faults.loss:.6f} -j DROP"
        )
    if helper:
        # The control helper's API sits outside the censor: never inspected. Its echo ports and
        # DNS zone (http_keyword's endpoints) are servers behind the censor like any other.
        api = A.HELPER_CONTROL_PORT
        lines += [
            f"-A {CHAIN} -d {helper} -p tcp --dport {api} -j ACCEPT",
            f"-A {CHAIN} -s {helper} -p tcp --sport {api} -j ACCEPT",
        ]
    for ip, port in blackholes(scen):
        if ipaddress.ip_address(ip).version != version:
            continue
        if port is None:
            lines.append(f"-A {CHAIN} -s {cn} -d {ip} -j DROP")
        else:
            lines += [
                f"-A {CHAIN} -s {cn} -d {ip} -p {proto} --dport {port} -j DROP"
                for proto in ("tcp", "udp")
            ]
    rate = scen.censor.throttle_kib_per_s
    for i, d in enumerate(scen.by_block("throttle")):
        ip = d.a if version == 4 else d.aaaa
        lines.append(
            f"-A {CHAIN} -s {ip} -d {cn} -m hashlimit --hashlimit-above {rate}kb/s "
            f"--hashlimit-burst {rate * 2}kb --hashlimit-mode srcip,dstip "
            f"--hashlimit-name cs_thr{version}_{i} -j DROP"
        )
    lines += [
        f"-A {CHAIN} -s {cn} -p udp --dport 53 {q}",
        f"-A {CHAIN} -s {cn} -p tcp {q}",
        f"-A {CHAIN} -d {cn} -p tcp {q}",
    ]
    for ip in scen.censor.quic_blocked_ip:
        if ipaddress.ip_address(ip).version == version:
            lines.append(f"-A {CHAIN} -s {cn} -d {ip} -p udp --dport 443 -j DROP")
    if scen.censor.quic_blocked_sni:
        # QUIC (lab.quic_censor): the client's Initials and the server's answers.
        lines += [f"-A {CHAIN} -s {cn} -p udp --dport 443 {q}",
                  f"-A {CHAIN} -d {cn} -p udp --sport 443 {q}"]  # fmt: skip
    if scen.faults.delay_ms > 0:
        # Delay applies to every vantage: queue the rest too (the censor only delays it).
        lines.append(f"-A {CHAIN} {q}")
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def nat_rules(scen: Scenario) -> str | None:
    """IPv4 nat table sending the censored vantage's HTTPS to the interceptor's domains into
    lab.interceptor (None when the scenario intercepts nothing). Other SNIs to those addresses
    are relayed untouched by the interceptor itself."""
    names = scen.tls_sni_names()
    if not names:
        return None
    lines = ["*nat", ":PREROUTING ACCEPT [0:0]", ":INPUT ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]",
             ":POSTROUTING ACCEPT [0:0]"]  # fmt: skip
    for ip in sorted({scen.domain(n).a for n in names}):
        lines.append(
            f"-A PREROUTING -s {A.CN_SUBNET_V4} -d {ip} -p tcp --dport 443 "
            f"-j REDIRECT --to-ports {INTERCEPT_PORT}"
        )
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"
