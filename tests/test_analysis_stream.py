"""The bounded-memory path (analysis.stream) and the vectorised comparison give the in-memory
answers: same tables, same file:line problems, whatever the piece size and worker count."""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pytest

from analysis.compare import (
    BLOCKED_SHARE,
    change_points,
    compare,
    count,
    from_partial,
    merge_partials,
    partial_counts,
    prepare,
    rates,
)
from analysis.load import Filters, load, parse_time
from analysis.pipeline import load_classified, run
from analysis.stream import pieces, run_streamed
from tests import analysis_helpers as h
from tests import missing
from tests.shared_data import SHARED_DATA

OONI = SHARED_DATA / "ooni"
REAL = [
    OONI / "web_connectivity_real.jsonl",
    OONI / "web_connectivity_netem_qa_synthetic.jsonl",
    OONI / "other_nettests_real.jsonl",
]
needs_data = pytest.mark.skipif(not REAL[0].exists(), reason=f"reference data absent: {OONI}")
TABLES = ("findings", "vantages", "timelines", "changes")


def _equal(got: Any, expected: Any) -> None:
    for name in TABLES:
        pd.testing.assert_frame_equal(getattr(got, name), getattr(expected, name), check_exact=True)


@needs_data
@pytest.mark.parametrize("workers", [1, 2])
def test_streamed_equals_in_memory(tmp_path: Path, workers: int) -> None:
    h.write_store(tmp_path / "store")
    stores = [tmp_path / "store"]
    expected = run(stores, REAL, Filters(), None)
    # 200 KB pieces cut the 2.8 MB real file into many ranges, most of them mid-file
    todo = pieces(REAL, stores, Filters(), piece_bytes=200_000)
    assert sum(1 for p in todo if p.start > 0) > 5
    got = run_streamed(REAL, stores, Filters(), None, workers=workers, piece_bytes=200_000)
    assert got.rows == len(expected.loaded.measurements)
    _equal(got.comparison, expected.comparison)


def test_pieces_cover_every_line_once(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    lines = [
        orjson.dumps({"test_name": "t", "input": f"x{i}", "pad": "y" * (i % 97)})
        for i in range(500)
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")
    todo = pieces([path], piece_bytes=1000)
    assert len(todo) > 10
    assert todo[0].start == 0 and todo[-1].end == path.stat().st_size
    assert all(a.end == b.start for a, b in pairwise(todo))
    data = path.read_bytes()
    assert all(p.start == 0 or data[p.start - 1 : p.start] == b"\n" for p in todo)


def test_problems_keep_exact_line_numbers_across_pieces(tmp_path: Path) -> None:
    path = tmp_path / "mixed.jsonl"
    out = []
    for i in range(1, 301):
        if i % 37 == 0:
            out.append(b"{not json")
        elif i % 53 == 0:
            out.append(b"")  # blank lines count as lines
        else:
            out.append(orjson.dumps({"test_name": "tcp_connect", "input": f"h{i}.example"}))
    path.write_bytes(b"\n".join(out) + b"\n")
    expected = load(ooni=[path])
    got = run_streamed([path], workers=2, piece_bytes=700)
    assert got.pieces > 5
    assert got.n_problems == expected.n_problems == 300 // 37
    assert [(p.line, p.reason[:12]) for p in got.problems] == [
        (p.line, p.reason[:12]) for p in expected.problems
    ]
    assert got.rows == len(expected.measurements)


@needs_data
def test_partial_counts_merge_to_the_whole(tmp_path: Path) -> None:
    h.write_store(tmp_path / "store")
    m = load_classified([tmp_path / "store"], REAL, Filters(), None, observations=False)
    frame = m.measurements
    for window in ("D", "7D", None):
        chunks = np.array_split(np.random.default_rng(7).permutation(len(frame)), 5)
        parts = [partial_counts(frame.iloc[np.sort(c)], window) for c in chunks]
        _equal(from_partial(merge_partials(parts)), compare(frame, window))


def _change_points_reference(counts: pd.DataFrame, min_run: int) -> list[tuple[Any, ...]]:
    """The rule written as a loop over (target, test, vantage), to check the vectorised one."""
    timed = rates(counts[counts["window"].notna()])
    timed = timed[timed["decisive"] > 0]
    rows: list[tuple[Any, ...]] = []
    keys = ["target", "test_name", "vantage"]
    for (target, test, vantage), group in timed.groupby(keys, sort=True):
        group = group.sort_values("window")
        runs: list[list[Any]] = []
        for rate, when in zip(group["rate"], group["window"], strict=True):
            state = "blocked" if rate >= BLOCKED_SHARE else "accessible"
            if runs and runs[-1][0] == state:
                runs[-1][2], runs[-1][3] = when, runs[-1][3] + 1
            else:
                runs.append([state, when, when, 1])
        kept: list[list[Any]] = []
        for run_ in (r for r in runs if r[3] >= min_run):
            if kept and kept[-1][0] == run_[0]:
                kept[-1][2], kept[-1][3] = run_[2], kept[-1][3] + run_[3]
            else:
                kept.append(list(run_))
        for i, (state, first, last, n) in enumerate(kept):
            event = None if i == 0 else ("start" if state == "blocked" else "stop")
            rows.append((target, test, vantage, state, first, last, n, event))
    return rows


@pytest.mark.parametrize("min_run", [1, 2, 3])
def test_vectorised_change_points_follow_the_rule(tmp_path: Path, min_run: int) -> None:
    h.write_store(tmp_path / "store")
    frame = load_classified([tmp_path / "store"], [], Filters(), None).measurements
    counts = count(prepare(frame, "D"))
    rng = np.random.default_rng(min_run)
    for _ in range(5):  # random blocked/ok counts: many short runs, gaps, undecided windows
        counts["blocked"] = rng.integers(0, 3, len(counts))
        counts["ok"] = rng.integers(0, 3, len(counts))
        got = change_points(counts, min_run)
        expected = _change_points_reference(counts, min_run)
        assert len(expected) > 0
        pd.testing.assert_frame_equal(got, pd.DataFrame(expected, columns=list(got.columns)))


@needs_data
def test_streamed_parquet_pieces_compare_on_dask(tmp_path: Path) -> None:
    pytest.importorskip("dask.dataframe", reason=missing.reason("the `dask` extra"))
    from analysis.dask_engine import compare_parquet

    h.write_store(tmp_path / "store")
    stores = [tmp_path / "store"]
    out = tmp_path / "parquet"
    streamed = run_streamed(REAL, stores, Filters(), None, workers=1, parquet_dir=out)
    assert len(list(out.glob("piece-*.parquet"))) == streamed.pieces
    got = compare_parquet(out)
    expected = run(stores, REAL, Filters(), None).comparison
    for name in TABLES:
        pd.testing.assert_frame_equal(
            getattr(got, name).reset_index(drop=True),
            getattr(expected, name).reset_index(drop=True),
            check_dtype=False,
            check_categorical=False,
        )


@pytest.mark.parametrize(
    "text",
    [
        "2024-03-01 12:00:00",
        "2024-03-01T12:00:00Z",
        "2024-03-01T12:00:00+05:30",
        "2024-03-01 12:00:00.250",
        "2024-03-01",
        "20240301T120000Z",
        "0001-01-01 00:00:00",
    ],
)
def test_parse_time_agrees_with_pandas(text: str) -> None:
    assert pd.Timestamp(parse_time(text)) == pd.Timestamp(text, tz="UTC")


@pytest.mark.parametrize("text", ["nonsense", "2024-13-01 00:00:00", "2024-02-30"])
def test_parse_time_rejects_what_pandas_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        pd.Timestamp(text, tz="UTC")
    with pytest.raises(ValueError):
        parse_time(text)
