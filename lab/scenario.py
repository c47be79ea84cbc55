"""Scenario files: the lab's ground truth (what the censor does, and so what a probe should see).

A scenario is TOML (see docs/lab.md). Loading validates every field and names the file and
field on error, because a wrong ground truth silently corrupts every accuracy figure.
"""

from __future__ import annotations

import argparse
import ipaddress
import random
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lab import addresses, ech

# Block kind -> (expected OONI web_connectivity `blocking`, `blocking_detail`, required scheme).
# The details are the probe's vocabulary (docs/methodology.md), i.e. the evidence a probe at the
# vantage can have: an injected DNS answer looks inconsistent with the control, an injected RST
# is a reset, a drop is a timeout; throttling is invisible to web_connectivity; a site that is
# down everywhere is "down, not blocked" (blocking false, as OONI v0.5 reports it). A block
# page is "http.blockpage" when the probe knows the censor's page as a blocking fingerprint
# (the lab publishes it, see `LabInfo.fingerprints`), as OONI knows national block pages.
BLOCK_KINDS: dict[str, tuple[str | bool | None, str | None, str | None]] = {
    "none": (False, None, None),
    "dns_inject": ("dns", "dns.inconsistent", None),
    "dns_nxdomain": ("dns", "dns.nxdomain", None),
    "dns_bogon": ("dns", "dns.bogon", None),
    "http_rst": ("http-failure", "http.reset", "http"),
    "sni_rst": ("http-failure", "tls.sni_reset", "https"),
    "blackhole": ("tcp_ip", "tcp.timeout", None),
    "blockpage": ("http-diff", "http.blockpage", "http"),
    # The censor's resolver answers with its block-page server's address, where the same
    # server software as the sites serves the national block page (over http; its port 443
    # refuses connections, as a block-page server holds no certificate for the name).
    "dns_blockpage": ("dns", "dns.inconsistent", "http"),
    "throttle": (False, None, None),
    "down": (False, None, None),
    # By the SNI of the ClientHello (Russia's throttling of Twitter, 2021; its TSPU freezing
    # TLS to foreign hosting after 16-20 KB): the censor paces the server's bytes, or stops
    # forwarding them after `stall_after_bytes`. A site's small page gets through either way
    # (web_connectivity sees nothing); a page larger than the freeze point (`page_kib`) stalls
    # (Domain.expected); the download nettest sees both (`download_truth`).
    "throttle_sni": (False, None, "https"),
    "stall_sni": (False, None, "https"),
}
# Every address's HTTP(S) servers serve a large object here (lab.servers), for download.
LARGE_OBJECT_PATH = "/large.bin"
LARGE_OBJECT_BYTES = 1 << 20
# The kinds the censor shapes by SNI (lab.censor).
SHAPED_KINDS = ("throttle_sni", "stall_sni")
# download's verdict per shaped kind (probes/nettests/download_analysis.py).
DOWNLOAD_KINDS: dict[str, tuple[str, str]] = {
    "throttle_sni": ("throttling", "throttled"),
    "stall_sni": ("throttling", "stalled"),
}

# dns_consistency's verdict per block kind (the lab resolver, the control helper as control):
# the injectors' answers race the genuine one (dns.injected); the other kinds are not DNS-blocked.
DNS_CONSISTENCY_KINDS: dict[str, tuple[str, str]] = {
    "dns_inject": ("dns", "dns.injected"),
    "dns_nxdomain": ("dns", "dns.nxdomain"),
    "dns_bogon": ("dns", "dns.bogon"),
    # One forged address, no DNS server behind it, nothing serving the name there.
    "dns_blockpage": ("dns", "dns.inconsistent"),
}
# An on-path injector cannot drop the query: the genuine answer follows the forged one, which
# dns_consistency reads as injection (two differing answers) whatever the forgery said.
FORGED_DNS_KINDS = ("dns_inject", "dns_nxdomain", "dns_bogon", "dns_blockpage")
# Block kinds whose name resolves to its own server and whose TLS handshake (any SNI) goes
# through from the censored vantage: candidates for "not blocked" in the TLS nettests' truth.
TLS_OPEN_KINDS = ("none", "http_rst", "blockpage", "throttle")
_OPEN: tuple[bool, None] = (False, None)

DEFAULT_BLOCKPAGE_TITLE = "Access Denied - National Information Security Filter"
DEFAULT_BLOCKPAGE_BODY = (
    "<html><head><title>{title}</title></head><body>"
    "<h1>{title}</h1><p>Access to this website has been restricted in accordance with "
    "national regulations. Reference: CS-LAB-451.</p></body></html>"
)
# Where on-path keyword rules can look: the HTTP request target's path and query, the Host
# header, the TLS ClientHello's SNI and DNS query names (the GFW's keyword placements).
KEYWORD_PLACEMENTS = ("path", "query", "host", "sni", "dns")
PLATFORM_ACTIONS = ("drop", "reject", "modify")
DEFAULT_SCENARIO = Path(__file__).parent / "scenarios" / "default.toml"


class ScenarioError(ValueError):
    """A scenario file is malformed; the message names the file and the field."""


@dataclass(frozen=True)
class Domain:
    """One website of the lab internet and how the censor treats it."""

    name: str
    block: str
    scheme: str
    a: str
    aaaa: str
    title: str
    # The page is padded to at least this many KiB (0: the short page of lab.servers.page_for).
    page_kib: int = 0
    # The censor's freeze point for stall_sni (Censor.stall_after_bytes), for `expected`.
    stall_after_bytes: int = 16 * 1024

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.name}/"

    @property
    def expected(self) -> dict[str, Any]:
        """Expected web_connectivity verdict in the probe's vocabulary."""
        blocking, detail, _ = BLOCK_KINDS[self.block]
        if self.block == "stall_sni" and self.page_kib * 1024 > self.stall_after_bytes:
            # The page's body freezes part way (the probe's body fetch times out after its
            # head arrived, the helper fetched it whole).
            blocking, detail = "http-failure", "http.stalled"
        return {"blocking": blocking, "blocking_detail": detail, "mechanism": self.block}


@dataclass(frozen=True)
class Censor:
    """Global censor settings; per-domain blocking lives on each Domain."""

    mode: str = "in-path"  # or "on-path": sniff and race instead of holding the packet
    onpath_server_delay_ms: float = 1.0
    reassemble: bool = True
    dns_injectors: int = 2
    inject_pool: tuple[str, ...] = addresses.DEFAULT_INJECT_POOL
    bogon: str = addresses.DEFAULT_BOGON
    keywords: tuple[tuple[str, ...], ...] = ()
    blocked_sni: tuple[str, ...] = ()
    blackhole: tuple[str, ...] = ()  # "IP" or "IP:PORT" / "[IPv6]:PORT"
    throttle_kib_per_s: int = 64
    blockpage_title: str = DEFAULT_BLOCKPAGE_TITLE
    blockpage_body: str = DEFAULT_BLOCKPAGE_BODY
    blockpage_status: int = 200
    residual_seconds: float = 0.0
    residual_action: str = "rst"  # or "drop"
    # Routers between the censored vantage and the censor (0: the censor is its first hop).
    hops: int = 0
    # TLS for these scenario domains is re-signed by the censor's own CA (lab.interceptor) at
    # the censored vantage; regional_cert_sni get another key from the public (lab) CA there,
    # like a CDN's regional edge: not interception.
    intercept_sni: tuple[str, ...] = ()
    regional_cert_sni: tuple[str, ...] = ()
    # Where on-path keyword rules look (KEYWORD_PLACEMENTS); the default is the historical
    # request line and Host only, so older scenarios keep their meaning.
    keyword_placements: tuple[str, ...] = ("path", "query", "host")
    # ClientHellos carrying the ECH extension (0xfe0d) whose outer SNI is one of these names
    # (or a subdomain) are dropped silently (in-path only), or reset, like Russia's TSPU with
    # cloudflare-ech.com; the same names without ECH pass (ech_check's lab behaviour).
    ech_drop_sni: tuple[str, ...] = ()
    ech_rst_sni: tuple[str, ...] = ()
    # QUIC (lab.quic_censor): Initials naming these SNIs get their flow dropped for
    # quic_residual_seconds, per quic_residual_scope ("triple" or "flow"); the sites serve
    # QUIC/HTTP3 on UDP 443 of their IPv4 addresses when quic_servers (on whenever a name is
    # blocked).
    quic_blocked_sni: tuple[str, ...] = ()
    # QUIC blocked whatever the name: UDP 443 of these IPv4 addresses dropped for cn (endpoint
    # blocking, as Iran and India did in 2021-2022, Elmenhorst et al.).
    quic_blocked_ip: tuple[str, ...] = ()
    quic_residual_seconds: float = 180.0
    quic_residual_scope: str = "triple"
    quic_servers: bool = False
    # SNI shaping (throttle_sni and stall_sni domains): the pace of the server's bytes, about
    # Twitter's in Russia in 2021 (130-150 kbit/s, Xue et al., IMC 2021), and the freeze
    # point (Russia's TSPU: 16-20 KB).
    throttle_sni_kib_per_s: int = 16
    stall_after_bytes: int = 16 * 1024

    def blockpage_html(self) -> bytes:
        """The national block page as served (by the censor or its block-page server)."""
        return self.blockpage_body.replace("{title}", self.blockpage_title).encode()


@dataclass(frozen=True)
class Platform:
    """The lab's message platform (lab.servers): server-side rules applied to cn senders only.

    Like a national chat app's per-region filter (Citizen Lab's WeChat and QQ studies): the
    same service delivers the same message for a sender outside the region.
    """

    keywords: tuple[tuple[str, ...], ...] = ()
    action: str = "drop"  # "drop" (accept, never deliver), "reject" (403), "modify" (mask)
    # Registered accounts, (name, region): a sender naming one (X-Censorscope-Sender) is judged
    # by where it was registered, wherever it connects from, as WeChat judges by the phone
    # number's country. A sender naming none is judged by its address (cn subnet: "CN").
    accounts: tuple[tuple[str, str], ...] = ()
    regions: tuple[str, ...] = ("CN",)  # the regions whose senders the rules apply to

    def account_region(self, name: str) -> str | None:
        return dict(self.accounts).get(name)


@dataclass(frozen=True)
class Faults:
    """Network faults applied on the censor router to both vantages."""

    loss: float = 0.0
    delay_ms: float = 0.0
    # Random loss on the control helper's own path (its DNS queries, connects and fetches to
    # the lab's servers, inside cs-internet), so the control is measured under loss too.
    helper_loss: float = 0.0


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    domains: tuple[Domain, ...]
    censor: Censor = field(default_factory=Censor)
    faults: Faults = field(default_factory=Faults)
    source: str = "<memory>"
    platform: Platform = field(default_factory=Platform)

    def domain(self, name: str) -> Domain:
        for d in self.domains:
            if d.name == name:
                return d
        raise KeyError(name)

    def by_block(self, block: str) -> list[Domain]:
        return [d for d in self.domains if d.block == block]

    def inputs(self) -> list[str]:
        return [d.url for d in self.domains]

    def tls_sni_names(self) -> list[str]:
        """Domains whose TLS goes through lab.interceptor at the censored vantage."""
        return [*self.censor.intercept_sni, *self.censor.regional_cert_sni]

    def ground_truth(self) -> dict[str, dict[str, Any]]:
        """URL -> expected verdict at the censored vantage (the open vantage: blocking false)."""
        return {d.url: d.expected for d in self.domains}

    def dns_truth(self) -> dict[str, dict[str, Any]]:
        """Name -> expected dns_consistency verdict at the censored vantage."""
        on_path = self.censor.mode == "on-path"
        return {
            d.name: _expect(
                ("dns", "dns.injected")
                if on_path and d.block in FORGED_DNS_KINDS
                else DNS_CONSISTENCY_KINDS.get(d.block, _OPEN),
                d.block,
            )
            for d in self.domains
        }

    def tcp_truth(self) -> dict[str, dict[str, Any]]:
        """IP:PORT -> expected tcp_connect verdict at the censored vantage.

        Each domain's IPv4 address on its scheme's port (blackholed: a timeout; a site that is
        down times out at the control too: not blocked), and the censor's own IPv4 blackhole
        rules (an IP alone on port 80). IPv6 is left out: the lab's control helper has none.
        Residual censorship is not modelled: score it on a fresh lab or residual_seconds = 0.
        """
        timeout = ("tcp_ip", "tcp.timeout")
        out = {
            f"{d.a}:{80 if d.scheme == 'http' else 443}": _expect(
                timeout if d.block == "blackhole" else _OPEN, d.block
            )
            for d in self.domains
        }
        for rule in self.censor.blackhole:
            endpoint = rule if rule.count(":") == 1 else f"{rule}:80"
            if ipaddress.ip_address(endpoint.rpartition(":")[0]).version == 4:
                out[endpoint] = _expect(timeout, "blackhole_rule")
        return out

    def sni_truth(self, open_sample: int | None = None) -> dict[str, dict[str, Any]]:
        """Name -> expected sni_blocking verdict at the censored vantage.

        Every SNI-blocked domain (`sni_rst` or in `blocked_sni`): reset after the ClientHello;
        and `open_sample` (all when None) of the names whose TLS goes through untouched (not
        re-signed by the interceptor): not blocked.
        """
        blocked = set(self.censor.blocked_sni)
        out = {
            d.name: _expect(("tls", "tls.sni_reset"), "sni_rst")
            for d in self.domains
            if d.block == "sni_rst" or (d.name in blocked and d.block in TLS_OPEN_KINDS)
        }
        names = [n for n in self._tls_open_names() if n not in out]
        for name in _sample(names, open_sample, self.name):
            out[name] = _expect(_OPEN, self.domain(name).block)
        return out

    def tls_truth(self, open_sample: int | None = None) -> dict[str, dict[str, Any]]:
        """Name -> expected tls_interception verdict at the censored vantage.

        `intercept_sni` names are re-signed by the censor's CA (tls.intercepted);
        `regional_cert_sni` names get another key from the public CA (not interception); and
        `open_sample` (all when None) of the other names whose TLS goes through: not blocked.
        """
        out = {
            n: _expect(("tls", "tls.intercepted"), "intercept") for n in self.censor.intercept_sni
        }
        out |= {n: _expect(_OPEN, "regional_cert") for n in self.censor.regional_cert_sni}
        names = [n for n in self._tls_open_names() if n not in out]
        for name in _sample(names, open_sample, self.name):
            out[name] = _expect(_OPEN, self.domain(name).block)
        return out

    def ech_truth(
        self, open_sample: int | None = None, outer_sni: tuple[str, ...] = ()
    ) -> dict[str, dict[str, Any]]:
        """Name -> expected ech_check verdict at the censored vantage.

        A name whose TLS goes through untouched is sent as the outer SNI of its own hellos,
        with each of ``outer_sni`` (ech_check's extra outer names) and, for an https site,
        with its ECHConfig's public name (lab.ech): ``tls.ech_reset`` when one of them is in
        ``ech_rst_sni``, ``tls.ech_dropped`` when in ``ech_drop_sni`` (in-path only: an on-path
        censor drops nothing). Every such blocked name, and ``open_sample`` (all when None) of
        the others: not blocked.
        """
        in_path = self.censor.mode == "in-path"
        drop = set(self.censor.ech_drop_sni) if in_path else set()
        rst = set(self.censor.ech_rst_sni)

        def verdict(name: str) -> tuple[str | bool, str | None]:
            # An https site publishes an ECHConfig (lab.ech): its public name is sent too.
            public = (ech.PUBLIC_NAME,) if self.domain(name).scheme == "https" else ()
            for outer in (name, *outer_sni, *public):
                if matches(outer, rst):
                    return ("tls", "tls.ech_reset")
                if matches(outer, drop):
                    return ("tls", "tls.ech_dropped")
            return _OPEN

        names = self._tls_open_names()
        out = {n: _expect(verdict(n), "ech") for n in names if verdict(n) != _OPEN}
        rest = [n for n in names if n not in out]
        for name in _sample(rest, open_sample, self.name):
            out[name] = _expect(_OPEN, self.domain(name).block)
        return out

    def download_truth(self, open_sample: int | None = None) -> dict[str, dict[str, Any]]:
        """URL of the large object -> expected download verdict at the censored vantage.

        Every throttle_sni domain is throttled and every stall_sni one stalled (the control
        SNI, another name at the same address, passes); `open_sample` (all when None) of the
        accessible names whose TLS and DNS nobody touches: not blocked.
        """
        out = {
            f"https://{d.name}{LARGE_OBJECT_PATH}": _expect(DOWNLOAD_KINDS[d.block], d.block)
            for d in self.domains
            if d.block in DOWNLOAD_KINDS
        }
        special = set(self.tls_sni_names()) | set(self.censor.blocked_sni)
        names = [
            d.name
            for d in self.domains
            if d.block == "none"
            and d.name not in special
            and not any(w in d.name for k in self.censor.keywords for w in k)
        ]
        for name in _sample(names, open_sample, self.name):
            out[f"https://{name}{LARGE_OBJECT_PATH}"] = _expect(_OPEN, "none")
        return out

    def _tls_open_names(self) -> list[str]:
        """Names whose handshake reaches their own server, certificate untouched, at cn."""
        special = set(self.tls_sni_names()) | set(self.censor.blocked_sni)
        return [d.name for d in self.domains if d.block in TLS_OPEN_KINDS and d.name not in special]

    def to_toml(self) -> str:
        return _to_toml(self)


def matches(name: str, names: set[str]) -> bool:
    """``name`` is one of ``names`` or a subdomain of one (as the censor matches SNI)."""
    return any(name == n or name.endswith("." + n) for n in names)


def _expect(verdict: tuple[str | bool | None, str | None], mechanism: str) -> dict[str, Any]:
    """A truth entry: (blocking, blocking_detail) and the mechanism that explains it."""
    return {"blocking": verdict[0], "blocking_detail": verdict[1], "mechanism": mechanism}


def _sample(names: list[str], k: int | None, salt: str) -> list[str]:
    """k of names (all when k is None), the same ones for the same scenario."""
    if k is None or k >= len(names):
        return list(names)
    return sorted(random.Random(f"sample:{salt}").sample(names, k))


def _err(source: str, where: str, msg: str) -> ScenarioError:
    return ScenarioError(f"{source}: {where}: {msg}")


def _get(
    table: dict[str, Any],
    key: str,
    kind: type | tuple[type, ...],
    default: Any,
    src: str,
    where: str,
) -> Any:
    if key not in table:
        return default
    value = table[key]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise _err(
            src, f"{where}.{key}", f"expected {getattr(kind, '__name__', kind)}, got {value!r}"
        )
    return value


def _check_ip(value: str, src: str, where: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError as exc:
        raise _err(src, where, f"not an IP address: {value!r}") from exc


def _check_endpoint(value: str, src: str, where: str) -> str:
    host, port = value, None
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        port = rest.lstrip(":") or None
    elif value.count(":") == 1:
        host, port = value.split(":")
    _check_ip(host, src, where)
    if port is not None and not (port.isdigit() and 0 < int(port) < 65536):
        raise _err(src, where, f"bad port in {value!r}")
    return value


def _string_list(table: dict[str, Any], key: str, src: str, where: str) -> list[str]:
    value = table.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise _err(src, f"{where}.{key}", "expected a list of non-empty strings")
    return list(value)


def _keywords(table: dict[str, Any], source: str, where: str) -> tuple[tuple[str, ...], ...]:
    """`keywords`: words and combinations (a list: every word needed), lower-cased."""
    raw_kw = table.get("keywords", [])
    keywords: list[tuple[str, ...]] = []
    if not isinstance(raw_kw, list):
        raise _err(source, f"{where}.keywords", "expected a list of strings or lists of strings")
    for i, kw in enumerate(raw_kw):
        combo = [kw] if isinstance(kw, str) else kw
        if (
            not isinstance(combo, list)
            or not combo
            or not all(isinstance(w, str) and w for w in combo)
        ):
            raise _err(
                source, f"{where}.keywords[{i}]", f"expected a word or a list of words, got {kw!r}"
            )
        keywords.append(tuple(w.lower() for w in combo))
    return tuple(keywords)


QUIC_FIELDS = (
    "quic_blocked_sni",
    "quic_blocked_ip",
    "quic_residual_seconds",
    "quic_residual_scope",
    "quic_servers",
)


def _quic_fields(c: dict[str, Any], source: str) -> dict[str, Any]:
    """The [censor] table's QUIC rule (lab.quic_censor), validated."""
    names = tuple(s.lower() for s in _string_list(c, "quic_blocked_sni", source, "censor"))
    seconds = _get(c, "quic_residual_seconds", float, 180.0, source, "censor")
    if seconds < 0:
        raise _err(source, "censor.quic_residual_seconds", "must be >= 0")
    scope = _get(c, "quic_residual_scope", str, "triple", source, "censor")
    if scope not in ("triple", "flow"):
        raise _err(source, "censor.quic_residual_scope", f"expected triple or flow, got {scope!r}")
    ips = tuple(
        _check_ip(ip, source, "censor.quic_blocked_ip")
        for ip in _string_list(c, "quic_blocked_ip", source, "censor")
    )
    servers = _get(c, "quic_servers", bool, bool(names or ips), source, "censor")
    return {
        "quic_blocked_sni": names,
        "quic_blocked_ip": ips,
        "quic_residual_seconds": seconds,
        "quic_residual_scope": scope,
        "quic_servers": servers or bool(names or ips),
    }


def _positive(table: dict[str, Any], key: str, default: int, src: str) -> int:
    value = _get(table, key, int, default, src, "censor")
    if value < 1:
        raise _err(src, f"censor.{key}", f"must be >= 1, got {value}")
    return value


def parse(data: dict[str, Any], source: str = "<memory>") -> Scenario:
    """Build a Scenario from parsed TOML, validating every field."""
    known = {"lab", "censor", "faults", "domain", "platform"}
    for key in data:
        if key not in known:
            raise _err(source, key, f"unknown table (expected one of {sorted(known)})")
    lab = data.get("lab", {})
    name = _get(lab, "name", str, Path(source).stem, source, "lab")
    description = _get(lab, "description", str, "", source, "lab")

    c = data.get("censor", {})
    if not isinstance(c, dict):
        raise _err(source, "censor", "expected a table")
    mode = _get(c, "mode", str, "in-path", source, "censor")
    if mode not in ("in-path", "on-path"):
        raise _err(source, "censor.mode", f"expected 'in-path' or 'on-path', got {mode!r}")
    injectors = _get(c, "dns_injectors", int, 2, source, "censor")
    if not 1 <= injectors <= 3:
        raise _err(source, "censor.dns_injectors", f"expected 1..3, got {injectors}")
    pool = [
        _check_ip(ip, source, "censor.inject_pool")
        for ip in _string_list(c, "inject_pool", source, "censor")
    ]
    keywords = _keywords(c, source, "censor")
    placements = _string_list(c, "keyword_placements", source, "censor") or [
        "path",
        "query",
        "host",
    ]
    for pl in placements:
        if pl not in KEYWORD_PLACEMENTS:
            raise _err(
                source,
                "censor.keyword_placements",
                f"unknown {pl!r} (expected some of {list(KEYWORD_PLACEMENTS)})",
            )
    residual_action = _get(c, "residual_action", str, "rst", source, "censor")
    if residual_action not in ("rst", "drop"):
        raise _err(
            source, "censor.residual_action", f"expected 'rst' or 'drop', got {residual_action!r}"
        )
    status = _get(c, "blockpage_status", int, 200, source, "censor")
    residual = _get(c, "residual_seconds", float, 0.0, source, "censor")
    if residual < 0:
        raise _err(source, "censor.residual_seconds", "must be >= 0")
    hops = _get(c, "hops", int, 0, source, "censor")
    if not 0 <= hops <= addresses.MAX_HOPS:
        raise _err(source, "censor.hops", f"expected 0..{addresses.MAX_HOPS}, got {hops}")
    censor = Censor(
        mode=mode,
        onpath_server_delay_ms=_get(c, "onpath_server_delay_ms", float, 1.0, source, "censor"),
        reassemble=_get(c, "reassemble", bool, True, source, "censor"),
        dns_injectors=injectors,
        inject_pool=tuple(pool) or addresses.DEFAULT_INJECT_POOL,
        bogon=_check_ip(
            _get(c, "bogon", str, addresses.DEFAULT_BOGON, source, "censor"), source, "censor.bogon"
        ),
        keywords=keywords,
        keyword_placements=tuple(placements),
        blocked_sni=tuple(s.lower() for s in _string_list(c, "blocked_sni", source, "censor")),
        blackhole=tuple(
            _check_endpoint(e, source, f"censor.blackhole[{i}]")
            for i, e in enumerate(_string_list(c, "blackhole", source, "censor"))
        ),
        throttle_kib_per_s=_get(c, "throttle_kib_per_s", int, 64, source, "censor"),
        throttle_sni_kib_per_s=_positive(c, "throttle_sni_kib_per_s", 16, source),
        stall_after_bytes=_positive(c, "stall_after_bytes", 16 * 1024, source),
        blockpage_title=_get(c, "blockpage_title", str, DEFAULT_BLOCKPAGE_TITLE, source, "censor"),
        blockpage_body=_get(c, "blockpage_body", str, DEFAULT_BLOCKPAGE_BODY, source, "censor"),
        blockpage_status=status,
        residual_seconds=residual,
        residual_action=residual_action,
        hops=hops,
        intercept_sni=tuple(s.lower() for s in _string_list(c, "intercept_sni", source, "censor")),
        regional_cert_sni=tuple(
            s.lower() for s in _string_list(c, "regional_cert_sni", source, "censor")
        ),
        ech_drop_sni=tuple(s.lower() for s in _string_list(c, "ech_drop_sni", source, "censor")),
        ech_rst_sni=tuple(s.lower() for s in _string_list(c, "ech_rst_sni", source, "censor")),
        **_quic_fields(c, source),
    )

    f = data.get("faults", {})
    loss = _get(f, "loss", float, 0.0, source, "faults")
    if not 0.0 <= loss < 1.0:
        raise _err(source, "faults.loss", f"expected a probability in [0, 1), got {loss}")
    delay = _get(f, "delay_ms", float, 0.0, source, "faults")
    if delay < 0:
        raise _err(source, "faults.delay_ms", "must be >= 0")
    helper_loss = _get(f, "helper_loss", float, 0.0, source, "faults")
    if not 0.0 <= helper_loss < 1.0:
        raise _err(
            source, "faults.helper_loss", f"expected a probability in [0, 1), got {helper_loss}"
        )
    faults = Faults(loss=loss, delay_ms=delay, helper_loss=helper_loss)

    p = data.get("platform", {})
    if not isinstance(p, dict):
        raise _err(source, "platform", "expected a table")
    action = _get(p, "action", str, "drop", source, "platform")
    if action not in PLATFORM_ACTIONS:
        raise _err(source, "platform.action", f"expected one of {list(PLATFORM_ACTIONS)}")
    raw_accounts = _get(p, "accounts", dict, {}, source, "platform")
    for account, region in raw_accounts.items():
        if not isinstance(region, str) or not region:
            raise _err(source, f"platform.accounts.{account}", "expected a region code string")
    regions = _get(p, "regions", list, ["CN"], source, "platform")
    if not all(isinstance(r, str) and r for r in regions):
        raise _err(source, "platform.regions", "expected a list of region codes")
    platform = Platform(
        keywords=_keywords(p, source, "platform"),
        action=action,
        accounts=tuple((str(k), str(v).upper()) for k, v in raw_accounts.items()),
        regions=tuple(r.upper() for r in regions),
    )

    raw_domains = data.get("domain", [])
    if not isinstance(raw_domains, list):
        raise _err(source, "domain", "expected an array of tables ([[domain]])")
    if len(raw_domains) > addresses.MAX_DOMAINS:
        raise _err(source, "domain", f"at most {addresses.MAX_DOMAINS} domains")
    domains: list[Domain] = []
    seen: set[str] = set()
    for i, d in enumerate(raw_domains):
        where = f"domain[{i}]"
        if not isinstance(d, dict):
            raise _err(source, where, "expected a table")
        dname = _get(d, "name", str, None, source, where)
        if not dname:
            raise _err(source, f"{where}.name", "required")
        dname = dname.lower().rstrip(".")
        if dname in seen:
            raise _err(source, f"{where}.name", f"duplicate domain {dname!r}")
        seen.add(dname)
        block = _get(d, "block", str, "none", source, where)
        if block not in BLOCK_KINDS:
            raise _err(
                source,
                f"{where}.block",
                f"unknown {block!r} (expected one of {sorted(BLOCK_KINDS)})",
            )
        need = BLOCK_KINDS[block][2]
        scheme = _get(d, "scheme", str, need or "http", source, where)
        if scheme not in ("http", "https"):
            raise _err(source, f"{where}.scheme", f"expected 'http' or 'https', got {scheme!r}")
        if need and scheme != need:
            raise _err(source, f"{where}.scheme", f"block {block!r} needs scheme {need!r}")
        down = block == "down"
        a = _check_ip(
            _get(d, "a", str, addresses.domain_v4(i, down=down), source, where),
            source,
            f"{where}.a",
        )
        aaaa = _check_ip(
            _get(d, "aaaa", str, addresses.domain_v6(i, down=down), source, where),
            source,
            f"{where}.aaaa",
        )
        title = _get(d, "title", str, f"Welcome to {dname}", source, where)
        page_kib = _get(d, "page_kib", int, 0, source, where)
        if not 0 <= page_kib <= 4096:
            raise _err(source, f"{where}.page_kib", f"expected 0..4096, got {page_kib}")
        domains.append(
            Domain(
                name=dname,
                block=block,
                scheme=scheme,
                a=a,
                aaaa=aaaa,
                title=title,
                page_kib=page_kib,
                stall_after_bytes=censor.stall_after_bytes,
            )
        )
    for key in ("intercept_sni", "regional_cert_sni"):
        for n in getattr(censor, key):
            if n not in seen:
                # The interceptor is reached through the domain's address: it must have one.
                raise _err(source, f"censor.{key}", f"{n!r} is not a [[domain]] of the scenario")
    return Scenario(
        name=name,
        description=description,
        domains=tuple(domains),
        censor=censor,
        faults=faults,
        source=source,
        platform=platform,
    )


def load(path: str | Path | None = None) -> Scenario:
    """Load and validate a scenario file (the bundled default when path is None)."""
    p = Path(path) if path is not None else DEFAULT_SCENARIO
    try:
        with p.open("rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise ScenarioError(f"{p}: cannot read: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{p}: invalid TOML: {exc}") from exc
    return parse(data, str(p))


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return f'"{escaped}"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def _combos_toml(combos: tuple[tuple[str, ...], ...]) -> list[Any]:
    return [list(k) if len(k) > 1 else k[0] for k in combos]


def _to_toml(s: Scenario) -> str:
    c = s.censor
    lines = [
        "[lab]",
        f"name = {_toml_value(s.name)}",
        f"description = {_toml_value(s.description)}",
        "",
        "[censor]",
    ]
    for key in (
        "mode",
        "onpath_server_delay_ms",
        "reassemble",
        "dns_injectors",
        "inject_pool",
        "bogon",
        "keywords",
        "blocked_sni",
        "blackhole",
        "throttle_kib_per_s",
        "blockpage_title",
        "blockpage_body",
        "blockpage_status",
        "residual_seconds",
        "residual_action",
        "hops",
        "intercept_sni",
        "regional_cert_sni",
        "keyword_placements",
        "ech_drop_sni",
        "ech_rst_sni",
        *QUIC_FIELDS,
        "throttle_sni_kib_per_s",
        "stall_after_bytes",
    ):
        value = getattr(c, key)
        if key == "keywords":
            value = _combos_toml(value)
        lines.append(f"{key} = {_toml_value(value)}")
    f = s.faults
    lines += ["", "[faults]", f"loss = {f.loss!r}", f"delay_ms = {f.delay_ms!r}"]
    lines.append(f"helper_loss = {f.helper_loss!r}")
    lines += [
        "",
        "[platform]",
        f"keywords = {_toml_value(_combos_toml(s.platform.keywords))}",
        f"action = {_toml_value(s.platform.action)}",
        f"regions = {_toml_value(list(s.platform.regions))}",
        "accounts = { "
        + ", ".join(f"{_toml_value(n)} = {_toml_value(r)}" for n, r in s.platform.accounts)
        + " }",
    ]
    for d in s.domains:
        lines += [
            "",
            "[[domain]]",
            f"name = {_toml_value(d.name)}",
            f"block = {_toml_value(d.block)}",
            f"scheme = {_toml_value(d.scheme)}",
            f"a = {_toml_value(d.a)}",
            f"aaaa = {_toml_value(d.aaaa)}",
            f"title = {_toml_value(d.title)}",
        ]
        if d.page_kib:
            lines.append(f"page_kib = {d.page_kib}")
    return "\n".join(lines) + "\n"


# Share of each mechanism in generated scenarios; the rest is accessible.
DEFAULT_MIX = {
    "dns_inject": 0.08,
    "dns_nxdomain": 0.04,
    "dns_bogon": 0.04,
    "http_rst": 0.08,
    "sni_rst": 0.08,
    "blackhole": 0.06,
    "blockpage": 0.08,
    "down": 0.02,
}
_WORDS = (
    "news",
    "daily",
    "voice",
    "free",
    "open",
    "world",
    "tribune",
    "forum",
    "wiki",
    "radio",
    "times",
    "post",
    "media",
    "chat",
    "video",
    "books",
    "rights",
    "watch",
)


def _tls_shares(
    raw: list[dict[str, str]], seed: int, n_intercept: int, n_regional: int
) -> dict[str, list[str]]:
    """`intercept_sni` and `regional_cert_sni` picked among the accessible http:// domains."""
    if n_intercept <= 0 and n_regional <= 0:
        return {}
    pool = [r["name"] for r in raw if r["block"] == "none" and r["scheme"] == "http"]
    picked = random.Random(f"tls:{seed}").sample(pool, min(len(pool), n_intercept + n_regional))
    out = {"intercept_sni": picked[:n_intercept], "regional_cert_sni": picked[n_intercept:]}
    return {k: v for k, v in out.items() if v}


def _ech_shares(
    raw: list[dict[str, Any]], seed: int, n: int, censor: dict[str, Any]
) -> dict[str, list[str]]:
    """Accessible names whose ECH hellos the censor drops (half) or resets (the rest)."""
    if n <= 0:
        return {}
    taken = {*censor.get("intercept_sni", ()), *censor.get("regional_cert_sni", ())}
    pool = [r["name"] for r in raw if r["block"] == "none" and r["name"] not in taken]
    picked = random.Random(f"ech:{seed}").sample(pool, min(len(pool), n))
    half = (len(picked) + 1) // 2
    out = {"ech_drop_sni": picked[:half], "ech_rst_sni": picked[half:]}
    return {k: v for k, v in out.items() if v}


def generate(
    n_domains: int,
    seed: int,
    *,
    mix: dict[str, float] | None = None,
    loss: float = 0.0,
    residual_seconds: float = 0.0,
    intercept: float = 0.0,
    regional_cert: float = 0.0,
    helper_loss: float = 0.0,
    mode: str = "in-path",
    hops: int = 0,
    dns_blockpage: float = 0.0,
    ech: float = 0.0,
    quic_sni: float = 0.0,
    shaped: float = 0.0,
) -> Scenario:
    """A random but reproducible scenario of n_domains (benchmarks and accuracy runs).

    `intercept` and `regional_cert` are shares of n_domains put in the censor's
    `intercept_sni` and `regional_cert_sni`, taken from the accessible http:// domains (so
    web_connectivity, which makes no TLS handshake with them, expects the same verdicts) by
    a random generator of their own: with both 0 the scenario is exactly the one before.
    `dns_blockpage` adds that share of DNS-redirected block pages to the mix (0 keeps the
    domains as before); `shaped` adds that share each of throttle_sni and stall_sni domains
    (0 keeps them as before); `helper_loss`, `mode` and `hops` set the faults and censor alike.
    `ech`: that share of the accessible domains (none of the TLS shares) has its ECH
    ClientHellos dropped (half, `ech_drop_sni`) or reset (`ech_rst_sni`), by a generator of its
    own; no other nettest's truth changes (their hellos carry no ECH).
    `quic_sni` is the share of n_domains put in `quic_blocked_sni` (accessible domains, by a
    generator of its own), and a third as many more have their address in `quic_blocked_ip`;
    0 serves no QUIC and keeps the scenario as before.
    """
    if not 1 <= n_domains <= addresses.MAX_DOMAINS:
        raise ValueError(f"n_domains must be in 1..{addresses.MAX_DOMAINS}")
    rng = random.Random(seed)
    shares = dict(DEFAULT_MIX if mix is None else mix)
    if dns_blockpage > 0:
        shares["dns_blockpage"] = dns_blockpage
    if shaped > 0:
        shares |= dict.fromkeys(SHAPED_KINDS, shaped)
    kinds: list[str] = []
    for kind, share in shares.items():
        if kind not in BLOCK_KINDS:
            raise ValueError(f"unknown block kind {kind!r}")
        kinds += [kind] * round(share * n_domains)
    kinds = kinds[:n_domains] + ["none"] * max(0, n_domains - len(kinds))
    rng.shuffle(kinds)
    raw = []
    for i, kind in enumerate(kinds):
        name = f"{rng.choice(_WORDS)}-{rng.choice(_WORDS)}-{i:05d}.example"
        need = BLOCK_KINDS[kind][2]
        scheme = need or rng.choice(("http", "https"))
        raw.append({"name": name, "block": kind, "scheme": scheme})
    censor: dict[str, Any] = {
        "residual_seconds": residual_seconds,
        "keywords": [["forbidden", "words"]],
        "mode": mode,
        "hops": hops,
    }
    censor |= _tls_shares(raw, seed, round(intercept * n_domains), round(regional_cert * n_domains))
    censor |= _ech_shares(raw, seed, round(ech * n_domains), censor)
    if quic_sni > 0:
        taken = {*censor.get("intercept_sni", ()), *censor.get("regional_cert_sni", ())}
        pool = [r["name"] for r in raw if r["block"] == "none" and r["name"] not in taken]
        count = min(len(pool), max(1, round(quic_sni * n_domains)))
        extra = max(1, count // 3)  # and a third as many with all of QUIC blocked by address
        picked = random.Random(f"quic:{seed}").sample(pool, min(len(pool), count + extra))
        censor["quic_blocked_sni"] = picked[:count]
        by_name = {r["name"]: i for i, r in enumerate(raw)}
        censor["quic_blocked_ip"] = [addresses.domain_v4(by_name[n]) for n in picked[count:]]
    data = {
        "lab": {
            "name": f"generated-{n_domains}-{seed}",
            "description": f"generated by lab.scenario.generate({n_domains}, seed={seed})",
        },
        "censor": censor,
        "faults": {"loss": loss, "helper_loss": helper_loss},
        "domain": raw,
    }
    return parse(data, f"<generated {n_domains} seed={seed}>")


def main(argv: list[str] | None = None) -> int:
    """`python -m lab.scenario generate --domains N --seed S` prints a scenario."""
    parser = argparse.ArgumentParser(prog="python -m lab.scenario")
    sub = parser.add_subparsers(dest="cmd", required=True)
    gen = sub.add_parser("generate", help="print a random scenario as TOML")
    gen.add_argument("--domains", type=int, required=True)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--loss", type=float, default=0.0)
    gen.add_argument("--residual", type=float, default=0.0)
    gen.add_argument("--helper-loss", type=float, default=0.0, help="loss on the helper's path")
    gen.add_argument("--mode", choices=("in-path", "on-path"), default="in-path")
    gen.add_argument("--hops", type=int, default=0, help="routers between cn and the censor")
    gen.add_argument(
        "--dns-blockpage", type=float, default=0.0, help="share sent to the block-page server"
    )
    gen.add_argument("--intercept", type=float, default=0.0, help="share re-signed by the censor")
    gen.add_argument(
        "--shaped", type=float, default=0.0, help="share each of throttle_sni and stall_sni"
    )
    gen.add_argument(
        "--regional-cert", type=float, default=0.0, help="share with a CDN-like regional cert"
    )
    check = sub.add_parser("check", help="validate scenario files")
    check.add_argument("files", nargs="+")
    args = parser.parse_args(argv)
    try:
        if args.cmd == "generate":
            sys.stdout.write(
                generate(
                    args.domains,
                    args.seed,
                    loss=args.loss,
                    residual_seconds=args.residual,
                    intercept=args.intercept,
                    regional_cert=args.regional_cert,
                    helper_loss=args.helper_loss,
                    mode=args.mode,
                    hops=args.hops,
                    dns_blockpage=args.dns_blockpage,
                    shaped=args.shaped,
                ).to_toml()
            )
        else:
            for f in args.files:
                s = load(f)
                print(f"{f}: ok ({len(s.domains)} domains)")
    except (ScenarioError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
