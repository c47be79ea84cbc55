"""The probe's web_connectivity verdicts against the lab's ground truth, end to end.

`censorscope run web_connectivity` runs inside each vantage as a subprocess, over every input
of the default scenario in one run per vantage, and its stored JSONL is compared with
`Scenario.ground_truth()`: the censored vantage must reach exactly the scenario's `blocking`
and `blocking_detail`, the open vantage must find nothing blocked.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from lab import topology
from lab.topology import LabInfo

# Generous: the slowest inputs (blackhole, down, injected DNS) wait out the probe's timeouts.
RUN_TIMEOUT_S = 300.0


@pytest.fixture(scope="module")
def fresh_lab(lab: LabInfo) -> Iterator[LabInfo]:
    """The default lab restarted, so that residual censorship other tests triggered on the
    scenario's own addresses (e.g. keyword resets on keyword-reset.example) is forgotten: a
    residual RST would turn an HTTP reset into a TCP one, a true but different verdict."""
    yield topology.up(lab.scenario)


def _probe_argv(lab: LabInfo, vantage: str, results: Path) -> list[str]:
    argv = [*lab.vantages[vantage].exec_prefix, *topology._censorscope_argv()]
    argv += ["run", "web_connectivity"]
    for url in lab.scenario.inputs():
        argv += ["--input", url]
    assert lab.helper_url, "the lab's control helper is not running"
    argv += [
        "--resolver",
        lab.resolver,
        "--helper",
        lab.helper_url,
        "--ca-file",
        lab.ca_pem,
        "--fingerprints",
        lab.fingerprints,
        "--results",
        str(results),
        "--vantage",
        vantage,
        "--no-progress",
        # Packet capture on (opt-in in web_connectivity): the verdicts must not change.
        "--pcap",
        str(results / f"pcap-{vantage}"),
    ]
    return argv


def _verdicts(results: Path, vantage: str) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    files = list(results.glob(f"raw/date=*/vantage={vantage}/test_name=web_connectivity/*.jsonl"))
    assert files, f"no results stored for {vantage} under {results}"
    for path in files:
        for line in path.read_text().splitlines():
            m = json.loads(line)
            assert m["input"] not in out, f"{m['input']} measured twice at {vantage}"
            out[m["input"]] = m["test_keys"]
    return out


@pytest.fixture(scope="module")
def verdicts(
    fresh_lab: LabInfo, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, dict[str, dict[str, Any]]]:
    """vantage -> input -> test_keys, from one probe run per vantage (both run at once)."""
    results = tmp_path_factory.mktemp("probe-in-lab")
    procs = {
        v: subprocess.Popen(
            _probe_argv(fresh_lab, v, results),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=topology._python_env(),
        )
        for v in ("cn", "open")
    }
    for vantage, proc in procs.items():
        try:
            _, err = proc.communicate(timeout=RUN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            for p in procs.values():
                p.kill()
                p.communicate()
            raise
        assert proc.returncode == 0, f"probe at {vantage} exited {proc.returncode}: {err[-2000:]}"
    return {v: _verdicts(results, v) for v in procs}


def test_every_input_measured_once_per_vantage(
    fresh_lab: LabInfo, verdicts: dict[str, dict[str, dict[str, Any]]]
) -> None:
    for vantage in ("cn", "open"):
        assert set(verdicts[vantage]) == set(fresh_lab.scenario.inputs())


@pytest.mark.parametrize("vantage", ["cn", "open"])
def test_control_reached_for_every_input(
    verdicts: dict[str, dict[str, dict[str, Any]]], vantage: str
) -> None:
    failed = {u: k["control_failure"] for u, k in verdicts[vantage].items() if k["control_failure"]}
    assert not failed


def test_censored_vantage_matches_ground_truth(
    fresh_lab: LabInfo, verdicts: dict[str, dict[str, dict[str, Any]]]
) -> None:
    truth = fresh_lab.scenario.ground_truth()
    got = {url: (keys["blocking"], keys["blocking_detail"]) for url, keys in verdicts["cn"].items()}
    want = {url: (t["blocking"], t["blocking_detail"]) for url, t in truth.items()}
    wrong = {url: {"probe": got[url], "truth": want[url]} for url in want if got[url] != want[url]}
    assert not wrong


def test_open_vantage_sees_nothing_blocked(
    verdicts: dict[str, dict[str, dict[str, Any]]],
) -> None:
    blocked = {
        url: k["blocking"] for url, k in verdicts["open"].items() if k["blocking"] is not False
    }
    assert not blocked


def test_every_mechanism_was_exercised(fresh_lab: LabInfo) -> None:
    """The comparison above is only as good as the scenario's coverage of the censor."""
    kinds = {d.block for d in fresh_lab.scenario.domains}
    assert {"dns_inject", "dns_nxdomain", "dns_bogon", "http_rst", "sni_rst"} <= kinds
    assert {"blackhole", "blockpage", "throttle", "down", "none"} <= kinds


def test_forged_resets_show_in_the_packets(
    fresh_lab: LabInfo, verdicts: dict[str, dict[str, dict[str, Any]]]
) -> None:
    """At cn the keyword and SNI resets are the censor's (TTL 64 against the server's 63):
    x_packets says tcp.rst_injected beside the unchanged verdict; at open no flow is reset."""
    rst_blocks = {"http_rst", "sni_rst"}
    for url, keys in verdicts["cn"].items():
        block = fresh_lab.scenario.domain(urlsplit(url).hostname or "").block
        if keys.get("packet_capture") is None:
            assert block not in rst_blocks, url  # no address, nothing to capture
            continue
        assert keys["packet_capture"] == "ok", url
        injected = keys["x_packets"]["evidence"] == "tcp.rst_injected"
        assert injected == (block in rst_blocks), (url, block, keys["x_packets"])
        assert keys["x_packet_detail"] == keys["x_packets"]["evidence"]
    for url, keys in verdicts["open"].items():
        if keys.get("packet_capture") is not None:
            assert keys["x_packets"]["evidence"] is None, url
