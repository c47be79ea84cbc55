"""Where the vantage is: whoami endpoints, the DNS zone's whoami name, STUN, the database, and
a stored measurement that says where it was taken and holds no trace of the public address.

The probe sits behind a source NAT on loopback (tests/loopback/nat.py): the helper and the STUN
server see 127.0.0.9, an address on none of the probe's sockets, as an Internet server sees a
NATed probe's public address.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dns.message
import dns.query
import httpx
import orjson
import pytest
import uvicorn

from backend.collector import CollectorConfig
from backend.collector import create_app as collector_app
from backend.helper import DNSZoneConfig
from probes.config import Config
from probes.publicip import SourceError, ask_whoami, resolver_address
from probes.run_command import RunRequest, execute_run
from probes.vantage import locate, whoami_sources
from tests.geo_helpers import vantage_databases
from tests.loopback.keyword_censor import run_helper
from tests.loopback.nat import SourceNAT
from tests.loopback.runner import ServerThread
from tests.loopback.stun_server import RunningSTUN
from tests.loopback.web import closed_port

HOST = "127.0.0.1"
PUBLIC = "127.0.0.9"  # the probe's "public" address, behind the NAT
ZONE = "kw.censorscope.test"
NETWORKS = {
    f"{PUBLIC}/32": ("IT", 30722, "Vodafone Italia S.p.A."),
    f"{HOST}/32": ("IT", 3269, "Telecom Italia S.p.A."),  # the resolver's egress, here
}


@dataclass
class World:
    helper: str  # the helper's own URL (no NAT)
    nat_helper: str  # the helper through the NAT
    stun: str  # the STUN server through the NAT (HOST:PORT)
    dns_port: int  # the helper's DNS zone


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    zone = DNSZoneConfig(ZONE, HOST, HOST, 0)
    with run_helper(HOST, dns_zone=zone) as (base, port), ServerThread("geo") as servers:
        dns_port = httpx.get(base + "echo", timeout=5).json()["dns_port"]
        stun = servers.start(RunningSTUN(HOST))
        nat = servers.start(
            SourceNAT(PUBLIC, tcp_target=(HOST, port), udp_target=(HOST, stun.port))
        )
        yield World(base, f"http://{HOST}:{nat.tcp_port}/", f"{HOST}:{nat.udp_port}", dns_port)


def _config(tmp_path: Path, world: World, *, layout: str = "dbip", **vantage: str) -> Config:
    cfg = Config()
    cfg.consent.informed = True  # built here, not loaded: the environment's acceptance is not read
    cfg.geoip.databases = [str(p) for p in vantage_databases(tmp_path, layout, NETWORKS)]
    cfg.geoip.whoami = [world.nat_helper + "x/whoami"]
    cfg.geoip.stun = [world.stun]
    for key, value in vantage.items():
        setattr(cfg.vantage, key, value)
    return cfg


# --- the sources, one by one -------------------------------------------------------------------


def test_helper_whoami_says_the_address_seen_and_offers_the_dns_name(world: World) -> None:
    direct = asyncio.run(ask_whoami(world.helper + "x/whoami", timeout=5))
    natted = asyncio.run(ask_whoami(world.nat_helper + "x/whoami", timeout=5))
    assert direct.address == HOST and natted.address == PUBLIC
    assert natted.dns_whoami == f"whoami.{ZONE}"


def test_collector_whoami(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.txt"
    tokens.write_text("alpha " + "a" * 32 + "\n")
    app = collector_app(CollectorConfig(data=tmp_path / "data", tokens=tokens))
    sock = socket.socket()
    sock.bind(("127.0.0.10", 0))
    sock.listen(8)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        while not server.started:
            time.sleep(0.01)
        url = f"http://127.0.0.10:{sock.getsockname()[1]}/x/whoami"
        answer = asyncio.run(ask_whoami(url, timeout=5))
        assert answer.address == "127.0.0.1" and answer.dns_whoami is None
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def test_whoami_failures_are_source_errors(world: World) -> None:
    with pytest.raises(SourceError, match="HTTP 404"):
        asyncio.run(ask_whoami(world.helper + "nothere", timeout=5))
    with pytest.raises(SourceError):
        asyncio.run(ask_whoami(f"http://{HOST}:{closed_port(HOST)}/x/whoami", timeout=2))


def test_dns_zone_whoami_answers_the_asking_address(world: World) -> None:
    assert (
        asyncio.run(
            resolver_address(f"whoami.{ZONE}", timeout=3, nameserver=f"{HOST}:{world.dns_port}")
        )
        == HOST
    )
    # AAAA for an IPv4 asker: no data, not an error (and not another name's answer).
    reply = dns.query.udp(dns.message.make_query(f"whoami.{ZONE}", "AAAA"), HOST, 3, world.dns_port)
    assert reply.rcode() == 0 and not reply.answer


def test_only_our_own_helpers_and_collector_are_asked() -> None:
    cfg = Config()
    cfg.upload.collector = "https://collector.example/"
    sources = whoami_sources(cfg, ["https://0.th.ooni.org/", "https://helper.example/base"])
    assert sources == [
        "https://helper.example/base/x/whoami",
        "https://collector.example/x/whoami",
    ]


# --- locate: the base keys ---------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["dbip", "geolite2"])
def test_locate_fills_the_base_keys_as_ooni_does(tmp_path: Path, world: World, layout: str) -> None:
    cfg = _config(tmp_path, world, layout=layout)
    where = asyncio.run(
        locate(cfg, helpers=[], resolver=None, whoami_nameserver=f"{HOST}:{world.dns_port}")
    )
    assert (where.probe_cc, where.probe_asn, where.probe_network_name) == (
        "IT",
        "AS30722",
        "Vodafone Italia S.p.A.",
    )
    assert (where.resolver_ip, where.resolver_asn, where.resolver_network_name) == (
        HOST,
        "AS3269",
        "Telecom Italia S.p.A.",
    )
    assert where.scrub == [PUBLIC] and where.notice is None


def test_stun_alone_is_enough(tmp_path: Path, world: World) -> None:
    cfg = _config(tmp_path, world)
    cfg.geoip.whoami = [f"http://{HOST}:{closed_port(HOST)}/x/whoami"]  # down
    where = asyncio.run(locate(cfg, helpers=[], resolver=None, timeout=2))
    assert where.probe_asn == "AS30722" and where.scrub == [PUBLIC]
    # No name offered, none configured: OONI's "unknown" resolver (model.DefaultResolverIP).
    assert (where.resolver_ip, where.resolver_asn) == ("127.0.0.2", "AS0")


def test_the_configuration_wins(tmp_path: Path, world: World) -> None:
    cfg = _config(tmp_path, world, probe_cc="FR")
    where = asyncio.run(locate(cfg, helpers=[], resolver="127.0.0.1:5353"))
    assert (where.probe_cc, where.probe_asn) == ("FR", "AS30722")
    assert where.resolver_ip == HOST and where.resolver_asn == "AS3269"
    cfg = _config(tmp_path, world, probe_asn="AS1")
    where = asyncio.run(locate(cfg, helpers=[], resolver=None))
    # Another network's name is never written next to the operator's ASN.
    assert (where.probe_cc, where.probe_asn, where.probe_network_name) == ("IT", "AS1", "")


def test_a_resolver_answering_from_our_own_address_is_not_stored(
    tmp_path: Path, world: World
) -> None:
    """A resolver on the probe's NAT router answers from the probe's public address: as
    resolver_ip it would name the probe, so it becomes OONI's unknown 127.0.0.2 (a valid IP,
    unlike the scrubber's "[scrubbed]"); its network, the probe's own, stays."""
    cfg = _config(tmp_path, world)
    where = asyncio.run(locate(cfg, helpers=[], resolver=f"{PUBLIC}:53"))
    assert where.scrub == [PUBLIC]
    assert (where.resolver_ip, where.resolver_asn) == ("127.0.0.2", "AS30722")
    cfg.vantage.own_addresses = [f"::ffff:{HOST}"]  # any spelling of an address of ours
    where = asyncio.run(locate(cfg, helpers=[], resolver=f"{HOST}:53"))
    assert where.resolver_ip == "127.0.0.2"


def test_a_learned_resolver_is_not_stored_when_our_own_address_is_unknown(
    tmp_path: Path, world: World
) -> None:
    """No whoami or STUN answer and no global interface address: the resolver the whoami
    lookup names may be the NAT router answering from our public address, and nothing can
    tell, so its address goes (OONI's unknown 127.0.0.2) and its network stays."""
    cfg = _config(tmp_path, world)
    cfg.geoip.whoami = [f"http://{HOST}:{closed_port(HOST)}/x/whoami"]  # down
    cfg.geoip.stun = []
    cfg.geoip.resolver_whoami = f"whoami.{ZONE}"
    where = asyncio.run(
        locate(
            cfg, helpers=[], resolver=None, timeout=2, interfaces=[],
            whoami_nameserver=f"{HOST}:{world.dns_port}",
        )
    )  # fmt: skip
    assert where.scrub == []
    assert (where.resolver_ip, where.resolver_asn) == ("127.0.0.2", "AS3269")
    # With our address known (STUN) and different, the same resolver is stored.
    cfg.geoip.stun = [world.stun]
    where = asyncio.run(
        locate(
            cfg, helpers=[], resolver=None, timeout=2, interfaces=[],
            whoami_nameserver=f"{HOST}:{world.dns_port}",
        )
    )  # fmt: skip
    assert (where.resolver_ip, where.resolver_asn) == (HOST, "AS3269")


def test_unknown_location_says_why(tmp_path: Path, world: World) -> None:
    cfg = _config(tmp_path, world)
    cfg.geoip.databases = []
    where = asyncio.run(locate(cfg, helpers=[], resolver=None))
    assert (where.probe_cc, where.probe_asn) == ("ZZ", "AS0")
    assert where.scrub == [PUBLIC]  # still learned, for the scrubber
    assert where.notice is not None and "no [geoip] databases" in where.notice
    cfg = _config(tmp_path, world)
    cfg.geoip.whoami, cfg.geoip.stun = [], []
    where = asyncio.run(locate(cfg, helpers=[], resolver=None, interfaces=[]))
    assert where.notice is not None and "no source of the probe's public address" in where.notice
    cfg.geoip.whoami = [f"http://{HOST}:{closed_port(HOST)}/x/whoami"]  # configured, but down
    where = asyncio.run(locate(cfg, helpers=[], resolver=None, interfaces=[], timeout=2))
    assert where.notice is not None and "not learned" in where.notice


def test_a_vantage_without_nat_is_located_by_its_interface_address(tmp_path: Path) -> None:
    cfg = Config()
    networks = {"81.2.69.0/24": ("GB", 64512, "Example Broadband")}
    cfg.geoip.databases = [str(p) for p in vantage_databases(tmp_path, "geolite2", networks)]
    interfaces = ["10.0.0.2", "192.0.2.1", "81.2.69.160", "fe80::1"]  # only one is global
    where = asyncio.run(locate(cfg, helpers=[], resolver=None, interfaces=interfaces))
    assert (where.probe_cc, where.probe_asn, where.probe_network_name) == (
        "GB",
        "AS64512",
        "Example Broadband",
    )
    assert where.notice is None and where.scrub == []  # interface addresses: ownip's job


# --- a run: stored with the location, without the address ---------------------------------------


def test_a_run_stores_where_it_was_taken_and_never_the_public_address(
    tmp_path: Path, world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = _config(tmp_path, world)
    results = tmp_path / "results"
    # The input names the public address: it must be scrubbed from the stored measurement.
    target = f"{PUBLIC}:{closed_port(PUBLIC)}"
    request = RunRequest(
        nettest="tcp_connect",
        inputs=[target],
        results=results,
        resolver=f"{HOST}:{world.dns_port}",
        helpers=[world.nat_helper],
        timeout=5,
        progress=False,
    )

    def fail(message: str) -> None:
        raise AssertionError(message)

    execute_run(cfg, request, fail=fail)  # type: ignore[arg-type]
    lines = [line for path in results.rglob("*.jsonl") for line in path.read_bytes().splitlines()]
    assert lines
    # (The report's manifest keeps the inputs as the user typed them: not a measurement.)
    assert not any(PUBLIC.encode() in line for line in lines)
    m = orjson.loads(lines[0])
    assert (m["probe_cc"], m["probe_asn"], m["probe_network_name"]) == (
        "IT",
        "AS30722",
        "Vodafone Italia S.p.A.",
    )
    assert (m["resolver_ip"], m["resolver_asn"]) == (HOST, "AS3269")
    assert m["probe_ip"] == "127.0.0.1" and "_IT_" in m["measurement_uid"]
    assert "vantage location unknown" not in capsys.readouterr().err


def test_a_run_without_database_says_so_once(
    tmp_path: Path, world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = _config(tmp_path, world)
    cfg.geoip.databases = []
    request = RunRequest(
        nettest="tcp_connect",
        inputs=[f"{HOST}:{closed_port(HOST)}"] * 3,
        results=tmp_path / "results",
        timeout=5,
        progress=False,
    )
    execute_run(cfg, request, fail=lambda m: (_ for _ in ()).throw(AssertionError(m)))
    err = capsys.readouterr().err
    assert err.count("vantage location unknown") == 1
    m = orjson.loads(next((tmp_path / "results").rglob("*.jsonl")).read_bytes().splitlines()[0])
    assert (m["probe_cc"], m["probe_asn"]) == ("ZZ", "AS0")
    assert (m["resolver_ip"], m["resolver_asn"]) == ("127.0.0.2", "AS0")


def test_geoip_section_and_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from probes.config import ConfigError, load_config

    path = tmp_path / "probe.toml"
    path.write_text('[geoip]\ndatabases = ["c.mmdb", "a.mmdb"]\nresolver_whoami = "whoami.z"\n')
    monkeypatch.setenv("CENSORSCOPE_GEOIP_STUN", "stun.example:3478,127.0.0.1")
    cfg = load_config(path)
    assert cfg.geoip.databases == ["c.mmdb", "a.mmdb"] and cfg.geoip.resolver_whoami == "whoami.z"
    assert cfg.geoip.stun == ["stun.example:3478", "127.0.0.1"]
    path.write_text('[geoip]\ndatabase = "x.mmdb"\n')
    with pytest.raises(ConfigError, match=r"unknown key 'geoip\.database'"):
        load_config(path)


def test_an_unreadable_database_is_bad_input_naming_the_file(tmp_path: Path) -> None:
    cfg = Config()
    cfg.consent.informed = True  # built here, not loaded: the environment's acceptance is not read
    cfg.geoip.databases = [str(tmp_path / "missing.mmdb")]
    messages: list[str] = []

    def fail(message: str) -> None:
        messages.append(message)
        raise SystemExit(2)

    request = RunRequest(nettest="tcp_connect", inputs=["127.0.0.1:1"], results=tmp_path / "r")
    with pytest.raises(SystemExit):
        execute_run(cfg, request, fail=fail)  # type: ignore[arg-type]
    assert "missing.mmdb: no such GeoIP database" in messages[0]
    assert not (tmp_path / "r").exists() or not list((tmp_path / "r").rglob("*.jsonl"))


def test_malformed_sources_are_named_before_measuring() -> None:
    from probes.vantage import source_problem

    cfg = Config()
    assert source_problem(cfg) is None
    cfg.geoip.stun = ["[2001:db8::1"]
    assert "[geoip] stun" in (source_problem(cfg) or "")
    cfg.geoip.stun = []
    cfg.geoip.whoami = ["ftp://helper.example/x/whoami"]
    assert "not an http(s) URL" in (source_problem(cfg) or "")
    # urlsplit raises on these: a named problem, not a traceback
    for bad in ("http://[2001:db8::1/x/whoami", "http://helper.example:99999/x/whoami"):
        cfg.geoip.whoami = [bad]
        assert (source_problem(cfg) or "").startswith(f"[geoip] whoami: {bad!r}: ")
    cfg.geoip.whoami = []
    assert "control helper 'http://[::1/'" in (source_problem(cfg, ["http://[::1/"]) or "")


def test_a_malformed_helper_url_is_bad_input_not_a_traceback(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "probes", "run", "tcp_connect", "--input", "127.0.0.1:9",
         "--helper", "http://[::1/", "--results", str(tmp_path / "r"), "--no-progress"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "control helper 'http://[::1/'" in proc.stderr and "Traceback" not in proc.stderr
