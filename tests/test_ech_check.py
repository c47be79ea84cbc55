"""ech_check on loopback: a real TLS server (OpenSSL through Python's ssl) behind a relay that
plays the censor (tests/loopback/ech_censor.py, parsing with the lab censor's code), and a DNS
server publishing an HTTPS record whose ECHConfig's private key the test holds, so the sealed
inner hello is opened with pyhpke, an HPKE implementation we did not write."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import dns.message
import dns.rdatatype
import dns.rrset
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import given, settings
from hypothesis import strategies as st

from lab.matching import ECH_EXTENSION, tls_extensions, tls_sni
from probes.net import tls_hello
from probes.net.https_records import https_query_name
from probes.nettests.base import ProbeContext
from probes.nettests.ech_check import ECHCheck, ech_configs_of, target_of
from probes.nettests.ech_check_analysis import analyze
from tests.loopback import FakeDNSServer, ServerThread, TestCA
from tests.loopback.ech_censor import ECHCensorRelay

SITE = "ech-site.test"
PUBLIC_NAME = "public.ech.test"
SERVER_IP = "127.0.63.1"
DNS_IP = "127.0.63.53"
RELAY_IPS = {"open": "127.0.63.10", "drop": "127.0.63.11", "reset": "127.0.63.12"}
RELAY_IPS |= {"eof": "127.0.63.13", "everything": "127.0.63.14", "cf": "127.0.63.15"}
CONFIG_ID = 7


class TLSServer:
    """A TLS 1.3 server with a certificate for whatever SNI arrives (the test CA's)."""

    def __init__(self, ca: TestCA) -> None:
        self.ctx = ca.server_context()
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                await reader.read(1)
            writer.close()

        self._server = await asyncio.start_server(serve, SERVER_IP, 0, ssl=self.ctx)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()


def ech_config_list(public_key: bytes) -> bytes:
    """An ECHConfigList as a server would publish it (draft-ietf-tls-esni section 4)."""
    contents = (
        bytes([CONFIG_ID])
        + struct.pack("!HH", 0x0020, 32)
        + public_key
        + struct.pack("!HHH", 4, 0x0001, 0x0001)
        + bytes([64, len(PUBLIC_NAME)])
        + PUBLIC_NAME.encode()
        + b"\x00\x00"
    )
    config = struct.pack("!HH", 0xFE0D, len(contents)) + contents
    return struct.pack("!H", len(config)) + config


@dataclass
class World:
    threads: ServerThread
    relays: dict[str, ECHCensorRelay]
    dns: FakeDNSServer
    ech_key: X25519PrivateKey
    ech_list: bytes


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)  # the server sees our cut hellos
    ca = TestCA()
    key = X25519PrivateKey.generate()
    ech_list = ech_config_list(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))
    ech_b64 = base64.b64encode(ech_list).decode()

    def handler(query: dns.message.Message) -> list[tuple[float, Any]]:
        q = query.question[0]
        reply = dns.message.make_response(query)
        name = q.name.to_text().rstrip(".")
        if q.rdtype == dns.rdatatype.HTTPS and name == SITE:
            reply.answer.append(
                dns.rrset.from_text(q.name, 60, "IN", "HTTPS", f"1 . alpn=h2 ech={ech_b64}")
            )
        elif q.rdtype == dns.rdatatype.A and name == SITE:
            reply.answer.append(dns.rrset.from_text(q.name, 60, "IN", "A", SERVER_IP))
        return [(0.0, reply)]

    threads = ServerThread("ech")
    server = threads.start(TLSServer(ca))
    dns_server = threads.start(FakeDNSServer(DNS_IP, 0, handler=handler))
    upstream = (SERVER_IP, server.port)
    relays = {
        "open": ECHCensorRelay(RELAY_IPS["open"], upstream, set()),
        "drop": ECHCensorRelay(RELAY_IPS["drop"], upstream, {SITE}, "drop"),
        "reset": ECHCensorRelay(RELAY_IPS["reset"], upstream, {SITE}, "reset"),
        "eof": ECHCensorRelay(RELAY_IPS["eof"], upstream, {SITE}, "eof"),
        "cf": ECHCensorRelay(RELAY_IPS["cf"], upstream, {"cloudflare-ech.com"}, "drop"),
        "everything": ECHCensorRelay(
            RELAY_IPS["everything"], upstream, {SITE, "cloudflare-ech.com", PUBLIC_NAME}, "reset"
        ),
    }
    for relay in relays.values():
        threads.start(relay)
    try:
        yield World(threads, relays, dns_server, key, ech_list)
    finally:
        threads.close()


def run_check(world: World, relay: str, *, timeout: float = 6.0, **options: Any) -> dict:
    endpoint = f"{RELAY_IPS[relay]}:{world.relays[relay].port}"
    ctx = ProbeContext(
        resolver=world.dns.address,
        timeout=timeout,
        options={"sni_endpoint": endpoint, **options},
    )

    async def go() -> dict:
        nettest = ECHCheck(ctx)
        await nettest.setup()
        try:
            return await nettest.measure(f"https://{SITE}/")
        finally:
            await nettest.close()

    return asyncio.run(go())


def kinds(keys: dict, round_no: int = 1) -> dict[tuple[str, str], Any]:
    return {
        (h.get("outer_server_name") or h["server_name"], h["x_ech"]): h["failure"]
        for h in keys["tls_handshakes"]
        if h["x_round"] == round_no
    }


# --- the hello itself ----------------------------------------------------------------------------


def test_hello_parses_with_scapy_and_the_censor_parser() -> None:
    from scapy.layers.tls.handshake import TLSClientHello
    from scapy.layers.tls.record import TLS

    for hello in (
        tls_hello.client_hello("plain.test"),
        tls_hello.client_hello("grease.test", grease_ech=True),
    ):
        record = TLS(hello.record)
        ch = record.msg[0]
        assert isinstance(ch, TLSClientHello)
        types = [ext.type for ext in ch.ext]
        assert types == tls_extensions(hello.record)
        assert 0x0033 in types and 0x002B in types  # key_share, supported_versions
        assert tls_sni(hello.record) == hello.server_name
        assert (ECH_EXTENSION in types) == (hello.ech == "grease")


def test_grease_extension_layout() -> None:
    hello = tls_hello.client_hello("grease.test", grease_ech=True)
    body = hello.record[9:]
    at = body.index(struct.pack("!H", ECH_EXTENSION))
    (length,) = struct.unpack("!H", body[at + 2 : at + 4])
    ext = body[at + 4 : at + 4 + length]
    assert ext[0] == 0  # outer
    assert struct.unpack("!HH", ext[1:5]) == (0x0001, 0x0001)  # HKDF-SHA256, AES-128-GCM
    (enc_len,) = struct.unpack("!H", ext[6:8])
    assert enc_len == 32  # an X25519 public key, as a real client's
    (payload_len,) = struct.unpack("!H", ext[8 + enc_len : 10 + enc_len])
    assert (payload_len - 16) % 32 == 0 and len(ext) == 10 + enc_len + payload_len


def test_ech_config_list_parsing_and_errors() -> None:
    raw = ech_config_list(b"\x01" * 32)
    (config,) = tls_hello.parse_ech_config_list(raw)
    assert (config.config_id, config.public_name, config.maximum_name_length) == (
        CONFIG_ID,
        PUBLIC_NAME,
        64,
    )
    assert tls_hello.usable_config([config]) == (config, (1, 1))
    with pytest.raises(tls_hello.HelloError, match="truncated"):
        tls_hello.parse_ech_config_list(raw[:-3])
    grease = tls_hello.parse_ech_config_list(tls_hello.grease_config_list("x.test"))
    assert grease[0].public_name == "x.test"


def test_inputs() -> None:
    assert target_of("https://Example.org:8443/x") == ("example.org", 8443)
    assert target_of("example.org") == ("example.org", 443)
    for bad in ("http://example.org/", "https://1.2.3.4/", ""):
        assert ECHCheck.input_problem(bad) is not None
    # RFC 9460 section 9.1: the HTTPS record of another port is asked under _PORT._https.
    assert https_query_name("example.org", 443) == "example.org"
    assert https_query_name("example.org", 8443) == "_8443._https.example.org"


# --- on loopback ---------------------------------------------------------------------------------


def test_open_path_every_hello_answered(world: World) -> None:
    keys = run_check(world, "open")
    assert keys["blocking"] is False, keys["x_verdicts"]
    assert keys["x_outer_sni"] == [SITE, "cloudflare-ech.com", PUBLIC_NAME]
    got = kinds(keys)
    assert set(got) == {
        *((sni, kind) for sni in keys["x_outer_sni"] for kind in ("none", "grease")),
        (PUBLIC_NAME, "real"),
    }
    assert all(f is None for f in got.values())
    answers = {h["x_server_answer"] for h in keys["tls_handshakes"]}
    assert answers == {"server_hello"}
    assert {h["tls_version"] for h in keys["tls_handshakes"]} == {"TLSv1.3"}
    assert keys["x_ech_config"] == base64.b64encode(world.ech_list).decode()
    real = [h for h in keys["tls_handshakes"] if h["x_ech"] == "real"]
    assert real[0]["echconfig"] == keys["x_ech_config"]
    assert real[0]["x_inner_server_name"] == SITE
    (https,) = [q for q in keys["queries"] if q["query_type"] == "HTTPS"]
    assert https["failure"] is None and https["answers"][0]["answer_type"] == "HTTPS"
    assert not any(h["x_round"] == 2 for h in keys["tls_handshakes"])  # nothing to confirm


def test_real_ech_inner_hello_opens_with_pyhpke(world: World) -> None:
    """The relay kept the real ECH hello: the server's key opens it, with the outer hello
    (payload zeroed) as associated data, and the inner hello names the site."""
    from pyhpke import AEADId, CipherSuite, KDFId, KEMId

    relay = world.relays["open"]
    relay.hellos.clear()
    run_check(world, "open", outer_sni="")
    real = [h for h in relay.hellos if tls_sni(h) == PUBLIC_NAME and b"\x00" in h]
    opened = 0
    suite = CipherSuite.new(KEMId(0x20), KDFId(1), AEADId(1))
    secret = world.ech_key.private_bytes_raw()
    skr = suite.kem.deserialize_private_key(secret)
    (config,) = tls_hello.parse_ech_config_list(world.ech_list)
    for hello in real:
        body = hello[9:]
        at = body.find(struct.pack("!H", ECH_EXTENSION))
        if at < 0:
            continue
        (length,) = struct.unpack("!H", body[at + 2 : at + 4])
        ext = body[at + 4 : at + 4 + length]
        if ext[5] != CONFIG_ID:  # a GREASE hello to the public name: random config id
            continue
        enc = ext[8:40]
        payload = ext[42:]
        aad = body.replace(payload, b"\x00" * len(payload))
        ctx = suite.create_recipient_context(enc, skr, info=b"tls ech\x00" + config.raw)
        inner = ctx.open(payload, aad=aad)
        record = b"\x16\x03\x01" + struct.pack("!H", len(inner) + 4) + b"\x01"
        record += len(inner).to_bytes(3, "big") + inner
        assert tls_sni(record) == SITE
        assert ECH_EXTENSION in (tls_extensions(record) or [])
        opened += 1
    assert opened == 1


@pytest.mark.parametrize(
    ("relay", "detail"),
    [("drop", "tls.ech_dropped"), ("reset", "tls.ech_reset"), ("eof", "tls.ech_eof")],
)
def test_ech_blocked_for_the_name(world: World, relay: str, detail: str) -> None:
    keys = run_check(world, relay, timeout=4.0)
    assert (keys["blocking"], keys["blocking_detail"]) == ("tls", detail), keys["x_verdicts"]
    got = kinds(keys)
    assert got[(SITE, "none")] is None
    assert got[(SITE, "grease")] is not None
    assert got[("cloudflare-ech.com", "grease")] is None
    assert got[(PUBLIC_NAME, "real")] is None  # the real hello's outer SNI is the public name
    assert keys["x_verdicts"][SITE]["blocking_detail"] == detail
    assert keys["x_verdicts"]["cloudflare-ech.com"]["blocking"] is False
    # Round 2 repeated the blocked SNI only.
    assert {h["server_name"] for h in keys["tls_handshakes"] if h["x_round"] == 2} == {SITE}
    assert analyze(keys).blocking_detail == detail  # re-derived from the keys alone


def test_cloudflare_ech_outer_sni_as_in_russia(world: World) -> None:
    keys = run_check(world, "cf", timeout=4.0)
    assert (keys["blocking"], keys["blocking_detail"]) == ("tls", "tls.ech_dropped")
    assert keys["x_verdicts"]["cloudflare-ech.com"]["blocking"] == "tls"
    assert keys["x_verdicts"][SITE]["blocking"] is False
    dropped = [d for d in world.relays["cf"].decisions if d[2] == "drop"]
    assert dropped and all(sni == "cloudflare-ech.com" for sni, _, _ in dropped)


def test_only_ech_counts_when_every_ech_hello_is_reset(world: World) -> None:
    keys = run_check(world, "everything", timeout=4.0)
    assert (keys["blocking"], keys["blocking_detail"]) == ("tls", "tls.ech_reset")
    assert all(v["blocking"] == "tls" for v in keys["x_verdicts"].values())


def test_no_https_record_means_no_real_attempt(world: World) -> None:
    keys = run_check(world, "open", outer_sni="")
    assert keys["x_outer_sni"] == [SITE, PUBLIC_NAME]
    ech = ech_configs_of(keys["queries"])
    assert ech == world.ech_list


# --- verdicts from keys alone --------------------------------------------------------------------


def _hs(sni: str, ech: str, failure: str | None, round_no: int = 1) -> dict[str, Any]:
    entry = {"server_name": sni, "x_ech": ech, "failure": failure, "x_round": round_no}
    if ech != "none":
        entry["outer_server_name"] = sni
    return entry


def test_verdict_table() -> None:
    base = {"x_outer_sni": ["a.test"], "tcp_connects": []}
    timeout, reset = "generic_timeout_error", "connection_reset"
    cases: list[tuple[list[dict[str, Any]], tuple[Any, Any]]] = [
        ([_hs("a.test", "none", None), _hs("a.test", "grease", None)], (False, None)),
        # An alert is an answer: the hello got through.
        (
            [_hs("a.test", "none", None), _hs("a.test", "grease", "ssl_failed_handshake")],
            (False, None),
        ),
        # Failed once, answered the second time: a lost packet, not blocking.
        (
            [
                _hs("a.test", "none", None),
                _hs("a.test", "grease", timeout),
                _hs("a.test", "none", None, 2),
                _hs("a.test", "grease", None, 2),
            ],
            (None, None),
        ),
        # Failed once with no second round: unconfirmed.
        ([_hs("a.test", "none", None), _hs("a.test", "grease", reset)], (None, None)),
        # The control failed too: the name is blocked, not ECH.
        ([_hs("a.test", "none", reset), _hs("a.test", "grease", reset)], (None, None)),
        (
            [
                _hs("a.test", "none", None),
                _hs("a.test", "grease", reset),
                _hs("a.test", "none", None, 2),
                _hs("a.test", "grease", reset, 2),
            ],
            ("tls", "tls.ech_reset"),
        ),
        # An answer that is not TLS is no censor's signature.
        (
            [_hs("a.test", "none", None), _hs("a.test", "grease", "unknown_failure: x")],
            (None, None),
        ),
    ]
    for handshakes, expected in cases:
        verdict = analyze({**base, "tls_handshakes": handshakes})
        assert (verdict.blocking, verdict.blocking_detail) == expected, handshakes


def test_residual_round_two_confirms() -> None:
    """Round 2's connections all refused right after an ECH hello was reset: the censor's
    residual blocking of the endpoint confirms round 1."""
    keys = {
        "x_outer_sni": ["a.test"],
        "tls_handshakes": [
            _hs("a.test", "none", None),
            _hs("a.test", "grease", "connection_reset"),
        ],
        "tcp_connects": [
            {"x_round": 2, "x_server_name": "a.test", "status": {"failure": "connection_refused"}},
            {"x_round": 2, "x_server_name": "a.test", "status": {"failure": "connection_refused"}},
        ],
    }
    verdict = analyze(keys)
    assert (verdict.blocking, verdict.blocking_detail) == ("tls", "tls.ech_reset")


def test_ooni_echcheck_example_is_judged() -> None:
    """OONI's echcheck measurement (ooni/spec ts-039, every hello answered): false; the same
    with its GREASE hello timed out is null (one round confirms nothing), never blocking."""
    import copy
    import json

    from analysis.verdicts import Classifier
    from tests.shared_data import SHARED_DATA

    for line in (SHARED_DATA / "ooni" / "spec_examples.jsonl").read_text().splitlines():
        data = json.loads(line)
        if data.get("test_name") == "echcheck":
            break
    else:
        raise AssertionError("no echcheck example")
    found = analyze(data["test_keys"])
    assert (found.blocking, found.blocking_detail) == (False, None)
    assert set(found.per_sni) == {"cloudflare-ech.com", "cloudflare.com"}
    row = Classifier()(data)
    assert (row["blocking"], row["verdict_source"]) == ("false", "rederived")
    cut = copy.deepcopy(data)
    cut["test_keys"]["tls_handshakes"][1]["failure"] = "generic_timeout_error"
    assert analyze(cut["test_keys"]).per_sni["cloudflare-ech.com"].blocking is None


def test_ooni_echcheck_010_control_and_target() -> None:
    """echcheck 0.1.0 (ts-039's example shape): `control` without ECH, `target` with GREASE."""
    hs = {"address": "93.184.216.34:443", "server_name": "example.org", "failure": None}
    found = analyze({"control": hs, "target": hs})
    assert (found.blocking, list(found.per_sni)) == (False, ["example.org"])
    cut = analyze({"control": hs, "target": {**hs, "failure": "generic_timeout_error"}})
    assert cut.blocking is None


def _cli(*args: str, check: bool = True) -> Any:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "probes", *args], capture_output=True, text=True, timeout=240
    )
    if check:
        assert done.returncode == 0, (args, done.stdout, done.stderr)
    return done


def test_cli_run_then_analyze_report_publish(world: World, tmp_path: Any) -> None:
    """`censorscope run ech_check` stores OONI-shaped measurements; analyze, report and publish
    carry its verdicts (re-derived from the handshakes) like any nettest's."""
    import json

    import pandas as pd

    results = tmp_path / "results"
    for relay, vantage in (("open", "open"), ("reset", "cn")):
        _cli(
            "run",
            "ech_check",
            "--input",
            f"https://{SITE}/",
            "--resolver",
            world.dns.address,
            "--sni-endpoint",
            f"{RELAY_IPS[relay]}:{world.relays[relay].port}",
            "--outer-sni",
            "",
            "--timeout",
            "4",
            "--results",
            str(results),
            "--vantage",
            vantage,
        )
    stored = {}
    for path in results.glob("raw/date=*/vantage=*/test_name=ech_check/*.jsonl"):
        for m in map(json.loads, path.read_text().splitlines()):
            stored[path.parent.parent.name] = m
    assert stored["vantage=open"]["test_keys"]["blocking"] is False
    cn = stored["vantage=cn"]["test_keys"]
    assert (cn["blocking"], cn["blocking_detail"]) == ("tls", "tls.ech_reset")
    refused = _cli(
        "run", "ech_check", "--input", "http://x.example/", "--results", str(results), check=False
    )
    assert refused.returncode == 2 and "https" in refused.stderr
    out = tmp_path / "tables"
    _cli("analyze", "--results", str(results), "--out", str(out))
    table = pd.read_parquet(out / "vantages.parquet")
    assert set(table["test_name"]) == {"ech_check"}
    blocked = dict(zip(table["vantage"], table["blocked"], strict=True))
    assert blocked == {"open": 0, "cn": 1}
    _cli("report", "--results", str(results), "--out", str(tmp_path / "report.html"))
    assert "ech_check" in (tmp_path / "report.html").read_text()
    _cli("publish", "--results", str(results), "--out", str(tmp_path / "dataset"))
    (part,) = (tmp_path / "dataset" / "data").rglob("test_name=ech_check/*.parquet")
    published = pd.read_parquet(part)
    assert set(published["blocking_detail"].dropna()) == {"tls.ech_reset"}


# --- hostile input ------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_hostile_ech_config_lists_raise_only_hello_error(data: bytes) -> None:
    """An HTTPS record's ech value is the network's to choose: parsing it either works or
    raises HelloError (named in x_ech_config_failure), never anything else."""
    try:
        configs = tls_hello.parse_ech_config_list(data)
    except tls_hello.HelloError:
        return
    tls_hello.usable_config(configs)


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=5, max_size=300))
def test_hostile_server_answers_are_classified(data: bytes) -> None:
    """Whatever comes back first is a ServerHello, an alert, 'other', or a HelloError."""
    try:
        answer = tls_hello.parse_server_answer(data)
    except tls_hello.HelloError:
        return
    assert answer.kind in ("server_hello", "hello_retry_request", "alert", "other")


def test_truncated_server_hello_is_an_unknown_failure() -> None:
    from probes.nettests.ech_check import _describe_answer

    entry: dict[str, Any] = {}
    _describe_answer(entry, b"\x16\x03\x03\x00\x06\x02\x00\x00\x02\x03\x03")
    assert entry["failure"].startswith("unknown_failure: ServerHello: truncated")
