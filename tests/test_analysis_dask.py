"""The Dask engine over partitioned Parquet gives the pandas engine's results (2-worker cluster)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from analysis.compare import compare
from analysis.load import Filters
from analysis.pipeline import load_classified
from tests import analysis_helpers as h
from tests import missing

pytest.importorskip("dask.distributed", reason=missing.reason("the `dask` extra"))


def test_dask_equals_pandas_on_dask_client(tmp_path: Path) -> None:
    from analysis.dask_engine import compare_parquet, dask_client, write_partitioned

    h.write_store(tmp_path / "store")
    loaded = load_classified([tmp_path / "store"], [], Filters(), None, observations=False)
    expected = compare(loaded.measurements)
    write_partitioned(loaded.measurements, tmp_path / "parquet")
    assert len(list((tmp_path / "parquet").rglob("*.parquet"))) == h.DAYS  # one test, DAYS dates
    with dask_client(workers=2) as client:
        assert len(client.scheduler_info()["workers"]) == 2
        got = compare_parquet(tmp_path / "parquet")
    for name in ("findings", "vantages", "timelines", "changes"):
        pd.testing.assert_frame_equal(
            getattr(got, name).reset_index(drop=True),
            getattr(expected, name).reset_index(drop=True),
            check_dtype=False,
            check_categorical=False,
        )
