"""censor_trace against the lab: the censor's hop is known (cs-censor is hop 1 from the vantages,
the servers hop 2), so the trace must find it from cs-vp-cn and find nothing from cs-vp-open.

The scenario is the default one with residual blocking shortened to RESIDUAL_S, so that two runs
to one endpoint fit in a test when paced RUN_PAUSE_S apart (the nettest's own default pause is
meant for real censors).
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lab import topology
from lab.topology import LabInfo

RESIDUAL_S = 1.0
RUN_PAUSE_S = RESIDUAL_S + 0.5
RUN_TIMEOUT_S = 60.0
# The router between the censored vantage and the servers (docs/lab.md), where the censor is.
CENSOR_HOP_TTL = 1
CENSOR_ROUTER = {"cn": "10.77.1.1", "open": "10.77.2.1"}


@pytest.fixture(scope="module")
def tlab(lab: LabInfo) -> Iterator[LabInfo]:
    """The lab with short residual blocking; the session's scenario is restored afterwards."""
    scen = lab.scenario
    short = dataclasses.replace(
        scen, censor=dataclasses.replace(scen.censor, residual_seconds=RESIDUAL_S)
    )
    yield topology.up(short)
    topology.up(lab.scenario)


def _trace(lab: LabInfo, vantage: str, url: str, results: Path) -> subprocess.Popen[str]:
    argv = [
        *lab.vantages[vantage].exec_prefix, *topology._censorscope_argv(), "run", "censor_trace",
        "--input", url, "--keyword", lab.scenario.censor.keywords[0][0],
        "--trace-max-ttl", "4", "--trace-step-pause", "0.05", "--trace-runs", "2",
        "--trace-run-pause", str(RUN_PAUSE_S), "--timeout", "5",
        "--results", str(results), "--vantage", vantage, "--no-progress",
    ]  # fmt: skip
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=topology._python_env())  # fmt: skip


@pytest.fixture(scope="module")
def traces(
    tlab: LabInfo, spares: Any, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, dict[str, Any]]:
    """vantage -> test_keys of one trace to a fresh server address (both vantages at once)."""
    procs = {}
    for vantage in ("cn", "open"):
        results = tmp_path_factory.mktemp(f"censor_trace-{vantage}")
        procs[vantage] = (_trace(tlab, vantage, f"http://{spares.v4()}/", results), results)
    out: dict[str, dict[str, Any]] = {}
    try:
        for vantage, (proc, results) in procs.items():
            _, err = proc.communicate(timeout=RUN_TIMEOUT_S)
            assert proc.returncode == 0, f"{vantage} exited {proc.returncode}: {err[-2000:]}"
            lines = [
                json.loads(line)
                for path in results.glob("raw/date=*/vantage=*/test_name=censor_trace/*.jsonl")
                for line in path.read_text().splitlines()
            ]
            assert len(lines) == 1, lines
            out[vantage] = lines[0]["test_keys"]
    finally:
        for proc, _ in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    return out


def test_censor_hop_found_from_cn(traces: dict[str, dict[str, Any]]) -> None:
    keys = traces["cn"]
    assert keys["packet_capture"] == "ok"
    assert (keys["blocking"], keys["blocking_detail"]) == ("http-failure", "tcp.rst_injected")
    hop = keys["censor_hop"]
    assert (hop["ttl"], hop["address"]) == (CENSOR_HOP_TTL, CENSOR_ROUTER["cn"])
    # Both runs (the second after the residual window) agree.
    assert (hop["confidence"], hop["runs"]) == (1.0, 2)
    first = keys["hops"][0]
    # At TTL 1 both requests expired at the router, which said so.
    assert first["address"] == CENSOR_ROUTER["cn"]
    assert first["keyword"]["outcome"] == first["control"]["outcome"] == "timeout"
    # The lab's censor reads packets after its router's forwarding: it reacts at TTL 2, where
    # the control reached the server; its reset's TTL (unchanged 64) dates it to hop 1.
    last = keys["hops"][-1]
    assert last["control"]["outcome"] == "response"
    assert last["keyword"]["outcome"] == "reset"
    assert last["keyword"]["rst_ttl"] != last["control"]["server_ttl"]


def test_no_censor_hop_from_open(traces: dict[str, dict[str, Any]]) -> None:
    keys = traces["open"]
    assert keys["packet_capture"] == "ok"
    assert (keys["blocking"], keys["censor_hop"]) == (False, None)
    assert keys["hops"][0]["address"] == CENSOR_ROUTER["open"]
    assert keys["hops"][-1]["keyword"]["outcome"] == "response"
