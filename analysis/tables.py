"""Write the comparison tables as Parquet and CSV, deterministically.

Parquet for analysts (types kept), CSV for everyone else. Rows are sorted and files are written
without timestamps or library-version noise that changes between runs, so the same input gives
the same bytes (analysis.publish relies on it).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

if TYPE_CHECKING:
    from analysis.compare import Comparison

TABLES = ("findings", "vantages", "timelines", "changes")


def plain(frame: pd.DataFrame) -> pd.DataFrame:
    """Categoricals as text and a fresh index: stable Parquet schemas and CSV text."""
    out = frame.reset_index(drop=True).copy()
    for name in out.columns:
        if isinstance(out[name].dtype, pd.CategoricalDtype):
            out[name] = out[name].astype(pd.ArrowDtype(pa.string()))
    return out


@contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """A temporary name beside PATH to write to; renamed over PATH only once written and
    synced, so a crash or kill leaves the old file or the new one, never a part of one (a
    timelines.csv can take minutes to write)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def write_parquet(frame: pd.DataFrame, path: Path) -> None:
    """One Parquet file; no pandas metadata blob (it embeds versions), fixed writer options."""
    table = pa.Table.from_pandas(plain(frame), preserve_index=False)
    table = table.replace_schema_metadata(None)
    with replacing(path) as tmp:
        pq.write_table(table, tmp, compression="zstd", write_statistics=True)


# A text cell starting with one of these is a formula to a spreadsheet (Excel, LibreOffice,
# Google Sheets): "=HYPERLINK(...)" as a tested URL or keyword would run when findings.csv is
# opened. OWASP's CSV Injection page and ASVS 4.0 1.2.10 say: prefix such a cell with a single
# quote. (NUL is in ASVS's list too.)
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "\0")


def neutralise_formulas(frame: pd.DataFrame) -> pd.DataFrame:
    """Text cells that a spreadsheet would run as a formula, prefixed with `'`; numbers kept.

    For CSV only: Parquet keeps the value as measured, and a reader of the CSV who needs the
    raw text drops one leading `'` from cells whose next character is in FORMULA_STARTS.
    """
    out = frame.copy()
    for name in out.columns:
        column = out[name]
        if pd.api.types.is_numeric_dtype(column.dtype) or pd.api.types.is_bool_dtype(column.dtype):
            continue
        if pd.api.types.is_datetime64_any_dtype(column.dtype):
            continue
        risky = column.map(lambda v: isinstance(v, str) and v.startswith(FORMULA_STARTS))
        if risky.fillna(False).astype(bool).any():
            out[name] = column.map(
                lambda v: "'" + v if isinstance(v, str) and v.startswith(FORMULA_STARTS) else v
            )
    return out


def write_csv(frame: pd.DataFrame, path: Path) -> None:
    """CSV for spreadsheets: formula-like text neutralised (see neutralise_formulas)."""
    with replacing(path) as tmp:
        neutralise_formulas(plain(frame)).to_csv(
            tmp, index=False, lineterminator="\n", date_format="%Y-%m-%dT%H:%M:%SZ"
        )


def write_tables(comparison: Comparison, out: Path) -> list[Path]:
    """findings, vantages (whole-period rates), timelines (per window), changes: .parquet + .csv."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name in TABLES:
        frame = getattr(comparison, name)
        write_parquet(frame, out / f"{name}.parquet")
        write_csv(frame, out / f"{name}.csv")
        written += [out / f"{name}.parquet", out / f"{name}.csv"]
    return written
