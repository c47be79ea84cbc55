"""Reproducible verdicts (issue 17 item 3): list hashes in measurements, provenance of every
finding, byte-identical publishing, and `censorscope verify`."""

from __future__ import annotations

import csv
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from analysis.verdicts import RULES_VERSION
from probes import __version__
from probes.cli import app
from probes.exit_status import EXIT_BAD_INPUT, EXIT_NOT_REPRODUCED
from probes.provenance import list_annotations
from tests import analysis_helpers as h
from tests.loopback.web import closed_port
from tests.shared_data import SHARED_DATA

FINGERPRINTS = SHARED_DATA / "fingerprints"
WC_REAL = SHARED_DATA / "ooni" / "web_connectivity_real.jsonl"
QA = SHARED_DATA / "ooni" / "web_connectivity_netem_qa_synthetic.jsonl"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("store")
    h.write_store(root)
    return root


def test_list_annotations_hash_the_bytes_in_order(tmp_path: Path) -> None:
    a, b, k = tmp_path / "a.csv", tmp_path / "b.csv", tmp_path / "k.csv"
    a.write_text("url\nhttp://a.example/\n")
    b.write_text("url\nhttp://b.example/\n")
    k.write_text("keyword\nfalun\n")
    found = list_annotations([b, a], k, [])
    assert found == {"testlists_sha256": f"{_sha(b)},{_sha(a)}", "keywords_sha256": _sha(k)}
    assert list_annotations() == {}


def test_a_run_records_the_hash_of_its_test_list_and_fingerprints(tmp_path: Path) -> None:
    """A real `censorscope run` (loopback, nothing listening, no helper): every measurement
    names the sha256 of the test list and fingerprint file it was measured with."""
    port = closed_port("127.0.0.2")
    testlist = tmp_path / "list.csv"
    testlist.write_text(
        "url,category_code,category_description,date_added,source,notes\n"
        f"http://127.0.0.2:{port}/,NEWS,News Media,2026-11-26,test,\n"
    )
    dead_helper = f"http://127.0.0.1:{closed_port('127.0.0.1')}/"
    proc = subprocess.run(
        [sys.executable, "-m", "probes", "run", "web_connectivity", "--testlist", str(testlist),
         "--helper", dead_helper, "--fingerprints", str(FINGERPRINTS / "fingerprints_http.csv"),
         "--results", str(tmp_path / "r"), "--no-progress", "--timeout", "5"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 3, proc.stderr  # measured; the helper is unreachable
    [path] = list((tmp_path / "r").glob("raw/*/*/*/*.jsonl"))
    annotations = json.loads(path.read_text().splitlines()[0])["annotations"]
    assert annotations["testlists_sha256"] == _sha(testlist)
    assert annotations["fingerprints_sha256"] == _sha(FINGERPRINTS / "fingerprints_http.csv")
    assert "keywords_sha256" not in annotations
    # ... and the analysis carries them to the measurement and its finding.
    out = tmp_path / "ds"
    code, output = _invoke("publish", "--results", str(tmp_path / "r"), "--out", str(out))
    assert code == 0, output
    [finding] = list(csv.DictReader((out / "findings.csv").open()))
    assert finding["probe_lists"] == (
        f"fingerprints:{_sha(FINGERPRINTS / 'fingerprints_http.csv')};testlists:{_sha(testlist)}"
    )
    provenance = json.loads((out / "provenance.json").read_text())
    assert sorted(provenance["probe_lists"]) == sorted(finding["probe_lists"].split(";"))
    # The dask engine (no row in one process) collects the same lists for analyze and report.
    tables, report = tmp_path / "tables", tmp_path / "report.html"
    for command, target in (("analyze", tables), ("report", report)):
        code, output = _invoke(
            command, "--results", str(tmp_path / "r"), "--out", str(target), "--engine", "dask"
        )
        assert code == 0, output
    record = json.loads((tables / "provenance.json").read_text())
    assert record["probe_lists"] == provenance["probe_lists"]
    assert all(item in report.read_text() for item in provenance["probe_lists"])


@pytest.mark.skipif(not WC_REAL.exists(), reason="reference data absent")
def test_every_finding_names_versions_and_fingerprint_hashes(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    code, output = _invoke(
        "publish", "--ooni", str(WC_REAL), "--fingerprints", str(FINGERPRINTS), "--out", str(out)
    )
    assert code == 0, output
    rows = list(csv.DictReader((out / "findings.csv").open()))
    assert rows
    expected = ";".join(
        f"{name}:{_sha(FINGERPRINTS / name)}"
        for name in (
            "censoredplanet/blockpage_signatures.json",
            "censoredplanet/false_positive_signatures.json",
            "fingerprints_dns.csv",
            "fingerprints_http.csv",
        )
    )
    for row in rows:
        assert row["censorscope_version"] == __version__
        assert row["rules_version"] == str(RULES_VERSION)
        assert row["analysis_fingerprints"] == expected
        assert row["probe_lists"] == ""  # OONI's measurements do not record their lists
    provenance = json.loads((out / "provenance.json").read_text())
    assert provenance["fingerprints_mode"] == "dir"
    assert provenance["rules_version"] == RULES_VERSION
    for name, digest in provenance["fingerprints"].items():
        assert _sha(out / "fingerprints" / name) == digest == _sha(FINGERPRINTS / name)


@pytest.mark.skipif(not WC_REAL.exists(), reason="reference data absent")
def test_publish_twice_gives_the_same_bytes_and_verifies(tmp_path: Path) -> None:
    args = ["--ooni", str(WC_REAL), "--ooni", str(QA), "--fingerprints", str(FINGERPRINTS)]
    first, second = tmp_path / "a", tmp_path / "b"
    for out in (first, second):
        code, output = _invoke("publish", *args, "--out", str(out))
        assert code == 0, output
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(second) for p in second.rglob("*") if p.is_file())
    assert any(p.parts[0] == "raw" for p in files)
    for rel in files:
        assert (first / rel).read_bytes() == (second / rel).read_bytes(), rel
    code, output = _invoke("verify", str(first))
    assert code == 0, output
    assert "every published finding holds" in output


def test_verify_holds_for_a_store_published_without_asn(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "ds"
    code, output = _invoke(
        "publish", "--results", str(store), "--out", str(out), "--drop-asn", "censored"
    )
    assert code == 0, output
    code, output = _invoke("verify", str(out))
    assert code == 0, output
    assert f"{2 * h.DAYS * h.REPEATS * 3} measurements re-read" in output


def test_verify_names_findings_that_no_longer_hold(
    store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rules that changed since publishing: the blocked finding is listed, exit 4."""
    out = tmp_path / "ds"
    assert _invoke("publish", "--results", str(store), "--out", str(out))[0] == 0
    from analysis.verdicts import Classifier

    plain = Classifier._verdict

    def lenient(self: Classifier, data: dict[str, object]) -> dict[str, object]:
        row = plain(self, data)
        return {**row, "blocking": "false", "blocking_detail": None}

    monkeypatch.setattr(Classifier, "_verdict", lenient)
    code, output = _invoke("verify", str(out))
    assert code == EXIT_NOT_REPRODUCED, output
    assert "differences" in output
    line = next(x for x in output.splitlines() if x.startswith("findings") and "finding " in x)
    assert h.BLOCKED in line and "blocked at censored" in line and "accessible everywhere" in line


def test_verify_reports_an_edited_file(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "ds"
    assert _invoke("publish", "--results", str(store), "--out", str(out))[0] == 0
    findings = out / "findings.csv"
    findings.write_text(findings.read_text().replace("blocked at censored", "blocked at open"))
    code, output = _invoke("verify", str(out))
    assert code == EXIT_NOT_REPRODUCED, output
    assert "SHA256SUMS: findings.csv: content differs from SHA256SUMS" in output
    assert "blocked at open" in output and "blocked at censored" in output


def test_verify_names_the_file_of_a_bad_dataset(store: Path, tmp_path: Path) -> None:
    code, output = _invoke("verify", str(tmp_path / "nothing"))
    assert code == EXIT_BAD_INPUT and "nothing: no such dataset folder" in output
    out = tmp_path / "ds"
    assert _invoke("publish", "--results", str(store), "--out", str(out))[0] == 0
    (out / "provenance.json").write_text("{")
    code, output = _invoke("verify", str(out))
    assert code == EXIT_BAD_INPUT and "provenance.json: cannot read" in output
    (out / "provenance.json").unlink()
    code, output = _invoke("verify", str(out))
    assert code == EXIT_BAD_INPUT and "provenance.json: missing" in output


def test_verify_refuses_fingerprints_that_changed(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    http = FINGERPRINTS / "fingerprints_http.csv"
    code, output = _invoke("publish", "--ooni", str(QA), "--fingerprints", str(http),
                           "--out", str(out))  # fmt: skip
    assert code == 0, output
    assert json.loads((out / "provenance.json").read_text())["fingerprints_mode"] == "file"
    assert _invoke("verify", str(out))[0] == 0
    copy = out / "fingerprints" / "fingerprints_http.csv"
    copy.write_bytes(copy.read_bytes() + b"\n")
    code, output = _invoke("verify", str(out))
    assert code == EXIT_BAD_INPUT
    assert "fingerprints_http.csv: sha256 differs from provenance.json's" in output


def test_measurement_rows_carry_their_probe_lists(tmp_path: Path) -> None:
    """The published Parquet keeps each measurement's list hashes (column probe_lists)."""
    from analysis.verdicts import probe_lists

    data = {"annotations": {"testlists_sha256": "aa,bb", "keywords_sha256": "cc"}}
    assert probe_lists(data) == "testlists:aa;testlists:bb;keywords:cc"
    assert probe_lists({"annotations": {"vantage": "x"}}) is None
    assert probe_lists({}) is None
    frame = pd.DataFrame({"probe_lists": ["testlists:aa", None, "testlists:aa;keywords:cc"]})
    from analysis.provenance import probe_lists as all_lists

    assert all_lists(frame) == ["keywords:cc", "testlists:aa"]


@pytest.mark.parametrize("engine", ["pandas", "dask", "stream"])
def test_analyze_stamps_findings_and_writes_provenance(
    store: Path, tmp_path: Path, engine: str
) -> None:
    out = tmp_path / engine
    code, output = _invoke(
        "analyze", "--results", str(store), "--out", str(out), "--engine", engine,
        "--fingerprints", str(FINGERPRINTS / "fingerprints_dns.csv"),
    )  # fmt: skip
    assert code == 0, output
    findings = pd.read_parquet(out / "findings.parquet")
    cell = f"fingerprints_dns.csv:{_sha(FINGERPRINTS / 'fingerprints_dns.csv')}"
    assert (findings["analysis_fingerprints"] == cell).all()
    assert (findings["rules_version"] == RULES_VERSION).all()
    assert (findings["censorscope_version"] == __version__).all()
    record = json.loads((out / "provenance.json").read_text())
    assert record["fingerprints"] == {"fingerprints_dns.csv": cell.split(":", 1)[1]}
    assert record["gates"] == {"blocked_share": 0.5, "fdr_alpha": 0.05, "min_measurements": 3}
    # Every engine lists the probes' lists (none recorded in this store), per finding too.
    assert record.get("probe_lists") == []
    assert (findings["probe_lists"] == "").all()
