"""A national blockpage body that OONI's HTTP fingerprints recognise.

We read the fingerprint CSV (ooni/blocking-fingerprints format) and take the first
national-scope fingerprint matched by "body contains", so analysis code matching
fingerprints can be tested against a page built from the same data.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

from tests.shared_data import SHARED_DATA

_REPO = Path(__file__).resolve().parents[2]
CANDIDATE_PATHS = (
    _REPO / "analysis" / "data" / "fingerprints_http.csv",
    _REPO / "data" / "fingerprints" / "fingerprints_http.csv",
    SHARED_DATA / "fingerprints" / "fingerprints_http.csv",
)


@dataclass(frozen=True)
class Fingerprint:
    name: str
    pattern: str
    expected_countries: str


# Used only when no CSV is reachable; same shape as a CSV row.
_FALLBACK = Fingerprint(
    "ooni.be_0", "that is considered illegal according to Belgian legislation", "BE"
)


def fingerprints_csv() -> Path | None:
    env = os.environ.get("CENSORSCOPE_FINGERPRINTS_HTTP")
    for path in ([Path(env)] if env else []) + list(CANDIDATE_PATHS):
        if path.is_file():
            return path
    return None


def blockpage_fingerprint() -> Fingerprint:
    path = fingerprints_csv()
    if path is None:
        return _FALLBACK
    with path.open(newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            if (
                row.get("scope") == "nat"
                and row.get("location_found") == "body"
                and row.get("pattern_type") == "contains"
                and row.get("pattern")
            ):
                return Fingerprint(row["name"], row["pattern"], row.get("expected_countries", ""))
    return _FALLBACK


def blockpage_body(fp: Fingerprint | None = None) -> bytes:
    fp = fp or blockpage_fingerprint()
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>Access denied</title></head>"
        f"<body><h1>Access to this website is restricted</h1><p>{fp.pattern}</p>"
        "</body></html>"
    ).encode()
