"""`publish` and `verify` on the distributed engine (analysis.publish_engine, issue 17 item 1):
the package equals the in-process engine's byte for byte (SHA256SUMS and every file), on a
2-worker LocalCluster and in this process, from a store with several reports, days, countries
and nettests, keyword measurements, late arrivals, OONI JSONL cut mid-file, gzip files in
OONI's bucket layout and one file given twice, with `--drop-asn` and the scrubber; a late
arrival rewrites only its files; verify holds on the engine's dataset and names a tampered
finding."""

from __future__ import annotations

import csv
import io
import shutil
from datetime import timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from analysis.load import Filters
from analysis.pipeline import run
from analysis.publish import publish_dataset
from analysis.publish_engine import SPOOL, publish_engine
from analysis.verify import verify
from probes.cli import app
from probes.measurement import (
    Measurement,
    Scrubber,
    new_measurement_uid,
    new_report_id,
    ooni_time,
)
from probes.store import ReportManifest, ResultsStore
from tests import analysis_helpers as h
from tests import keyword_store as ks
from tests import missing
from tests.shared_data import SHARED_DATA
from tests.test_analysis_engine import _bucket

pytest.importorskip("dask.distributed", reason=missing.reason("the `dask` extra"))

OONI = SHARED_DATA / "ooni"
REAL = [OONI / "web_connectivity_real.jsonl", OONI / "other_nettests_real.jsonl"]
needs_data = pytest.mark.skipif(not REAL[0].exists(), reason=f"reference data absent: {OONI}")
AT_RISK = "dsl-AS64510"  # a vantage named after its network: published as dsl-AS-withheld
DROP = frozenset({"censored", "cn", AT_RISK})
SCRUB = ["127.0.0.21", "203.0.113.7"]  # the keyword helper's host appears in the measurements


def _late_report(root: Path, days_late: int, n: int) -> None:
    """A report uploaded `days_late` days after its measurements, from AT_RISK, whose report
    id names AS64510 and whose inputs hold an address to scrub."""
    store = ResultsStore(root)
    made = h.START + timedelta(days=2)
    arrived = made + timedelta(days=days_late, hours=3)
    report_id = new_report_id("tcp_connect", "XD", "AS64510", arrived)
    manifest = ReportManifest(
        report_id, "tcp_connect", AT_RISK, arrived.date().isoformat(), ooni_time(arrived)
    )
    with store.open_report(manifest) as writer:
        for i in range(n):
            when = made + timedelta(minutes=i)
            writer.append(
                Measurement(
                    test_name="tcp_connect",
                    test_version="0.1.0",
                    input=h.OPEN if i % 2 else "203.0.113.7:443",
                    report_id=report_id,
                    measurement_uid=new_measurement_uid("tcp_connect", "XD", when),
                    probe_cc="XD",
                    probe_asn="AS64510",
                    test_start_time=ooni_time(made),
                    measurement_start_time=ooni_time(when),
                    test_runtime=0.5,
                    annotations={"vantage": AT_RISK, "testlists_sha256": "cd" * 32},
                    test_keys={"blocking": "tcp_ip" if i % 3 == 0 else False},
                )
            )


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], list[Path]]:
    root = tmp_path_factory.mktemp("publish-engine")
    h.write_store(root / "store")
    _late_report(root / "store", 5, 7)
    ks.write_keyword_store(root / "keywords")
    mixed = root / "mixed.jsonl"  # the real lines with malformed ones between them
    real = b"".join(p.read_bytes() for p in REAL if p.exists()).splitlines()
    mixed.write_bytes(
        b"\n".join(line if i % 40 else b"{broken" for i, line in enumerate(real)) + b"\n"
    )
    ooni = [mixed, _bucket(root / "mirror"), REAL[1], REAL[1]]  # the last one given twice
    return [root / "store", root / "keywords"], ooni


def _late_count(out: Path) -> int:
    card = (out / "README.md").read_text()
    return int(card.split("made): ", 1)[1].split("\n", 1)[0])


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _in_process(stores: list[Path], ooni: list[Path], out: Path) -> None:
    result = run(stores, ooni, Filters(), None, engine="pandas")
    publish_dataset(result, out, drop_asn=DROP, scrubber=Scrubber(SCRUB))


def _on_engine(stores: list[Path], ooni: list[Path], out: Path, workers: int) -> None:
    publish_engine(
        stores,
        ooni,
        Filters(),
        None,
        out,
        drop_asn=DROP,
        scrubber=Scrubber(SCRUB),
        workers=workers,
        piece_bytes=300_000,  # the real JSONL in many byte ranges, most of them mid-file
    )


@needs_data
def test_engine_publishes_the_in_process_bytes(
    sources: tuple[list[Path], list[Path]], tmp_path: Path
) -> None:
    stores, ooni = sources
    _in_process(stores, ooni, tmp_path / "pandas")
    expected = _files(tmp_path / "pandas")
    assert any(name.startswith("raw/") for name in expected)
    assert "keyword_findings.csv" in expected
    card = expected["README.md"].decode()
    assert "Arrived late (more than 24 hours after they were made" in card
    assert "dsl-AS-withheld" in card and "AS64510" not in card
    assert b"127.0.0.21" not in b"".join(expected.values())
    for workers in (2, 1):  # a LocalCluster of 2 worker processes; this process
        out = tmp_path / f"engine-{workers}"
        _on_engine(stores, ooni, out, workers)
        got = _files(out)
        assert got["SHA256SUMS"] == expected["SHA256SUMS"]
        assert sorted(got) == sorted(expected)
        assert [n for n in got if got[n] != expected[n]] == []
        assert not (out / SPOOL).exists()


@needs_data
def test_late_arrivals_and_verify_on_the_engine(
    sources: tuple[list[Path], list[Path]], tmp_path: Path
) -> None:
    stores, ooni = sources
    store = tmp_path / "store"
    shutil.copytree(stores[0], store)
    stores = [store, stores[1]]
    out, reference = tmp_path / "engine", tmp_path / "pandas"
    _on_engine(stores, ooni, out, 2)
    late = _late_count(out)
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.rglob("*.jsonl.gz")}
    before |= {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.rglob("*.parquet")}
    _late_report(store, 9, 3)  # three more, uploaded nine days after they were made
    _on_engine(stores, ooni, out, 2)
    _in_process(stores, ooni, reference)
    assert _files(out) == _files(reference)
    changed = sorted(
        p.relative_to(out).as_posix()
        for p, state in before.items()
        if not p.exists() or (p.read_bytes(), p.stat().st_mtime_ns) != state
    )
    assert changed == [
        "data/measurements/date=2024-03-03/probe_cc=XD/test_name=tcp_connect/part-0.parquet"
    ]
    assert _late_count(out) == late + 3
    # verify on the engine (2 workers) and in one process: the same, and it holds.
    on_engine = verify(out, engine="dask", workers=2)
    assert on_engine.holds, on_engine.differences[:5]
    assert on_engine == verify(out, engine="pandas")
    # A tampered finding is named.
    findings = out / "findings.csv"
    rows = list(csv.DictReader(io.StringIO(findings.read_text())))
    blocked = next(r for r in rows if r["target"] == h.BLOCKED)
    blocked["n"] = str(int(blocked["n"]) + 1)
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    findings.write_text(text.getvalue())
    result = CliRunner().invoke(app, ["verify", str(out), "--workers", "2"])
    assert result.exit_code == 4, result.output
    assert "findings.csv: content differs from SHA256SUMS" in result.output
    assert f"findings  {h.BLOCKED} | tcp_connect  n" in result.output


@needs_data
def test_cli_publish_engines_write_the_same_dataset(
    sources: tuple[list[Path], list[Path]], tmp_path: Path
) -> None:
    stores, ooni = sources
    args = [arg for s in stores for arg in ("--results", str(s))]
    args += [arg for o in ooni for arg in ("--ooni", str(o))]
    args += [arg for v in sorted(DROP) for arg in ("--drop-asn", v)]
    outputs = {}
    for engine, extra in (("pandas", []), ("dask", ["--workers", "2"])):
        out = tmp_path / engine
        result = CliRunner().invoke(
            app, ["publish", *args, "--out", str(out), "--engine", engine, *extra]
        )
        assert result.exit_code == 0, result.output
        assert " arrived late (counted in the period they were made)" in result.output
        outputs[engine] = _files(out)
    assert outputs["dask"] == outputs["pandas"]


@needs_data
def test_analyze_findings_carry_probe_lists_on_every_engine(
    sources: tuple[list[Path], list[Path]], tmp_path: Path
) -> None:
    """Each finding names the lists its measurements were made with (the late report's
    testlists hash for its inputs), the same on the three engines."""
    stores, _ = sources
    outputs = {}
    for engine in ("pandas", "dask", "stream"):
        out = tmp_path / engine
        result = CliRunner().invoke(
            app, ["analyze", "--results", str(stores[0]), "--out", str(out), "--engine", engine]
        )
        assert result.exit_code == 0, result.output
        outputs[engine] = _files(out)
        rows = {r["target"]: r for r in csv.DictReader((out / "findings.csv").open())}
        assert rows[h.OPEN]["probe_lists"] == "testlists:" + "cd" * 32
        assert rows[h.BLOCKED]["probe_lists"] == ""
        record = (out / "provenance.json").read_text()
        assert '"testlists:' + "cd" * 32 in record
    assert outputs["dask"] == outputs["pandas"] == outputs["stream"]


@needs_data
def test_a_partition_with_more_buckets_than_open_files(
    sources: tuple[list[Path], list[Path]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stage 1 closes a bucket's spool file when too many are open and appends to it later:
    the package is still the in-process one (in this process, where the cap can be set)."""
    from analysis import publish_engine

    monkeypatch.setattr(publish_engine._LineSpool, "OPEN", 1)
    stores, ooni = sources
    _in_process(stores, ooni, tmp_path / "pandas")
    _on_engine(stores, ooni, tmp_path / "engine", 1)
    assert _files(tmp_path / "engine") == _files(tmp_path / "pandas")


def test_a_disk_too_small_for_the_spool_is_named_before_any_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The spool estimate: 2 bytes a gzipped input byte, 0.3 a text byte, against OUT's
    free space (the disk is reported small: filling a real one is not a test)."""
    from analysis.engine import plan
    from analysis.publish_engine import space_short

    text = tmp_path / "m.jsonl"
    text.write_bytes(b"x" * 4000)
    packed = tmp_path / "raw" / "20240101" / "00" / "ZZ" / "webconnectivity" / "m.jsonl.gz"
    packed.parent.mkdir(parents=True)
    packed.write_bytes(b"y" * 1000)
    todo = plan([], [text, tmp_path / "raw"], Filters(), None, None).todo
    out = tmp_path / "out"
    out.mkdir()
    assert space_short(todo, out) is None  # this disk has room for 3.2 KB
    usage = shutil.disk_usage(out)
    monkeypatch.setattr(shutil, "disk_usage", lambda _: usage._replace(free=3100))
    warning = space_short(todo, out)
    assert warning is not None
    assert str(out / SPOOL) in warning and "it may run out of space" in warning
    monkeypatch.setattr(shutil, "disk_usage", lambda _: usage._replace(free=3300))
    assert space_short(todo, out) is None
