"""Synthetic results stores with known blocking, written with probes.store (analysis tests)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from probes.measurement import Measurement, new_measurement_uid, new_report_id, ooni_time
from probes.store import ReportManifest, ResultsStore

START = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
BLOCKED = "blocked.example"
OPEN = "open.example"
DOWN = "down.example"
FLIP_DAY = 1  # a single blocked day at the open vantage: noise, not a change point
BLOCK_FROM, BLOCK_UNTIL = 3, 6  # days the censored vantage blocks OPEN (inclusive)
DAYS = 10
REPEATS = 3


def _verdict(vantage: str, target: str, day: int) -> tuple[Any, str | None]:
    if target == DOWN:
        return None, None
    if target == BLOCKED:
        return ("dns", "dns.injected") if vantage == "censored" else (False, None)
    if vantage == "censored" and BLOCK_FROM <= day <= BLOCK_UNTIL:
        return "tcp_ip", "tcp.rst_injected"
    if vantage == "open" and day == FLIP_DAY:
        return "tcp_ip", "tcp.connect_failure"
    return False, None


def write_store(root: Path, *, test_name: str = "tcp_connect") -> ResultsStore:
    """Two vantages, DAYS days, REPEATS measurements per input per day; known blocking."""
    store = ResultsStore(root)
    for vantage, cc, asn in (("censored", "XC", "AS64500"), ("open", "XO", "AS64501")):
        for day in range(DAYS):
            moment = START + timedelta(days=day)
            report_id = new_report_id(test_name, cc, asn, moment)
            manifest = ReportManifest(
                report_id, test_name, vantage, moment.date().isoformat(), ooni_time(moment)
            )
            with store.open_report(manifest) as writer:
                for repeat in range(REPEATS):
                    for target in (BLOCKED, OPEN, DOWN):
                        blocking, detail = _verdict(vantage, target, day)
                        when = moment + timedelta(minutes=repeat)
                        writer.append(
                            Measurement(
                                test_name=test_name,
                                test_version="0.1.0",
                                input=target,
                                report_id=report_id,
                                measurement_uid=new_measurement_uid(test_name, cc, when),
                                probe_cc=cc,
                                probe_asn=asn,
                                test_start_time=ooni_time(moment),
                                measurement_start_time=ooni_time(when),
                                test_runtime=0.5,
                                annotations={"vantage": vantage},
                                test_keys={"blocking": blocking, "blocking_detail": detail},
                            )
                        )
    return store
