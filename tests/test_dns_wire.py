"""probes.net.dns_wire reads what dnspython reads, exactly, or hands the message back.

Property tests: any response dnspython's own encoder writes (names with compression, A, AAAA,
CNAME, SOA, duplicates, mixed case, odd TTLs) must give the same ID, rcode, question and df-002
answers as dns.message.from_wire + probes.net.dns.answers_of, or None (then dnspython reads it).
Mutated and random bytes must never raise: they give None or the same reading as dnspython.
"""

from __future__ import annotations

from typing import Any

import dns.exception
import dns.flags
import dns.ipv6
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from probes.net import dns_wire
from probes.net.dns import answers_of

LABEL = st.text(alphabet="abcXYZ019-_", min_size=1, max_size=12)
ODD_LABEL = st.binary(min_size=1, max_size=10)  # any bytes: escapes, dots inside a label
NAME = st.lists(st.one_of(LABEL, LABEL, ODD_LABEL), min_size=0, max_size=5)
PLAIN_NAME = st.lists(LABEL, min_size=0, max_size=5)
TTL = st.one_of(st.integers(0, 600), st.integers(0, 2**32 - 1))
IPV4 = st.tuples(*[st.integers(0, 255)] * 4).map(lambda t: ".".join(map(str, t)))
IPV6 = st.binary(min_size=16, max_size=16).map(dns.ipv6.inet_ntoa)


def _name(labels: list[str | bytes]) -> dns.name.Name:
    raw = [lab.encode() if isinstance(lab, str) else lab for lab in labels]
    return dns.name.Name([*raw, b""])


@st.composite
def responses(draw: st.DrawFn, names: st.SearchStrategy[Any] = NAME) -> bytes:
    """A response as dnspython writes it (compressed names), to one A or AAAA question."""
    qname = _name(draw(names))
    qtype = draw(st.sampled_from(["A", "AAAA"]))
    query = dns.message.make_query(qname, qtype)
    msg = dns.message.make_response(query)
    msg.set_rcode(dns.rcode.Rcode(draw(st.sampled_from([0, 0, 0, 2, 3, 5]))))
    owners = [qname, _name(draw(names)), qname.parent() if len(qname) > 1 else qname]
    for _ in range(draw(st.integers(0, 6))):
        owner = draw(st.sampled_from(owners))
        if draw(st.booleans()):
            owner = dns.name.Name([lab.upper() for lab in owner.labels])
        kind = draw(st.sampled_from(["A", "A", "AAAA", "CNAME"]))
        value: str = (
            draw(IPV4)
            if kind == "A"
            else draw(IPV6)
            if kind == "AAAA"
            else _name(draw(names)).to_text()
        )
        rrset = dns.rrset.from_text(owner, draw(TTL), "IN", kind, value)
        msg.answer.append(rrset)
    if draw(st.booleans()):
        soa = f"{_name(draw(names))} {_name(draw(names))} 1 2 3 4 5"
        msg.authority.append(dns.rrset.from_text(qname, draw(TTL), "IN", "SOA", soa))
    return msg.to_wire(max_size=65535)


def _dnspython_view(wire: bytes) -> tuple[int, int, list[dict[str, object]]]:
    msg = dns.message.from_wire(wire)
    return msg.id, int(msg.rcode()), answers_of(msg)


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(responses(), responses(PLAIN_NAME)))
def test_reads_what_dnspython_writes_as_dnspython_does(wire: bytes) -> None:
    reply = dns_wire.parse_reply(wire)
    msg = dns.message.from_wire(wire)
    if reply is None:
        return  # left to dnspython (see the next test for when that may happen)
    assert (reply.id, reply.rcode, reply.answers) == _dnspython_view(wire)
    q = msg.question[0]
    query = dns.message.make_query(q.name, q.rdtype)
    query.id = msg.id
    qwire = q.name.to_wire() or b""
    assert dns_wire.is_response_to(reply, msg.id, qwire, q.rdtype) == query.is_response(msg)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(responses(PLAIN_NAME))
def test_plain_responses_are_all_read(wire: bytes) -> None:
    """With ordinary names nothing is left to dnspython: this is the case the reader is for."""
    reply = dns_wire.parse_reply(wire)
    assert reply is not None
    assert (reply.id, reply.rcode, reply.answers) == _dnspython_view(wire)


def test_the_common_answer_takes_the_fast_path() -> None:
    query = dns.message.make_query("www.Example.com", "A")
    msg = dns.message.make_response(query)
    msg.answer.append(
        dns.rrset.from_text("www.example.com.", 30, "IN", "CNAME", "cdn.example.net.")
    )
    msg.answer.append(
        dns.rrset.from_text("cdn.example.net.", 20, "IN", "A", "192.0.2.1", "192.0.2.2")
    )
    wire = msg.to_wire()  # dnspython shuffles the records of an RRset when writing
    reply = dns_wire.parse_reply(wire)
    assert reply is not None
    assert reply.answers == _dnspython_view(wire)[2]
    assert sorted(reply.answers, key=str) == sorted(
        [
            {"answer_type": "CNAME", "ttl": 30, "hostname": "cdn.example.net."},
            {"answer_type": "A", "ttl": 20, "ipv4": "192.0.2.1"},
            {"answer_type": "A", "ttl": 20, "ipv4": "192.0.2.2"},
        ],
        key=str,
    )
    qname = dns.name.from_text("www.example.com").to_wire() or b""
    assert dns_wire.is_response_to(reply, query.id, qname, 1)
    assert not dns_wire.is_response_to(reply, query.id ^ 1, qname, 1)
    assert not dns_wire.is_response_to(reply, query.id, qname, 28)


def test_ttl_is_the_rrset_minimum_and_duplicates_are_dropped() -> None:
    wire = _raw_response(
        [(b"\xc0\x0c", 1, 300, bytes([192, 0, 2, 1])), (b"\xc0\x0c", 1, 60, bytes([192, 0, 2, 1]))]
    )
    reply = dns_wire.parse_reply(wire)
    assert reply is not None
    assert reply.answers == [{"answer_type": "A", "ttl": 60, "ipv4": "192.0.2.1"}]
    assert reply.answers == _dnspython_view(wire)[2]


def _raw_response(records: list[tuple[bytes, int, int, bytes]], extra: bytes = b"") -> bytes:
    """A response to 'a.test A' built byte by byte (RFC 1035 4.1), ID 0x1234."""
    header = bytes.fromhex("1234 8180 0001") + len(records).to_bytes(2, "big") + bytes(4)
    out = header + b"\x01a\x04test\x00\x00\x01\x00\x01"
    for owner, rtype, ttl, rdata in records:
        out += owner + rtype.to_bytes(2, "big") + b"\x00\x01" + ttl.to_bytes(4, "big")
        out += len(rdata).to_bytes(2, "big") + rdata
    return out + extra


@pytest.mark.parametrize(
    "wire",
    [
        b"",
        b"\x12\x34\x81",  # shorter than a header
        _raw_response([(b"\xc0\x0c", 1, 60, b"\x01\x02\x03")]),  # A rdata of 3 bytes
        _raw_response([(b"\xc0\x0d", 1, 60, bytes(4))]),  # pointer into the middle of a name
        _raw_response([(b"\xc0\x40", 1, 60, bytes(4))]),  # pointer forward
        _raw_response([(b"\xc0\x0c", 1, 60, bytes(4))], extra=b"\x00"),  # trailing byte
        _raw_response([(b"\x80\x0c", 1, 60, bytes(4))]),  # reserved label type
        _raw_response([(b"\xc0\x0c", 5, 60, b"\xc0\x1b")]),  # CNAME pointing at itself
        _raw_response([(b"\xc0\x0c", 1, 60, bytes(4))])[:-2],  # cut short
    ],
)
def test_malformed_responses_are_left_to_dnspython(wire: bytes) -> None:
    assert dns_wire.parse_reply(wire) is None
    with pytest.raises(dns.exception.DNSException):
        dns.message.from_wire(wire)


def test_what_it_does_not_read_goes_to_dnspython() -> None:
    query = dns.message.make_query("a.test", "A", use_edns=0)
    msg = dns.message.make_response(query)  # an OPT record in the additional section
    msg.answer.append(dns.rrset.from_text("a.test.", 60, "IN", "TXT", '"x"'))
    assert dns_wire.parse_reply(msg.to_wire()) is None
    update = bytearray(_raw_response([]))
    update[2] |= 0x28  # opcode UPDATE
    assert dns_wire.parse_reply(bytes(update)) is None


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(responses(), st.data())
def test_mutated_bytes_never_raise_and_never_disagree(wire: bytes, data: st.DataObject) -> None:
    buf = bytearray(wire)
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(buf) - 1))
        buf[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(buf)))
    mutated = bytes(buf[:cut]) if data.draw(st.booleans()) else bytes(buf)
    reply = dns_wire.parse_reply(mutated)
    if reply is None:
        return
    assert (reply.id, reply.rcode, reply.answers) == _dnspython_view(mutated)


@given(st.binary(max_size=80))
def test_random_bytes_never_raise(wire: bytes) -> None:
    reply = dns_wire.parse_reply(wire)
    if reply is not None:
        assert (reply.id, reply.rcode, reply.answers) == _dnspython_view(wire)


@given(st.lists(LABEL, min_size=1, max_size=6), st.sampled_from(["A", "AAAA"]))
def test_queries_are_byte_for_byte_dnspythons(labels: list[str], qtype: str) -> None:
    name = ".".join(labels)
    qname = dns_wire.encode_qname(name)
    if len(name) > 250:
        return
    assert qname is not None
    qid = dns_wire.new_id()
    expected = dns.message.make_query(name, qtype, id=qid).to_wire()
    assert dns_wire.encode_query(qname, dns_wire.QTYPES[qtype], qid) == expected


@pytest.mark.parametrize("name", ["bücher.example", "a..b", "a b.test", "x" * 64 + ".test", ""])
def test_names_it_does_not_encode_are_left_to_dnspython(name: str) -> None:
    assert dns_wire.encode_qname(name) is None


def test_ids_vary() -> None:
    assert len({dns_wire.new_id() for _ in range(200)}) > 150
