"""http_keyword end to end on loopback: probe -> keyword censor (127.0.0.5) -> helper echo.

The helper (a real uvicorn with echo ports) listens on 127.0.0.4; tests/loopback/keyword_censor
relays the same ports on 127.0.0.5 and resets connections whose bytes carry a keyword, with an
optional residual window. The probe speaks real HTTP and TLS through it.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from backend.helper import DNSZoneConfig, EchoConfig
from probes.nettests.base import ProbeContext
from probes.nettests.http_keyword import HTTPKeyword
from probes.nettests.keyword_placements import PLACEMENTS, control_word, encodings_for, shape
from probes.nettests.keyword_residual import TaintTracker
from tests.loopback import ServerThread
from tests.loopback.keyword_censor import FORGED_ANSWER, KeywordCensor, patterns_for, run_helper

HELPER_HOST, CENSOR_HOST = "127.0.0.4", "127.0.0.5"
CENSORED = ["falun", "法轮"]
# Short windows keep the tests fast; the real one (~90 s) is the nettest's default.
RESIDUAL = 0.6
ZONE = "probe.censorscope.test"


class Setup:
    def __init__(self, base_port: int, censor: KeywordCensor, ports: list[int]) -> None:
        self.helper_url = f"http://{CENSOR_HOST}:{base_port}/"
        self.base_port = base_port
        self.censor = censor
        self.ports = ports


@pytest.fixture(scope="module")
def censored() -> Iterator[Setup]:
    echo = EchoConfig(HELPER_HOST, [0, 0, 0], [0, 0, 0])
    zone = DNSZoneConfig(ZONE, HELPER_HOST, HELPER_HOST, 0)
    with run_helper(HELPER_HOST, echo=echo, dns_zone=zone) as (base, port):
        info = httpx.get(base + "echo", timeout=5).json()
        ports = [port, *info["tcp_ports"], *info["tls_ports"]]
        censor = KeywordCensor(
            CENSOR_HOST, HELPER_HOST, ports, patterns_for(CENSORED), RESIDUAL, info["dns_port"]
        )
        with ServerThread("keyword-censor") as thread:
            thread.start(censor)
            yield Setup(port, censor, ports)


def measure(
    setup: Setup, keyword: str, helper_url: str | None = None, **options: Any
) -> dict[str, Any]:
    options.setdefault("residual_window", RESIDUAL)
    # Each call is a new probe run that knows nothing of the last one's triggers: let the
    # censor's residual windows from earlier tests expire first.
    time.sleep(RESIDUAL)
    fingerprints = options.pop("fingerprints", [])
    ctx = ProbeContext(
        helpers=[helper_url or setup.helper_url],
        timeout=5.0,
        options=options,
        fingerprint_files=fingerprints,
    )

    async def go() -> dict[str, Any]:
        nettest = HTTPKeyword(ctx)
        await nettest.setup()
        try:
            return await nettest.measure(keyword)
        finally:
            await nettest.close()

    return asyncio.run(go())


def test_benign_keyword_is_delivered_everywhere(censored: Setup) -> None:
    keys = measure(censored, "weather")
    assert keys["blocking"] is False and keys["blocking_detail"] is None
    for placement in PLACEMENTS:
        result = keys["placements"][placement]
        assert result["outcome"] == "delivered", placement
        assert len(result["keyword_tries"]) == 1


@pytest.mark.parametrize("word", CENSORED)
def test_censored_keyword_is_reset_in_every_placement(censored: Setup, word: str) -> None:
    keys = measure(censored, word, keyword_tries=2)
    assert keys["blocking"] == "tcp_ip"
    assert keys["blocking_detail"] == "tcp.rst_injected.path"
    assert keys["blocked_placements"] == list(PLACEMENTS)
    for placement in PLACEMENTS:
        result = keys["placements"][placement]
        assert result["control_before"]["outcome"] == "delivered"
        assert result["control_after"]["outcome"] == "delivered"
        if placement == "dns":
            continue
        assert [t["outcome"] for t in result["keyword_tries"]] == ["reset", "reset"]
        # the censor's residual window shows on the same endpoint right after the trigger
        assert result["residual_observed"] is True
    assert keys["placements"]["sni"]["blocking"] == "tls"
    assert keys["placements"]["sni"]["blocking_detail"] == "tls.sni_reset.sni"
    dns = keys["placements"]["dns"]
    assert (dns["blocking"], dns["blocking_detail"]) == ("dns", "dns.injected.dns")
    assert dns["keyword_tries"][0]["addrs"] == [FORGED_ANSWER]
    assert dns["control_before"]["addrs"] == [HELPER_HOST]


def test_combination_carries_every_part(censored: Setup) -> None:
    keys = measure(censored, "tiananmen+falun", placements=["query"], keyword_tries=1)
    assert keys["keyword_parts"] == ["tiananmen", "falun"]
    assert keys["blocking_detail"] == "tcp.rst_injected.query"


def test_without_residual_probe_sees_a_fresh_endpoint(censored: Setup) -> None:
    """The tries of one keyword never reuse a triple the probe itself tainted."""
    keys = measure(censored, "falun", placements=["path"], keyword_tries=3)
    tries = keys["placements"]["path"]["keyword_tries"]
    assert len({t["address"] for t in tries}) == 3


def test_control_word_has_the_same_shape() -> None:
    for placement in PLACEMENTS:
        for word in ("falun", "法轮功", "a b", "天安門"):
            for encoding in encodings_for(placement, word):
                benign = control_word(placement, word, encoding)
                req = shape(placement, word, encoding=encoding)
                ctl = shape(placement, benign, encoding=encoding)
                assert (req.method, len(req.target), len(req.host), len(req.body)) == (
                    ctl.method, len(ctl.target), len(ctl.host), len(ctl.body),
                )  # fmt: skip
                assert (req.sni is None) == (ctl.sni is None)
                assert benign != word


@pytest.mark.parametrize(
    ("word", "placement", "expected"),
    [
        ("falun", "path", ["utf-8"]),  # ASCII: the same bytes in every encoding
        ("天安门", "query", ["utf-8", "gb18030"]),  # simplified: Big5 cannot carry 门
        ("天安門", "body", ["utf-8", "gb18030", "big5"]),  # traditional
        ("天安門", "host", ["idna"]),
        ("falun", "sni", ["ascii"]),
    ],
)
def test_encodings_a_word_is_sent_in(word: str, placement: str, expected: list[str]) -> None:
    assert encodings_for(placement, word) == expected
    wire = {e: shape(placement, word, encoding=e) for e in expected}
    assert len({(s.target, s.body, s.host) for s in wire.values()}) == len(expected)
    assert encodings_for(placement, word, ("utf-8",)) == expected[:1]


def test_a_filter_on_gbk_bytes_is_found_in_that_encoding_only(censored: Setup) -> None:
    """A censor that matches the GB18030 bytes of a word (a GBK page's form and query), not its
    UTF-8: the placement is blocked, and the measurement says in which encoding (issue 15)."""
    word = "天安门"
    gbk = word.encode("gb18030")
    censor = KeywordCensor("127.0.0.6", HELPER_HOST, censored.ports,
                           [gbk, quote(gbk, safe="").encode()], RESIDUAL)  # fmt: skip
    with ServerThread("gbk-censor") as thread:
        thread.start(censor)
        url = f"http://127.0.0.6:{censored.base_port}/"
        keys = measure(censored, word, url, placements=["query", "host"], keyword_tries=2)
        # Only UTF-8 asked for: the filter is not seen (what the default encodings are for).
        utf8_only = measure(censored, word, url, placements=["query"], encodings=["utf-8"])
    assert utf8_only["blocking"] is False
    query = keys["placements"]["query"]
    assert (query["blocking_detail"], query["encoding"]) == ("tcp.rst_injected.query", "gb18030")
    assert {e: r["outcome"] for e, r in query["encodings"].items()} == {
        "utf-8": "delivered",
        "gb18030": "reset",
    }
    assert query["encoding_results"]["utf-8"]["keyword_tries"][0]["outcome"] == "delivered"
    host = keys["placements"]["host"]
    assert (host["blocking"], host["encoding"]) == (False, "idna")
    assert keys["blocked_placements"] == ["query"]


def test_tracker_marks_failures_inside_a_foreign_taint_as_residual() -> None:
    async def go() -> tuple[bool, bool, bool]:
        tracker = TaintTracker([("127.0.0.1", 1), ("127.0.0.1", 2)], window=30.0)
        first = await tracker.acquire()
        tracker.release(first)
        tracker.taint(first)
        second = await tracker.acquire()
        return first != second, tracker.tainted_during(first, 0, 1e12), tracker.is_tainted(second)

    assert asyncio.run(go()) == (True, True, False)


def test_cli_run_http_keyword(censored: Setup, tmp_path: Path) -> None:
    keywords = tmp_path / "keywords.csv"
    keywords.write_text(
        "keyword,language,category,source\nweather,en,control,test\nfalun,en,religion,test\n",
        encoding="utf-8",
    )
    results = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, "-c", "from probes.cli import main; main()", "run", "http_keyword",
         "--keywords", str(keywords), "--helper", censored.helper_url, "--results", str(results),
         "--residual-window", str(RESIDUAL), "--keyword-tries", "2", "--concurrency", "1",
         "--placement", "path", "--placement", "sni"],
        capture_output=True, text=True, timeout=60, cwd=Path(__file__).resolve().parents[1],
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(x) for p in results.rglob("*.jsonl") for x in p.read_text().splitlines()]
    by_input = {m["input"]: m["test_keys"] for m in lines}
    assert by_input["weather"]["blocking"] is False
    assert by_input["falun"]["blocking"] == "tcp_ip"
    assert set(by_input["falun"]["placements"]) == {"path", "sni"}
    assert lines[0]["test_name"] == "http_keyword"


def test_block_page_instead_of_the_echo(censored: Setup, tmp_path: Path) -> None:
    """A censor answering a national block page: http-diff, with the fingerprint named."""
    import csv as csv_module

    from tests.loopback import blockpage_fingerprint

    fp = blockpage_fingerprint()
    csv = tmp_path / "http.csv"
    with csv.open("w", newline="", encoding="utf-8") as fh:
        out = csv_module.writer(fh)
        out.writerow(["name", "scope", "other_names", "location_found", "pattern_type",
                      "pattern", "confidence_no_fp", "expected_countries", "source", "exp_url",
                      "notes"])  # fmt: skip
        out.writerow([fp.name, "nat", "", "body", "contains", fp.pattern, "5", "", "test", "", ""])
    host = "127.0.0.12"
    censor = KeywordCensor(host, HELPER_HOST, censored.ports, patterns_for(["falun"]), 0.0,
                           action="blockpage")  # fmt: skip
    with ServerThread("blockpage-censor") as thread:
        thread.start(censor)
        keys = measure(
            censored, "falun", f"http://{host}:{censored.base_port}/",
            placements=["path", "body"], keyword_tries=1, fingerprints=[str(csv)],
        )  # fmt: skip
    assert keys["blocking"] == "http-diff"
    assert keys["blocking_detail"] == "http.blockpage.path"
    tries = keys["placements"]["body"]["keyword_tries"]
    assert tries[0]["outcome"] == "blockpage" and tries[0]["fingerprints"] == [fp.name]
    assert tries[0]["status_code"] == 403


def test_a_zero_residual_window_is_kept() -> None:
    """--residual-window 0 (the option's minimum) means no wait, not the 90 s default."""
    assert HTTPKeyword(ProbeContext(vantage="v", options={"residual_window": 0.0})).window == 0.0
    assert HTTPKeyword(ProbeContext(vantage="v")).window == 90.0


def test_taints_outlive_the_run_that_made_them(tmp_path: Path) -> None:
    """A scheduled run starts within the window of the last run's triggers: the new process
    reads them back and keeps off those endpoints until they expire (issue 15 item 4)."""
    from probes.nettests.keyword_residual import TaintFile

    endpoints = [("127.0.0.1", p) for p in range(1, 5)]
    first = TaintTracker(endpoints, window=30.0)
    first.taint(("127.0.0.1", 2))
    first.taint(("127.0.0.1", 3))
    store = TaintFile(tmp_path / "taints.json")
    store.save(first.export())
    store.save({"127.0.0.1:9": time.time() - 1})  # expired: dropped on load

    async def picks(tracker: TaintTracker) -> set[tuple[str, int]]:
        chosen = set()
        for _ in range(8):
            ep = await tracker.acquire()
            tracker.release(ep)
            chosen.add(ep)
        return chosen

    second = TaintTracker(endpoints, window=30.0)
    assert second.restore(store.load()) == 2
    assert asyncio.run(picks(second)) == {("127.0.0.1", 1), ("127.0.0.1", 4)}
    assert set(store.load()) == {"127.0.0.1:2", "127.0.0.1:3"}
    fresh = TaintTracker(endpoints, window=30.0)  # nothing restored: every endpoint in turn
    assert asyncio.run(picks(fresh)) == set(endpoints)
