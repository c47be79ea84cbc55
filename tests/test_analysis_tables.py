"""analysis.tables writes whole files or none: a table that fails part way through (or a kill
while it is written) leaves the previous file as it was."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from analysis.tables import write_csv, write_parquet


class Unprintable:
    """A cell pandas cannot turn into text: to_csv fails when its chunk comes."""

    def __str__(self) -> str:
        raise RuntimeError("this cell cannot be written")


def _failing_late(rows: int) -> pd.DataFrame:
    # pandas writes CSV in chunks of about 100,000 cells: the first chunks reach the file
    # before the last one fails.
    cells: list[object] = [f"row {i}" for i in range(rows)]
    cells[-1] = Unprintable()
    return pd.DataFrame({"cell": cells})


def test_a_csv_that_fails_part_way_leaves_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "findings.csv"
    write_csv(pd.DataFrame({"cell": ["old"]}), path)
    before = path.read_bytes()
    with pytest.raises(RuntimeError, match="cannot be written"):
        write_csv(_failing_late(300_000), path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["findings.csv"]  # no temp file left


def test_a_new_csv_that_fails_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError):
        write_csv(_failing_late(300_000), tmp_path / "timelines.csv")
    assert list(tmp_path.iterdir()) == []


def test_parquet_and_csv_are_replaced_whole(tmp_path: Path) -> None:
    frame = pd.DataFrame({"input": ["a", "b"], "n": [1, 2]})
    write_parquet(frame, tmp_path / "t.parquet")
    write_csv(frame, tmp_path / "t.csv")
    write_parquet(frame.iloc[:1], tmp_path / "t.parquet")
    write_csv(frame.iloc[:1], tmp_path / "t.csv")
    assert pd.read_parquet(tmp_path / "t.parquet").to_dict("list") == {"input": ["a"], "n": [1]}
    assert (tmp_path / "t.csv").read_text() == "input,n\na,1\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.csv", "t.parquet"]
