"""The helper's GET: redirects followed here, one hop at a time, each hop past the guard.

probes.net.http.http_get follows redirects itself and passes each hop's host name through
the resolve callable, which is where the guard filters names. A hop whose URL holds an IP
literal never reaches that callable, though, so a site redirecting to
http://169.254.169.254/ would be fetched unchecked. Hence the helper asks http_get for one
hop at a time (max_redirects=0) and decides about the next hop itself, keeping the cookies
between hops as browsers and oohelperd do (ooni/probe#2488: some sites redirect in circles
without them).
"""

from __future__ import annotations

import asyncio
import email.message
import http.cookiejar
import urllib.request
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import httpx

from backend.ssrf import FORBIDDEN_FAILURE, AddressGuard, canonical_host, parse_ip
from probes.net.http import HTTPResult, TLSListener, http_get

# Go's http.Client, which oohelperd uses, stops after 10 redirects.
MAX_REDIRECTS = 10
REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})
TOO_MANY_REDIRECTS = f"unknown_failure: stopped after {MAX_REDIRECTS} redirects"

Resolve = Callable[[str], Awaitable[list[str]]]


@dataclass
class Fetch:
    """The final response (None when the chain broke before one) and the failure to report."""

    result: HTTPResult | None
    failure: str | None
    hops: int
    # The first response's Alt-Svc header (oohelperd discovers HTTP/3 from it), "" if none.
    first_alt_svc: str = ""


class _Info:
    """The one method http.cookiejar wants from a response."""

    def __init__(self, headers: list[list[str]]) -> None:
        self._msg = email.message.Message()
        for name, value in headers:
            if name.lower() == "set-cookie":
                self._msg[name] = value

    def info(self) -> email.message.Message:
        return self._msg


def _suspicious(url: str) -> bool:
    """URLs that parsers disagree on (backslashes, spaces, controls, user info).

    Every check reads the host as httpx does (canonical_host); such URLs are refused
    rather than argued about, in case some other reader ever sees them.
    """
    if any(c == "\\" or ord(c) <= 0x20 or ord(c) == 0x7F for c in url):
        return True
    try:
        return "@" in urlsplit(url).netloc or bool(httpx.URL(url).userinfo)
    except (ValueError, httpx.InvalidURL):
        return True


def hop_allowed(url: str, guard: AddressGuard) -> bool:
    """Whether the guard lets the helper fetch `url`: its shape, and its host as the fetch
    will read it (an IP address, however spelled, must pass the guard; a name's addresses
    pass it in the resolver, and every socket passes it again at connect time)."""
    if _suspicious(url):
        return False
    host = canonical_host(url)
    if host is None:
        return False
    ip = parse_ip(host)
    return ip is None or guard.allows(ip)


def _cookie_header(jar: http.cookiejar.CookieJar, url: str) -> str | None:
    request = urllib.request.Request(url)
    jar.add_cookie_header(request)
    return request.get_header("Cookie")


async def fetch(
    url: str,
    *,
    resolve: Resolve,
    guard: AddressGuard,
    headers: Mapping[str, str],
    timeout: float,
    t_zero: float,
    body_cap: int,
    ca_file: str | None,
    on_tls: TLSListener | None = None,
) -> Fetch:
    """GET `url` following up to MAX_REDIRECTS redirects within `timeout` in total;
    `on_tls` hears of each TLS handshake as it ends."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    jar = http.cookiejar.CookieJar()
    alt_svc = ""
    for hop in range(MAX_REDIRECTS + 1):
        scheme = urlsplit(url).scheme.lower()
        if scheme not in ("http", "https"):  # e.g. a redirect to ftp: as Go's client refuses
            return Fetch(None, f"unknown_failure: unsupported protocol scheme {scheme!r}", hop)
        if not hop_allowed(url, guard):
            return Fetch(None, FORBIDDEN_FAILURE, hop)
        remaining = deadline - loop.time()
        if remaining <= 0:
            return Fetch(None, "generic_timeout_error", hop)
        send = dict(headers)
        cookie = _cookie_header(jar, url)
        if cookie:
            send["Cookie"] = cookie
        result = await http_get(
            url,
            resolve=resolve,
            timeout=remaining,
            t_zero=t_zero,
            body_cap=body_cap,
            headers=send,
            ca_file=ca_file,
            max_redirects=0,
            on_tls=on_tls,
        )
        lowered = {k.lower(): v for k, v in result.headers.items()}
        alt_svc = lowered.get("alt-svc", "") if hop == 0 else alt_svc
        location = lowered.get("location")
        if result.status_code not in REDIRECT_CODES or not location:
            return Fetch(result, result.failure, hop + 1, alt_svc)
        if result.requests:
            jar.extract_cookies(
                _Info(result.requests[0]["response"]["headers_list"]),  # type: ignore[arg-type]
                urllib.request.Request(url),
            )
        url = urljoin(url, location)
    return Fetch(None, TOO_MANY_REDIRECTS, MAX_REDIRECTS + 1, alt_svc)
