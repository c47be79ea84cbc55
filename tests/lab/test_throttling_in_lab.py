"""Throttling and stalling by SNI in the lab (issue 16 item 3), against the default scenario's
ground truth: the censor paces `sni-throttled.example`'s server bytes (throttle_sni) and stops
forwarding `sni-stalled.example`'s after 16 KiB (stall_sni), whatever the address.

download at cn finds each (throttled; stalled at the censor's byte count) against a control SNI
to the same address, and nothing for an open site; at the open vantage nothing is found.
web_connectivity's body fetch of the stalled name's large object is `http.stalled` at cn.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from bench.accuracy import nettest_argv, read_verdicts, start_probe
from lab import scenario as scenario_mod
from lab.topology import LabInfo

RUN_TIMEOUT_S = 180.0
LARGE = scenario_mod.LARGE_OBJECT_PATH
THROTTLED = f"https://sni-throttled.example{LARGE}"
STALLED = f"https://sni-stalled.example{LARGE}"
OPEN = f"https://open-secure.example{LARGE}"
EXPECTED = {
    THROTTLED: ("throttling", "throttled"),
    STALLED: ("throttling", "stalled"),
    OPEN: (False, None),
}


def _run_both(
    lab: LabInfo, nettest: str, inputs: list[str], tmp: Path, extra: list[str]
) -> dict[str, dict[str, Any]]:
    """vantage -> input -> test_keys, both vantages at once."""
    procs = {
        v: start_probe(nettest_argv(lab, v, nettest, inputs, tmp / v, extra))
        for v in ("cn", "open")
    }
    for v, proc in procs.items():
        try:
            _, err = proc.communicate(timeout=RUN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            pytest.fail(f"{nettest} at {v} did not finish in {RUN_TIMEOUT_S} s")
        assert proc.returncode == 0, f"{nettest} at {v}: {err[-2000:]}"
    return {v: read_verdicts(tmp / v, v, nettest) for v in procs}


@pytest.fixture(scope="module")
def downloads(lab: LabInfo, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("download")
    return _run_both(lab, "download", list(EXPECTED), tmp, ["--concurrency", "3"])


def test_the_lab_scenario_shapes_what_download_should_find(lab: LabInfo) -> None:
    truth = lab.scenario.download_truth(open_sample=0)
    assert {u: (t["blocking"], t["blocking_detail"]) for u, t in truth.items()} == {
        u: v for u, v in EXPECTED.items() if v[0]
    }


def test_download_finds_throttling_and_stalling_at_cn_only(downloads: dict[str, Any]) -> None:
    cn, open_ = downloads["cn"], downloads["open"]
    said = {u: (cn[u]["blocking"], cn[u]["blocking_detail"]) for u in EXPECTED}
    assert said == EXPECTED, {u: cn[u]["x_analysis"] for u in EXPECTED}
    assert {u: open_[u]["blocking"] for u in EXPECTED} == dict.fromkeys(EXPECTED, False), {
        u: open_[u]["x_analysis"] for u in EXPECTED
    }


def test_the_stall_point_is_the_censors_and_the_throttled_rate_is_far_below(
    lab: LabInfo, downloads: dict[str, Any]
) -> None:
    stalled = downloads["cn"][STALLED]
    point = stalled["x_analysis"]["stalled_at"]
    # The censor forwards whole segments up to its byte count: within one MSS of it, TLS
    # handshake included.
    limit = lab.scenario.censor.stall_after_bytes
    assert limit - 1500 < point <= limit
    throttled = downloads["cn"][THROTTLED]["x_analysis"]
    assert throttled["rate_ratio"] <= 0.1
    decisions = lab.censor_stats().get("decisions", {})
    assert decisions.get("stall_drop", 0) > 0 and decisions.get("throttle", 0) > 0


def test_web_connectivity_names_the_frozen_body_stalled_at_cn_only(
    lab: LabInfo, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The stalled name's large object as web_connectivity's input: its body freezes at cn
    (the helper, outside the censor, fetches all of it); the throttled one's small page and
    the open vantage see nothing."""
    tmp = tmp_path_factory.mktemp("web")
    inputs = [STALLED, "https://sni-throttled.example/", "https://sni-stalled.example/"]
    found = _run_both(lab, "web_connectivity", inputs, tmp, ["--timeout", "12"])
    cn = {u: (found["cn"][u]["blocking"], found["cn"][u]["blocking_detail"]) for u in inputs}
    assert cn == {
        STALLED: ("http-failure", "http.stalled"),
        inputs[1]: (False, None),
        inputs[2]: (False, None),
    }
    assert {u: found["open"][u]["blocking"] for u in inputs} == dict.fromkeys(inputs, False)
