from __future__ import annotations

import pytest

from probes.net.addresses import format_host_port, is_bogon, is_ip, parse_host_port


@pytest.mark.parametrize(
    "ip",
    ["127.0.0.1", "10.10.34.34", "192.168.1.1", "172.16.0.1", "100.64.0.1", "0.0.0.0",
     "169.254.1.1", "224.0.0.1", "255.255.255.255", "::1", "fd00::1", "fe80::1", "::",
     "::ffff:10.0.0.1", "2001:db8::1"],
)  # fmt: skip
def test_bogons(ip: str) -> None:
    assert is_bogon(ip)


@pytest.mark.parametrize("ip", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8"])
def test_public_addresses(ip: str) -> None:
    assert not is_bogon(ip)


def test_not_an_ip_is_not_a_bogon() -> None:
    assert not is_bogon("example.com")
    assert is_ip("::1") and is_ip("1.2.3.4") and not is_ip("[::1]") and not is_ip("a.b")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1.2.3.4", ("1.2.3.4", 53)),
        ("1.2.3.4:5353", ("1.2.3.4", 5353)),
        ("[::1]:853", ("::1", 853)),
        ("[::1]", ("::1", 53)),
        ("::1", ("::1", 53)),
        ("dns.example:54", ("dns.example", 54)),
    ],
)
def test_parse_host_port(text: str, expected: tuple[str, int]) -> None:
    assert parse_host_port(text, 53) == expected
    host, port = expected
    assert parse_host_port(format_host_port(host, port), 1) == expected


@pytest.mark.parametrize("bad", ["1.2.3.4:x", "[::1", "[::1]x", "1.2.3.4:70000"])
def test_parse_host_port_rejects(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_host_port(bad, 53)
