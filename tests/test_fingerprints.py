"""Loading and matching OONI blocking fingerprints."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from probes.fingerprints import (
    COLUMNS,
    FingerprintError,
    Fingerprints,
    blocking_matches,
    load_csv,
)
from tests.shared_data import SHARED_DATA

FP_DIR = SHARED_DATA / "fingerprints"
needs_data = pytest.mark.skipif(not FP_DIR.exists(), reason="shared fingerprint data absent")
HEADER = ",".join(COLUMNS)


@pytest.fixture(scope="module")
def fps() -> Fingerprints:
    return Fingerprints.from_dir(FP_DIR)


@needs_data
def test_every_row_of_both_files_parses(fps: Fingerprints) -> None:
    def rows(name: str) -> int:
        with (FP_DIR / name).open(encoding="utf-8", newline="") as fh:
            return sum(1 for _ in csv.DictReader(fh))

    assert len(fps.dns) == rows("fingerprints_dns.csv") == 226
    assert len(fps.http) == rows("fingerprints_http.csv") == 1729
    assert sum(fp.is_false_positive for fp in fps.http) == 475


@needs_data
def test_national_blockpage_in_body(fps: Fingerprints) -> None:
    body = "<html>Maaf, akses diblokir. Hubungi aduankonten@kominfo.go.id</html>"
    names = {m.name for m in fps.match_http(body, {})}
    assert "ooni.id_kominfo" in names
    match = next(m for m in fps.match_http(body.encode(), {}) if m.name == "ooni.id_kominfo")
    assert (match.scope, match.location, match.is_false_positive) == ("nat", "body", False)
    assert "ID" in match.expected_countries


@needs_data
def test_header_prefix_is_case_insensitive_on_name(fps: Fingerprints) -> None:
    matches = fps.match_http("", {"LOCATION": "http://lamanlabuh.aduankonten.id/?u=x"})
    assert [m.name for m in matches] == ["ooni.id_lamanlabuh_kominfo"]
    assert matches[0].location == "header.location"
    assert fps.match_http("", {"Location": "https://example.org/lamanlabuh.aduankonten.id"}) == []


@needs_data
def test_header_full_match_needs_equality(fps: Fingerprints) -> None:
    assert [m.name for m in fps.match_http(None, {"Server": "SonicWALL"})] == ["ooni.br_1"]
    assert fps.match_http(None, {"Server": "SonicWALL 2"}) == []
    assert [m.name for m in fps.match_http(None, {"Server": ["nginx", "SonicWALL"]})] == [
        "ooni.br_1"
    ]


@needs_data
def test_false_positive_scope_is_flagged_not_blocking(fps: Fingerprints) -> None:
    matches = fps.match_http('<meta name="x" content="twitter:card">', {})
    fp = [m for m in matches if m.name == "cp.fp_r_fp_6"]
    assert fp and fp[0].is_false_positive and fp[0].scope == "fp"
    assert "cp.fp_r_fp_6" not in {m.name for m in blocking_matches(matches)}


@needs_data
def test_dns_ip_and_cname(fps: Fingerprints) -> None:
    assert [m.name for m in fps.match_dns("10.10.34.36")] == ["ooni.ir_10dot10_ipv4_1"]
    assert [m.name for m in fps.match_dns("trustpositif.kominfo.go.id.")] == ["ooni.id_95"]
    assert fps.match_dns("93.184.216.34") == []


@needs_data
def test_benign_page_matches_nothing_that_blocks(fps: Fingerprints) -> None:
    body = "<html><head><title>Example Domain</title></head><body>Hello</body></html>"
    assert blocking_matches(fps.match_http(body, {"Server": "nginx"})) == []


def _write(tmp_path: Path, name: str, rows: list[str]) -> Path:
    path = tmp_path / name
    path.write_bytes(("\r\n".join([HEADER, *rows]) + "\r\n").encode("utf-8"))
    return path


def test_crlf_file_loads(tmp_path: Path) -> None:
    path = _write(tmp_path, "h.csv", ['a.1,nat,,body,contains,blocked here,5,"AE,SA",x,,'])
    (fp,) = load_csv(path, dns_only=False)
    assert (fp.name, fp.pattern, fp.expected_countries) == ("a.1", "blocked here", ("AE", "SA"))
    assert fp.origin.endswith("h.csv:2")


@pytest.mark.parametrize(
    ("row", "field"),
    [
        ("a.1,nope,,body,contains,x,5,,,,", "scope"),
        ("a.1,nat,,footer,contains,x,5,,,,", "location_found"),
        ("a.1,nat,,body,glob,x,5,,,,", "pattern_type"),
        ("a.1,nat,,body,regexp,(unclosed,5,,,,", "pattern"),
        ("a.1,nat,,body,contains,,5,,,,", "pattern"),
        ("a.1,nat,,body,contains,x,high,,,,", "confidence_no_fp"),
        (",nat,,body,contains,x,5,,,,", "name"),
    ],
)
def test_bad_row_names_file_line_and_field(tmp_path: Path, row: str, field: str) -> None:
    path = _write(tmp_path, "bad.csv", ["ok.1,nat,,body,contains,fine,5,,,,", row])
    with pytest.raises(FingerprintError) as err:
        load_csv(path, dns_only=False)
    assert f"bad.csv:3: field {field!r}" in str(err.value)


def test_duplicate_names_and_wrong_file_are_errors(tmp_path: Path) -> None:
    dup = _write(tmp_path, "dup.csv", ["a.1,nat,,body,contains,x,5,,,,"] * 2)
    with pytest.raises(FingerprintError, match=r"dup\.csv:3: field 'name'"):
        load_csv(dup, dns_only=False)
    http_in_dns = _write(tmp_path, "dns.csv", ["a.1,nat,,body,contains,x,5,,,,"])
    with pytest.raises(FingerprintError, match="location_found"):
        load_csv(http_in_dns, dns_only=True)


def test_bad_header_row(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    path.write_text("name,scope\r\n", encoding="utf-8")
    with pytest.raises(FingerprintError, match=r"x\.csv:1"):
        load_csv(path, dns_only=False)
