"""bench.lab_throughput's steady rate, on stored measurements written here (no lab, no root)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

from bench.lab_throughput import steady_rate

T0 = datetime(2026, 11, 26, 10, 0, 0)


def store(results: Path, spans: list[tuple[int, float]]) -> None:
    """One web_connectivity measurement per (start second, runtime), as the probe stores them."""
    day = results / "raw/date=2026-11-26/vantage=cn/test_name=web_connectivity"
    day.mkdir(parents=True)
    lines = [
        json.dumps(
            {
                "test_name": "web_connectivity",
                "input": f"https://site-{i}.example/",
                "measurement_start_time": (T0 + timedelta(seconds=start)).strftime(
                    "%Y-%m-%d %H:%M:%S"
                ),
                "test_runtime": runtime,
                "test_keys": {},
            }
        )
        for i, (start, runtime) in enumerate(spans)
    ]
    (day / "report.jsonl").write_text("\n".join(lines) + "\n")


def test_rate_counts_what_finished_while_saturated(tmp_path: Path) -> None:
    # 100 inputs finish every second from 0 s to 11 s; the last starts at 12 s and the
    # slow ones (6 s each) form a tail that must not count.
    spans = [(s, 0.5) for s in range(12) for _ in range(100)] + [(12, 6.0)] * 50
    store(tmp_path, spans)
    rate, window = steady_rate(tmp_path) or (0.0, 0)
    assert window == 10
    assert rate == 100.0  # seconds 2..11 finish 100 each; the 6 s tail ends after 12 s


def test_short_runs_have_no_steady_rate(tmp_path: Path) -> None:
    store(tmp_path, [(0, 0.5), (1, 0.5), (3, 1.0)])
    assert steady_rate(tmp_path) is None
