"""Loading and validating test lists and keyword lists.

Test lists are Citizen Lab CSV files (citizenlab/test-lists `lists/`): the URLs a web nettest
measures. Keyword lists are the words a keyword nettest sends: our own CSV format, Citizen Lab's
chat-censorship CSV files exactly as published, and plain `.txt` files with one keyword per line.
The kind of a file is recognised from its header (and `.txt` from its suffix), never from a flag,
so `--testlist` and `--keywords` can point at any published file.

Everything is streamed: a list is read line by line and decoded line by line, so memory stays
flat in the list length (the runner handles 100k-input lists). Only `validate` keeps a set of
URLs per file, because finding duplicates needs one.

Errors: the iterators raise `ListError(file, line, field, reason)` on anything that makes a row
unreadable (encoding, header, column count); `validate` reports every problem it finds as a
`Problem` and goes on. Both print as `FILE:LINE: FIELD: REASON`; line 0 means the file as a
whole (it could not be opened).

Warnings: published keyword lists are taken as they are. What is odd in them but readable (a
row marked `combo` with one part or with parts joined by `x`, a control character, a row a
column short) is a warning (`Problem.severity == "warning"`, printed `FILE:LINE: FIELD:
warning: REASON`): the row is kept as written, `iter_keywords(..., on_warning=...)` hands the
warning to the caller, and `lists validate` prints it without failing; `lists validate
--strict` fails on warnings too (for the lists we write ourselves).
"""

from __future__ import annotations

import codecs
import csv
import ipaddress
import re
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass, field, replace
from datetime import date
from pathlib import Path
from typing import Final, Literal, TextIO
from urllib.parse import urlsplit

from probes.exit_status import EXIT_BAD_INPUT, EXIT_OK

Kind = Literal["testlist", "keywords-ours", "keywords-citizenlab", "keywords-txt"]


# The bundled default list (Citizen Lab format, our own selection).
DEFAULT_TESTLIST: Final = Path(__file__).resolve().parent.parent / "testlists" / "default.csv"

# citizenlab/test-lists, every `lists/*.csv` and scripts/lint-lists.py (`header`).
TESTLIST_COLUMNS: Final = (
    "url",
    "category_code",
    "category_description",
    "date_added",
    "source",
    "notes",
)

# Our keyword format; `A+B+C` in `keyword` is a combination (all parts in one message).
OUR_KEYWORD_COLUMNS: Final = ("keyword", "language", "category", "source")

# Name of the keyword column in Citizen Lab's published files (citizenlab/chat-censorship and
# jasonqng/chinese-keywords, see shared/data/README.md), in order of preference:
#   keyword              ncpc19, jasonqng csv/ and csv/individual/*(gb2312).csv
#   Keyword              wechat 709crackdown, lxb, one_app_two_systems; LINE translated lists
#   word                 june-4, TOM-Skype--Sina-UC, livestream
#   keyword_combination  coronavirus/wechat.csv
#   keyword_added        coronavirus/yy.csv
#   Person               microsoft-bing censored-chinese-character-names (censored names)
#   Extenuating combination  qqmail/extenuating.csv (combinations that lift a block)
KEYWORD_COLUMN_ALIASES: Final = (
    "keyword",
    "Keyword",
    "word",
    "keyword_combination",
    "keyword_added",
    "Person",
    "Extenuating combination",
)

# Metadata columns promoted to Keyword fields, first present wins.
_LANGUAGE_COLUMNS: Final = ("language", "Language")
_CATEGORY_COLUMNS: Final = ("category", "Category", "gfw_category", "_category", "theme", "Theme")
_SOURCE_COLUMNS: Final = ("source", "Source", "Reference")

# Parts of a combination are joined by "+" (chat-censorship README); jasonqng's
# "CDT-cleaned up (gb2312).csv" writes the full-width plus U+FF0B (e.g. "莎车＋爆炸").
COMBINATION_SEPARATORS: Final = ("+", "\uff0b")

# wechat/one_app_two_systems marks combinations in this column and separates parts by a space.
_KEYWORD_TYPE_COLUMN: Final = "Keyword Type"
_KEYWORD_TYPE_COMBO: Final = "combo"

# Encodings: UTF-8 (optionally behind a BOM) unless the file name says GB2312/GB18030, as in
# jasonqng/chinese-keywords `csv/individual/* (gb2312).csv`: a UTF-8 BOM followed by a GB2312
# body, which we decode as GB18030 (a superset).
_GB_NAME_MARKERS: Final = ("gb2312", "gb18030")

# The 31 current category codes and their descriptions, from citizenlab/test-lists
# lists/00-LEGEND-new_category_codes.csv (commit 7f01e430). The lint script compares
# `category_description` with these strings exactly.
CATEGORY_CODES: Final[dict[str, str]] = {
    "ALDR": "Alcohol & Drugs",
    "REL": "Religion",
    "PORN": "Pornography",
    "PROV": "Provocative Attire",
    "POLR": "Political Criticism",
    "HUMR": "Human Rights Issues",
    "ENV": "Environment",
    "MILX": "Terrorism and Militants",
    "HATE": "Hate Speech",
    "NEWS": "News Media",
    "XED": "Sex Education",
    "PUBH": "Public Health",
    "GMB": "Gambling",
    "ANON": "Anonymization and circumvention tools",
    "DATE": "Online Dating",
    "GRP": "Social Networking",
    "LGBT": "LGBT",
    "FILE": "File-sharing",
    "HACK": "Hacking Tools",
    "COMT": "Communication Tools",
    "MMED": "Media sharing",
    "HOST": "Hosting and Blogging Platforms",
    "SRCH": "Search Engines",
    "GAME": "Gaming",
    "CULTR": "Culture",
    "ECON": "Economics",
    "GOVT": "Government",
    "COMM": "E-commerce",
    "CTRL": "Control content",
    "IGO": "Intergovernmental Organizations",
    "MISC": "Miscellaneous content",
}

# Old codes (lists/00-LEGEND-category_codes.csv and the "Replaces old code(s)" column of the new
# legend) that are not current codes, mapped to the code that replaced them. None of them
# appears in global, cn, hk, ir or ru at commit 7f01e430, so they are reported as obsolete
# rather than accepted.
LEGACY_CATEGORY_CODES: Final[dict[str, str]] = {
    "POLT": "POLR",
    "MINR": "HUMR",
    "WOMR": "HUMR",
    "MINF": "HUMR",
    "FEXP": "NEWS",
    "SELFHARM": "PUBH",
    "GAYL": "LGBT",
    "P2P": "FILE",
    "SFTWR": "FILE",
    "WRZ": "FILE",
    "VOIP": "COMT",
    "EMAIL": "COMT",
    "TRNS": "COMT",
    "MSG": "COMT",
    "BLGSERV": "HOST",
    "CLOUD": "HOST",
    "HAL": "CULTR",
    "DEV": "ECON",
    "FREL": "GOVT",
    "USMIL": "GOVT",
    "CACH": "CTRL",
    "KWRD": "MISC",
}

# Headers of the legend files in citizenlab/test-lists `lists/` (also recognised by their
# `00-LEGEND` file-name prefix, which the lint script skips).
LEGEND_HEADERS: Final[dict[tuple[str, ...], str]] = {
    ("CategoryCode", "CategoryName"): "old category codes",
    (
        "Category Description",
        "New Code",
        "Replaces old code(s)",
        "Description",
    ): "category codes",
    ("CountryCode", "CountryName"): "country codes",
}
_LEGEND_PREFIX: Final = "00-LEGEND"

# scripts/lint-lists.py BAD_CHARS: not allowed in `source` and `notes`.
_BAD_FREE_TEXT_CHARS: Final = ("\r", "\n", "\t", "\\")

_DATE_SHAPE: Final = re.compile(r"\d{4}-\d{2}-\d{2}")
# RFC 1123 host names; the top-level label is alphabetic or an IDNA "xn--" label.
_HOST_LABEL: Final = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
_HOST_NAME: Final = re.compile(rf"(?:{_HOST_LABEL}\.)+(?:[a-z]{{2,63}}|xn--[a-z0-9-]{{1,59}})\.?")
# Unicode category Cc (C0 and C1 controls); a URL also may not hold whitespace or a backslash.
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_URL_BAD_CHAR: Final = re.compile(r"[\s\x00-\x1f\x7f-\x9f\\]")
# A keyword language: a BCP 47-like tag (en, zh, zh-Hans, zh-TW).
_LANGUAGE_TAG: Final = re.compile(r"[a-z]{2,3}(?:-[A-Za-z0-9]{2,8})*")


ERROR: Final = "error"
WARNING: Final = "warning"


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a list, located precisely enough to fix it.

    `severity` "error": the row or file cannot be used (loading raises ListError); "warning":
    the row is odd but kept as written (published lists load; `lists validate --strict` fails).
    """

    file: str
    line: int
    field: str
    reason: str
    severity: str = ERROR

    def __str__(self) -> str:
        marker = "warning: " if self.severity == WARNING else ""
        return f"{self.file}:{self.line}: {self.field}: {marker}{self.reason}"

    @property
    def is_warning(self) -> bool:
        return self.severity == WARNING


class ListError(ValueError):
    """A list cannot be read; the CLI prints it and exits 2."""

    def __init__(self, file: str | Path, line: int, field: str, reason: str) -> None:
        self.problem = Problem(str(file), line, field, reason)
        super().__init__(str(self.problem))

    @property
    def file(self) -> str:
        return self.problem.file

    @property
    def line(self) -> int:
        return self.problem.line

    @property
    def field(self) -> str:
        return self.problem.field

    @property
    def reason(self) -> str:
        return self.problem.reason


@dataclass(frozen=True, slots=True)
class TestListEntry:
    """One row of a Citizen Lab test list, with where it came from."""

    __test__ = False  # not a pytest test class despite the name

    url: str
    category_code: str
    category_description: str
    date_added: str
    source: str
    notes: str
    file: str
    line: int


@dataclass(frozen=True, slots=True)
class Keyword:
    """A keyword or a combination whose parts must all appear in one message."""

    parts: tuple[str, ...]
    text: str
    language: str
    category: str
    source: str
    metadata: dict[str, str] = field(default_factory=dict)
    file: str = ""
    line: int = 0

    @property
    def is_combination(self) -> bool:
        return len(self.parts) > 1

    def matches(self, message: str) -> bool:
        """True when every part occurs in `message` (how the filters studied behave)."""
        return all(part in message for part in self.parts)


WarningHandler = Callable[[Problem], None]


class _Sink:
    """Where parsing problems go: errors raised at once when loading, collected when validating.

    `error` is for what makes a row or file unreadable; `warn` for what loading tolerates
    (published Citizen Lab files are taken as they are, the row kept as written): collected when
    validating, handed to `on_warning` (if any) when loading.
    """

    def __init__(self, strict: bool, on_warning: WarningHandler | None = None) -> None:
        self.strict = strict
        self.on_warning = on_warning
        self.problems: list[Problem] = []

    def error(self, problem: Problem) -> None:
        if self.strict:
            raise ListError(problem.file, problem.line, problem.field, problem.reason)
        self.problems.append(problem)

    def warn(self, problem: Problem) -> None:
        problem = replace(problem, severity=WARNING)
        if not self.strict:
            self.problems.append(problem)
        elif self.on_warning is not None:
            self.on_warning(problem)


# --- reading ------------------------------------------------------------------------------


def _codec_for(path: Path, encoding: str | None) -> str:
    if encoding:
        return encoding
    name = path.name.lower()
    return "gb18030" if any(marker in name for marker in _GB_NAME_MARKERS) else "utf-8"


# A line of a list is one URL or keyword with a few short fields; csv itself refuses a field
# over 128 KiB. Longer lines are not read into memory.
MAX_LINE_BYTES: Final = 1 << 20


def _lines(path: Path, codec: str, sink: _Sink) -> Iterator[str]:
    """Decode `path` one line at a time, reporting bad bytes with line and byte offset."""
    offset = 0
    with path.open("rb") as handle:
        for number, raw in enumerate(iter(lambda: handle.readline(MAX_LINE_BYTES + 1), b""), 1):
            if len(raw) > MAX_LINE_BYTES:
                # Not a list (a binary file, a dump): stop before reading it into memory whole.
                raise ListError(path, number, "line", f"longer than {MAX_LINE_BYTES} bytes")
            skip = 3 if number == 1 and raw.startswith(codecs.BOM_UTF8) else 0
            body = raw[skip:]
            try:
                text = body.decode(codec)
            except UnicodeDecodeError as exc:
                where = offset + skip + exc.start
                sink.error(
                    Problem(
                        str(path),
                        number,
                        "encoding",
                        f"not valid {codec.upper()}: byte 0x{body[exc.start]:02x}"
                        f" at byte offset {where}",
                    )
                )
                text = body.decode(codec, errors="replace")
            offset += len(raw)
            yield text


_Records = Generator[tuple[int, list[str]], None, None]


def _records(path: Path, codec: str, sink: _Sink) -> _Records:
    """CSV records with the line each starts on; blank records (e.g. `,,,`) are skipped."""
    reader = csv.reader(_lines(path, codec, sink))
    last = 0
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise ListError(path, reader.line_num, "csv", str(exc)) from exc
        start, last = last + 1, reader.line_num
        if any(cell.strip() for cell in row):
            yield start, row


def _kind_from_header(path: Path, header: list[str]) -> Kind:
    names = tuple(name.strip() for name in header)
    legend = LEGEND_HEADERS.get(names)
    if legend is None and path.name.startswith(_LEGEND_PREFIX):
        legend = "legend"
    if legend is not None:
        raise ListError(path, 1, "header", f"not a test list: legend file ({legend})")
    if names == TESTLIST_COLUMNS:
        return "testlist"
    if names == OUR_KEYWORD_COLUMNS:
        return "keywords-ours"
    shown = ",".join(names)
    if names[:1] == ("url",) or len(set(names) & set(TESTLIST_COLUMNS[1:])) >= 2:
        raise ListError(
            path,
            1,
            "header",
            f"wrong test-list header '{shown}': expected {','.join(TESTLIST_COLUMNS)}",
        )
    if names[:1] == ("keyword",) and {"language", "source"} & set(names):
        raise ListError(
            path,
            1,
            "header",
            f"wrong keyword-list header '{shown}': expected {','.join(OUR_KEYWORD_COLUMNS)}",
        )
    if any(name in KEYWORD_COLUMN_ALIASES for name in names):
        return "keywords-citizenlab"
    table = _not_a_keyword_list(names)
    if table is not None:
        raise ListError(path, 1, "header", f"not a keyword list: {table} (header '{shown}')")
    raise ListError(
        path,
        1,
        "header",
        f"unknown header '{shown}': expected a test list ({','.join(TESTLIST_COLUMNS)}), "
        f"a keyword list ({','.join(OUR_KEYWORD_COLUMNS)}) or a Citizen Lab keyword list "
        f"(a column named {', '.join(KEYWORD_COLUMN_ALIASES)})",
    )


def _not_a_keyword_list(names: tuple[str, ...]) -> str | None:
    """What a published table that holds no keywords is, from its header, or None.

    chat-censorship ships code books beside its keyword lists (livestream/
    categories_keyword_censorship.csv `Theme,Category,Description,...`,
    themes_keyword_censorship.csv `Theme,Description,Examples`) and a table of URLs
    (wechat/one_app_two_systems/wechat_blocked_urls.csv `URLs,Categorization,Language`).
    """
    lowered = {name.lower() for name in names}
    if lowered & {"url", "urls"}:
        return f"a table of URLs (a test list has the columns {','.join(TESTLIST_COLUMNS)})"
    if "description" in lowered and lowered & {"theme", "category"}:
        return "a table of themes or categories (a code book for other lists' columns)"
    return None


def _open_csv(path: Path, codec: str, sink: _Sink) -> tuple[Kind, list[str], _Records]:
    """Read the header of a CSV list; return its kind, header and the remaining records."""
    records = _records(path, codec, sink)
    first = next(records, None)
    if first is None:
        raise ListError(path, 1, "header", "empty file: expected a header line")
    line, header = first
    if line != 1:
        raise ListError(path, 1, "header", "the header must be on the first line")
    return _kind_from_header(path, header), header, records


def detect_kind(path: str | Path, *, encoding: str | None = None) -> Kind:
    """What kind of list `path` is, from its suffix and header; ListError if none."""
    path = Path(path)
    if path.suffix.lower() == ".txt":
        return "keywords-txt"
    kind, _, records = _open_csv(path, _codec_for(path, encoding), _Sink(strict=True))
    records.close()
    return kind


# --- test lists ---------------------------------------------------------------------------


def _parse_test_list(path: Path, sink: _Sink) -> Iterator[TestListEntry]:
    kind, _, records = _open_csv(path, "utf-8", sink)
    if kind != "testlist":
        raise ListError(path, 1, "header", f"not a test list: this is a {kind} file")
    width = len(TESTLIST_COLUMNS)
    for line, row in records:
        if len(row) != width:
            sink.error(Problem(str(path), line, "row", f"expected {width} columns, got {len(row)}"))
            continue
        url, code, description, added, source, notes = row
        yield TestListEntry(url, code, description, added, source, notes, str(path), line)


def iter_test_list(path: str | Path, *, check_urls: bool = False) -> Iterator[TestListEntry]:
    """Stream the entries of a Citizen Lab test list.

    Raises ListError on a bad header, encoding or column count, and with `check_urls` on the
    first URL a nettest could not measure. Other checks are `validate`'s job.
    """
    path = Path(path)
    for entry in _parse_test_list(path, _Sink(strict=True)):
        if check_urls:
            reason = check_url(entry.url)
            if reason is not None:
                raise ListError(path, entry.line, "url", reason)
        yield entry


def iter_inputs(testlists: Iterable[str | Path], inputs: Iterable[str]) -> Iterator[str]:
    """What the runner measures: explicit `--input` values first, then each list's URLs.

    Lists are opened only when reached and streamed; a bad URL in a list raises ListError.
    """
    for value in inputs:
        value = value.strip()
        if value:
            yield value
    for path in testlists:
        for entry in iter_test_list(path, check_urls=True):
            yield entry.url


def check_runnable(paths: Iterable[str | Path]) -> tuple[list[Problem], int]:
    """Every problem that would stop a run partway (header, encoding, column count, a URL no
    nettest can measure) in the given test lists, and how many rows they hold.

    `run` calls it before measuring so that a bad row on line 900 is reported with its
    siblings up front instead of ending the run there. It checks what loading checks, not
    all of `validate`'s rules: a published list with, say, an obsolete category still runs.
    """
    problems: list[Problem] = []
    rows = 0
    for raw in paths:
        path = Path(raw)
        sink = _Sink(strict=False)
        try:
            for entry in _parse_test_list(path, sink):
                rows += 1
                reason = check_url(entry.url)
                if reason is not None:
                    sink.error(Problem(str(path), entry.line, "url", reason))
        except ListError as exc:
            sink.problems.append(exc.problem)
        except OSError as exc:
            sink.problems.append(
                Problem(str(path), 0, "file", f"cannot read: {exc.strerror or exc}")
            )
        problems.extend(sorted(sink.problems, key=lambda problem: problem.line))
    return problems, rows


def _is_control(text: str) -> bool:
    return _CONTROL.search(text) is not None


def _valid_host(host: str) -> bool:
    if _HOST_NAME.fullmatch(host):
        return True
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


# dnscheck's resolver URLs besides DoH's https (OONI's dnscheck inputs, ts-028): DNS over TLS,
# QUIC, TCP and UDP. Citizen Lab's lists hold http(s) only; a resolver list is ours.
RESOLVER_SCHEMES: Final = ("dot", "tls", "doq", "tcp", "udp")


def check_url(url: str) -> str | None:
    """Why a nettest could not measure `url` (as scripts/lint-lists.py sees it, plus
    dnscheck's resolver URLs), or None."""
    if not url:
        return "empty URL"
    if _URL_BAD_CHAR.search(url):
        return "URL contains whitespace, a control character or a backslash"
    try:
        split = urlsplit(url)
        _ = split.port  # raises ValueError on a port that is not a number in range
    except ValueError as exc:
        return f"unparseable URL: {exc}"
    if split.scheme not in ("http", "https", *RESOLVER_SCHEMES):
        if not split.scheme:
            return "no scheme: write http:// or https://"
        return f"scheme must be http or https, not '{split.scheme}'"
    host = split.hostname
    if not host:
        return "no host"
    if not host.isascii():
        return f"non-ASCII host '{host}': write it in its xn-- (IDNA) form"
    if not _valid_host(host):
        return f"invalid host '{host}'"
    if split.path == "" and split.scheme not in RESOLVER_SCHEMES:
        return "no path: end a bare host with '/' (e.g. https://example.org/)"
    return None


def check_date(value: str) -> str | None:
    """Why `value` is not a YYYY-MM-DD calendar date, or None."""
    if not _DATE_SHAPE.fullmatch(value):
        return f"'{value}' is not a date in YYYY-MM-DD form"
    try:
        date.fromisoformat(value)
    except ValueError as exc:
        return f"'{value}' is not a valid date: {exc}"
    return None


def _check_entry(entry: TestListEntry) -> Iterator[tuple[str, str]]:
    """(field, reason) for everything wrong with one test-list row on its own."""
    reason = check_url(entry.url)
    if reason is not None:
        yield "url", reason
    code = entry.category_code
    if code in CATEGORY_CODES:
        expected = CATEGORY_CODES[code]
        if entry.category_description != expected:
            yield (
                "category_description",
                f"'{entry.category_description}' does not match {code} (expected '{expected}')",
            )
    elif code in LEGACY_CATEGORY_CODES:
        yield "category_code", f"obsolete category '{code}' (now {LEGACY_CATEGORY_CODES[code]})"
    else:
        yield "category_code", f"unknown category '{code}'"
    reason = check_date(entry.date_added)
    if reason is not None:
        yield "date_added", reason
    for name, value in (("source", entry.source), ("notes", entry.notes)):
        if any(char in value for char in _BAD_FREE_TEXT_CHARS):
            yield name, "contains a newline, tab or backslash"


def _validate_test_list(path: Path, sink: _Sink, global_urls: dict[str, tuple[str, int]]) -> int:
    seen: dict[str, int] = {}
    rows = 0
    for entry in _parse_test_list(path, sink):
        rows += 1
        found = list(_check_entry(entry))
        first = seen.setdefault(entry.url, entry.line)
        if first != entry.line:
            found.append(("url", f"duplicate URL (first on line {first})"))
        elif entry.url in global_urls and global_urls[entry.url][0] != str(path):
            other, line = global_urls[entry.url]
            found.append(("url", f"duplicate URL: already in {other}:{line}"))
        for name, reason in found:
            sink.error(Problem(str(path), entry.line, name, reason))
    return rows


# --- keyword lists ------------------------------------------------------------------------


def split_combination(text: str, separators: Iterable[str] = COMBINATION_SEPARATORS) -> list[str]:
    """The parts of `A+B+C`, whitespace around each dropped (an empty part stays as '')."""
    for separator in separators:
        text = text.replace(separator, "\0")
    return [part.strip() for part in text.split("\0")]


def _keyword_parts(
    path: Path, line: int, text: str, parts: list[str], sink: _Sink
) -> tuple[str, ...] | None:
    """The non-empty parts of a keyword, or None (row skipped) when there are none."""
    kept = tuple(part for part in parts if part)
    if not kept:
        sink.warn(Problem(str(path), line, "keyword", "empty keyword"))
        return None
    if len(kept) != len(parts):
        sink.warn(Problem(str(path), line, "keyword", f"empty part in combination '{text}'"))
    if _is_control(text):
        reason = "contains a control character; kept as written"
        sink.warn(Problem(str(path), line, "keyword", reason))
    return kept


# A combination whose parts are joined by a Latin `x` between two non-ASCII characters
# (wechat/one_app_two_systems line 176: `15日实行x全市大罢工x灌云x连云港`).
_X_JOINED: Final = re.compile(r"[^\x00-\x7f]x[^\x00-\x7f]")


def _one_part_combo(text: str) -> str:
    """The warning for a row marked `combo` whose keyword has no space between parts."""
    marked = f"marked '{_KEYWORD_TYPE_COMBO}' but has one part (parts separated by spaces)"
    if _X_JOINED.search(text):
        return f"{marked}; its parts seem joined by 'x'; kept as written (one keyword)"
    return f"{marked}; kept as written (one keyword)"


def _parse_ours(path: Path, records: _Records, sink: _Sink) -> Iterator[Keyword]:
    width = len(OUR_KEYWORD_COLUMNS)
    for line, row in records:
        if len(row) != width:
            sink.error(Problem(str(path), line, "row", f"expected {width} columns, got {len(row)}"))
            continue
        raw, language, category, source = row
        text = raw.strip()
        if text != raw:
            sink.warn(Problem(str(path), line, "keyword", "leading or trailing whitespace"))
        if not _LANGUAGE_TAG.fullmatch(language):
            reason = f"'{language}' is not a language tag (such as en, zh, zh-TW)"
            sink.warn(Problem(str(path), line, "language", reason))
        if not source.strip():
            sink.warn(Problem(str(path), line, "source", "empty: say where the keyword comes from"))
        parts = _keyword_parts(path, line, text, split_combination(text), sink)
        if parts is not None:
            yield Keyword(parts, text, language, category, source, {}, str(path), line)


def _column_names(header: list[str]) -> list[str]:
    """Stripped header names, made unique; an unnamed column is called `column N`."""
    names: list[str] = []
    for number, raw in enumerate(header, start=1):
        name = raw.strip() or f"column {number}"
        if name in names:
            name = f"{name} ({number})"
        names.append(name)
    return names


def _first_present(values: dict[str, str], columns: tuple[str, ...], default: str) -> str:
    for column in columns:
        value = values.get(column, "").strip()
        if value:
            return value
    return default


def _parse_citizenlab(
    path: Path, header: list[str], records: _Records, sink: _Sink
) -> Iterator[Keyword]:
    names = _column_names(header)
    unnamed = {name for name, raw in zip(names, header, strict=True) if not raw.strip()}
    column = next(name for name in KEYWORD_COLUMN_ALIASES if name in names)
    for line, row in records:
        if len(row) != len(names):
            reason = f"expected {len(names)} columns, got {len(row)}; kept as written"
            sink.warn(Problem(str(path), line, "row", reason))
        values = dict(zip(names, row, strict=False))
        text = values.pop(column, "").strip()
        metadata = {name: value for name, value in values.items() if value or name not in unnamed}
        combo = metadata.get(_KEYWORD_TYPE_COLUMN, "").strip().lower() == _KEYWORD_TYPE_COMBO
        parts = _keyword_parts(
            path, line, text, text.split() if combo else split_combination(text), sink
        )
        if combo and parts is not None and len(parts) == 1:
            sink.warn(Problem(str(path), line, "keyword", _one_part_combo(text)))
        if parts is not None:
            yield Keyword(
                parts,
                text,
                language=_first_present(metadata, _LANGUAGE_COLUMNS, ""),
                category=_first_present(metadata, _CATEGORY_COLUMNS, ""),
                source=_first_present(metadata, _SOURCE_COLUMNS, path.name),
                metadata=metadata,
                file=str(path),
                line=line,
            )


def _parse_txt(path: Path, codec: str, sink: _Sink) -> Iterator[Keyword]:
    for line, raw in enumerate(_lines(path, codec, sink), start=1):
        text = raw.strip()
        if not text:
            continue
        parts = _keyword_parts(path, line, text, split_combination(text), sink)
        if parts is not None:
            yield Keyword(parts, text, "", "", path.name, {}, str(path), line)


def _parse_keywords(path: Path, encoding: str | None, sink: _Sink) -> Iterator[Keyword]:
    codec = _codec_for(path, encoding)
    if path.suffix.lower() == ".txt":
        yield from _parse_txt(path, codec, sink)
        return
    kind, header, records = _open_csv(path, codec, sink)
    if kind == "keywords-ours":
        yield from _parse_ours(path, records, sink)
    elif kind == "keywords-citizenlab":
        yield from _parse_citizenlab(path, header, records, sink)
    else:
        raise ListError(path, 1, "header", f"not a keyword list: this is a {kind} file")


def iter_keywords(
    path: str | Path,
    *,
    encoding: str | None = None,
    on_warning: WarningHandler | None = None,
) -> Iterator[Keyword]:
    """Stream the keywords of any recognised keyword list (ours, Citizen Lab's, `.txt`).

    `encoding` overrides the choice made from the file name (UTF-8, or GB18030 for the
    `(gb2312)` files). Rows without a keyword are skipped; ListError on an unreadable file.
    Odd rows are kept as written and their warnings (file:line) go to `on_warning`.
    """
    return _parse_keywords(Path(path), encoding, _Sink(strict=True, on_warning=on_warning))


def _validate_keywords(path: Path, kind: Kind, sink: _Sink) -> int:
    seen: dict[tuple[tuple[str, ...], str], int] = {}
    rows = 0
    for keyword in _parse_keywords(path, None, sink):
        rows += 1
        if kind != "keywords-ours":
            continue  # published lists repeat words with different metadata (clients, dates)
        key = (keyword.parts, keyword.language)
        first = seen.setdefault(key, keyword.line)
        if first != keyword.line:
            sink.error(
                Problem(
                    str(path), keyword.line, "keyword", f"duplicate keyword (first on line {first})"
                )
            )
    return rows


# --- validation ---------------------------------------------------------------------------


def _global_urls(paths: list[Path]) -> dict[str, tuple[str, int]]:
    """URLs of a `global.csv` among `paths`: country lists must not repeat them (test-lists CI)."""
    urls: dict[str, tuple[str, int]] = {}
    for path in paths:
        if path.name != "global.csv":
            continue
        try:
            for entry in _parse_test_list(path, _Sink(strict=False)):
                urls.setdefault(entry.url, (str(path), entry.line))
        except (ListError, OSError):
            continue  # reported when the file itself is validated
    return urls


def _validate_file(
    path: Path, global_urls: dict[str, tuple[str, int]]
) -> tuple[list[Problem], int]:
    sink = _Sink(strict=False)
    rows = 0
    try:
        kind = detect_kind(path)
        if kind == "testlist":
            rows = _validate_test_list(path, sink, global_urls)
        else:
            rows = _validate_keywords(path, kind, sink)
    except ListError as exc:
        sink.problems.append(exc.problem)
    except OSError as exc:
        sink.problems.append(Problem(str(path), 0, "file", f"cannot read: {exc.strerror or exc}"))
    return sorted(sink.problems, key=lambda problem: problem.line), rows


def _validate(paths: Iterable[str | Path], against_global: bool) -> tuple[list[Problem], int]:
    files = [Path(path) for path in paths]
    global_urls = _global_urls(files) if against_global else {}
    problems: list[Problem] = []
    rows = 0
    for path in files:
        found, counted = _validate_file(path, global_urls)
        problems.extend(found)
        rows += counted
    return problems, rows


def validate(paths: Iterable[str | Path], *, against_global: bool = True) -> list[Problem]:
    """Every problem in the given lists, file by file, in line order.

    Test lists: header, column count, URL, category code and description, date, free-text
    characters, duplicate URLs within a file and (`against_global`) URLs of a country list that
    are already in a `global.csv` given alongside. Keyword lists: header, encoding, column
    count, empty keywords and combination parts, control characters; for our format also
    language tags, sources and duplicates.
    """
    return _validate(paths, against_global)[0]


def validate_command(paths: list[Path], out: TextIO, *, strict: bool = False) -> int:
    """`censorscope lists validate [--strict] FILE...`: print problems and a summary; 0 or 2.

    Errors always fail (exit 2). Warnings (odd rows of published lists, kept as written) are
    printed and fail only with `strict`, the check for lists we write ourselves.
    """
    if not paths:
        print("lists validate: no files given", file=out)
        return EXIT_BAD_INPUT
    problems, rows = _validate(paths, against_global=True)
    for problem in problems:
        print(problem, file=out)
    failing = problems if strict else [p for p in problems if not p.is_warning]
    if failing:
        bad_files = len({problem.file for problem in failing})
        print(
            f"{len(failing)} problem(s) in {bad_files} of {len(paths)} file(s)",
            file=out,
        )
        return EXIT_BAD_INPUT
    warned = f"; {len(problems)} warning(s), rows kept as written" if problems else ""
    print(f"OK: {len(paths)} file(s), {rows} row(s){warned}", file=out)
    return EXIT_OK
