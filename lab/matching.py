"""What the censor looks for in a client's byte stream: HTTP request line and Host, TLS SNI.

Pure functions over the reassembled stream prefix so they are tested without namespaces.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterable

_HOST_RE = re.compile(rb"\r\nhost:[ \t]*([^\r\n]*)", re.IGNORECASE)


def http_fields(stream: bytes) -> tuple[str, str | None]:
    """Request line (possibly incomplete) and Host value (None until its line is complete)."""
    line_end = stream.find(b"\r\n")
    request_line = stream if line_end < 0 else stream[:line_end]
    host = None
    head_end = stream.find(b"\r\n\r\n")
    head = stream if head_end < 0 else stream[: head_end + 2]
    m = _HOST_RE.search(head)
    if m and (head_end >= 0 or head.find(b"\r\n", m.end() - 1) >= 0):
        host = m.group(1).decode("latin-1").strip().lower()
    return request_line.decode("latin-1").lower(), host


def request_target(request_line: str) -> tuple[str, str]:
    """(path, query) of a (possibly incomplete) request line: what a URL keyword filter sees."""
    parts = request_line.split(" ")
    target = parts[1] if len(parts) > 1 else ""
    path, _, query = target.partition("?")
    return path, query


def looks_like_http(stream: bytes) -> bool:
    return re.match(rb"[A-Z]{3,7} ", stream[:8]) is not None


def host_matches(host: str, names: Iterable[str]) -> str | None:
    """The blocked name that host equals or is a subdomain of (port stripped).

    With a set of names, the host and each of its parent domains are looked up (the most
    specific first): a handful of lookups instead of a scan of every blocked name, which took
    60% of the censor's CPU at 2,000 queries a second over a scenario of 8,000 domains.
    """
    h = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    h = h.rstrip(".")
    if isinstance(names, (set, frozenset)):
        if h in names:
            return h
        dot = h.find(".")
        while dot != -1:
            parent = h[dot + 1 :]
            if parent in names:
                return parent
            dot = h.find(".", dot + 1)
        return None
    for name in names:
        if h == name or h.endswith("." + name):
            return name
    return None


def keyword_match(text: str, combos: Iterable[tuple[str, ...]]) -> tuple[str, ...] | None:
    """The first combination whose words all occur in text (lower-cased)."""
    for combo in combos:
        if all(word in text for word in combo):
            return combo
    return None


def tls_sni(stream: bytes) -> str | None:
    """The server_name of a TLS ClientHello, or None (not TLS, incomplete, or no SNI)."""
    if len(stream) < 5 or stream[0] != 0x16:
        return None
    rec_len = struct.unpack("!H", stream[3:5])[0]
    rec = stream[5 : 5 + rec_len]
    if len(rec) < 4 or rec[0] != 0x01:
        return None
    hs_len = int.from_bytes(rec[1:4], "big")
    # A ClientHello may span records; the first record is enough for the SNI in practice.
    body = rec[4 : 4 + hs_len]
    try:
        pos = 2 + 32  # version, random
        pos += 1 + body[pos]  # session id
        pos += 2 + struct.unpack("!H", body[pos : pos + 2])[0]  # cipher suites
        pos += 1 + body[pos]  # compression methods
        ext_end = pos + 2 + struct.unpack("!H", body[pos : pos + 2])[0]
        pos += 2
        while pos + 4 <= min(ext_end, len(body)):
            ext_type, ext_len = struct.unpack("!HH", body[pos : pos + 4])
            pos += 4
            if ext_type == 0:
                data = body[pos : pos + ext_len]
                # server_name_list length (2), name_type (1), name length (2), name
                name_len = struct.unpack("!H", data[3:5])[0]
                return data[5 : 5 + name_len].decode("ascii", "replace").lower()
            pos += ext_len
    except (IndexError, struct.error):
        return None
    return None


def tls_hello_complete(stream: bytes) -> bool:
    """True when the first TLS record is fully in the stream (so a missing SNI is final)."""
    if len(stream) < 5:
        return False
    return len(stream) >= 5 + struct.unpack("!H", stream[3:5])[0]


ECH_EXTENSION = 0xFE0D  # encrypted_client_hello (draft-ietf-tls-esni section 5)


def tls_extensions(stream: bytes) -> list[int] | None:
    """The extension types of a ClientHello's first record, in order (None: not a complete
    ClientHello record). What a censor that blocks on ECH looks for (type 0xfe0d)."""
    if not tls_hello_complete(stream) or stream[0] != 0x16:
        return None
    rec = stream[5 : 5 + struct.unpack("!H", stream[3:5])[0]]
    if len(rec) < 4 or rec[0] != 0x01:
        return None
    body = rec[4 : 4 + int.from_bytes(rec[1:4], "big")]
    types: list[int] = []
    try:
        pos = 2 + 32
        pos += 1 + body[pos]
        pos += 2 + struct.unpack("!H", body[pos : pos + 2])[0]
        pos += 1 + body[pos]
        ext_end = pos + 2 + struct.unpack("!H", body[pos : pos + 2])[0]
        pos += 2
        while pos + 4 <= min(ext_end, len(body)):
            ext_type, ext_len = struct.unpack("!HH", body[pos : pos + 4])
            types.append(ext_type)
            pos += 4 + ext_len
    except (IndexError, struct.error):
        return None
    return types
