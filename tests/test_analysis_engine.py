"""The distributed engine (analysis.engine) gives the in-process engine's results: the same
tables, the same report and the same analyze files byte for byte, on a 2-worker LocalCluster,
from a store, OONI JSONL cut mid-file and gzipped files in OONI's bucket layout. (publish runs
on the in-process engine for both: its raw files and Parquet are the rows.)"""

from __future__ import annotations

import gzip
from pathlib import Path

import orjson
import pandas as pd
import pytest
from typer.testing import CliRunner

from analysis.engine import run_engine
from analysis.load import Filters
from analysis.ooni_bucket import ooni_files
from analysis.pipeline import run
from analysis.publish import publish_dataset
from analysis.report import render
from probes.cli import app
from tests import analysis_helpers as h
from tests import missing
from tests.shared_data import SHARED_DATA

pytest.importorskip("dask.distributed", reason=missing.reason("the `dask` extra"))

OONI = SHARED_DATA / "ooni"
REAL = [OONI / "web_connectivity_real.jsonl", OONI / "other_nettests_real.jsonl"]
needs_data = pytest.mark.skipif(not REAL[0].exists(), reason=f"reference data absent: {OONI}")
TABLES = ("findings", "vantages", "timelines", "changes")


def _bucket(root: Path) -> Path:
    """The netem lines as OONI's bucket files: raw/YYYYMMDD/HH/CC/testname/*.jsonl.gz, each
    hour's file holding the lines of one country, plus one malformed line."""
    lines = (OONI / "web_connectivity_netem_qa_synthetic.jsonl").read_bytes().splitlines()
    for i, line in enumerate(lines):
        m = orjson.loads(line)
        folder = root / "raw" / "20240301" / f"{i % 3:02d}" / str(m.get("probe_cc") or "ZZ")
        path = folder / "webconnectivity" / f"2024030100_{i % 3}.n1.0.jsonl.gz"
        path.parent.mkdir(parents=True, exist_ok=True)
        old = gzip.decompress(path.read_bytes()) if path.exists() else b""
        path.write_bytes(gzip.compress(old + line + b"\n", mtime=0))
    bad = root / "raw" / "20240301" / "00" / "XX" / "webconnectivity" / "bad.jsonl.gz"
    bad.parent.mkdir(parents=True, exist_ok=True)
    bad.write_bytes(gzip.compress(b'{"test_name": "web_connectivity"}\n{not json\n', mtime=0))
    return root


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], list[Path]]:
    root = tmp_path_factory.mktemp("engine")
    h.write_store(root / "store")
    mixed = root / "mixed.jsonl"  # the real lines with malformed ones between them
    real = b"".join(p.read_bytes() for p in REAL if p.exists()).splitlines()
    mixed.write_bytes(
        b"\n".join(line if i % 40 else b"{broken" for i, line in enumerate(real)) + b"\n"
    )
    return [root / "store"], [mixed, _bucket(root / "mirror")]


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@needs_data
@pytest.mark.parametrize("processes", [False, True], ids=["threads", "processes"])
def test_engine_equals_in_process_byte_for_byte(
    sources: tuple[list[Path], list[Path]], tmp_path: Path, processes: bool
) -> None:
    stores, ooni = sources
    expected = run(stores, ooni, Filters(), None)
    assert expected.loaded.n_problems > 3
    # 300 KB partitions: the real JSONL is read in many byte ranges, most of them mid-file
    got = run_engine(
        stores, ooni, Filters(), None, workers=2, piece_bytes=300_000, processes=processes
    )
    assert got.loaded.measurements.empty  # no process held the rows
    for name in TABLES:
        pd.testing.assert_frame_equal(
            getattr(got.comparison, name), getattr(expected.comparison, name), check_exact=True
        )
    assert got.loaded.n_problems == expected.loaded.n_problems
    assert [str(p) for p in got.loaded.problems] == [str(p) for p in expected.loaded.problems]
    assert got.loaded.sources == expected.loaded.sources
    assert got.facts.late == expected.facts.late
    assert got.facts.probe_lists == expected.facts.probe_lists
    assert render(got) == render(expected)


def test_bucket_layout_prunes_days_and_nettests(tmp_path: Path) -> None:
    from datetime import date

    for day, test in (("20240229", "webconnectivity"), ("20240301", "webconnectivity")):
        path = tmp_path / "raw" / day / "00" / "IT" / test / "x.jsonl.gz"
        path.parent.mkdir(parents=True)
        path.write_bytes(gzip.compress(b"{}\n"))
    other = tmp_path / "raw" / "20240301" / "00" / "IT" / "dnscheck" / "y.jsonl.gz"
    other.parent.mkdir(parents=True)
    other.write_bytes(gzip.compress(b"{}\n"))
    kept = list(ooni_files([tmp_path], Filters(since=date(2024, 3, 1))))
    assert [p.parts[-5] for p in kept] == ["20240301", "20240301"]
    only = list(ooni_files([tmp_path / "raw"], Filters(test_names=frozenset({"dnscheck"}))))
    assert [p.name for p in only] == ["y.jsonl.gz"]


@needs_data
def test_cli_analyze_and_report_on_two_worker_processes(
    sources: tuple[list[Path], list[Path]], tmp_path: Path
) -> None:
    stores, ooni = sources
    args = [arg for s in stores for arg in ("--results", str(s))]
    args += [arg for o in ooni for arg in ("--ooni", str(o))]
    outputs = {}
    for engine, extra in (("pandas", []), ("dask", ["--workers", "2"])):
        out = tmp_path / engine
        runner = CliRunner()
        result = runner.invoke(
            app, ["analyze", *args, "--out", str(out), "--engine", engine, *extra]
        )
        assert result.exit_code == 0, result.output
        report = tmp_path / f"{engine}.html"
        result = runner.invoke(
            app, ["report", *args, "--out", str(report), "--engine", engine, *extra]
        )
        assert result.exit_code == 0, result.output
        outputs[engine] = {**_files(out), "report.html": report.read_bytes()}
    assert outputs["dask"] == outputs["pandas"]


@needs_data
def test_cli_on_an_existing_cluster(sources: tuple[list[Path], list[Path]], tmp_path: Path) -> None:
    """--scheduler: a scheduler and two worker processes started apart (as on two machines,
    here on loopback) run the tasks; analyze's tables equal the in-process ones."""
    import socket
    import subprocess
    import sys
    import time

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    address = f"tcp://127.0.0.1:{port}"
    dask = [sys.executable, "-m"]
    procs = [
        subprocess.Popen(
            [
                *dask,
                "distributed.cli.dask_scheduler",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--dashboard-address",
                ":0",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    ]
    try:
        for _ in range(2):
            procs.append(
                subprocess.Popen(
                    [
                        *dask,
                        "distributed.cli.dask_worker",
                        address,
                        "--nthreads",
                        "1",
                        "--no-dashboard",
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        from dask.distributed import Client

        with Client(address, timeout=60) as client:
            client.wait_for_workers(2, timeout=120)
        stores, ooni = sources
        args = [arg for s in stores for arg in ("--results", str(s))]
        args += [arg for o in ooni for arg in ("--ooni", str(o))]
        outputs = {}
        for engine, extra in (("pandas", []), ("dask", ["--scheduler", address])):
            out = tmp_path / engine
            result = CliRunner().invoke(
                app, ["analyze", *args, "--out", str(out), "--engine", engine, *extra]
            )
            assert result.exit_code == 0, result.output
            outputs[engine] = _files(out)
        assert outputs["dask"] == outputs["pandas"]
    finally:
        for proc in reversed(procs):
            proc.terminate()
        deadline = time.monotonic() + 30
        for proc in procs:
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))


@needs_data
def test_parquet_input_counts_as_the_lines_it_came_from(
    sources: tuple[list[Path], list[Path]], tmp_path: Path
) -> None:
    """A published dataset's measurements read back (`--parquet`) give the findings of the
    lines they were published from, on both engines, and both write the same tables."""
    stores, ooni = sources
    original = run(stores, ooni, Filters(), None)
    publish_dataset(original, tmp_path / "dataset")
    measurements = tmp_path / "dataset" / "data" / "measurements"
    again = run([], [], Filters(), None, parquet=[measurements])
    for name in TABLES:
        pd.testing.assert_frame_equal(
            getattr(again.comparison, name), getattr(original.comparison, name), check_exact=True
        )
    assert again.facts.n == original.facts.n
    tables = {}
    for engine, extra in (("pandas", []), ("dask", ["--workers", "2"])):
        out = tmp_path / engine
        result = CliRunner().invoke(
            app,
            [
                "analyze",
                "--parquet",
                str(measurements),
                "--out",
                str(out),
                "--engine",
                engine,
                "--since",
                "2024-03-02",
                *extra,
            ],
        )
        assert result.exit_code == 0, result.output
        tables[engine] = _files(out)
    assert tables["dask"] == tables["pandas"]
    findings = pd.read_csv(tmp_path / "dask" / "findings.csv")
    assert 0 < findings["n"].sum() < original.comparison.findings["n"].sum()  # --since pruned
