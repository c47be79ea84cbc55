"""Bulk data of a published dataset (issue 17 item 4): raw measurements in OONI's bucket layout,
Parquet partitioned by date, country and test, read back by OONI's reader model, by our loader
and by pyarrow's hive partitioning; late arrivals land in the partitions they belong to."""

from __future__ import annotations

import csv
import gzip
import json
import shutil
from datetime import datetime, timedelta
from pathlib import Path

import pandas as pd
import pyarrow.dataset as ds
import pytest
from typer.testing import CliRunner

from analysis import bulk
from analysis.load import load
from probes.cli import app
from probes.measurement import Measurement, new_measurement_uid, new_report_id, ooni_time
from probes.store import ReportManifest, ResultsStore
from tests import analysis_helpers as h
from tests import missing
from tests.ooni_bucket_model import FileEntry, stream_jsonl
from tests.shared_data import SHARED_DATA

N = 2 * h.DAYS * h.REPEATS * 3  # measurements in analysis_helpers' store
OTHER = SHARED_DATA / "ooni" / "other_nettests_real.jsonl"


def _publish(*args: str) -> str:
    result = CliRunner().invoke(app, ["publish", *args])
    assert result.exit_code == 0, result.output
    return result.output


def _verify(out: Path) -> str:
    result = CliRunner().invoke(app, ["verify", str(out)])
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("store")
    h.write_store(root)
    return root


@pytest.fixture(scope="module")
def dataset(store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ds") / "ds"
    _publish("--results", str(store), "--ooni", str(OTHER), "--out", str(out))
    return out


def test_raw_files_follow_the_bucket_layout_ooni_reads(dataset: Path) -> None:
    files = bulk.raw_files(dataset)
    assert files
    total = 0
    for path in files:
        key = path.relative_to(dataset).as_posix()
        day, hour, cc, testname, name = key.split("/")[1:]
        entry = FileEntry.from_key(key)  # as oonidata lists the bucket
        assert entry.ext == "jsonl.gz"
        assert entry.timestamp == datetime.strptime(day + hour, "%Y%m%d%H")
        assert (entry.probe_cc, entry.testname) == (cc, testname)
        assert "_" not in testname and name.startswith(f"{day}{hour}_{cc}_{testname}.")
        for measurement in stream_jsonl(path):
            assert (measurement.get("probe_cc") or "ZZ") == cc  # legacy OONI ones may lack it
            assert measurement["test_name"].replace("_", "") == testname
            assert measurement.get("probe_ip", "127.0.0.1") == "127.0.0.1"
            total += 1
    assert total == N + len(_lines(OTHER))
    # Our store's measurements arrived when their report started (the manifest), 12:00.
    wanted = [
        FileEntry.from_key(p.relative_to(dataset).as_posix())
        for p in files
        if FileEntry.from_key(p.relative_to(dataset).as_posix()).matches_filter(
            {"XC"}, {"tcpconnect"}, datetime(2024, 3, 1), datetime(2024, 3, 2)
        )
    ]
    assert [e.timestamp for e in wanted] == [datetime(2024, 3, 1, 12)]


def test_our_loader_reads_the_raw_files_back(store: Path, dataset: Path) -> None:
    again = load(ooni=bulk.raw_files(dataset)).measurements
    before = load([store], [OTHER]).measurements
    assert len(again) == len(before)
    columns = ["measurement_uid", "vantage", "test_name", "input", "orig_blocking"]

    def key(frame: pd.DataFrame) -> pd.DataFrame:
        return (
            frame[columns]
            .astype(str)
            .sort_values(columns, ignore_index=True)
            .reset_index(drop=True)
        )

    pd.testing.assert_frame_equal(key(again), key(before))


def test_parquet_is_hive_partitioned_by_date_country_and_test(dataset: Path) -> None:
    parts = sorted((dataset / bulk.MEASUREMENTS_DIR).glob("*/*/*/part-0.parquet"))
    assert parts
    for part in parts:
        date, cc, test = (p.split("=", 1)[0] for p in part.relative_to(dataset).parts[2:5])
        assert (date, cc, test) == ("date", "probe_cc", "test_name")
    table = ds.dataset(dataset / bulk.MEASUREMENTS_DIR, format="parquet", partitioning="hive")
    frame = table.to_table().to_pandas()
    assert {"date", "probe_cc", "test_name"} <= set(frame.columns)
    ours = frame[frame["test_name"] == "tcp_connect"]
    assert len(ours) == N
    assert ours.groupby("probe_cc", observed=True).size().to_dict() == {"XC": N // 2, "XO": N // 2}
    assert (ours["date"].astype(str).str[:7] == "2024-03").all()
    # pandas alone (pyarrow underneath, no censorscope code) reads the same rows.
    assert len(pd.read_parquet(dataset / bulk.MEASUREMENTS_DIR)) == len(frame)


def _card_sql(dataset: Path) -> list[str]:
    """The DuckDB queries the dataset card shows, as a reader would copy them."""
    card = (dataset / "README.md").read_text(encoding="utf-8")
    return [block.split("```", 1)[0] for block in card.split("```sql\n")[1:]]


def test_duckdb_runs_the_cards_queries(dataset: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """DuckDB (its own Parquet and JSON readers, no censorscope code) from the dataset folder,
    as the card tells a reader to: the queries' counts are the published rows' and lines'."""
    duckdb = pytest.importorskip("duckdb", reason=missing.reason("duckdb (the dev extra)"))
    on_parquet, on_raw = _card_sql(dataset)
    monkeypatch.chdir(dataset)  # the card's paths are relative to the dataset
    table = ds.dataset(dataset / bulk.MEASUREMENTS_DIR, format="parquet", partitioning="hive")
    frame = table.to_table().to_pandas().astype({"probe_cc": str, "test_name": str})
    assert len(frame) == N + len(_lines(OTHER))

    rows = duckdb.sql(on_parquet).fetchall()
    counts = frame.groupby(["probe_cc", "test_name", "blocking"], dropna=False).size()
    want = {(cc, t, None if pd.isna(b) else b): int(n) for (cc, t, b), n in counts.items()}
    assert {(cc, t, b): n for cc, t, b, n in rows} == want
    assert [n for *_, n in rows] == sorted((n for *_, n in rows), reverse=True)

    rows = duckdb.sql(on_raw).fetchall()
    verdicts: dict[tuple[str, object], int] = {}
    for path in bulk.raw_files(dataset):
        for measurement in stream_jsonl(path):
            blocking = (measurement.get("test_keys") or {}).get("blocking", None)
            text = None if blocking is None else json.dumps(blocking).strip('"')
            key = (measurement["test_name"], text)
            verdicts[key] = verdicts.get(key, 0) + 1
    assert {(t, b): n for t, b, n in rows} == verdicts
    assert sum(verdicts.values()) == len(frame)


def _lines(path: Path) -> list[bytes]:
    return [line for line in path.read_bytes().splitlines() if line.strip()]


def _late_report(root: Path, made: datetime, arrived: datetime, n: int) -> list[str]:
    """A report a collector opened on `arrived` holding measurements made on `made`."""
    store = ResultsStore(root)
    report_id = new_report_id("tcp_connect", "XC", "AS64500", arrived)
    manifest = ReportManifest(
        report_id, "tcp_connect", "censored", arrived.date().isoformat(), ooni_time(arrived)
    )
    uids = []
    with store.open_report(manifest) as writer:
        for i in range(n):
            when = made + timedelta(minutes=30 + i)
            uid = new_measurement_uid("tcp_connect", "XC", when)
            uids.append(uid)
            writer.append(
                Measurement(
                    test_name="tcp_connect",
                    test_version="0.1.0",
                    input=h.OPEN,
                    report_id=report_id,
                    measurement_uid=uid,
                    probe_cc="XC",
                    probe_asn="AS64500",
                    test_start_time=ooni_time(made),
                    measurement_start_time=ooni_time(when),
                    test_runtime=0.5,
                    annotations={"vantage": "censored"},
                    test_keys={"blocking": False, "blocking_detail": None},
                )
            )
    return uids


def _state(out: Path) -> dict[str, tuple[bytes, int]]:
    return {
        p.relative_to(out).as_posix(): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in [*bulk.raw_files(out), *(out / bulk.MEASUREMENTS_DIR).rglob("*.parquet")]
    }


def test_late_arrivals_land_in_their_partitions_without_rewriting_the_others(
    store: Path, tmp_path: Path
) -> None:
    root = tmp_path / "store"
    shutil.copytree(store, root)
    out = tmp_path / "ds"
    _publish("--results", str(root), "--out", str(out))
    before = _state(out)
    made = h.START + timedelta(days=2)  # 2024-03-03 12:00, accessible at "censored"
    arrived = h.START + timedelta(days=12, hours=3)  # uploaded ten days later
    uids = _late_report(root, made, arrived, 4)
    output = _publish("--results", str(root), "--out", str(out))
    assert "4 arrived late" in output
    assert (
        "Arrived late (more than 24 hours after they were made" in (out / "README.md").read_text()
    )
    after = _state(out)
    partition = "data/measurements/date=2024-03-03/probe_cc=XC/test_name=tcp_connect/part-0.parquet"
    bucket = "raw/20240313/15/XC/tcpconnect/2024031315_XC_tcpconnect.censorscope.0.jsonl.gz"
    assert set(after) == set(before) | {bucket}
    changed = {name for name in before if after[name] != before[name]}
    assert changed == {partition}  # every other file: same bytes, same modification time
    assert [m["measurement_uid"] for m in stream_jsonl(out / bucket)] == uids
    # The late measurements count in the day they were made.
    rows = list(csv.DictReader((out / "timelines.csv").open()))
    day = next(
        r for r in rows
        if (r["target"], r["vantage"], r["window"]) == (h.OPEN, "censored", "2024-03-03T00:00:00Z")
    )  # fmt: skip
    assert day["n"] == str(h.REPEATS + 4)
    _verify(out)
    report = tmp_path / "report.html"
    result = CliRunner().invoke(app, ["report", "--results", str(root), "--out", str(report)])
    assert result.exit_code == 0, result.output
    assert "4 measurements arrived late" in report.read_text()


def test_a_narrower_publish_removes_what_it_no_longer_holds(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "ds"
    _publish("--results", str(store), "--out", str(out))
    output = _publish("--results", str(store), "--out", str(out), "--since", "2024-03-09")
    files = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    listed = {line.split("  ", 1)[1] for line in (out / "SHA256SUMS").read_text().splitlines()}
    assert files == listed | {"SHA256SUMS"}
    assert not any("date=2024-03-01" in f or "raw/20240301" in f for f in files)
    assert "removed" in output and ", 0 removed" not in output
    _verify(out)


def test_raw_lines_are_gzip_without_a_timestamp(dataset: Path) -> None:
    for path in bulk.raw_files(dataset):
        data = path.read_bytes()
        assert data[4:8] == b"\0\0\0\0"  # MTIME field of the gzip header (RFC 1952)
        assert gzip.decompress(data).endswith(b"\n")


def test_a_file_given_twice_is_published_twice_and_verifies(tmp_path: Path) -> None:
    """The loader keeps both copies' rows; raw/ then holds both lines, as the Parquet does."""
    out = tmp_path / "ds"
    _publish("--ooni", str(OTHER), "--ooni", str(OTHER), "--out", str(out))
    lines = sum(1 for path in bulk.raw_files(out) for _ in stream_jsonl(path))
    assert lines == len(pd.read_parquet(out / bulk.MEASUREMENTS_DIR))
    assert lines == 2 * sum(1 for line in OTHER.read_bytes().splitlines() if line.strip())
    _verify(out)
