"""The forms an address of ours takes in a measurement, and how to find each (for Scrubber).

An address leaks in more shapes than its canonical text (issue 13 item 6):
- IPv6 written any valid way (`2001:DB8:0:0::7`, `2001:0db8::7`, `::ffff:cb00:7107` for an IPv4
  address): tokens that look like IPv6 are parsed and compared, not matched as text;
- the dashed form ISPs put in host names (`203-0-113-7.dsl.example`) and the reverse-DNS
  name (`7.113.0.203.in-addr.arpa`, the nibble form under `ip6.arpa`);
- bytes kept as base64: OONI's MaybeBinaryData (`{"format": "base64", "data": ...}`: bodies,
  headers) and DNS messages on the wire (`raw_response`, `x_responses[].raw`), where an A/AAAA
  record holds the address packed (4 or 16 bytes) and names are length-prefixed labels.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from collections.abc import Callable, Iterable
from typing import Any

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Keys whose string value is a base64 DNS message (net/dns.py's query records and x_responses).
DNS_WIRE_KEYS = frozenset({"raw_response", "raw"})
# Every textual IPv6 candidate: two to eight colon-ended groups (`::` is an empty one), then a
# last group or a dotted IPv4 tail, and a `%zone`; not inside a longer word or address.
_V6_TOKEN = re.compile(
    r"(?<![0-9A-Za-z:.])(?:[0-9A-Fa-f]{0,4}:){2,8}"
    r"(?:(?:[0-9]{1,3}\.){3}[0-9]{1,3}|[0-9A-Fa-f]{1,4})?"
    r"(?:%[0-9A-Za-z_.-]+)?(?![0-9A-Za-z:])"
)
_PACKED_V4_PLACEHOLDER = ipaddress.IPv4Address("127.0.0.1").packed
_PACKED_V6_PLACEHOLDER = ipaddress.IPv6Address("::1").packed


def text_forms(addr: IPAddress) -> set[str]:
    """Literal forms matched as whole tokens (IPv6's other spellings are found by parsing)."""
    forms = {str(addr), addr.reverse_pointer}
    if addr.version == 4:
        forms.add(str(addr).replace(".", "-"))
    else:
        forms.add(addr.exploded)
    return forms


def token_pattern(form: str) -> str:
    """`form` as a whole token: not inside a longer number, address or dashed name."""
    escaped = re.escape(form)
    if ":" in form:  # with its zone, if any (fe80::1%eth0)
        return r"(?<![0-9A-Fa-f:])" + escaped + r"(?![0-9A-Fa-f:])(?:%[0-9A-Za-z_.-]+)?"
    if "-" in form:  # host-203-0-113-7 is ours, 5-203-0-113-7 and 1203-0-113-7 are not
        return r"(?<![0-9])(?<![0-9]-)" + escaped + r"(?![0-9])(?!-[0-9])"
    return r"(?<![0-9.])" + escaped + r"(?![0-9])(?!\.[0-9])"


def v6_signature(addr: ipaddress.IPv6Address) -> str:
    """A piece of text every written form of `addr` contains (a cheap pre-check): its
    longest non-zero group among the first six (the last two may be written as dotted IPv4)."""
    groups = [g.lstrip("0") for g in addr.exploded.split(":")[:6]]
    return max(groups, key=len) if any(groups) else ":"


def v6_family(addresses: Iterable[IPAddress]) -> set[ipaddress.IPv6Address]:
    """The IPv6 addresses to compare tokens with: ours, and our IPv4s as IPv4-mapped IPv6."""
    out: set[ipaddress.IPv6Address] = set()
    for addr in addresses:
        if addr.version == 6:
            out.add(addr)
        else:
            out.add(ipaddress.IPv6Address(f"::ffff:{addr}"))
    return out


def replace_v6_tokens(text: str, ours: set[ipaddress.IPv6Address], placeholder: str) -> str:
    """Every IPv6-looking token that parses to one of `ours` becomes `placeholder`."""

    def swap(match: re.Match[str]) -> str:
        token = match.group(0)
        try:
            addr = ipaddress.IPv6Address(token.split("%")[0])
        except ValueError:
            return token
        return placeholder if addr in ours else token

    return _V6_TOKEN.sub(swap, text)


def _labels(name: str) -> bytes:
    return b"".join(bytes([len(label)]) + label.encode() for label in name.split("."))


def wire_scrubber(addresses: Iterable[IPAddress]) -> Callable[[bytes], bytes]:
    """A scrubber of DNS messages that keeps them parseable: every replacement has the length
    of what it replaces (packed address -> 127.0.0.1 / ::1 packed; names and text -> digits
    and hex masked with 'x', label lengths kept)."""
    swaps: list[tuple[re.Pattern[bytes], Callable[[re.Match[bytes]], bytes]]] = []

    def mask(match: re.Match[bytes]) -> bytes:
        found = match.group(0)
        lowered = found.lower()
        cut = min((i for i in (lowered.find(b"in-addr"), lowered.find(b"ip6")) if i >= 0),
                  default=len(found))  # fmt: skip
        return re.sub(rb"[0-9A-Fa-f]", b"x", found[:cut]) + found[cut:]

    def constant(value: bytes) -> Callable[[re.Match[bytes]], bytes]:
        return lambda _match: value

    for addr in addresses:
        packed = _PACKED_V4_PLACEHOLDER if addr.version == 4 else _PACKED_V6_PLACEHOLDER
        swaps.append((re.compile(re.escape(addr.packed)), constant(packed)))
        for form in text_forms(addr):
            for raw in (form.encode(), _labels(form)):
                swaps.append((re.compile(re.escape(raw), re.IGNORECASE), mask))

    def scrub(data: bytes) -> bytes:
        for pattern, replace in swaps:
            data = pattern.sub(replace, data)
        return data

    return scrub


def _b64decode(text: str) -> bytes | None:
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None


def scrub_blobs(
    node: Any, text: Callable[[str], str], wire: Callable[[bytes], bytes], key: str = ""
) -> tuple[Any, bool]:
    """Decode, scrub and re-encode every base64 value under `node`; (new node, changed)."""
    if isinstance(node, dict):
        if node.get("format") == "base64" and isinstance(node.get("data"), str):
            raw = _b64decode(node["data"])
            if raw is not None:
                decoded = raw.decode("latin-1")
                cleaned = text(decoded)
                if cleaned != decoded:
                    encoded = base64.b64encode(cleaned.encode("latin-1")).decode("ascii")
                    return {**node, "data": encoded}, True
            return node, False
        changed = False
        out: dict[str, Any] = {}
        for k, v in node.items():
            out[k], hit = scrub_blobs(v, text, wire, k)
            changed = changed or hit
        return (out, True) if changed else (node, False)
    if isinstance(node, list):
        items = [scrub_blobs(v, text, wire, key) for v in node]
        if any(hit for _v, hit in items):
            return [v for v, _hit in items], True
        return node, False
    if isinstance(node, str) and key in DNS_WIRE_KEYS:
        raw = _b64decode(node)
        if raw is not None:
            cleaned_raw = wire(raw)
            if cleaned_raw != raw:
                return base64.b64encode(cleaned_raw).decode("ascii"), True
    return node, False
