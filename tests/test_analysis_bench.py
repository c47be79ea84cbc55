"""bench/analysis.py at a smoke size: every column runs on the same distinct lines and counts
them all (its figures are docs/benchmarks.md's; no time is asserted here)."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from analysis.load import Filters
from analysis.ooni_bucket import ooni_files
from bench.analysis import BUCKET_LINES, main, synthesise_bucket
from tests import missing
from tests.shared_data import SHARED_DATA

OONI = SHARED_DATA / "ooni"
needs_data = pytest.mark.skipif(
    not (OONI / "web_connectivity_real.jsonl").exists(), reason=f"reference data absent: {OONI}"
)


@needs_data
def test_bucket_lines_are_distinct_and_in_oonis_layout(tmp_path: Path) -> None:
    n = BUCKET_LINES + 7  # two files, the second short
    files = synthesise_bucket(n, tmp_path, OONI, max_body=256, workers=1)
    assert len(files) == 2
    assert list(ooni_files([tmp_path], Filters())) == files
    rel = files[1].relative_to(tmp_path).parts
    assert rel[0] == "raw" and len(rel[1]) == 8 and rel[4] == "webconnectivity"
    lines = [line for f in files for line in gzip.decompress(f.read_bytes()).splitlines()]
    assert len(lines) == n == len(set(lines))


@needs_data
def test_smoke_every_column(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    pytest.importorskip("dask.distributed", reason=missing.reason("the `dask` extra"))
    args = ["--n", "300", "--max-body", "256", "--workers", "2"]
    main([*args, "--jsonl", str(tmp_path / "m.jsonl"), "--engines", "orjson,inprocess,engine"])
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith(("orjson", "ours"))]
    assert len(rows) == 5, out  # two floors (gzip, igzip), in-process twice, the engine
    assert "engine / orjson decode rate" in out
