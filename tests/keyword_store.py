"""A results store of real keyword measurements at two vantages (analysis tests, issue 15).

The measurements come from the nettests themselves on loopback, not from hand-written keys:
- http_keyword: the "cn" vantage reaches the helper's echo ports through a keyword censor
  (tests/loopback/keyword_censor: RST on a keyword, short residual window); the "open" vantage
  reaches the same helper directly;
- message_delivery: the "cn" vantage's relay drops messages carrying a rule, the "open"
  vantage's relay (another helper) has no rule;
- keyword_isolation: the isolate command's search (probes.commands.isolate.run_isolation) on
  the cn relay, for a message that holds a rule and a benign word.
Each nettest's test_keys are stored as the runner stores them (probes.store), on DAYS days.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from backend.helper import EchoConfig, RelayConfig
from probes.channels.relay import RelayChannel
from probes.measurement import Measurement, new_measurement_uid, new_report_id, ooni_time
from probes.nettests.base import ProbeContext
from probes.nettests.http_keyword import HTTPKeyword
from probes.nettests.keyword_isolation import DeliveryTester
from probes.nettests.message_delivery import MessageDelivery, Postman
from probes.store import ReportManifest, ResultsStore
from tests.loopback import ServerThread
from tests.loopback.keyword_censor import KeywordCensor, patterns_for, run_helper

HELPER_HOST, CENSOR_HOST = "127.0.0.21", "127.0.0.22"
RELAY_CN, RELAY_OPEN = "127.0.0.23", "127.0.0.24"
TOKEN = "kw-t0ken"
CENSORED = "falun"
BENIGN = "weather"
RULE = ("tiananmen", "1989")
COMBINATION = "tiananmen+1989+square"  # holds RULE: blocked; isolation finds RULE in it
PLACEMENTS = ["path", "sni"]
RESIDUAL = 0.4
DEADLINE = 0.4
# Fisher's exact test of 5 blocked vs 5 delivered gives p = 0.008: enough for the q gate
# after Benjamini-Hochberg over every keyword test here; 3 vs 3 (p = 0.1) would not be.
REPEATS = 5
DAYS = 2
START = datetime(2026, 11, 1, 8, 0, tzinfo=UTC)
VANTAGES = {"cn": ("CN", "AS4134"), "open": ("DE", "AS3320")}


class Writer:
    """Appends measurements to one report per (vantage, nettest, day)."""

    def __init__(self, root: Path) -> None:
        self.store = ResultsStore(root)
        self.stack = ExitStack()
        self.reports: dict[tuple[str, str, int], tuple[str, Any]] = {}

    def append(
        self, vantage: str, test_name: str, day: int, minute: int, input_: str, keys: dict[str, Any]
    ) -> None:
        cc, asn = VANTAGES[vantage]
        moment = START + timedelta(days=day)
        key = (vantage, test_name, day)
        if key not in self.reports:
            report_id = new_report_id(test_name, cc, asn, moment)
            manifest = ReportManifest(
                report_id, test_name, vantage, moment.date().isoformat(), ooni_time(moment)
            )
            self.reports[key] = (
                report_id,
                self.stack.enter_context(self.store.open_report(manifest)),
            )
        report_id, writer = self.reports[key]
        when = moment + timedelta(minutes=minute)
        writer.append(
            Measurement(
                test_name=test_name,
                test_version="0.1.0",
                input=input_,
                report_id=report_id,
                measurement_uid=new_measurement_uid(test_name, cc, when),
                probe_cc=cc,
                probe_asn=asn,
                test_start_time=ooni_time(moment),
                measurement_start_time=ooni_time(when),
                test_runtime=1.0,
                annotations={"vantage": vantage},
                test_keys=keys,
            )
        )


async def _http_keyword(helper_url: str, keyword: str) -> dict[str, Any]:
    ctx = ProbeContext(
        helpers=[helper_url],
        timeout=5.0,
        options={"residual_window": RESIDUAL, "keyword_tries": 2, "placements": PLACEMENTS},
    )
    nettest = HTTPKeyword(ctx)
    await nettest.setup()
    try:
        return await nettest.measure(keyword)
    finally:
        await nettest.close()


def _relay(base: str) -> RelayChannel:
    return RelayChannel.from_settings([base], None, {"CENSORSCOPE_RELAY_TOKEN": TOKEN})


async def _message_delivery(base: str, keyword: str) -> dict[str, Any]:
    nettest = MessageDelivery(ProbeContext(helpers=[base]))
    nettest.channel = _relay(base)
    nettest.postman = Postman(nettest.channel, DEADLINE, 0.05)
    try:
        return await nettest.measure(keyword)
    finally:
        await nettest.close()


@contextmanager
def _servers() -> Iterator[dict[str, str]]:
    echo = EchoConfig(HELPER_HOST, [0, 0, 0], [0, 0, 0])
    relay_cn = RelayConfig(rules=(("falun",), RULE), action="drop", token=TOKEN)
    relay_open = RelayConfig(rules=(), action="drop", token=TOKEN)
    with (
        run_helper(HELPER_HOST, echo=echo) as (base, port),
        run_helper(RELAY_CN, relay=relay_cn) as (cn_relay, _),
        run_helper(RELAY_OPEN, relay=relay_open) as (open_relay, _),
    ):
        info = httpx.get(base + "echo", timeout=5).json()
        ports = [port, *info["tcp_ports"], *info["tls_ports"]]
        censor = KeywordCensor(CENSOR_HOST, HELPER_HOST, ports, patterns_for([CENSORED]), RESIDUAL)
        with ServerThread("kw-analysis-censor") as thread:
            thread.start(censor)
            yield {
                "cn": f"http://{CENSOR_HOST}:{port}/",
                "open": base,
                "cn_relay": cn_relay,
                "open_relay": open_relay,
            }


def write_keyword_store(root: Path) -> None:
    """Measure and store (see the module docstring); takes some seconds of residual waits."""
    from probes.commands.isolate import run_isolation

    writer = Writer(root)
    with _servers() as urls, writer.stack:
        for day in range(DAYS):
            for repeat in range(REPEATS):
                for vantage in VANTAGES:
                    for keyword in (CENSORED, BENIGN):
                        time.sleep(RESIDUAL)  # a new run: earlier taints have expired
                        keys = asyncio.run(_http_keyword(urls[vantage], keyword))
                        writer.append(vantage, "http_keyword", day, repeat, keyword, keys)
                    relay = urls[f"{vantage}_relay"]
                    for keyword in (CENSORED, BENIGN, COMBINATION):
                        keys = asyncio.run(_message_delivery(relay, keyword))
                        writer.append(vantage, "message_delivery", day, repeat, keyword, keys)
        tester = DeliveryTester(_relay(urls["cn_relay"]), DEADLINE, 0.05)
        asyncio.run(
            run_isolation(
                tester,
                COMBINATION.split("+"),
                results=root,
                vantage="cn",
                probe_cc="CN",
                probe_asn="AS4134",
            )
        )
