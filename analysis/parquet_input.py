"""Measurements already classified, read back from Parquet (`--parquet`).

A published dataset's `data/measurements/date=YYYY-MM-DD/test_name=NAME/*.parquet` (or any
Parquet of the measurements frame's columns) holds one row per measurement with our verdict
columns, so it is counted as it is, not re-classified: the rows get the loader's column types
back (text as text, categories as categories, time in UTC), `test_name` from the `test_name=`
folder, and `source` the file's path when the file has none (a published dataset drops it).
Keyword rows are not in the measurements table: a Parquet input makes no keyword findings.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import date
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from analysis.load import CAT, MEASUREMENT_DTYPES, Filters, LoadError
from analysis.verdicts import VERDICT_COLUMNS

DTYPES = {**MEASUREMENT_DTYPES, **VERDICT_COLUMNS}


def _hive(path: Path, key: str) -> str | None:
    for part in path.parts:
        if part.startswith(key + "="):
            return part.removeprefix(key + "=")
    return None


def parquet_files(paths: Sequence[Path], filters: Filters | None = None) -> Iterator[Path]:
    """Each Parquet file of the paths (folders walked in sorted order), pruned by the
    `date=`/`test_name=` folder names the filters exclude."""
    f = filters or Filters()
    for path in paths:
        path = Path(path)
        if not path.exists():
            raise LoadError(f"{path}: no such Parquet file or folder")
        found = sorted(path.rglob("*.parquet")) if path.is_dir() else [path]
        for file in found:
            day = _hive(file, "date")
            if day is not None and day != "unknown" and (f.since or f.until):
                try:
                    when = date.fromisoformat(day)
                except ValueError:
                    when = None
                if when and ((f.since and when < f.since) or (f.until and when > f.until)):
                    continue
            test = _hive(file, "test_name")
            if test is not None and f.test_names and test not in f.test_names:
                continue
            yield file


def read_measurements(path: Path, filters: Filters | None = None) -> pd.DataFrame:
    """One Parquet file as rows of the measurements frame (the loader's dtypes), filtered."""
    try:
        table = pq.read_table(path)
    except (OSError, ValueError) as exc:
        raise LoadError(f"{path}: not a readable Parquet file: {exc}") from exc
    raw = table.to_pandas()
    out: dict[str, pd.Series] = {}
    for name, dtype in DTYPES.items():
        if name in raw:
            values = raw[name]
        elif name == "test_name":
            values = pd.Series([_hive(path, "test_name")] * len(raw), dtype=object)
        elif name == "source":
            values = pd.Series([str(path)] * len(raw), dtype=object)
        else:
            values = pd.Series([None] * len(raw), dtype=object)
        out[name] = _cast(values, dtype)
    frame = pd.DataFrame(out)
    return _filtered(frame, filters or Filters())


def _cast(values: pd.Series, dtype: object) -> pd.Series:
    if dtype == "datetime64[s, UTC]":
        return pd.Series(pd.to_datetime(values, utc=True), dtype="datetime64[s, UTC]")
    if dtype == CAT:
        return values.astype(object).where(values.notna(), None).astype(CAT)
    if dtype == "bool":
        return values.fillna(False).astype(bool)
    if dtype in ("int64",):
        return values.fillna(0).astype("int64")
    return values.astype(dtype)


def _filtered(frame: pd.DataFrame, f: Filters) -> pd.DataFrame:
    keep = pd.Series(True, index=frame.index)
    time = frame["time"]
    if f.since:
        keep &= ~(time < pd.Timestamp(f.since, tz="UTC"))
    if f.until:
        keep &= ~(time >= pd.Timestamp(f.until, tz="UTC") + pd.Timedelta(days=1))
    if f.vantages:
        keep &= frame["vantage"].astype(object).isin(list(f.vantages))
    if f.test_names:
        keep &= frame["test_name"].astype(object).isin(list(f.test_names))
    if f.inputs:
        keep &= frame["input"].astype(object).isin(list(f.inputs))
    return frame[keep.to_numpy(dtype=bool)].reset_index(drop=True)


def combine(frames: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """Measurement frames one after the other, with the loader's dtypes kept (concatenating
    categoricals of different categories would make them object)."""
    if len(frames) == 1:
        return frames[0]
    joined = pd.concat(frames, ignore_index=True)
    for name, dtype in DTYPES.items():
        if dtype == CAT and name in joined:
            joined[name] = joined[name].astype(object).where(joined[name].notna(), None)
            joined[name] = joined[name].astype(CAT)
    return joined
