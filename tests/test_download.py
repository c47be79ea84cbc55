"""download on loopback: a real HTTPS server of a 1 MiB object behind a relay that throttles
or freezes chosen SNIs (tests/loopback/throttle.py), and the verdict function on its own.

No wall-clock time is asserted: rates are judged against the control's, a stall by bytes."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from probes.nettests.base import ProbeContext
from probes.nettests.download import Download
from probes.nettests.download_analysis import MIN_RATE_BYTES, analyze, transfer_rate
from tests.loopback import ServerThread, TestCA
from tests.loopback.throttle import ObjectServer, SniShaper

FREEZE_AT = 16 * 1024
SLOW_RATE = 32 * 1024
PATH = "/large.bin"


@dataclass
class World:
    ca: TestCA
    shaper: SniShaper


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    with ServerThread("download") as thread:
        ca = TestCA()
        server = thread.start(ObjectServer(ca))
        shaper = thread.start(
            SniShaper(
                "127.0.0.1",
                ("127.0.0.1", server.port),
                rates={"slow.test": SLOW_RATE, "slow-too.test": SLOW_RATE},
                freeze_after={"frozen.test": FREEZE_AT, "frozen-too.test": FREEZE_AT},
            )
        )
        yield World(ca, shaper)


def _run(world: World, url: str, control_sni: str = "example.com") -> dict[str, Any]:
    ctx = ProbeContext(
        ca_file=world.ca.ca_pem_path,
        timeout=30.0,
        options={
            "sni_endpoint": f"127.0.0.1:{world.shaper.port}",
            "control_sni": control_sni,
            "fetch_seconds": 4.0,
            "stall_seconds": 2.0,
        },
    )
    test = Download(ctx)

    async def go() -> dict[str, Any]:
        await test.setup()
        try:
            return await test.measure(url)
        finally:
            await test.close()

    return asyncio.run(go())


def test_an_unshaped_name_is_not_blocked(world: World) -> None:
    keys = _run(world, f"https://open.test{PATH}")
    assert (keys["blocking"], keys["blocking_detail"]) == (False, None), keys["x_analysis"]
    assert [t["role"] for t in keys["transfers"]] == ["target", "control"] * 2
    for t in keys["transfers"]:
        assert (t["ended"], t["status_code"], t["body_length"]) == ("complete", 200, 1 << 20)
        curve = [e for e in t["network_events"] if e["operation"] == "bytes_received_cumulative"]
        counts = [e["num_bytes"] for e in curve]
        assert counts == sorted(counts) and counts[-1] == t["bytes_received"] > 1 << 20


def test_a_throttled_name_is_throttled(world: World) -> None:
    keys = _run(world, f"https://slow.test{PATH}")
    assert (keys["blocking"], keys["blocking_detail"]) == ("throttling", "throttled")
    targets = [t for t in keys["transfers"] if t["role"] == "target"]
    assert {t["ended"] for t in targets} == {"time_cap"}  # still receiving at the cap
    assert keys["x_analysis"]["rate_ratio"] <= 0.1
    assert world.shaper.seen.count("slow.test") >= 2


def test_a_frozen_name_is_stalled_at_the_censors_byte_count(world: World) -> None:
    keys = _run(world, f"https://frozen.test{PATH}")
    assert (keys["blocking"], keys["blocking_detail"]) == ("throttling", "stalled")
    # The relay forwarded exactly FREEZE_AT bytes of the server's side (TLS included).
    assert keys["x_analysis"]["stalled_at"] == FREEZE_AT
    targets = [t for t in keys["transfers"] if t["role"] == "target"]
    # The freeze cut the first TLS record of the response: the head never decrypted, yet the
    # curve shows the bytes that came.
    assert all(t["ended"] == "stalled" and t["failure"] is None for t in targets)
    assert all(t["bytes_received"] == FREEZE_AT for t in targets)


def test_a_control_shaped_alike_clears_the_name(world: World) -> None:
    keys = _run(world, f"https://slow.test{PATH}", control_sni="slow-too.test")
    assert keys["blocking"] is False, keys["x_analysis"]
    keys = _run(world, f"https://frozen.test{PATH}", control_sni="frozen-too.test")
    assert keys["blocking"] is None
    assert {t["ended"] for t in keys["transfers"]} == {"stalled"}


def test_inputs_must_be_https_names() -> None:
    assert Download.input_problem("http://a.test/x") is not None
    assert Download.input_problem("https://127.0.0.1/x") is not None
    assert Download.input_problem("https://a.test/x") is None


# --- the verdict function on hand-made transfers ---------------------------------------------


def _t(role: str, ended: str, size: int, seconds: float, **extra: Any) -> dict[str, Any]:
    base = {
        "role": role,
        "ended": ended,
        "failure": None,
        "failed_operation": None,
        "t_request": 1.0,
        "bytes_at_request": 2000,
        "bytes_received": 2000 + size,
        "t_last_byte": 1.0 + seconds,
    }
    return base | extra


def test_rates_are_bytes_after_the_request_over_the_time_to_the_last_byte() -> None:
    assert transfer_rate(_t("control", "complete", 100_000, 0.5)) == 200_000
    assert transfer_rate(_t("control", "complete", 0, 0.5)) is None


def _rounds(*seconds: tuple[float, float]) -> dict[str, Any]:
    """Rounds of (target, control) 1 MiB transfers taking these times."""
    transfers = []
    for target, control in seconds:
        ended = "complete" if target < 10 else "time_cap"
        transfers.append(_t("target", ended, 1 << 20, target))
        transfers.append(_t("control", "complete", 1 << 20, control))
    return {"transfers": transfers}


def test_each_round_compares_the_target_with_its_own_control() -> None:
    assert analyze(_rounds((20.0, 0.1), (20.0, 1.5))).blocking_detail == "throttled"
    # A tenth is the line (OONI's "extreme throttling"): 1/7.5 is slower, not throttled.
    near = analyze(_rounds((1.5, 0.2), (1.5, 0.2)))
    assert near.blocking is False and near.ratio == pytest.approx(0.2 / 1.5)
    # One round where the target kept up with its control clears the name.
    assert analyze(_rounds((20.0, 0.1), (0.2, 0.2))).blocking is False
    # A busy path slows a target and its control alike; another round's fast control (the
    # path idle again) does not make the first round's target look throttled. The lab's
    # accuracy bench met this case with a median over all controls.
    busy = analyze(_rounds((3.2, 1.8), (2.7, 0.11)))
    assert busy.blocking is False and busy.ratio == pytest.approx(1.8 / 3.2)


def test_null_when_the_evidence_cannot_decide() -> None:
    small = [_t("target", "complete", 1000, 1.0), _t("control", "complete", 1000, 0.01)]
    assert analyze({"transfers": small}).blocking is None
    assert MIN_RATE_BYTES > 1000
    no_control = [_t("target", "complete", 1 << 20, 1.0), _t("control", "failure", 0, 0.0)]
    assert analyze({"transfers": no_control}).blocking is None
    stalled = [_t("target", "stalled", 15000, 0.1), _t("target", "complete", 1 << 20, 0.1)]
    control = [_t("control", "complete", 1 << 20, 0.1)]
    assert "some target" in analyze({"transfers": stalled + control}).why
    behind = [_t("target", "stalled", 15000, 0.1), _t("control", "time_cap", 9000, 9.0)]
    assert analyze({"transfers": behind}).blocking is None


def test_a_handshake_reset_only_for_the_name_is_sni_blocking() -> None:
    reset = {"failure": "connection_reset", "failed_operation": "tls_handshake"}
    targets = [_t("target", "failure", 0, 0.0, **reset) for _ in range(2)]
    control = [_t("control", "complete", 1 << 20, 0.1)]
    found = analyze({"transfers": targets + control})
    assert (found.blocking, found.blocking_detail) == ("tls", "tls.sni_reset")


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "probes.cli", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc


def test_cli_run_then_analyze_report_publish(world: World, tmp_path: Path) -> None:
    """`censorscope run download` stores its verdicts; analyze re-derives them from the
    transfers, and report and publish carry them like any nettest's."""
    results = tmp_path / "results"
    inputs = [f"https://open.test{PATH}", f"https://frozen.test{PATH}"]
    _cli(
        "run", "download", *(a for i in inputs for a in ("--input", i)),
        "--sni-endpoint", f"127.0.0.1:{world.shaper.port}", "--ca-file", world.ca.ca_pem_path,
        "--timeout", "30", "--results", str(results), "--vantage", "lab", "--no-progress",
    )  # fmt: skip
    (path,) = results.glob("raw/date=*/vantage=lab/test_name=download/*.jsonl")
    stored = {m["input"]: m for m in map(json.loads, path.read_text().splitlines())}
    said = {
        i: (m["test_keys"]["blocking"], m["test_keys"]["blocking_detail"])
        for i, m in stored.items()
    }
    assert said == {inputs[0]: (False, None), inputs[1]: ("throttling", "stalled")}
    out = tmp_path / "tables"
    _cli("analyze", "--results", str(results), "--out", str(out))
    table = pd.read_parquet(out / "vantages.parquet").set_index("target")
    assert table["blocked"].to_dict() == {inputs[0]: 0, inputs[1]: 1}
    _cli("report", "--results", str(results), "--out", str(tmp_path / "report.html"))
    assert "download" in (tmp_path / "report.html").read_text()
    _cli("publish", "--results", str(results), "--out", str(tmp_path / "dataset"))
    (part,) = (tmp_path / "dataset" / "data").rglob("test_name=download/*.parquet")
    published = pd.read_parquet(part).set_index("input")
    assert published.loc[inputs[1], "blocking_detail"] == "stalled"
    assert published.loc[inputs[1], "blocking"] == "throttling"


def test_analysis_rederives_the_verdict_from_the_transfers() -> None:
    from analysis.verdicts import Classifier

    controls = [_t("control", "complete", 1 << 20, 0.1)]
    tk = {"transfers": [_t("target", "time_cap", 200_000, 10.0), *controls]}
    row = Classifier()({"test_name": "download", "test_keys": {**tk, "blocking": False}})
    assert (row["blocking"], row["blocking_detail"]) == ("throttling", "throttled")
    assert row["verdict_source"] == "rederived" and "probe said" in row["disagreement"]
    abandoned = {"transfers": [], "blocking": None, "blocking_detail": None}
    assert Classifier()({"test_name": "download", "test_keys": abandoned})["blocking"] is None


def test_the_loader_reads_a_target_transfers_failure(tmp_path: Path) -> None:
    """analyze's measurements frame names the layer a target transfer failed at (download
    keeps failures in its transfers, not in tcp_connect or tls_handshakes records)."""
    from analysis.load import load

    reset = {"failure": "connection_reset", "failed_operation": "tls_handshake"}
    tk = {
        "transfers": [
            _t("target", "failure", 0, 0.0, **reset),
            _t("control", "complete", 1 << 20, 0.1),
        ],
        "blocking": "tls",
        "blocking_detail": "tls.sni_reset",
    }
    day = tmp_path / "raw" / "date=2026-12-07" / "vantage=lab" / "test_name=download"
    day.mkdir(parents=True)
    record = {
        "measurement_uid": "x1",
        "test_name": "download",
        "test_version": "0.1.0",
        "input": "https://a.test/large.bin",
        "measurement_start_time": "2026-12-07 10:00:00",
        "probe_cc": "ZZ",
        "probe_asn": "AS0",
        "annotations": {"vantage": "lab"},
        "test_keys": tk,
    }
    (day / "r.jsonl").write_text(json.dumps(record) + "\n")
    frames = load([tmp_path])
    row = frames.measurements.iloc[0]
    assert row["tls_failure"] == "connection_reset" and pd.isna(row["tcp_failure"])
