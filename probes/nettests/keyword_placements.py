"""Where http_keyword puts a keyword in a request, and how the echo proves it arrived intact.

Each placement builds a request (method, target, Host, body, SNI) around a word. The control is
the same request around a benign word of the same encoded length, so a censor matching on
shape or length treats both alike and only the word differs. Non-ASCII words travel as a censor
would see them from a browser: UTF-8 percent-encoded in the URL and body, IDNA (punycode)
in names.
"""

from __future__ import annotations

import hashlib
import string
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

PLACEMENTS = ("path", "query", "host", "body", "sni", "dns")
# A name under which keyword labels go: a reserved TLD (RFC 2606) so it never leaks.
BASE_DOMAIN = "kw.censorscope.test"
ECHO_HOST = f"echo.{BASE_DOMAIN}"
_LABEL_CHARS = set(string.ascii_lowercase + string.digits + "-")


@dataclass(frozen=True)
class Shape:
    """One request: what the echo should report back for it to count as delivered."""

    placement: str
    method: str
    target: str
    host: str
    body: bytes = b""
    sni: str | None = None

    def expected(self) -> dict[str, Any]:
        want: dict[str, Any] = {"method": self.method, "target": self.target, "host": self.host}
        if self.body:
            want["body"] = self.body.decode("utf-8")
        if self.sni is not None:
            want["sni"] = self.sni
        return want

    def intact(self, echo: Any) -> bool:
        """Whether the echo shows the request exactly as it was sent."""
        return isinstance(echo, dict) and all(echo.get(k) == v for k, v in self.expected().items())


def dns_label(word: str) -> str:
    """A DNS label carrying `word`: lower-case ASCII as is, otherwise IDNA, else hex."""
    text = "-".join(word.lower().split())
    if text and set(text) <= _LABEL_CHARS and len(text) <= 63:
        return text.strip("-") or "x"
    try:
        label = text.encode("idna").decode("ascii")
    except UnicodeError:
        label = ""
    if 0 < len(label) <= 63 and set(label) <= _LABEL_CHARS:
        return label
    return "h" + hashlib.sha256(word.encode()).hexdigest()[:32]


def encoded_length(placement: str, word: str) -> int:
    if placement in ("host", "sni", "dns"):
        return len(dns_label(word))
    return len(quote(word, safe=""))


def control_word(placement: str, word: str) -> str:
    """A benign ASCII word as long on the wire as `word` is in this placement."""
    n = max(1, encoded_length(placement, word))
    seed = hashlib.sha256(f"{placement}:{word}".encode()).digest()
    letters = string.ascii_lowercase
    out = "".join(letters[seed[i % len(seed)] % len(letters)] for i in range(n))
    return "z" + out[1:] if n > 1 else "z"  # lower-case letters only: never a censored term


def shape(placement: str, word: str, zone: str = BASE_DOMAIN) -> Shape:
    """The request of `placement` carrying `word` (`dns`: a query for a name under `zone`)."""
    q = quote(word, safe="")
    if placement == "path":
        return Shape(placement, "GET", f"/kw/{q}", ECHO_HOST)
    if placement == "query":
        return Shape(placement, "GET", f"/kw?q={q}", ECHO_HOST)
    if placement == "host":
        return Shape(placement, "GET", "/kw", f"{dns_label(word)}.{BASE_DOMAIN}")
    if placement == "body":
        return Shape(placement, "POST", "/kw", ECHO_HOST, body=f"q={q}".encode())
    if placement == "sni":
        return Shape(placement, "GET", "/kw", ECHO_HOST, sni=f"{dns_label(word)}.{BASE_DOMAIN}")
    if placement == "dns":
        return Shape(placement, "A", "", f"{dns_label(word)}.{zone}")
    raise ValueError(f"unknown placement {placement!r} (known: {', '.join(PLACEMENTS)})")
