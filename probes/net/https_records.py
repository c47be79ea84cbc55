"""HTTPS resource records (RFC 9460) as the probe stores them: the query name for a port and
the records inside the stored answers.

ech_check reads the ECHConfigList from them and web_connectivity --http3 whether h3 is
offered; both ask for the record through probes.net.dns and keep its raw answer, so one reader
of those answers serves both.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import dns.exception
import dns.message
import dns.rdatatype


def https_query_name(name: str, port: int) -> str:
    """RFC 9460 section 9.1: the HTTPS record of another port is ``_PORT._https.NAME``."""
    return name if port == 443 else f"_{port}._https.{name}"


def https_records(queries: list[dict[str, Any]]) -> Iterator[Any]:
    """The HTTPS records in the stored queries' raw answers, each answer's in SvcPriority order
    (lowest first, as a client prefers them); answers that do not parse are skipped."""
    for query in queries:
        raw = query.get("raw_response")
        if not raw:
            continue
        try:
            msg = dns.message.from_wire(base64.b64decode(raw))
        except (dns.exception.DNSException, ValueError):
            continue
        for rrset in msg.answer:
            if rrset.rdtype == dns.rdatatype.HTTPS:
                yield from sorted(rrset, key=lambda r: r.priority)
