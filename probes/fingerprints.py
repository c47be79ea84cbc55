"""Blocking fingerprints in OONI's ``ooni/blocking-fingerprints`` CSV format.

A fingerprint names a censor by something it leaves behind: a forged DNS answer (an IP or a
CNAME target) or a string in a blockpage's body or headers. We load both CSV files
(``fingerprints_dns.csv``, ``fingerprints_http.csv``), validate every row so a typo fails loudly
with ``file:line`` and the field, and match DNS answers and HTTP responses against them.

Rows with scope ``fp`` describe *known false positives* (strings that look like a blockpage but
are benign). They still match, so an analyst can see them, but the match says
``is_false_positive`` and must never count as blocking evidence.

Matching is tuned for ~1,700 patterns: ``full`` patterns are dictionary look-ups, ``contains``
patterns are byte substring searches (CPython's fast search, measured ~40x faster than one
alternation regex of all patterns), regexps are compiled once.
"""

from __future__ import annotations

import codecs
import csv
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

# Column order of both files (ooni/blocking-fingerprints README and header row).
COLUMNS = (
    "name",
    "scope",
    "other_names",
    "location_found",
    "pattern_type",
    "pattern",
    "confidence_no_fp",
    "expected_countries",
    "source",
    "exp_url",
    "notes",
)
PATTERN_TYPES = frozenset({"full", "contains", "prefix", "regexp"})
# Scopes shared by OONI and Citizen Lab (nat, isp, prod, inst, vbw, fp), plus the two that occur
# in ooni/blocking-fingerprints@171641e: "injb" (benign injected content) and "prov" (a content
# provider geoblocking on a regulator's order).
SCOPES = frozenset({"nat", "isp", "prod", "inst", "vbw", "fp", "injb", "prov"})
FALSE_POSITIVE_SCOPE = "fp"
DNS_FILE = "fingerprints_dns.csv"
HTTP_FILE = "fingerprints_http.csv"


class FingerprintError(ValueError):
    """A fingerprint file is malformed; the message names file:line and the field."""


@dataclass(frozen=True)
class Fingerprint:
    """One validated row."""

    name: str
    scope: str
    location: str  # "dns", "body" or "header.<lower-case name>"
    pattern_type: str
    pattern: str
    confidence_no_fp: int
    expected_countries: tuple[str, ...]
    origin: str  # "file:line", to trace a match back to its row

    @property
    def is_false_positive(self) -> bool:
        return self.scope == FALSE_POSITIVE_SCOPE


@dataclass(frozen=True)
class Match:
    """A fingerprint that matched an observation."""

    name: str
    scope: str
    location: str
    is_false_positive: bool
    confidence_no_fp: int = 0
    expected_countries: tuple[str, ...] = ()

    @classmethod
    def of(cls, fp: Fingerprint) -> Match:
        return cls(
            fp.name,
            fp.scope,
            fp.location,
            fp.is_false_positive,
            fp.confidence_no_fp,
            fp.expected_countries,
        )


def _fail(origin: str, column: str, why: str) -> FingerprintError:
    return FingerprintError(f"{origin}: field {column!r}: {why}")


def _parse_row(values: list[str], origin: str, *, dns_only: bool) -> Fingerprint:
    if len(values) != len(COLUMNS):
        raise FingerprintError(f"{origin}: expected {len(COLUMNS)} fields, got {len(values)}")
    row = dict(zip(COLUMNS, values, strict=True))
    name = row["name"].strip()
    if not name:
        raise _fail(origin, "name", "empty")
    scope = row["scope"].strip()
    if scope not in SCOPES:
        raise _fail(origin, "scope", f"unknown scope {scope!r} (known: {sorted(SCOPES)})")
    location = row["location_found"].strip()
    if location.startswith("header."):
        if dns_only or len(location) == len("header."):
            raise _fail(origin, "location_found", f"bad location {location!r}")
        location = location.lower()
    elif location not in ("dns", "body") or (location == "dns") != dns_only:
        raise _fail(origin, "location_found", f"bad location {location!r} for this file")
    pattern_type = row["pattern_type"].strip()
    if pattern_type not in PATTERN_TYPES:
        raise _fail(origin, "pattern_type", f"unknown pattern type {pattern_type!r}")
    pattern = row["pattern"]
    if not pattern:
        raise _fail(origin, "pattern", "empty")
    if pattern_type == "regexp":
        try:
            re.compile(pattern)
        except (re.error, OverflowError, RecursionError) as exc:
            raise _fail(origin, "pattern", f"invalid regexp: {exc}") from exc
    confidence_text = row["confidence_no_fp"].strip() or "0"
    try:
        confidence = int(confidence_text)
    except ValueError as exc:
        raise _fail(origin, "confidence_no_fp", f"not an integer: {confidence_text!r}") from exc
    if not 0 <= confidence <= 10:
        raise _fail(origin, "confidence_no_fp", f"out of range 0..10: {confidence}")
    countries = tuple(c.strip() for c in row["expected_countries"].split(",") if c.strip())
    return Fingerprint(name, scope, location, pattern_type, pattern, confidence, countries, origin)


_LONE_CR = re.compile(rb"(?<=\r)(?!\n)(?=.)", re.DOTALL)


def _text_lines(path: Path, handle: IO[bytes]) -> Iterator[str]:
    """The file's lines as text (line ends kept, for csv); bad UTF-8 names its line."""
    number = 0
    for chunk in handle:
        # Universal newlines, as open(newline="") reads them: a lone CR ends a line too.
        for raw in _LONE_CR.split(chunk):
            number += 1
            if number == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8) :]
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise FingerprintError(
                    f"{path}:{number}: not valid UTF-8: byte 0x{raw[exc.start]:02x} "
                    f"at column {exc.start + 1}"
                ) from None


def _rows(path: Path, handle: IO[bytes]) -> Iterator[tuple[int, list[str]]]:
    """CSV rows with the line each starts on; a CSV syntax error names its line."""
    reader = csv.reader(_text_lines(path, handle))
    start = 1
    while True:
        try:
            values = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise FingerprintError(f"{path}:{reader.line_num}: not valid CSV: {exc}") from None
        yield start, values
        start = reader.line_num + 1


def load_csv(path: str | Path, *, dns_only: bool) -> list[Fingerprint]:
    """Parse and validate one fingerprint file (UTF-8, CRLF or LF line ends)."""
    path = Path(path)
    out: list[Fingerprint] = []
    seen: dict[str, str] = {}
    with path.open("rb") as fh:
        rows = _rows(path, fh)
        first = next(rows, None)
        if first is None:
            raise FingerprintError(f"{path}:1: empty file (no header row)")
        header = first[1]
        if tuple(h.strip() for h in header) != COLUMNS:
            raise FingerprintError(f"{path}:1: header is {header}, expected {list(COLUMNS)}")
        for start, values in rows:
            origin = f"{path}:{start}"
            if not any(v.strip() for v in values):
                continue
            fp = _parse_row(values, origin, dns_only=dns_only)
            if fp.name in seen:
                raise _fail(origin, "name", f"duplicate of {seen[fp.name]}")
            seen[fp.name] = origin
            out.append(fp)
    return out


@dataclass
class _Index:
    """Patterns of one location, grouped by how they match."""

    full: dict[str, list[Fingerprint]] = field(default_factory=dict)
    contains: list[tuple[bytes, Fingerprint]] = field(default_factory=list)
    prefix: list[tuple[str, Fingerprint]] = field(default_factory=list)
    regexp: list[tuple[re.Pattern[str], Fingerprint]] = field(default_factory=list)

    def add(self, fp: Fingerprint) -> None:
        if fp.pattern_type == "full":
            self.full.setdefault(fp.pattern, []).append(fp)
        elif fp.pattern_type == "contains":
            self.contains.append((fp.pattern.encode("utf-8"), fp))
        elif fp.pattern_type == "prefix":
            self.prefix.append((fp.pattern, fp))
        else:
            self.regexp.append((re.compile(fp.pattern), fp))

    def match(self, text: str, data: bytes) -> Iterable[Fingerprint]:
        yield from self.full.get(text, ())
        # UTF-8 is self-synchronising: a substring of the bytes is a substring of the text.
        yield from (fp for needle, fp in self.contains if needle in data)
        yield from (fp for start, fp in self.prefix if text.startswith(start))
        yield from (fp for rx, fp in self.regexp if rx.search(text))


def _as_text(value: str | bytes) -> tuple[str, bytes]:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace"), value
    return value, value.encode("utf-8", errors="surrogatepass")


class Fingerprints:
    """Validated DNS and HTTP fingerprints with fast matchers."""

    def __init__(self, dns: Iterable[Fingerprint], http: Iterable[Fingerprint]) -> None:
        self.dns = list(dns)
        self.http = list(http)
        self.missing_files: list[str] = []
        self._dns = _Index()
        for fp in self.dns:
            self._dns.add(fp)
        self._body = _Index()
        self._headers: dict[str, _Index] = {}
        for fp in self.http:
            if fp.location == "body":
                self._body.add(fp)
            else:
                self._headers.setdefault(fp.location[len("header.") :], _Index()).add(fp)

    @classmethod
    def load(cls, dns_csv: str | Path, http_csv: str | Path) -> Fingerprints:
        return cls(load_csv(dns_csv, dns_only=True), load_csv(http_csv, dns_only=False))

    @classmethod
    def from_files(cls, paths: Iterable[str | Path]) -> Fingerprints:
        """Load any mix of DNS and HTTP fingerprint files (the kind is read from each file).

        A file whose first data row has ``location_found`` = ``dns`` is a DNS file; every
        row is then validated against that kind, so a mixed file fails naming its line.
        """
        dns: list[Fingerprint] = []
        http: list[Fingerprint] = []
        for path in paths:
            with Path(path).open("rb") as fh:
                rows = _rows(Path(path), fh)
                next(rows, None)
                first = next((r for _, r in rows if any(v.strip() for v in r)), None)
            is_dns = first is not None and len(first) > 3 and first[3].strip() == "dns"
            (dns if is_dns else http).extend(load_csv(path, dns_only=is_dns))
        return cls(dns, http)

    @classmethod
    def from_dir(cls, directory: str | Path) -> Fingerprints:
        """Load ``fingerprints_dns.csv`` and ``fingerprints_http.csv`` from one folder, whichever
        of them it holds: a folder with only HTTP fingerprints (the lab writes one) still
        matches block pages. `missing_files` names the absent ones, for the caller to say."""
        directory = Path(directory)
        dns, http = directory / DNS_FILE, directory / HTTP_FILE
        loaded = cls(
            load_csv(dns, dns_only=True) if dns.is_file() else [],
            load_csv(http, dns_only=False) if http.is_file() else [],
        )
        loaded.missing_files = [p.name for p in (dns, http) if not p.is_file()]
        return loaded

    def match_dns(self, answer: str) -> list[Match]:
        """Match one DNS answer: an IP address or a CNAME target (trailing dot ignored)."""
        value = answer.strip().rstrip(".")
        return [Match.of(fp) for fp in self._dns.match(*_as_text(value))]

    def match_http(
        self, body: str | bytes | None, headers: Mapping[str, object] | None = None
    ) -> list[Match]:
        """Match a response body and headers (names case-insensitive; values str or list)."""
        found: list[Match] = []
        if body:
            found.extend(Match.of(fp) for fp in self._body.match(*_as_text(body)))
        for raw_name, raw_value in (headers or {}).items():
            index = self._headers.get(raw_name.lower())
            if index is None:
                continue
            values = raw_value if isinstance(raw_value, list | tuple) else [raw_value]
            for value in values:
                if isinstance(value, str | bytes):
                    found.extend(Match.of(fp) for fp in index.match(*_as_text(value)))
        return found


def blocking_matches(matches: Iterable[Match]) -> list[Match]:
    """The matches that are blocking evidence (false-positive patterns removed)."""
    return [m for m in matches if not m.is_false_positive]
