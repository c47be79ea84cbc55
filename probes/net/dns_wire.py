"""A small DNS wire codec for the common case, so that UDP probing is not bound by dnspython.

dnspython builds a full object model for every datagram (~50 us to parse one answer, ~35 us to
build one query); at thousands of queries per second that is most of the probe's CPU. This
module encodes a plain A/AAAA question and reads the usual answer to it: a header (RFC 1035
section 4.1.1), one question (4.1.2), answer records of type A, AAAA or CNAME and authority SOA
records (4.1.3), class IN, with name compression (4.1.4). Anything else (EDNS, other types or
classes, more than one question, an odd opcode, trailing bytes, any malformation) gives None, and
the caller reads the message with dnspython, which either parses it or raises a clear error.

What it returns is exactly what dnspython would give for the same bytes (tests/test_dns_wire.py
checks this on messages written by dnspython's own encoder): records grouped into RRsets by owner
name (case-insensitively), type and class, in order of first appearance; duplicate rdata dropped;
an RRset's TTL the smallest of its records' (TTLs above 2**31-1 read as 0, RFC 2181 section 8);
a CNAME set keeps only its last record (dnspython treats CNAME as a singleton type).
"""

from __future__ import annotations

import os
import re
import struct
from dataclasses import dataclass
from typing import Any

import dns.ipv6

TYPE_A, TYPE_CNAME, TYPE_SOA, TYPE_AAAA = 1, 5, 6, 28
CLASS_IN = 1
QTYPES = {"A": TYPE_A, "AAAA": TYPE_AAAA}
_TYPE_TEXT = {TYPE_A: "A", TYPE_AAAA: "AAAA", TYPE_CNAME: "CNAME"}
FLAG_QR, FLAG_RD = 0x8000, 0x0100
MAX_NAME = 255  # RFC 1035 section 2.3.4, length octets included
MAX_POINTER_HOPS = 16  # as dnspython: a longer chain is refused
_HEADER = struct.Struct("!HHHHHH")
_RR = struct.Struct("!HHIH")
_QTAIL = struct.Struct("!HH")
# A query name we encode ourselves: ASCII letters, digits, '-' and '_' (anything else, such as
# IDNA or escapes, is left to dnspython's from_text).
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_-]{1,63}(?:\.[A-Za-z0-9_-]{1,63})*")
# Bytes that dnspython's Name.to_text escapes (dns.name._escapify).
_NEEDS_ESCAPE = re.compile(rb'[^\x21-\x7e]|["().;\\@$]')
_SPECIAL = b'"().;\\@$'


class _Ids:
    """Unpredictable 16-bit query IDs from os.urandom, fetched in blocks (a syscall per query
    showed in profiles); unpredictable so that an off-path party cannot forge answers."""

    def __init__(self, block: int = 4096) -> None:
        self.block = block
        self.buf = b""
        self.pos = 0

    def next(self) -> int:
        if self.pos + 2 > len(self.buf):
            self.buf, self.pos = os.urandom(self.block), 0
        value = self.buf[self.pos] << 8 | self.buf[self.pos + 1]
        self.pos += 2
        return value


_ids = _Ids()


def new_id() -> int:
    return _ids.next()


def encode_qname(name: str) -> bytes | None:
    """Wire form of a plain name (no trailing dot), or None when dnspython must encode it."""
    if not _PLAIN_NAME.fullmatch(name):
        return None
    out = b"".join(bytes((len(label),)) + label.encode() for label in name.split(".")) + b"\0"
    return out if len(out) <= MAX_NAME else None


def encode_query(qname_wire: bytes, qtype: int, qid: int) -> bytes:
    """A recursive query (RD set, no EDNS): what dns.message.make_query writes by default."""
    return _HEADER.pack(qid, FLAG_RD, 1, 0, 0, 0) + qname_wire + _QTAIL.pack(qtype, CLASS_IN)


@dataclass(slots=True)
class Reply:
    """What the probe needs from one response: the header fields, the question and answers."""

    id: int
    flags: int
    rcode: int
    question: tuple[bytes, int, int]  # (name_key of the name, type, class)
    answers: list[dict[str, Any]]  # df-002 answer entries, as probes.net.dns.answers_of


def _read_name(wire: bytes, pos: int, end: int) -> tuple[list[bytes], int] | None:
    """Labels of the name at ``pos`` (compression followed) and the offset after it.

    Same rules as dnspython: a pointer must point before the start of the part of the name
    that contains it (so loops cannot occur), at most MAX_POINTER_HOPS of them.
    """
    labels: list[bytes] = []
    start, limit, after, hops, total = pos, end, -1, 0, 1
    while True:
        if pos >= limit:
            return None
        length = wire[pos]
        if length == 0:
            pos += 1
            break
        if length < 64:
            stop = pos + 1 + length
            if stop > limit:
                return None
            labels.append(wire[pos + 1 : stop])
            total += length + 1
            pos = stop
        elif length >= 192:
            if pos + 2 > limit:
                return None
            target = (length & 0x3F) << 8 | wire[pos + 1]
            if after < 0:
                after = pos + 2
            hops += 1
            if target >= start or hops > MAX_POINTER_HOPS:
                return None
            limit = start
            pos = start = target
        else:
            return None  # label types 01 and 10 (RFC 6891 section 5) are not read here
    if total > MAX_NAME:
        return None
    return labels, (after if after >= 0 else pos)


def name_key(labels: list[bytes]) -> bytes:
    """The name's uncompressed wire form, lower-cased: equal for names DNS calls equal
    (RFC 4343: ASCII case-insensitive; length octets are < 64 and unaffected)."""
    return b"".join(bytes((len(label),)) + label for label in labels).lower() + b"\0"


def _label_text(label: bytes) -> str:
    if not _NEEDS_ESCAPE.search(label):
        return label.decode("ascii")
    return "".join(
        "\\" + chr(c) if c in _SPECIAL else chr(c) if 0x20 < c < 0x7F else f"\\{c:03d}"
        for c in label
    )


def name_text(labels: list[bytes]) -> str:
    """An absolute name as dnspython prints it (trailing dot; '.' for the root)."""
    if not labels:
        return "."
    return ".".join(_label_text(label) for label in labels) + "."


def _rdata_value(wire: bytes, rtype: int, pos: int, stop: int) -> tuple[str, bytes] | None:
    """(text, identity) of an A, AAAA or CNAME rdata that fills wire[pos:stop] exactly."""
    size = stop - pos
    if rtype == TYPE_A:
        if size != 4:
            return None
        return f"{wire[pos]}.{wire[pos + 1]}.{wire[pos + 2]}.{wire[pos + 3]}", wire[pos:stop]
    if rtype == TYPE_AAAA:
        if size != 16:
            return None
        return dns.ipv6.inet_ntoa(wire[pos:stop]), wire[pos:stop]
    read = _read_name(wire, pos, stop)
    if read is None or read[1] != stop:
        return None
    return name_text(read[0]), name_key(read[0])


def _soa_ok(wire: bytes, pos: int, stop: int) -> bool:
    """An SOA rdata: two names then five 32-bit numbers, nothing more (RFC 1035 3.3.13)."""
    for _ in range(2):
        read = _read_name(wire, pos, stop)
        if read is None:
            return False
        pos = read[1]
    return stop - pos == 20


class _RRset:
    __slots__ = ("rtype", "ttl", "values")

    def __init__(self, rtype: int, ttl: int) -> None:
        self.rtype, self.ttl = rtype, ttl
        self.values: dict[bytes, str] = {}

    def add(self, ttl: int, identity: bytes, text: str) -> None:
        self.ttl = min(self.ttl, ttl)
        if self.rtype == TYPE_CNAME:
            self.values.clear()
        self.values.setdefault(identity, text)


def _entries(rrsets: list[_RRset]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for rrset in rrsets:
        kind = _TYPE_TEXT[rrset.rtype]
        key = (
            "ipv4" if rrset.rtype == TYPE_A else "ipv6" if rrset.rtype == TYPE_AAAA else "hostname"
        )
        out.extend({"answer_type": kind, "ttl": rrset.ttl, key: v} for v in rrset.values.values())
    return out


def _read_records(
    wire: bytes, pos: int, count: int, answer: bool, rrsets: dict[tuple[bytes, int], _RRset]
) -> int | None:
    """Read ``count`` records from ``pos``: answers into ``rrsets``, authority SOAs skipped.

    Returns the offset after them, or None for anything outside the fast subset.
    """
    end = len(wire)
    for _ in range(count):
        read = _read_name(wire, pos, end)
        if read is None or read[1] + 10 > end:
            return None
        labels, pos = read
        rtype, rclass, ttl, rdlen = _RR.unpack_from(wire, pos)
        pos += 10
        stop = pos + rdlen
        if rclass != CLASS_IN or stop > end:
            return None
        if ttl > 0x7FFFFFFF:
            ttl = 0
        if not answer:
            if rtype != TYPE_SOA or not _soa_ok(wire, pos, stop):
                return None
        else:
            if rtype not in _TYPE_TEXT:
                return None
            value = _rdata_value(wire, rtype, pos, stop)
            if value is None:
                return None
            key = (name_key(labels), rtype)
            rrset = rrsets.get(key)
            if rrset is None:
                rrset = rrsets[key] = _RRset(rtype, ttl)
            rrset.add(ttl, value[1], value[0])
        pos = stop
    return pos


def parse_reply(wire: bytes) -> Reply | None:
    """Read a plain response to an A/AAAA query, or None (then let dnspython read it)."""
    if len(wire) < 12:
        return None
    qid, flags, qdcount, ancount, nscount, arcount = _HEADER.unpack_from(wire)
    if flags & 0x7800 or qdcount != 1 or arcount:  # opcode QUERY only; no EDNS/additional
        return None
    read = _read_name(wire, 12, len(wire))
    if read is None or read[1] + 4 > len(wire):
        return None
    labels, pos = read
    qtype, qclass = _QTAIL.unpack_from(wire, pos)
    rrsets: dict[tuple[bytes, int], _RRset] = {}
    after = _read_records(wire, pos + 4, ancount, True, rrsets)
    if after is None:
        return None
    after = _read_records(wire, after, nscount, False, rrsets)
    if after != len(wire):
        return None  # malformed, or trailing bytes: dnspython says which
    question = (name_key(labels), qtype, qclass)
    return Reply(qid, flags, flags & 0xF, question, _entries(list(rrsets.values())))


def is_response_to(reply: Reply, qid: int, qname_wire: bytes, qtype: int) -> bool:
    """dns.message.Message.is_response for our one-question QUERY (RFC 1035 section 7.3):
    QR set, same ID, and the same question (name compared case-insensitively)."""
    return (
        bool(reply.flags & FLAG_QR)
        and reply.id == qid
        and reply.question == (qname_wire.lower(), qtype, CLASS_IN)
    )
