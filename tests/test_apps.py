"""The messaging-app nettests (whatsapp, telegram, signal, facebook_messenger).

On loopback: real HTTPS servers with certificates from the test CA, a server that resets
ClientHellos naming a blocked SNI (as the lab's censor does), a closed port (the connect is
refused), and a DNS server that answers NXDOMAIN or an address outside the app's networks.
Against OONI: the real measurements of these nettests in ../shared/data/ooni get the verdict
OONI's own keys imply (probe-cli's summary-key anomaly), typed by the failure they record.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from analysis.verdicts import rederive_app
from backend.helper_config import HelperConfig
from probes.nettests import nettest_class
from probes.nettests.apps_analysis import analyze, anomaly
from probes.nettests.apps_endpoints import APPS, BUNDLED, EndpointsError, load_sets
from probes.nettests.base import ProbeContext, SetupError
from tests.loopback import FakeDNSServer, ServerThread, TestCA, WebServer, closed_port
from tests.loopback.control_helper import running_asgi, running_helper
from tests.loopback.oohelperd_double import OOHelperdDouble
from tests.shared_data import SHARED_DATA

OK_IP, SNI_IP, CLOSED_IP, ELSEWHERE_IP = "127.0.62.10", "127.0.62.11", "127.0.62.12", "127.0.63.1"
BLOCKED_WORD = "blocked"
EXEMPT = ["127.0.0.0/8"]
OONI = SHARED_DATA / "ooni"


@dataclass
class World:
    ca: TestCA
    dns: FakeDNSServer
    https: int
    http: int
    sni_https: int
    closed: int
    endpoints: Path
    control_dns: FakeDNSServer | None = None


def _endpoints_toml(w: World) -> str:
    ok = f"https://web.app.test:{w.https}/"
    reset = f"https://{BLOCKED_WORD}.app.test:{w.sni_https}/"
    ep = [f"tcpconnect://e1.app.test:{w.https}", f"tcpconnect://e1.app.test:{w.http}"]
    down_ep = [f"tcpconnect://down.app.test:{w.closed}", f"tcpconnect://down.app.test:{w.closed}"]
    dcs = f'["http://{OK_IP}:{w.http}/", "http://{OK_IP}:{w.http}/"]'
    closed_dcs = f'["http://{CLOSED_IP}:{w.closed}/"]'
    fb = {s: f"tcpconnect://{s}.fb.test:{w.https}" for s in ("b_api", "b_graph", "edge", "star")}
    fb |= {"external_cdn": f"tcpconnect://cdn.fb.test:{w.https}"}
    fb |= {
        "scontent_cdn": f"tcpconnect://cdn.fb.test:{w.https}",
        "stun": "dnslookup://stun.fb.test",
    }
    fb_liar = dict(fb, edge=f"tcpconnect://elsewhere.fb.test:{w.https}")
    fb_closed = dict(fb, star=f"tcpconnect://down.app.test:{w.closed}")

    def table(values: dict[str, str]) -> str:
        return "\n".join(f'{k} = "{v}"' for k, v in values.items())

    return f"""
updated = "2026-12-07"

[[whatsapp]]
name = "open"
source = "loopback"
registration = "{ok}v2/register"
web = "{ok}"
endpoints = {json.dumps(ep + down_ep)}

[[whatsapp]]
name = "web-sni"
source = "loopback"
registration = "{ok}v2/register"
web = "{reset}"
endpoints = {json.dumps(ep)}

[[whatsapp]]
name = "endpoint-hijack"
source = "loopback"
prefixes = ["{OK_IP}/32"]
registration = "{ok}v2/register"
web = "{ok}"
endpoints = ["tcpconnect://hijack.app.test:{w.sni_https}"]

[[telegram]]
name = "open"
source = "loopback"
web = "{ok}"
datacenters = {dcs}

[[telegram]]
name = "dc-refused"
source = "loopback"
web = "{ok}"
datacenters = {closed_dcs}

[[signal]]
name = "open"
source = "loopback"
backend = ["{ok}", "https://chat.app.test:{w.https}/"]
uptime = "dnslookup://uptime.app.test"

[[signal]]
name = "verified-elsewhere"
source = "loopback"
prefixes = ["{OK_IP}/32"]
backend = ["{ok}", "https://hijack.app.test:{w.sni_https}/"]
uptime = "dnslookup://uptime.app.test"

[[signal]]
name = "nxdomain"
source = "loopback"
backend = ["{ok}", "https://gone.app.test:{w.https}/"]
uptime = "dnslookup://uptime.app.test"

[[signal]]
name = "nxdomain-everywhere"
source = "loopback"
backend = ["{ok}", "https://void.app.test:{w.https}/"]
uptime = "dnslookup://uptime.app.test"

[[facebook_messenger]]
name = "open"
source = "loopback"
prefixes = ["127.0.62.0/24"]
{table(fb)}

[[facebook_messenger]]
name = "lying-dns"
source = "loopback"
prefixes = ["127.0.62.0/24"]
{table(fb_liar)}

[[facebook_messenger]]
name = "tcp-refused"
source = "loopback"
prefixes = ["127.0.62.0/24"]
{table(fb_closed)}
"""


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    ca = TestCA(tmp_path_factory.mktemp("apps-ca"))
    thread = ServerThread("apps")
    try:
        https = thread.start(WebServer(OK_IP, ca=ca))
        http = thread.start(WebServer(OK_IP))
        sni = thread.start(WebServer(SNI_IP, ca=ca, keyword=BLOCKED_WORD))
        names = ["web", "chat", "uptime", "e1", "stun", "cdn", "b_api", "b_graph", "edge", "star"]
        zone = {f"{n}.app.test": [OK_IP] for n in names}
        zone |= {f"{n}.fb.test": [OK_IP] for n in names}
        zone |= {f"{BLOCKED_WORD}.app.test": [SNI_IP], "down.app.test": [CLOSED_IP]}
        zone |= {"elsewhere.fb.test": [ELSEWHERE_IP], "hijack.app.test": [SNI_IP]}
        gone = ["gone.app.test", "void.app.test"]
        dns = thread.start(FakeDNSServer("127.0.62.53", zone=zone, nxdomain=gone))
        # The control helper's resolver: gone.app.test exists there (the probe's NXDOMAIN is
        # a lie), void.app.test does not (gone everywhere).
        control_zone = zone | {"gone.app.test": [OK_IP]}
        control_dns = thread.start(
            FakeDNSServer("127.0.62.54", zone=control_zone, nxdomain=["void.app.test"])
        )
        w = World(ca, dns, https.port, http.port, sni.port, closed_port(CLOSED_IP), Path())
        w.control_dns = control_dns
        w.endpoints = tmp_path_factory.mktemp("apps") / "apps.toml"
        w.endpoints.write_text(_endpoints_toml(w))
        yield w
    finally:
        thread.close()


def _run(
    world: World, app: str, input_: str | None, helper: str | None = None, **options: Any
) -> dict[str, Any]:
    ctx = ProbeContext(
        resolver=world.dns.address,
        ca_file=world.ca.ca_pem_path,
        helpers=[helper] if helper else [],
        timeout=6.0,
        options={"endpoints": str(world.endpoints), "bogon_exempt": EXEMPT, **options},
    )
    nettest = nettest_class(app)(ctx)

    async def go() -> dict[str, Any]:
        await nettest.setup()
        try:
            return await nettest.measure(input_)
        finally:
            await nettest.close()

    return asyncio.run(go())


def _verdict(keys: dict[str, Any]) -> tuple[Any, Any]:
    return keys["blocking"], keys["blocking_detail"]


HELPERS = ("oohelperd", "ours")


@contextmanager
def _helper(world: World, kind: str) -> Iterator[str]:
    """A control helper on loopback: the oohelperd double (written from probe-cli's source) or
    ours, resolving with the control's DNS server and trusting the test CA."""
    assert world.control_dns is not None
    resolver = world.control_dns.address
    if kind == "oohelperd":
        double = OOHelperdDouble(
            resolver=resolver,
            ca_file=world.ca.ca_pem_path,
            public_networks=("127.0.62.0/24",),
            dns_timeout=2,
            step_timeout=3,
        )
        with running_asgi(double.app) as url:
            yield url
        return
    config = HelperConfig(
        resolver=resolver,
        ca_file=world.ca.ca_pem_path,
        exempt_networks=("127.0.62.0/24",),
        timeout=3,
    )
    with running_helper(config) as url:
        yield url


# --- the endpoint list --------------------------------------------------------------------------


@pytest.mark.parametrize("app", APPS)
def test_bundled_list_has_probe_cli_endpoints(app: str) -> None:
    (s,) = load_sets(BUNDLED, app)
    assert s.name == "default" and s.updated == "2026-12-07" and "probe-cli" in s.source
    urls = {t.url for t in s.targets}
    expected = {
        "whatsapp": {"https://v.whatsapp.net/v2/register", "tcpconnect://e16.whatsapp.net:5222"},
        "telegram": {"https://web.telegram.org/", "http://95.161.76.100:443/"},
        "signal": {"https://storage.signal.org/", "dnslookup://uptime.signal.org"},
        "facebook_messenger": {
            "dnslookup://stun.fbsbx.com",
            "tcpconnect://star.c10r.facebook.com:443",
        },
    }[app]
    assert expected <= urls
    counts = {"whatsapp": 34, "telegram": 13, "signal": 5, "facebook_messenger": 7}
    assert len(s.targets) == counts[app]


def test_signal_carries_its_own_cas() -> None:
    (s,) = load_sets(BUNDLED, "signal")
    assert len(s.ca_pem) == 2


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("updated = 'yesterday'\n", "updated: 'yesterday' is not a YYYY-MM-DD date"),
        ("updated = '2026-01-01'\n", "signal: missing"),
        (
            "updated = '2026-01-01'\n[signal]\nsource='x'\nbackend=['https://a/']\n",
            "signal.uptime: missing",
        ),
        (
            "updated = '2026-01-01'\n[signal]\nsource='x'\nbackend=['tcpconnect://a:1']\n"
            "uptime='dnslookup://u'\n",
            "signal.backend[0]: 'tcpconnect://a:1': expected a https:// URL",
        ),
        (
            "updated = '2026-01-01'\n[signal]\nsource='x'\nbackend=['https://a/']\n"
            "uptime='dnslookup://u'\nprefixes=['10.0.0.0/33']\n",
            "signal.prefixes[0]:",
        ),
        (
            "updated = '2026-01-01'\n[signal]\nsource='x'\nbackend=['https://a/']\n"
            "uptime='dnslookup://u'\nport=1\n",
            "signal.port: unknown field",
        ),
        ("updated = [\n", "not valid TOML"),
    ],
)
def test_bad_list_names_file_and_field(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(EndpointsError) as err:
        load_sets(path, "signal")
    assert str(path) in str(err.value) and message in str(err.value)


def test_bad_list_stops_setup(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("updated = '2026-01-01'\n")
    nettest = nettest_class("telegram")(ProbeContext(options={"endpoints": str(path)}))
    with pytest.raises(SetupError, match=f"--endpoints: {path}: telegram: missing"):
        asyncio.run(nettest.setup())


# --- on loopback --------------------------------------------------------------------------------


def test_whatsapp_open(world: World) -> None:
    keys = _run(world, "whatsapp", "open")
    assert _verdict(keys) == (False, None)
    assert keys["registration_server_status"] == "ok" and keys["whatsapp_web_status"] == "ok"
    # One endpoint host failed on every port: listed, but the endpoints still work (OONI).
    assert keys["whatsapp_endpoints_blocked"] == ["down.app.test"]
    assert keys["whatsapp_endpoints_status"] == "ok"
    assert keys["x_endpoints"]["set"] == "open" and keys["x_endpoints"]["source"] == "loopback"
    assert all(r["response"]["code"] == 200 for r in keys["requests"])
    assert keys["tls_handshakes"] and keys["tcp_connect"] and keys["queries"]


def test_whatsapp_web_sni_reset(world: World) -> None:
    keys = _run(world, "whatsapp", "web-sni")
    assert keys["whatsapp_web_status"] == "blocked"
    assert keys["whatsapp_web_failure"] == "connection_reset"
    assert keys["registration_server_status"] == "ok"
    assert _verdict(keys) == ("tls", "tls.sni_reset")


def test_answers_outside_the_networks(world: World) -> None:
    """An endpoint that connects, but at an address outside the app's networks, is DNS
    blocking (OONI leaves that judgement to its pipeline); an https target whose verified
    handshake with the name worked there is genuine, whatever its address."""
    keys = _run(world, "whatsapp", "endpoint-hijack")
    assert keys["whatsapp_endpoints_status"] == "ok"
    assert keys["whatsapp_endpoints_dns_inconsistent"] == ["hijack.app.test"]
    assert _verdict(keys) == ("dns", "dns.inconsistent")
    keys = _run(world, "signal", "verified-elsewhere")
    assert [t["x_dns_inconsistent"] for t in keys["x_targets"] if t["role"] == "backend"] == [
        False,
        True,
    ]
    assert _verdict(keys) == (False, None)


def test_first_set_without_input_and_unknown_set(world: World) -> None:
    assert _run(world, "whatsapp", None)["x_endpoints"]["set"] == "open"
    keys = _run(world, "whatsapp", "nope")
    assert keys["blocking"] is None and "no endpoint set 'nope'" in keys["failure"]


def test_telegram_open_and_refused(world: World) -> None:
    keys = _run(world, "telegram", "open")
    assert _verdict(keys) == (False, None)
    assert keys["telegram_http_blocking"] is False and keys["telegram_tcp_blocking"] is False
    assert any(r["request"]["method"] == "POST" for r in keys["requests"])
    keys = _run(world, "telegram", "dc-refused")
    assert keys["telegram_http_blocking"] is True and keys["telegram_tcp_blocking"] is True
    assert keys["telegram_web_status"] == "ok"
    assert _verdict(keys) == ("tcp_ip", "tcp.connect_refused")


def test_signal_open_and_nxdomain(world: World) -> None:
    keys = _run(world, "signal", "open")
    assert _verdict(keys) == (False, None) and keys["signal_backend_status"] == "ok"
    keys = _run(world, "signal", "nxdomain")
    assert keys["signal_backend_status"] == "blocked"
    assert keys["signal_backend_failure"] == "dns_nxdomain_error"
    assert _verdict(keys) == ("dns", "dns.nxdomain")


@pytest.mark.parametrize("kind", HELPERS)
def test_control_tells_down_from_blocked(world: World, kind: str) -> None:
    """With a control helper, a target that fails at the helper too is down, not blocked: the
    data centres whose port is closed everywhere, a name that exists nowhere. A name the
    probe's resolver denies but the helper's resolves stays blocked, and so do the open sets."""
    with _helper(world, kind) as url:
        refused = _run(world, "telegram", "dc-refused", helper=url)
        void = _run(world, "signal", "nxdomain-everywhere", helper=url)
        gone = _run(world, "signal", "nxdomain", helper=url)
        opened = _run(world, "whatsapp", "open", helper=url)
    assert refused["telegram_tcp_blocking"] is True  # OONI's keys are OONI's
    assert _verdict(refused) == (False, None)
    assert refused["x_down"] == [f"http://{CLOSED_IP}:{world.closed}/"]
    dc = next(t for t in refused["x_targets"] if t["role"] == "datacenters")
    endpoint = f"{CLOSED_IP}:{world.closed}"
    assert dc["x_control"]["tcp_connect"][endpoint]["failure"] == "connection_refused_error"
    assert void["signal_backend_status"] == "blocked" and _verdict(void) == (False, None)
    assert void["x_down"] == [f"https://void.app.test:{world.https}/"]
    assert _verdict(gone) == ("dns", "dns.nxdomain") and gone["x_down"] == []
    backend = next(t for t in gone["x_targets"] if "gone" in t["target"])
    assert backend["x_control"]["dns"]["addrs"] == [OK_IP]
    assert _verdict(opened) == (False, None)
    # down.app.test's endpoints are closed everywhere; whatsapp's endpoints are ok as one is
    assert opened["whatsapp_endpoints_status"] == "ok"
    # Read back by the analysis, the down measurement is counted as down.
    row = rederive_app("telegram", refused)
    assert (row["blocking"], row["down"]) == ("false", True)


def test_facebook_open_lying_dns_and_refused(world: World) -> None:
    keys = _run(world, "facebook_messenger", "open")
    assert _verdict(keys) == (False, None)
    assert keys["facebook_edge_dns_consistent"] is True and keys["facebook_edge_reachable"] is True
    assert keys["facebook_stun_dns_consistent"] is True and keys["facebook_stun_reachable"] is None
    keys = _run(world, "facebook_messenger", "lying-dns")
    assert keys["facebook_edge_dns_consistent"] is False and keys["facebook_dns_blocking"] is True
    assert keys["facebook_edge_reachable"] is None and keys["facebook_tcp_blocking"] is False
    assert _verdict(keys) == ("dns", "dns.inconsistent")
    keys = _run(world, "facebook_messenger", "tcp-refused")
    assert keys["facebook_star_reachable"] is False and keys["facebook_tcp_blocking"] is True
    assert _verdict(keys) == ("tcp_ip", "tcp.connect_refused")


# --- OONI's real measurements -------------------------------------------------------------------

# (file, line) -> the verdict OONI's keys imply, typed by the failure they record.
EXPECTED = {
    ("other_nettests_real.jsonl", 14): (False, None),  # signal IT ok
    ("other_nettests_real.jsonl", 15): ("tls", "tls.intercepted"),  # signal AM unknown authority
    ("other_nettests_real.jsonl", 16): ("dns", "dns.no_answer"),  # signal US cache no data
    ("other_nettests_real.jsonl", 17): (False, None),  # telegram IT 0.0.3
    ("other_nettests_real.jsonl", 25): ("http-failure", "http.failure"),  # whatsapp IE web 4xx
    ("other_nettests_real.jsonl", 34): ("dns", "dns.inconsistent"),  # facebook RU
    ("other_nettests_real.jsonl", 35): (False, None),  # facebook IT
    ("other_nettests_real.jsonl", 36): (False, None),  # signal BR
    ("other_nettests_real.jsonl", 37): ("dns", "dns.nxdomain"),  # signal IR
    ("other_nettests_real.jsonl", 39): ("dns", "dns.bogon"),  # whatsapp JP: 0.0.0.0 answers
    # telegram RU: the web GET timed out; its records hold connects to web.telegram.org's
    # addresses that timed out (the stored failure string is all OONI's keys keep).
    ("other_nettests_real.jsonl", 40): ("tcp_ip", "tcp.connect_timeout"),
    ("other_nettests_real.jsonl", 41): (False, None),  # telegram US
    ("other_nettests_real.jsonl", 42): (False, None),  # whatsapp US
    ("spec_examples.jsonl", 10): (False, None),
    ("spec_examples.jsonl", 11): (False, None),
    ("spec_examples.jsonl", 12): (False, None),
    ("spec_examples.jsonl", 20): (False, None),
    ("spec_examples.jsonl", 33): (None, None),  # telegram 0.0.4 example: empty test_keys
}


def _ooni_measurements() -> list[tuple[str, int, dict[str, Any]]]:
    out = []
    for name in ("other_nettests_real.jsonl", "spec_examples.jsonl"):
        for number, line in enumerate((OONI / name).read_text().splitlines(), 1):
            m = json.loads(line)
            if m.get("test_name") in APPS:
                out.append((name, number, m))
    return out


def test_every_ooni_app_measurement_is_expected() -> None:
    found = {(f, n) for f, n, _m in _ooni_measurements()}
    assert found == set(EXPECTED)


@pytest.mark.parametrize(("name", "number", "m"), _ooni_measurements())
def test_ooni_measurements_get_the_verdict_their_keys_imply(
    name: str, number: int, m: dict[str, Any]
) -> None:
    tk = m.get("test_keys") or {}
    verdict = analyze(m["test_name"], tk)
    assert (verdict.blocking, verdict.blocking_detail) == EXPECTED[(name, number)]
    said = anomaly(m["test_name"], tk)
    assert (verdict.blocking not in (False, None)) == bool(said)


def test_analysis_reads_ooni_app_measurements_with_their_verdicts() -> None:
    """analysis.load with the classifier: OONI's real app measurements come out with the
    verdicts their keys imply, and their queries/connects/handshakes as observations."""
    from analysis.load import Filters, load
    from analysis.verdicts import VERDICT_COLUMNS, Classifier

    loaded = load(
        ooni=[OONI / "other_nettests_real.jsonl", OONI / "spec_examples.jsonl"],
        filters=Filters(test_names=frozenset(APPS)),
        classifier=Classifier(),
        classifier_columns=VERDICT_COLUMNS,
    )
    m = loaded.measurements
    assert len(m) == len(EXPECTED)
    import pandas as pd

    def value(x: Any) -> Any:
        return None if pd.isna(x) else x

    got = {
        (Path(str(r.source)).name, int(r.line)): (value(r.blocking), value(r.blocking_detail))
        for r in m.itertuples()
    }
    want = {k: ("false" if v[0] is False else v[0], v[1]) for k, v in EXPECTED.items()}
    assert got == want
    assert set(m["verdict_source"]) == {"rederived"}
    kinds = set(loaded.observations["kind"])
    assert {"dns", "tcp", "tls", "http"} <= kinds


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "probes", *args], capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, (args, done.stdout, done.stderr)
    return done


def test_cli_run_then_analyze_report_publish(world: World, tmp_path: Path) -> None:
    """`censorscope run signal --endpoints F --input SET` stores OONI-shaped measurements
    (no input: the file's first set), and analyze, report and publish read their verdicts."""
    results = tmp_path / "results"
    common = ["--endpoints", str(world.endpoints), "--resolver", world.dns.address]
    common += ["--ca-file", world.ca.ca_pem_path, "--bogon-exempt", "127.0.0.0/8"]
    common += ["--timeout", "6", "--results", str(results), "--vantage", "lab"]
    _cli("run", "signal", "--input", "open", "--input", "nxdomain", *common)
    _cli("run", "telegram", *common)
    (path,) = results.glob("raw/date=*/vantage=lab/test_name=signal/*.jsonl")
    stored = {m["input"]: m for m in map(json.loads, path.read_text().splitlines())}
    assert {i: m["test_keys"]["blocking_detail"] for i, m in stored.items()} == {
        "open": None,
        "nxdomain": "dns.nxdomain",
    }
    assert stored["nxdomain"]["test_keys"]["signal_backend_status"] == "blocked"
    assert stored["open"]["probe_ip"] == "127.0.0.1"
    (tg,) = results.glob("raw/date=*/vantage=lab/test_name=telegram/*.jsonl")
    (only,) = map(json.loads, tg.read_text().splitlines())
    assert only["input"] is None and only["test_keys"]["blocking"] is False
    out = tmp_path / "tables"
    _cli("analyze", "--results", str(results), "--out", str(out))
    import pandas as pd

    table = pd.read_parquet(out / "vantages.parquet")
    signal = table[table["test_name"] == "signal"].set_index("target")
    assert signal["blocked"].to_dict() == {"open": 0, "nxdomain": 1}
    _cli("report", "--results", str(results), "--out", str(tmp_path / "report.html"))
    assert "signal" in (tmp_path / "report.html").read_text()
    _cli("publish", "--results", str(results), "--out", str(tmp_path / "dataset"))
    (part,) = (tmp_path / "dataset" / "data").rglob("test_name=signal/*.parquet")
    published = pd.read_parquet(part).set_index("input")
    assert published.loc["nxdomain", "blocking"] == "dns"
    assert published.loc["nxdomain", "blocking_detail"] == "dns.nxdomain"
