"""The runner: streaming, concurrency, per-host pacing, repeats, abandoned inputs, errors.

A small in-test nettest stands in for the network (it only sleeps and counts), so these
tests are about scheduling; the real nettests are exercised end to end elsewhere.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from probes.measurement import Scrubber
from probes.nettests.base import Nettest, ProbeContext
from probes.runner import HostPacer, RunOptions, expand_repeats, host_key, run_nettest
from probes.store import ReportManifest, ResultsStore


class CountingNettest(Nettest):
    name = "counting_test"
    version = "0.0.1"

    def __init__(self, ctx: ProbeContext, delay: float = 0.01) -> None:
        super().__init__(ctx)
        self.delay = delay
        self.active: Counter[str] = Counter()
        self.peak_per_host: Counter[str] = Counter()
        self.active_total = 0
        self.peak_total = 0

    async def measure(self, input_: str | None) -> dict[str, Any]:
        host = host_key(input_)
        self.active[host] += 1
        self.active_total += 1
        self.peak_per_host[host] = max(self.peak_per_host[host], self.active[host])
        self.peak_total = max(self.peak_total, self.active_total)
        try:
            if input_ and "hang" in input_:
                await asyncio.sleep(3600)
            if input_ and "bug" in input_:
                raise RuntimeError("a bug in the nettest")
            await asyncio.sleep(self.delay)
        finally:
            self.active[host] -= 1
            self.active_total -= 1
        blocked = "blocked" in (input_ or "")
        return {"blocking": "dns" if blocked else False, "seen_from": "10.9.8.7"}


def _setup(tmp_path: Path) -> tuple[ReportManifest, ResultsStore]:
    manifest = ReportManifest(
        report_id="r1",
        test_name="counting_test",
        vantage="v",
        date="2026-01-01",
        test_start_time="2026-01-01 00:00:00",
    )
    return manifest, ResultsStore(tmp_path)


def _run(nettest: Nettest, inputs: Any, tmp_path: Path, **options: Any) -> Any:
    manifest, store = _setup(tmp_path)
    with store.open_report(manifest) as writer:
        summary = asyncio.run(
            run_nettest(nettest, inputs, manifest, writer, RunOptions(**options), progress=False)
        )
    return summary, list(store.iter_measurements())


def test_every_input_is_stored_with_base_keys_and_scrubbed(tmp_path: Path) -> None:
    ctx = ProbeContext(vantage="v", probe_cc="IT", scrubber=Scrubber(["10.9.8.7"]))
    inputs = [f"http://site{i}.test/" for i in range(30)] + ["http://blocked.test/"]
    summary, stored = _run(CountingNettest(ctx), inputs, tmp_path, concurrency=8)
    assert summary.measured == 31 and summary.blocked == 1
    assert summary.blocked_inputs == ["http://blocked.test/"]
    assert sorted(m.input for m in stored) == sorted(inputs)
    m = stored[0]
    assert m.report_id == "r1" and m.probe_cc == "IT" and m.annotations["vantage"] == "v"
    assert m.test_keys["seen_from"] == "[scrubbed]"


def test_concurrency_and_per_host_limits_hold(tmp_path: Path) -> None:
    nettest = CountingNettest(ProbeContext(), delay=0.02)
    inputs = [f"http://same.test/{i}" for i in range(12)] + [
        f"http://h{i}.test/" for i in range(20)
    ]
    _run(nettest, inputs, tmp_path, concurrency=6, per_host_concurrency=2, per_host_interval=0.0)
    assert nettest.peak_total <= 6
    assert nettest.peak_per_host["same.test"] == 2


class SharedServerNettest(CountingNettest):
    """Every input goes to one server that takes one at a time (quic_sni --sni-endpoint)."""

    def pacing(self, input_: str | None) -> tuple[str, int] | None:
        return "192.0.2.1:443", 1


def test_a_shared_server_queues_inputs_before_their_budgets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("probes.runner.ABANDON_GRACE_SECONDS", 0.0)
    nettest = SharedServerNettest(ProbeContext(), delay=0.15)
    inputs = [f"name{i}.test" for i in range(5)]
    # Five inputs of 0.15 s each, one at a time, against a 0.4 s budget: had the queue
    # counted against their budgets, the third would have been abandoned.
    summary, stored = _run(nettest, inputs, tmp_path, concurrency=16, timeout=0.4)
    assert nettest.peak_total == 1
    assert summary.measured == 5 and summary.inconclusive == 0
    assert all(m.test_keys["blocking"] is False for m in stored)


def test_inputs_are_pulled_lazily(tmp_path: Path) -> None:
    pulled = 0

    def stream() -> Iterator[str]:
        nonlocal pulled
        for i in range(1000):
            pulled += 1
            yield f"http://h{i}.test/"

    nettest = CountingNettest(ProbeContext(), delay=0.0)
    seen_when_first_done: list[int] = []
    manifest, store = _setup(tmp_path)
    with store.open_report(manifest) as writer:
        asyncio.run(
            run_nettest(
                nettest,
                stream(),
                manifest,
                writer,
                RunOptions(concurrency=4),
                progress=False,
                on_measurement=lambda m: seen_when_first_done.append(pulled),
            )
        )
    # When the first measurement was stored, only a handful of inputs had been read.
    assert seen_when_first_done[0] < 50
    assert pulled == 1000


def test_hung_input_is_abandoned_and_recorded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("probes.runner.ABANDON_GRACE_SECONDS", 0.0)
    summary, stored = _run(
        CountingNettest(ProbeContext()),
        ["http://hang.test/", "http://ok.test/"],
        tmp_path,
        timeout=0.2,
    )
    by_input = {m.input: m.test_keys for m in stored}
    assert by_input["http://hang.test/"]["failure"] == "generic_timeout_error"
    assert by_input["http://hang.test/"]["blocking"] is None
    assert by_input["http://ok.test/"]["blocking"] is False
    assert summary.inconclusive == 1


def test_a_nettest_bug_skips_the_input_and_is_counted(tmp_path: Path) -> None:
    summary, stored = _run(
        CountingNettest(ProbeContext()), ["http://bug.test/", "http://ok.test/"], tmp_path
    )
    assert summary.errors == 1
    assert [m.input for m in stored] == ["http://ok.test/"]


def test_expand_repeats_subtracts_done_measurements() -> None:
    done: dict[str | None, int] = {"a": 2, "b": 3}
    assert list(expand_repeats(["a", "b", "c"], 3, done)) == ["a", "c", "c", "c"]


def test_host_key() -> None:
    assert host_key("https://Example.ORG:8443/x") == "example.org"
    assert host_key("example.org") == "example.org"
    assert host_key(None) == ""


def test_pacer_spaces_starts_to_one_host() -> None:
    async def go() -> list[float]:
        pacer = HostPacer(per_host=4, interval=0.05)
        loop = asyncio.get_running_loop()
        starts: list[float] = []
        for _ in range(3):
            await pacer.acquire("h")
            starts.append(loop.time())
            await pacer.release("h")
        return starts

    starts = asyncio.run(go())
    # Spacing, not speed: each start comes at least `interval` after the previous one.
    assert all(b - a >= 0.049 for a, b in itertools.pairwise(starts))


class PickyNettest(CountingNettest):
    @classmethod
    def input_problem(cls, input_: str) -> str | None:
        return "not a test URL" if "bad" in input_ else None


def test_an_invalid_input_is_stored_with_its_reason_and_not_measured(tmp_path: Path) -> None:
    nettest = PickyNettest(ProbeContext())
    summary, stored = _run(nettest, ["http://bad.test/", "http://ok.test/"], tmp_path)
    by_input = {m.input: m.test_keys for m in stored}
    assert by_input["http://bad.test/"] == {
        "failure": "unknown_failure: not a test URL",
        "blocking": None,
        "blocking_detail": None,
    }
    assert by_input["http://ok.test/"]["blocking"] is False
    assert nettest.peak_per_host["bad.test"] == 0  # measure() never ran for it
    assert summary.measured == 2 and summary.errors == 0
