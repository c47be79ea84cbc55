"""Scrubbing misses of issue 13 item 6: every form the probe's address takes is scrubbed."""

from __future__ import annotations

import base64
import ipaddress

import dns.message
import dns.rrset
import pytest

from probes.measurement import SCRUBBED, Measurement, Scrubber
from probes.net.records import b64, binary_data

V4 = "203.0.113.7"
V6 = "2001:db8::7"


def _scrub(test_keys: dict[str, object], *ours: str) -> dict[str, object]:
    m = Measurement(test_name="t", test_version="1", test_keys=test_keys)
    out = Scrubber(ours or (V4, V6)).scrub(m).test_keys
    assert out is not None
    return out


@pytest.mark.parametrize(
    "written",
    [
        "2001:DB8:0:0:0:0:0:7",
        "2001:0db8:0000::0007",
        "2001:db8:0::7",
        "2001:db8::0:7",
        "2001:db8::7%eth0",
        "::ffff:cb00:7107",  # our IPv4 as an IPv4-mapped IPv6 address
        "::FFFF:203.0.113.7",
    ],
)
def test_ipv6_in_any_valid_form(written: str) -> None:
    out = Scrubber([V4, V6]).scrub_text(f"peer [{written}]:443 said hi")
    assert out.startswith("peer [") and out.endswith("]:443 said hi")
    left = out[len("peer [") : -len("]:443 said hi")]
    # Gone whole (or, for the dotted IPv4 tail, down to the bare IPv4-mapped prefix).
    assert left in (SCRUBBED, f"::FFFF:{SCRUBBED}"), out


@pytest.mark.parametrize("learned", ["::ffff:203.0.113.7", "::ffff:cb00:7107"])
def test_an_ipv4_learned_in_its_ipv4_mapped_form_is_scrubbed_in_every_form(learned: str) -> None:
    """A dual-stack socket reports an IPv4 peer as ::ffff:a.b.c.d: the dotted and dashed forms
    of the address are ours too."""
    text = "from 203.0.113.7, host 203-0-113-7.dsl.example, peer ::ffff:cb00:7107"
    assert Scrubber([learned]).scrub_text(text) == (
        f"from {SCRUBBED}, host {SCRUBBED}.dsl.example, peer {SCRUBBED}"
    )


def test_other_ipv6_addresses_are_left_alone() -> None:
    clean = "2001:db8::70 2001:db8::7:1 12:34:56 2001:db8:0:0:0:0:1:7"
    assert Scrubber([V6]).scrub_text(clean) is clean


@pytest.mark.parametrize(
    "written",
    [
        "203-0-113-7.dsl.example",
        "host-203-0-113-7.example",
        "7.113.0.203.in-addr.arpa",
        "7.113.0.203.IN-ADDR.ARPA",
        ipaddress.ip_address(V6).reverse_pointer,
    ],
)
def test_dashed_and_reverse_dns_forms(written: str) -> None:
    assert V4 not in (out := Scrubber([V4, V6]).scrub_text(f"ptr {written}!"))
    assert SCRUBBED in out


def test_dashed_lookalikes_are_left_alone() -> None:
    clean = "1203-0-113-7.example 203-0-113-70.example 203-0-113-7-1"
    assert Scrubber([V4]).scrub_text(clean) is clean


def test_base64_body_is_decoded_scrubbed_and_reencoded() -> None:
    body = b"\xff\xfe<p>your address: " + V4.encode() + b" or " + V6.encode() + b"</p>"
    keys = _scrub({"requests": [{"response": {"body": binary_data(body)}}]})
    stored = keys["requests"][0]["response"]["body"]  # type: ignore[index]
    assert stored["format"] == "base64"
    decoded = base64.b64decode(stored["data"])
    assert decoded == b"\xff\xfe<p>your address: [scrubbed] or [scrubbed]</p>"


def _dns_reply(name: str, rdtype: str, *values: str) -> bytes:
    query = dns.message.make_query(name, rdtype)
    reply = dns.message.make_response(query)
    reply.answer.append(dns.rrset.from_text(name, 60, "IN", rdtype, *values))
    return reply.to_wire()


def test_dns_answers_on_the_wire_are_scrubbed_and_stay_parseable() -> None:
    a = _dns_reply("whoami.example.", "A", V4)
    aaaa = _dns_reply("whoami.example.", "AAAA", V6)
    ptr = _dns_reply("7.113.0.203.in-addr.arpa.", "PTR", "203-0-113-7.dsl.example.")
    txt = _dns_reply("whoami.example.", "TXT", f'"{V4}"')
    keys = _scrub(
        {
            "queries": [{"raw_response": b64(a)}, {"raw_response": b64(aaaa)}],
            "x_responses": [{"raw": b64(ptr)}, {"raw": b64(txt)}],
        }
    )
    queries, responses = keys["queries"], keys["x_responses"]
    wires = [base64.b64decode(q["raw_response"]) for q in queries]  # type: ignore[union-attr]
    wires += [base64.b64decode(r["raw"]) for r in responses]  # type: ignore[union-attr]
    packed = (ipaddress.ip_address(V4).packed, ipaddress.ip_address(V6).packed)
    for wire in wires:
        assert not any(p in wire for p in packed)
        assert b"203" not in wire and b"113" not in wire
        dns.message.from_wire(wire)  # still a DNS message
    answers = [dns.message.from_wire(w).answer[0][0].to_text() for w in wires]
    assert answers[0] == "127.0.0.1" and answers[1] == "::1"
    assert answers[2] == "xxx-x-xxx-x.dsl.example."


def test_base64_without_our_address_is_untouched() -> None:
    body = binary_data(b"\xff\xfe nothing here 198.51.100.1")
    keys = {"requests": [{"response": {"body": body}}], "queries": [{"raw_response": "!!"}]}
    assert _scrub(keys) == keys


# --- properties: any spelling goes, nothing else changes ---------------------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_LEFT = st.sampled_from([" ", '"', "[", "/", ",", "=", "(", "\n", "peer ", "host-"])
_RIGHT = st.sampled_from([" ", '"', "]:443", "/", ",", ")", "\n", ".example"])


def _spellings(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> st.SearchStrategy[str]:
    if addr.version == 4:
        return st.sampled_from([str(addr), str(addr).replace(".", "-")])
    groups = addr.exploded.split(":")
    return st.builds(
        lambda strip, upper, compress: _v6_text(groups, strip, upper, compress),
        st.lists(st.booleans(), min_size=8, max_size=8),
        st.booleans(),
        st.booleans(),
    )


def _v6_text(groups: list[str], strip: list[bool], upper: bool, compress: bool) -> str:
    parts = [(g.lstrip("0") or "0") if s else g for g, s in zip(groups, strip, strict=True)]
    text = ":".join(parts)
    if compress:  # the first run of zero groups as "::" (valid wherever it is)
        text = str(ipaddress.IPv6Address(text)) if "::" not in text else text
    return text.upper() if upper else text


@settings(max_examples=200, deadline=None)
@given(st.ip_addresses(), st.data(), _LEFT, _RIGHT)
def test_any_spelling_of_our_address_is_scrubbed(
    addr: ipaddress.IPv4Address | ipaddress.IPv6Address, data: st.DataObject, left: str, right: str
) -> None:
    if addr in (ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")):
        return  # the placeholders themselves are never learned
    mapped = addr.ipv4_mapped if isinstance(addr, ipaddress.IPv6Address) else None
    if addr.is_unspecified or (
        mapped is not None and (mapped.is_unspecified or str(mapped) == "127.0.0.1")
    ):
        return  # learned as its IPv4 address (Scrubber.learn), which is never learned
    written = data.draw(_spellings(addr))
    out = Scrubber([str(addr)]).scrub_text(f"a{left}{written}{right}b")
    assert SCRUBBED in out, (written, out)
    lowered = out.lower()
    assert str(addr) not in lowered or str(addr) in SCRUBBED


@settings(max_examples=200, deadline=None)
@given(st.ip_addresses(), st.ip_addresses(), _LEFT, _RIGHT)
def test_other_addresses_are_never_touched(
    ours: ipaddress.IPv4Address | ipaddress.IPv6Address,
    other: ipaddress.IPv4Address | ipaddress.IPv6Address,
    left: str,
    right: str,
) -> None:
    if ours == other or (ours.version == 4 and other == ipaddress.IPv6Address(f"::ffff:{ours}")):
        return
    text = f"a{left}{other}{right}b {other.exploded}"
    assert Scrubber([str(ours)]).scrub_text(text) == text
