"""`censorscope run web_connectivity` end to end, as real processes, on loopback.

The loopback world: the real sites live on 127.0.0.2; a "censored" resolver (the probe's) sends
some names to 127.0.0.6 (a national block page on the same port) or 127.0.0.7 (a server that
resets when the request carries a keyword), while the truthful resolver (the helper's) knows the
real addresses.  The probe and the control helper run as separate `censorscope` processes.
"""

from __future__ import annotations

import json
import shlex
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.loopback import FakeDNSServer, ServerThread, WebServer
from tests.loopback.control_helper import free_port_on, wait_http
from tests.loopback.web import closed_port
from tests.shared_data import SHARED_DATA

SHARED = SHARED_DATA
FINGERPRINTS_HTTP = SHARED / "fingerprints" / "fingerprints_http.csv"
KEYWORD = "forbidden-keyword"
CENSORSCOPE = [sys.executable, "-m", "probes.cli"]


@dataclass
class World:
    port: int
    closed: int
    truthful: FakeDNSServer
    censored: FakeDNSServer
    helper_url: str
    many: list[str]

    def url(self, host: str, path: str = "/", port: int | None = None) -> str:
        return f"http://{host}:{port or self.port}{path}"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    port = free_port_on(["127.0.0.2", "127.0.0.6", "127.0.0.7"])
    servers = ServerThread("wc-world")
    # Enough inputs that an interrupted run is still going when the signal lands.
    many = [f"h{i}.test" for i in range(600)]
    try:
        servers.start(WebServer("127.0.0.2", port, title="The real site"))
        servers.start(WebServer("127.0.0.6", port, behaviour="blockpage"))
        servers.start(WebServer("127.0.0.7", port, keyword=KEYWORD, title="The real site"))
        # The helper's (truthful) view: every site on 127.0.0.2.
        real = {
            name: ["127.0.0.2"]
            for name in ["site.test", "dnslie.test", "diff.test", "kw.test", "down.test", *many]
        }
        # The probe's resolver: dnslie.test lies outright (no address in common with the
        # control: inconsistent DNS); diff.test and kw.test put an interfering server first,
        # keeping the real address too (consistent DNS), so the probe fetches from the block
        # page / resetting server while the helper fetches the real page.
        censored_zone = {
            **real,
            "dnslie.test": ["127.0.0.6"],
            "diff.test": ["127.0.0.6", "127.0.0.2"],
            "kw.test": ["127.0.0.7", "127.0.0.2"],
        }
        truthful = servers.start(FakeDNSServer("127.0.0.3", 0, real))
        censored = servers.start(FakeDNSServer("127.0.0.4", 0, censored_zone))
        helper_port = free_port_on(["127.0.0.1"])
        helper = subprocess.Popen(
            [
                *CENSORSCOPE,
                "helper",
                "--listen",
                f"127.0.0.1:{helper_port}",
                "--resolver",
                truthful.address,
                "--allow-private",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            helper_url = f"http://127.0.0.1:{helper_port}/"
            wait_http(helper_url)
            yield World(port, closed_port("127.0.0.2"), truthful, censored, helper_url, many)
        finally:
            helper.terminate()
            helper.wait(10)
    finally:
        servers.close()


def run_probe(
    world: World,
    results: Path,
    *args: str,
    resolver: str | None = None,
    helper: str | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    cmd = [
        *CENSORSCOPE,
        "run",
        "web_connectivity",
        "--results",
        str(results),
        "--no-progress",
        "--resolver",
        resolver or world.censored.address,
        "--helper",
        helper or world.helper_url,
        "--timeout",
        "10",
        *args,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def stored(results: Path) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for path in sorted(results.glob("raw/date=*/vantage=*/test_name=*/*.jsonl")):
        data = path.read_bytes()
        assert data.endswith(b"\n"), f"{path}: torn last line"
        out.extend(json.loads(line) for line in data.splitlines())
    return out


def by_input(measurements: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {m["input"]: m["test_keys"] for m in measurements}


def test_verdicts_for_known_cases(world: World, tmp_path: Path) -> None:
    urls = {
        "accessible": world.url("site.test"),
        "dns_lie": world.url("dnslie.test"),
        "blockpage": world.url("diff.test"),
        "reset": world.url("kw.test", f"/{KEYWORD}"),
        "down": world.url("down.test", port=world.closed),
    }
    args = [a for url in urls.values() for a in ("--input", url)]
    proc = run_probe(
        world, tmp_path, *args, "--fingerprints", str(FINGERPRINTS_HTTP), "--vantage", "loopback-cn"
    )
    assert "5 measured" in proc.stdout
    keys = by_input(stored(tmp_path))

    ok = keys[urls["accessible"]]
    assert (ok["blocking"], ok["accessible"], ok["dns_consistency"]) == (False, True, "consistent")

    lie = keys[urls["dns_lie"]]
    assert lie["blocking"] == "dns" and lie["dns_consistency"] == "inconsistent"
    assert lie["blocking_detail"].startswith("dns.")

    page = keys[urls["blockpage"]]
    assert page["blocking"] == "http-diff", page
    assert page["blocking_detail"] == "http.blockpage"
    assert page["blocking_fingerprint"] == "ooni.be_0"

    reset = keys[urls["reset"]]
    assert reset["blocking"] == "http-failure", reset
    assert reset["http_experiment_failure"] == "connection_reset"

    down = keys[urls["down"]]
    # oohelperd reports failures in its legacy vocabulary, as OONI's public helpers do.
    assert down["control"]["http_request"]["failure"] == "connection_refused_error"
    assert down["blocking"] in (False, None) and down["accessible"] is not True


def test_measurement_follows_the_contract(world: World, tmp_path: Path) -> None:
    run_probe(world, tmp_path, "--input", world.url("site.test"), "--vantage", "vp-a")
    [m] = stored(tmp_path)
    for key in (
        "measurement_uid",
        "report_id",
        "input",
        "probe_cc",
        "probe_asn",
        "probe_network_name",
        "resolver_ip",
        "test_name",
        "test_version",
        "test_start_time",
        "measurement_start_time",
        "test_runtime",
        "software_name",
        "software_version",
        "data_format_version",
        "annotations",
        "test_keys",
    ):
        assert key in m, key
    assert m["software_name"] == "censorscope" and m["probe_ip"] == "127.0.0.1"
    assert m["annotations"]["vantage"] == "vp-a"
    assert m["resolver_ip"] == "127.0.0.4"
    path = next(tmp_path.glob("raw/date=*/vantage=vp-a/test_name=web_connectivity/*.jsonl"))
    assert path.stem == m["report_id"]
    for key in ("queries", "tcp_connect", "requests", "control", "blocking", "blocking_detail"):
        assert key in m["test_keys"], key


def test_repeat_makes_separate_measurements(world: World, tmp_path: Path) -> None:
    run_probe(world, tmp_path, "--input", world.url("site.test"), "--repeat", "3")
    measurements = stored(tmp_path)
    assert len(measurements) == 3
    assert len({m["measurement_uid"] for m in measurements}) == 3


def test_packet_capture_is_opt_in(world: World, tmp_path: Path) -> None:
    """Off by default (no capture key, nothing to pay); `--pcap DIR` turns it on: the keyword
    reset (the server's own kernel resets, with its own TTL) is captured and judged genuine, and
    the verdict is the same as without capture. Without CAP_NET_RAW the run notes "unavailable"
    in each measurement and goes on."""
    from probes.net.packets import capture_unavailable

    url = world.url("kw.test", f"/{KEYWORD}")
    run_probe(world, tmp_path / "off", "--input", url)
    [off] = [m["test_keys"] for m in stored(tmp_path / "off")]
    assert "packet_capture" not in off and "x_packets" not in off
    proc = run_probe(world, tmp_path / "on", "--input", url, "--pcap", str(tmp_path / "pcap"))
    [on] = [m["test_keys"] for m in stored(tmp_path / "on")]
    assert (on["blocking"], on["blocking_detail"]) == (off["blocking"], off["blocking_detail"])
    if capture_unavailable() is not None:
        assert on["packet_capture"] == "unavailable" and "x_packets" not in on
        assert proc.stderr.count("packet capture unavailable") == 1
        return
    assert on["packet_capture"] == "ok" and Path(on["x_pcap"]).stat().st_size > 0
    pkts = on["x_packets"]
    assert pkts["synack"]["ttl"] == 64 and pkts["resets"], pkts
    assert {r["ttl_differs"] for r in pkts["resets"]} == {False}
    assert (pkts["evidence"], on["x_packet_detail"]) == (None, None)


def test_unreachable_helper_still_measures_and_exits_3(world: World, tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{closed_port('127.0.0.1')}/"
    proc = run_probe(world, tmp_path, "--input", world.url("site.test"), helper=dead, check=False)
    assert proc.returncode == 3  # its own status: 2 is bad usage
    assert "control helper unreachable" in proc.stderr
    [m] = stored(tmp_path)
    assert m["test_keys"]["blocking"] is None
    assert m["test_keys"]["control_failure"] == "connection_refused"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "no_such_test", "--input", "http://x.test/"], "unknown nettest"),
        (["run", "web_connectivity"], "needs inputs"),
        (
            ["run", "web_connectivity", "--testlist", "/nonexistent/list.csv"],
            "/nonexistent/list.csv",
        ),
        (["run", "web_connectivity", "--resume", "nope"], "no report"),
        (["run", "web_connectivity", "--input", "ftp://x.test/"], "ftp://x.test/"),
        (["run", "web_connectivity", "--input", "http://x.test/", "--vantage", "../x"], "vantage"),
        (
            ["run", "web_connectivity", "--concurrency", "0", "--input", "http://x.test/"],
            "concurrency",
        ),
        (
            ["run", "web_connectivity", "--input", "http://x.test/", "--resolver", "not an ip"],
            "resolver",
        ),
    ],
)
def test_bad_usage_exits_2_with_a_clear_message(
    args: list[str], message: str, tmp_path: Path
) -> None:
    proc = subprocess.run(
        [*CENSORSCOPE, *args, "--results", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert message in proc.stderr
    assert not list(tmp_path.glob("raw/**/*.jsonl")) or args[1] != "web_connectivity"


def test_bad_test_list_names_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text(
        "url,category_code,category_description,date_added,source,notes\n"
        "http://ok.test/,NEWS,News Media,2024-01-01,me,\n"
        "notaurl,NEWS,News Media,2024-01-01,me,\n",
        encoding="utf-8",
    )
    proc = subprocess.run(
        [*CENSORSCOPE, "lists", "validate", str(bad)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2
    assert f"{bad}:3:" in proc.stdout


def test_lists_validate_strict_fails_on_warnings(tmp_path: Path) -> None:
    odd = tmp_path / "odd.csv"
    odd.write_text("Keyword,Keyword Type\n甲乙x丙丁,combo\n", encoding="utf-8")
    lenient = subprocess.run(
        [*CENSORSCOPE, "lists", "validate", str(odd)], capture_output=True, text=True, timeout=60
    )
    assert lenient.returncode == 0, lenient.stdout
    assert f"{odd}:2: keyword: warning: marked 'combo'" in lenient.stdout
    strict = subprocess.run(
        [*CENSORSCOPE, "lists", "validate", "--strict", str(odd)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert strict.returncode == 2, strict.stdout


def _write_list(path: Path, urls: list[str]) -> None:
    rows = ["url,category_code,category_description,date_added,source,notes"]
    rows += [f"{u},NEWS,News Media,2024-01-01,test," for u in urls]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")


def _report_id(results: Path) -> str:
    [manifest] = list((results / "reports").glob("*.json"))
    return manifest.stem


def _wait_for_lines(
    results: Path, count: int, proc: subprocess.Popen[bytes], deadline: float = 60
) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        files = list(results.glob("raw/date=*/vantage=*/test_name=*/*.jsonl"))
        if files and files[0].read_bytes().count(b"\n") >= count:
            return
        if proc.poll() is not None:
            raise AssertionError("the run ended before it could be interrupted")
        time.sleep(0.02)
    raise AssertionError("the run did not progress")


@pytest.mark.parametrize("how", ["kill", "interrupt"])
def test_killed_run_resumes_and_measures_each_input_once(
    world: World, tmp_path: Path, how: str
) -> None:
    urls = [world.url(name) for name in world.many]
    testlist = tmp_path / "many.csv"
    _write_list(testlist, urls)
    results = tmp_path / "results"
    cmd = [
        *CENSORSCOPE,
        "run",
        "web_connectivity",
        "--testlist",
        str(testlist),
        "--results",
        str(results),
        "--resolver",
        world.truthful.address,
        "--helper",
        world.helper_url,
        "--no-progress",
        "--concurrency",
        "2",
        "--timeout",
        "10",
    ]
    # SIGINT back to its default in the child: a shell that started us in the background set
    # it to "ignore", and Python would then never raise KeyboardInterrupt.
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        _wait_for_lines(results, 10, proc)
        proc.send_signal(signal.SIGKILL if how == "kill" else signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    report_id = _report_id(results)
    if how == "interrupt":
        assert proc.returncode == 130  # 128 + SIGINT
        # The hint works typed as shown: it names the results directory the report is in.
        assert f"--resume {report_id} --results {shlex.quote(str(results))}" in err.decode()
    else:
        assert proc.returncode == -signal.SIGKILL
    first = stored(results)  # asserts every file ends with a complete line
    assert 10 <= len(first) < len(urls)
    assert all(c == 1 for c in Counter(m["input"] for m in first).values())

    run = subprocess.run(
        [
            *CENSORSCOPE,
            "run",
            "web_connectivity",
            "--resume",
            report_id,
            "--results",
            str(results),
            "--resolver",
            world.truthful.address,
            "--helper",
            world.helper_url,
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert f"{len(urls) - len(first)} measured" in run.stdout
    final = stored(results)
    counts = Counter(m["input"] for m in final)
    assert set(counts) == set(urls)
    assert set(counts.values()) == {1}
    assert {m["report_id"] for m in final} == {report_id}
    assert all(m["test_keys"]["blocking"] is False for m in final)
