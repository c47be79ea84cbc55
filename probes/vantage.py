"""Where the vantage is: probe_cc, probe_asn, network names and the resolver, as OONI fills them.

The flow of probe-cli's enginelocate (geolocate.go): learn the probe's public address, look up
its ASN, network name and country in the database, then the resolver's address (a whoami name
through the system resolver) and its ASN; a failing resolver step never spoils the rest.
What [vantage] sets wins. The public address goes to the scrubber and nowhere else: it is
returned only in `scrub`, never stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from probes.config import OONI_HELPERS, Config
from probes.geoip import UNKNOWN_CC, GeoDatabase, IPInfo
from probes.net.addresses import parse_host_port
from probes.ownip import local_addresses
from probes.publicip import (
    SourceError,
    WhoamiAnswer,
    ask_stun,
    ask_whoami,
    resolver_address,
    whoami_url,
)

UNKNOWN_ASN = IPInfo().asn_string  # "AS0", OONI's spelling of geoip.UNKNOWN_ASN
# probe-cli model.DefaultResolverIP: what OONI writes when the resolver lookup failed.
UNKNOWN_RESOLVER_IP = "127.0.0.2"
LOCATE_TIMEOUT = 4.0  # seconds for all sources together, before the first measurement
# DB-IP's Lite files and GeoLite2 are rebuilt monthly; past this, say the file should be renewed.
STALE_DAYS = 90


@dataclass
class Vantage:
    """The base keys a run writes, and the addresses the scrubber must learn."""

    probe_cc: str = UNKNOWN_CC
    probe_asn: str = UNKNOWN_ASN
    probe_network_name: str = ""
    resolver_ip: str = ""
    resolver_asn: str = UNKNOWN_ASN
    resolver_network_name: str = ""
    scrub: list[str] = field(default_factory=list)
    # One line for the terminal when the location stays unknown (None: nothing to say).
    notice: str | None = None
    # One more when a database is older than STALE_DAYS.
    stale: str | None = None


def http_url_problem(url: str) -> str | None:
    """Why `url` is no http(s)://HOST[:PORT]/... URL (None when it is one); urlsplit raises
    on some ("http://[::1/", a port over 65535), which must be bad input, not a traceback."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a port out of range
    except ValueError as exc:
        return str(exc)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "not an http(s) URL"
    return None


def source_problem(cfg: Config, helpers: Iterable[str] = ()) -> str | None:
    """A malformed [geoip] source or helper URL (whose whoami is asked), named (checked before
    anything is measured)."""
    for url in helpers:
        if why := http_url_problem(url):
            return f"control helper {url!r} (--helper or [probe] helpers): {why}"
    for url in cfg.geoip.whoami:
        if why := http_url_problem(url):
            return f"[geoip] whoami: {url!r}: {why}"
    for server in cfg.geoip.stun:
        try:
            host, _port = parse_host_port(server, 3478)
        except ValueError as exc:
            return f"[geoip] stun: {server!r}: {exc}"
        if not host:
            return f"[geoip] stun: {server!r}: no host"
    return None


def whoami_sources(cfg: Config, helpers: Iterable[str]) -> list[str]:
    """The whoami endpoints to ask: the configured ones, else our own helpers and collector
    (OONI's public helpers have no such endpoint and are not ours to ask)."""
    if cfg.geoip.whoami:
        return list(cfg.geoip.whoami)
    bases = [h for h in helpers if h not in OONI_HELPERS and not _is_ooni(h)]
    if cfg.upload.collector:
        bases.append(cfg.upload.collector)
    return [whoami_url(b) for b in dict.fromkeys(bases)]


def _is_ooni(url: str) -> bool:
    host = (urlsplit(url).hostname or "").lower()
    return host == "ooni.org" or host.endswith(".ooni.org") or host.endswith(".ooni.io")


async def _learn(
    whoami: list[str], stun: list[str], ca_file: str | None, timeout: float
) -> tuple[list[str], str | None]:
    """Every address the sources report (in source order) and a whoami DNS name offered."""
    tasks = [ask_whoami(url, timeout=timeout, ca_file=ca_file) for url in whoami]
    stun_tasks = [ask_stun(server, timeout=timeout) for server in stun]
    results = await asyncio.gather(*tasks, *stun_tasks, return_exceptions=True)
    addresses: list[str] = []
    dns_name: str | None = None
    for result in results:
        if isinstance(result, SourceError):
            continue
        if isinstance(result, BaseException):
            raise result
        if isinstance(result, str):
            addresses.append(result)
        elif isinstance(result, WhoamiAnswer):
            addresses.append(result.address)
            dns_name = dns_name or result.dns_whoami
    return list(dict.fromkeys(addresses)), dns_name


async def locate(
    cfg: Config,
    *,
    helpers: Iterable[str],
    resolver: str | None,
    ca_file: str | None = None,
    timeout: float = LOCATE_TIMEOUT,
    whoami_nameserver: str | None = None,
    interfaces: Iterable[str] | None = None,
) -> Vantage:
    """Fill the vantage's base keys (see the module docstring).

    `resolver` is the probe's configured resolver (IP[:PORT]), which is then `resolver_ip`;
    `whoami_nameserver` sends the resolver whoami lookup to that server instead of the system
    resolver (tests on loopback). The host's global interface addresses (`interfaces`, default:
    probes.ownip's) are looked up after the learned ones: a vantage without NAT needs no
    source. Raises GeoIPError for a database that cannot be read.
    """
    given = cfg.vantage
    db = GeoDatabase(cfg.geoip.databases) if cfg.geoip.databases else None
    try:
        addresses, offered = await _learn(
            whoami_sources(cfg, helpers), list(cfg.geoip.stun), ca_file, timeout
        )
        if interfaces is None:
            interfaces = local_addresses()
        candidates = [*addresses, *(a for a in interfaces if ipaddress.ip_address(a).is_global)]
        probe = IPInfo()
        if db is not None:
            for address in candidates:
                probe = db.lookup(address)
                if probe.known:
                    break
        vantage = Vantage(scrub=addresses)
        vantage.probe_cc = given.probe_cc if given.probe_cc != UNKNOWN_CC else probe.cc
        vantage.probe_asn = given.probe_asn if given.probe_asn != UNKNOWN_ASN else probe.asn_string
        if given.network_name:
            vantage.probe_network_name = given.network_name
        elif vantage.probe_asn == probe.asn_string:  # never another network's name
            vantage.probe_network_name = probe.network_name
        learned_resolver = False  # resolver_ip came from the resolver whoami lookup
        if resolver:
            vantage.resolver_ip = parse_host_port(resolver, 53)[0]
        else:
            vantage.resolver_ip = UNKNOWN_RESOLVER_IP
            name = cfg.geoip.resolver_whoami or offered
            if name:
                # As probe-cli: a failed resolver lookup spoils nothing else.
                with contextlib.suppress(SourceError):
                    vantage.resolver_ip = await resolver_address(
                        name, timeout=timeout, nameserver=whoami_nameserver
                    )
                    learned_resolver = True
        if db is not None and vantage.resolver_ip not in ("", UNKNOWN_RESOLVER_IP):
            info = db.lookup(vantage.resolver_ip)
            vantage.resolver_asn = info.asn_string
            vantage.resolver_network_name = info.network_name
        own = {*candidates, *given.own_addresses}
        if _same_address(vantage.resolver_ip, own):
            # A resolver on this host or its NAT router answers from the probe's own public
            # address: stored, it would name the probe. Its network stays (it is the probe's
            # too); the address becomes OONI's "unknown" one, a valid IP for OONI's pipeline,
            # not the scrubber's "[scrubbed]".
            vantage.resolver_ip = UNKNOWN_RESOLVER_IP
        elif learned_resolver and not own:
            # No source said what our public address is, so a resolver on the NAT router
            # (answering from that address) cannot be told from a distant one: privacy
            # first, the address goes and its network stays.
            vantage.resolver_ip = UNKNOWN_RESOLVER_IP
        vantage.notice = _notice(cfg, vantage, db is not None, bool(candidates))
        old = db.stale(time.time(), STALE_DAYS) if db is not None else []
        if old:
            vantage.stale = f"GeoIP database over {STALE_DAYS} days old, renew it: {', '.join(old)}"
        return vantage
    finally:
        if db is not None:
            db.close()


def _same_address(address: str, own: Iterable[str]) -> bool:
    """Whether `address` is one of `own`, in any spelling (IPv6 forms, ::ffff:a.b.c.d)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    forms = {ip, *([mapped] if mapped else [])}
    for text in own:
        try:
            other = ipaddress.ip_address(text)
        except ValueError:
            continue
        if other in forms or getattr(other, "ipv4_mapped", None) in forms:
            return True
    return False


def _notice(cfg: Config, vantage: Vantage, have_db: bool, have_address: bool) -> str | None:
    if vantage.probe_cc != UNKNOWN_CC or vantage.probe_asn != UNKNOWN_ASN:
        return None
    if not have_db:
        why = "no [geoip] databases configured"
    elif not have_address and not (cfg.geoip.whoami or cfg.geoip.stun or cfg.upload.collector):
        why = (
            "no source of the probe's public address: OONI's helpers have none; "
            "set [geoip] stun or whoami, or an upload collector"
        )
    elif not have_address:
        why = "the probe's public address was not learned (no whoami or STUN source answered)"
    else:
        why = "the GeoIP database does not know the probe's public address"
    return (
        f"vantage location unknown ({why}): measurements say probe_cc ZZ, probe_asn AS0; "
        "set [vantage] probe_cc/probe_asn or [geoip] in the config"
    )
