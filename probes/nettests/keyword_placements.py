"""Where http_keyword puts a keyword in a request, and how the echo proves it arrived intact.

Each placement builds a request (method, target, Host, body, SNI) around a word. The control is
the same request around a benign word of the same encoded length, so a censor matching on
shape or length treats both alike and only the word differs. Non-ASCII words travel as a censor
would see them from a browser: percent-encoded in the URL and the form body, IDNA (punycode)
in names.

Filters match bytes, and a Chinese page's browser sends its form fields and query in the page's
charset (WHATWG URL and HTML form submission encode with the document's encoding), so a word is
also sent in every legacy encoding that can carry it and gives other bytes than UTF-8: GB18030
(a superset of GBK and GB2312: simplified Chinese) and Big5 (traditional Chinese). Names have
one encoding only, IDNA (a DNS label or SNI cannot carry raw GBK).
"""

from __future__ import annotations

import hashlib
import string
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

PLACEMENTS = ("path", "query", "host", "body", "sni", "dns")
NAME_PLACEMENTS = ("host", "sni", "dns")
# The encodings a word's URL and body bytes are sent in, UTF-8 first (the one every word has).
ENCODINGS = ("utf-8", "gb18030", "big5")
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

    encoding: str = "utf-8"

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


def name_encoding(word: str) -> str:
    """How a name placement carries `word`: "ascii" as is, else "idna" (or a hash, "hex")."""
    label = dns_label(word)
    if label == "-".join(word.lower().split()).strip("-"):
        return "ascii"
    return "idna" if label.startswith("xn--") else "hex"


def encodings_for(placement: str, word: str, wanted: tuple[str, ...] = ENCODINGS) -> list[str]:
    """The encodings `word` is sent in at `placement`: UTF-8, then each of `wanted` that can
    encode the word and gives other bytes (an ASCII word has one); names have their one."""
    if placement in NAME_PLACEMENTS:
        return [name_encoding(word)]
    utf8 = word.encode("utf-8")
    out = ["utf-8"]
    for encoding in wanted:
        try:
            data = word.encode(encoding)
        except (UnicodeError, LookupError):
            continue
        if data != utf8 and encoding not in out:
            out.append(encoding)
    return out


def _url_text(word: str, encoding: str) -> str:
    return quote(word.encode(encoding), safe="")


def encoded_length(placement: str, word: str, encoding: str = "utf-8") -> int:
    if placement in NAME_PLACEMENTS:
        return len(dns_label(word))
    return len(_url_text(word, encoding))


def control_word(placement: str, word: str, encoding: str = "utf-8") -> str:
    """A benign ASCII word as long on the wire as `word` is in this placement and encoding."""
    n = max(1, encoded_length(placement, word, encoding))
    salt = "" if encoding == "utf-8" or placement in NAME_PLACEMENTS else f":{encoding}"
    seed = hashlib.sha256(f"{placement}:{word}{salt}".encode()).digest()
    letters = string.ascii_lowercase
    out = "".join(letters[seed[i % len(seed)] % len(letters)] for i in range(n))
    return "z" + out[1:] if n > 1 else "z"  # lower-case letters only: never a censored term


def shape(placement: str, word: str, zone: str = BASE_DOMAIN, encoding: str = "utf-8") -> Shape:
    """The request of `placement` carrying `word` (`dns`: a query for a name under `zone`),
    its URL and body bytes in `encoding` (names: IDNA whatever `encoding` says)."""
    if placement in NAME_PLACEMENTS:
        label, named = dns_label(word), name_encoding(word)
        if placement == "host":
            return Shape(placement, "GET", "/kw", f"{label}.{BASE_DOMAIN}", encoding=named)
        if placement == "sni":
            sni = f"{label}.{BASE_DOMAIN}"
            return Shape(placement, "GET", "/kw", ECHO_HOST, sni=sni, encoding=named)
        return Shape(placement, "A", "", f"{label}.{zone}", encoding=named)
    q = _url_text(word, encoding)
    if placement == "path":
        return Shape(placement, "GET", f"/kw/{q}", ECHO_HOST, encoding=encoding)
    if placement == "query":
        return Shape(placement, "GET", f"/kw?q={q}", ECHO_HOST, encoding=encoding)
    if placement == "body":
        return Shape(placement, "POST", "/kw", ECHO_HOST, body=f"q={q}".encode(), encoding=encoding)
    raise ValueError(f"unknown placement {placement!r} (known: {', '.join(PLACEMENTS)})")
