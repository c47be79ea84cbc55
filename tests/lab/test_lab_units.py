"""Lab logic that needs no namespaces: scenarios, matching, packet building, censor decisions."""

from __future__ import annotations

import ssl
import struct
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from lab import cli, matching, packets, rules
from lab import scenario as sc
from lab.censor import Censor

CLIENT, SERVER = "10.77.1.2", "11.100.0.9"


def test_default_scenario_covers_every_mechanism() -> None:
    s = sc.load()
    assert {d.block for d in s.domains} == set(sc.BLOCK_KINDS)
    truth = s.ground_truth()
    assert truth["http://keyword-reset.example/"]["blocking"] == "http-failure"
    assert truth["https://sni-reset.example/"]["blocking_detail"] == "tls.sni_reset"
    # Down everywhere: not blocked (OONI v0.5 and our methodology), not inconclusive.
    assert truth["http://gone-away.example/"]["blocking"] is False


@pytest.mark.parametrize(
    ("toml", "field"),
    [
        ('[[domain]]\nname = "a.example"\nblock = "nope"\n', "domain[0].block"),
        (
            '[[domain]]\nname = "a.example"\nblock = "sni_rst"\nscheme = "http"\n',
            "domain[0].scheme",
        ),
        ("[censor]\ndns_injectors = 4\n", "censor.dns_injectors"),
        ("[faults]\nloss = 1.5\n", "faults.loss"),
        ('[censor]\nblackhole = ["11.0.0.1:99999"]\n', "censor.blackhole[0]"),
        ('[[domain]]\nname = "a.example"\n[[domain]]\nname = "A.example"\n', "domain[1].name"),
        ("[bogus]\n", "bogus"),
    ],
)
def test_bad_scenario_names_file_and_field(tmp_path: Path, toml: str, field: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(toml)
    with pytest.raises(sc.ScenarioError) as err:
        sc.load(path)
    assert str(path) in str(err.value) and field in str(err.value)


def test_generator_is_seeded_and_round_trips(tmp_path: Path) -> None:
    a, b, c = sc.generate(300, 1), sc.generate(300, 1), sc.generate(300, 2)
    assert a.ground_truth() == b.ground_truth() != c.ground_truth()
    assert len({d.a for d in a.domains}) == 300
    path = tmp_path / "g.toml"
    path.write_text(a.to_toml())
    assert replace(sc.load(path), source="") == replace(a, source="")
    assert sc.main(["generate", "--domains", "5", "--seed", "3"]) == 0


def test_generator_tls_shares_are_optional_and_leave_the_rest_alone() -> None:
    plain = sc.generate(300, 1, loss=0.02)
    assert (plain.censor.intercept_sni, plain.censor.regional_cert_sni) == ((), ())
    tls = sc.generate(300, 1, loss=0.02, intercept=0.02, regional_cert=0.02)
    assert tls.domains == plain.domains and tls.ground_truth() == plain.ground_truth()
    assert len(tls.censor.intercept_sni) == len(tls.censor.regional_cert_sni) == 6
    assert not set(tls.censor.intercept_sni) & set(tls.censor.regional_cert_sni)
    for name in tls.tls_sni_names():
        d = tls.domain(name)
        assert (d.block, d.scheme) == ("none", "http"), name  # web_connectivity makes no TLS
    again = sc.generate(300, 1, loss=0.02, intercept=0.02, regional_cert=0.02)
    assert again.censor == tls.censor


def test_per_nettest_truths() -> None:
    s = sc.generate(300, 2, intercept=0.02, regional_cert=0.02)
    dns = s.dns_truth()
    assert set(dns) == {d.name for d in s.domains}
    assert {(v["mechanism"], v["blocking_detail"]) for v in dns.values() if v["blocking"]} == {
        ("dns_inject", "dns.injected"),
        ("dns_nxdomain", "dns.nxdomain"),
        ("dns_bogon", "dns.bogon"),
    }
    tcp = s.tcp_truth()
    blocked = {e for e, v in tcp.items() if v["blocking"] == "tcp_ip"}
    assert blocked == {
        f"{d.a}:{80 if d.scheme == 'http' else 443}" for d in s.by_block("blackhole")
    }
    sni = s.sni_truth(open_sample=50)
    assert {n for n, v in sni.items() if v["blocking"]} == {d.name for d in s.by_block("sni_rst")}
    assert sum(1 for v in sni.values() if v["blocking"] is False) == 50
    assert not set(sni) & set(s.tls_sni_names())
    tls = s.tls_truth(open_sample=20)
    assert {n for n, v in tls.items() if v["blocking"]} == set(s.censor.intercept_sni)
    assert set(s.censor.regional_cert_sni) <= set(tls) and len(tls) == 20 + 12
    assert s.tls_truth(open_sample=20) == tls  # the same sample every time


def test_service_addresses_are_not_bogons() -> None:
    import ipaddress

    for d in sc.generate(500, 7).domains:
        if d.block != "down":
            assert ipaddress.ip_address(d.a).is_global and ipaddress.ip_address(d.aaaa).is_global


def test_http_fields_and_keyword_combos() -> None:
    line, host = matching.http_fields(b"GET /x?q=Falun HTTP/1.1\r\nHost: WWW.A.example\r\n\r\n")
    assert line == "get /x?q=falun http/1.1" and host == "www.a.example"
    assert matching.http_fields(b"GET / HTTP/1.1\r\nHost: a.exa")[1] is None  # incomplete line
    assert matching.keyword_match("get /tiananmen", [("tiananmen", "1989")]) is None
    assert matching.keyword_match("get /tiananmen/1989", [("tiananmen", "1989")]) == (
        "tiananmen",
        "1989",
    )
    assert matching.host_matches("www.a.example:80", {"a.example"}) == "a.example"
    assert matching.host_matches("nota.example", {"a.example"}) is None


def _client_hello(sni: str) -> bytes:
    """A real ClientHello from Python's TLS stack (memory BIOs, no network)."""
    ctx = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=sni)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


def test_tls_sni_from_real_client_hello() -> None:
    hello = _client_hello("sni-reset.example")
    assert matching.tls_sni(hello) == "sni-reset.example"
    assert matching.tls_sni(hello[:40]) is None


def test_built_packets_have_valid_checksums() -> None:
    raw = packets.build_tcp(SERVER, CLIENT, 80, 40000, 1000, 2000, packets.RST | packets.ACK, b"x")
    assert packets.checksum(raw[:20]) == 0
    pseudo = packets._pseudo(4, SERVER, CLIENT, packets.TCP, len(raw) - 20)
    assert packets.checksum(pseudo + raw[20:]) == 0
    p = packets.parse(raw)
    assert (p.src, p.dst, p.sport, p.dport, p.seq, p.ack, p.payload) == (
        SERVER,
        CLIENT,
        80,
        40000,
        1000,
        2000,
        b"x",
    )
    raw6 = packets.build_udp("2a0c:cafe::53", "fd00:77:1::2", 53, 5353, b"dns")
    p6 = packets.parse(raw6)
    assert p6.version == 6 and p6.payload == b"dns"
    assert packets.checksum(packets._pseudo(6, p6.src, p6.dst, packets.UDP, 11) + raw6[40:]) == 0


def _segments(censor: Censor, request: bytes, cut: int) -> list:
    syn = packets.build_tcp(CLIENT, SERVER, 40000, 80, 100, 0, packets.SYN)
    first = packets.build_tcp(
        CLIENT, SERVER, 40000, 80, 101, 555, packets.ACK | packets.PSH, request[:cut]
    )
    second = packets.build_tcp(
        CLIENT, SERVER, 40000, 80, 101 + cut, 555, packets.ACK | packets.PSH, request[cut:]
    )
    return [censor.decide(raw, now=1.0) for raw in (syn, first, second)]


def test_reassembly_catches_split_keyword_and_can_be_turned_off() -> None:
    request = b"GET /falun HTTP/1.1\r\nHost: b.example\r\n\r\n"
    base = sc.load()
    d_syn, d_first, d_second = _segments(Censor(base), request, 8)
    assert d_syn.accept and d_first.accept and not d_second.accept
    assert d_second.reason == "keyword_rst"
    rsts = [packets.parse(f) for f in d_second.forged]
    to_client = [p for p in rsts if p.dst == CLIENT]
    to_server = sorted(p.seq for p in rsts if p.dst == SERVER)
    assert to_client[0].seq == 555 and to_client[0].flags & packets.RST
    assert to_server == [101 + 8, 101 + len(request)]  # both candidate sequence numbers
    no_reassembly = replace(base, censor=replace(base.censor, reassemble=False))
    assert all(d.accept for d in _segments(Censor(no_reassembly), request, 8))


def test_open_vantage_is_exempt_and_residual_taints_triple() -> None:
    censor = Censor(sc.load())
    req = b"GET /falun HTTP/1.1\r\nHost: x.example\r\n\r\n"
    open_pkt = packets.build_tcp("10.77.2.2", SERVER, 40000, 80, 1, 1, packets.ACK, req)
    assert censor.decide(open_pkt, 1.0).accept
    _segments(censor, req, len(req))
    syn = packets.build_tcp(CLIENT, SERVER, 40001, 80, 7, 0, packets.SYN)
    other_port = packets.build_tcp(CLIENT, SERVER, 40002, 8080, 7, 0, packets.SYN)
    assert censor.decide(syn, 2.0).reason == "residual_rst"
    assert censor.decide(other_port, 2.0).accept
    assert censor.decide(syn, 1.0 + censor.s.censor.residual_seconds + 1).accept


def test_iptables_rules_queue_only_cn_and_drop_blackholes() -> None:
    s = sc.load()
    text = rules.iptables_rules(s, 4)
    assert "-s 10.77.2.0/24" not in text  # the open vantage is never queued
    bh = s.by_block("blackhole")[0]
    assert f"-d {bh.a} -j DROP" in text
    assert f"-d {bh.aaaa} -j DROP" in rules.iptables_rules(s, 6)
    lossy = replace(s, faults=replace(s.faults, loss=0.02))
    assert "--probability 0.020000 -j DROP" in rules.iptables_rules(lossy, 4)


def test_cli_needs_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    for command in ("up", "down", "status", "demo"):
        result = CliRunner().invoke(cli.app, [command])
        assert result.exit_code == 2, command
        assert "root is required" in result.output


def test_struct_sanity_of_dns_forgery() -> None:
    import dns.message

    censor = Censor(sc.load())
    q = dns.message.make_query("dns-injected.example", "AAAA")
    raw = packets.build_udp(CLIENT, "11.0.0.53", 5353, 53, q.to_wire())
    d = censor.decide(raw, 1.0)
    assert d.accept and len(d.forged) == censor.s.censor.dns_injectors
    reply = packets.parse(d.forged[0])
    assert (reply.src, reply.sport, reply.dport) == ("11.0.0.53", 53, 5353)
    answer = dns.message.from_wire(reply.payload)
    assert answer.id == q.id and answer.answer[0].rdtype == 1  # an A record for an AAAA query
    assert struct.unpack("!H", reply.payload[:2])[0] == q.id


_LABELS = st.sampled_from(["a", "b", "example", "www", "x-y"])
_NAMES = st.lists(_LABELS, min_size=1, max_size=4).map(".".join)


@given(host=_NAMES, names=st.lists(_NAMES, max_size=6), port=st.sampled_from(["", ":80"]))
def test_host_matching_by_suffix_lookup_agrees_with_the_scan(
    host: str, names: list[str], port: str
) -> None:
    by_lookup = matching.host_matches(host + port, set(names))
    by_scan = matching.host_matches(host + port, list(names))
    # Either finds a blocked name the host is (a subdomain of), or neither does.
    assert (by_lookup is None) == (by_scan is None)
    if by_lookup is not None:
        assert host == by_lookup or host.endswith("." + by_lookup)


def test_servers_send_the_leaf_alone_and_clients_verify_it(tmp_path: Path) -> None:
    """Like most real servers, the lab leaves the root out of its chain (clients trust it)."""
    import socket
    import threading

    from lab.ca import LeafMaker, make_ca

    make_ca(tmp_path / "ca.pem", tmp_path / "ca.key")
    maker = LeafMaker(tmp_path / "ca.pem", tmp_path / "ca.key")
    leaf = maker.leaf_pem(["site.example"])
    assert leaf.count(b"-----BEGIN CERTIFICATE-----") == 1
    (tmp_path / "leaf.pem").write_bytes(leaf)
    (tmp_path / "leaf.key").write_bytes(maker.key_pem())
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(tmp_path / "leaf.pem", tmp_path / "leaf.key")
    client_ctx = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
    near, far = socket.socketpair()
    with near, far:
        served = threading.Thread(
            target=lambda: server_ctx.wrap_socket(far, server_side=True).close(), daemon=True
        )
        served.start()
        with client_ctx.wrap_socket(near, server_hostname="site.example") as tls:
            assert tls.getpeercert(binary_form=True)  # verified against the lab CA
        served.join(5)


def test_platform_accounts_survive_a_toml_round_trip(tmp_path: Path) -> None:
    """The scenario's name, its platform accounts and regions read back as written (a loop
    variable once shadowed the name with the last account's)."""
    from dataclasses import replace

    from lab import scenario as scenario_mod

    base = scenario_mod.load()
    scen = replace(base, name="renamed", platform=replace(base.platform, regions=("CN", "IR")))
    path = tmp_path / "s.toml"
    path.write_text(scen.to_toml(), encoding="utf-8")
    back = scenario_mod.load(path)
    assert replace(back, source="") == replace(scen, source="")
    assert back.platform.account_region("intl-carol") == "US"
