"""Test lists and keyword lists: the published files load, every bad-row kind is located."""

from __future__ import annotations

import csv
import inspect
import io
import os
import tracemalloc
from collections import Counter
from pathlib import Path
from typing import NoReturn

import pytest

from probes.testlists import (
    CATEGORY_CODES,
    DEFAULT_TESTLIST,
    LEGACY_CATEGORY_CODES,
    Keyword,
    ListError,
    Problem,
    check_url,
    detect_kind,
    iter_inputs,
    iter_keywords,
    iter_test_list,
    split_combination,
    validate,
    validate_command,
)

# Reference data lives beside the repository (../shared/data); it is read there, never copied.
DATA = Path(
    os.environ.get("CENSORSCOPE_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared/data")
)
LISTS = DATA / "test-lists"
KEYWORDS = DATA / "keywords"
CHAT = KEYWORDS / "citizenlab-chat-censorship"
JASONQNG = KEYWORDS / "jasonqng-chinese-keywords/csv"
BUNDLED = Path(__file__).resolve().parents[1] / "testlists"

needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"reference data not found at {DATA}")

HEADER = "url,category_code,category_description,date_added,source,notes\n"


def _write(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
    return path


def _row(
    url: str = "https://example.org/",
    code: str = "NEWS",
    desc: str = "News Media",
    added: str = "2024-01-31",
    source: str = "test",
    notes: str = "",
) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerow([url, code, desc, added, source, notes])
    return out.getvalue()


# --- Citizen Lab test lists -------------------------------------------------------------------


@needs_data
@pytest.mark.parametrize(
    ("name", "rows", "top"),
    [
        ("global.csv", 1722, ("HUMR", 185)),
        ("cn.csv", 594, ("NEWS", 154)),
        ("hk.csv", 631, ("NEWS", 97)),
        ("ir.csv", 903, ("NEWS", 149)),
        ("ru.csv", 1093, ("NEWS", 579)),
    ],
)
def test_country_lists_load_fully(name: str, rows: int, top: tuple[str, int]) -> None:
    path = LISTS / name
    assert detect_kind(path) == "testlist"
    entries = list(iter_test_list(path, check_urls=True))
    assert len(entries) == rows
    assert Counter(entry.category_code for entry in entries).most_common(1)[0] == top
    assert entries[0].line == 2 and entries[-1].line == rows + 1
    assert entries[0].file == str(path)
    assert {entry.category_code for entry in entries} <= set(CATEGORY_CODES)


@needs_data
def test_published_lists_validate_cleanly_together() -> None:
    # The data at this commit is clean, including "no country URL repeated in global.csv".
    paths = [LISTS / name for name in ("global.csv", "cn.csv", "hk.csv", "ir.csv", "ru.csv")]
    assert validate(paths) == []


@needs_data
@pytest.mark.parametrize(
    ("name", "what"),
    [
        ("00-LEGEND-category_codes.csv", "old category codes"),
        ("00-LEGEND-new_category_codes.csv", "category codes"),
        ("00-LEGEND-country_codes.csv", "country codes"),
    ],
)
def test_legend_files_are_not_test_lists(name: str, what: str) -> None:
    path = LISTS / name
    reason = f"not a test list: legend file ({what})"
    with pytest.raises(ListError) as caught:
        detect_kind(path)
    assert (caught.value.line, caught.value.field, caught.value.reason) == (1, "header", reason)
    with pytest.raises(ListError):
        next(iter_test_list(path))
    assert validate([path]) == [Problem(str(path), 1, "header", reason)]


def test_legend_recognised_by_name_whatever_the_header(tmp_path: Path) -> None:
    path = _write(tmp_path / "00-LEGEND-something.csv", "Code,Name\nX,Y\n")
    assert validate([path]) == [
        Problem(str(path), 1, "header", "not a test list: legend file (legend)")
    ]


@needs_data
def test_category_constants_match_the_legends() -> None:
    with (LISTS / "00-LEGEND-new_category_codes.csv").open(encoding="utf-8", newline="") as fh:
        new = list(csv.DictReader(fh))
    assert {row["New Code"]: row["Category Description"] for row in new} == CATEGORY_CODES
    assert len(CATEGORY_CODES) == 31
    replaced = {old for row in new for old in row["Replaces old code(s)"].split()} - {"N/A"}
    with (LISTS / "00-LEGEND-category_codes.csv").open(encoding="utf-8", newline="") as fh:
        old = {row["CategoryCode"] for row in csv.DictReader(fh)}
    assert set(LEGACY_CATEGORY_CODES) == (replaced | old) - set(CATEGORY_CODES)
    assert set(LEGACY_CATEGORY_CODES.values()) <= set(CATEGORY_CODES)
    for row in new:
        for code in row["Replaces old code(s)"].split():
            if code in LEGACY_CATEGORY_CODES:
                assert LEGACY_CATEGORY_CODES[code] == row["New Code"]


# --- validation of bad rows ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://example.org/", "scheme must be http or https, not 'ftp'"),
        ("example.org/", "no scheme: write http:// or https://"),
        ("http:///path", "no host"),
        ("https://exa mple.org/", "URL contains whitespace, a control character or a backslash"),
        (" https://example.org/", "URL contains whitespace, a control character or a backslash"),
        ("https://example.org\\x/", "URL contains whitespace, a control character or a backslash"),
        ("https://example.org", "no path: end a bare host with '/' (e.g. https://example.org/)"),
        ("https://-bad-.org/", "invalid host '-bad-.org'"),
        ("https://under_score.org/", "invalid host 'under_score.org'"),
        ("https://localhost/", "invalid host 'localhost'"),
        ("https://bücher.de/", "non-ASCII host 'bücher.de': write it in its xn-- (IDNA) form"),
        ("https://example.org:99999/", "unparseable URL: Port out of range 0-65535"),
        ("", "empty URL"),
    ],
)
def test_check_url_rejects(url: str, reason: str) -> None:
    assert check_url(url) == reason


@pytest.mark.parametrize(
    "url",
    [
        "https://example.org/",
        "http://1.2.3.4/x?y=1",
        "https://[2001:db8::1]:8443/",
        "https://xn--bcher-kva.de/",
        "HTTPS://EXAMPLE.ORG/a",
        "https://example.org:8080/%E6%96%87",
    ],
)
def test_check_url_accepts(url: str) -> None:
    assert check_url(url) is None


def test_validate_reports_each_bad_row_kind_with_its_line(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "xx.csv",
        HEADER
        + _row("https://ok.example.org/")  # 2
        + _row("ftp://bad.example.org/")  # 3
        + _row("https://c.example.org/", code="NOPE")  # 4
        + _row("https://d.example.org/", code="FEXP", desc="Freedom of expression")  # 5
        + _row("https://e.example.org/", desc="News")  # 6
        + _row("https://ok.example.org/")  # 7: duplicate of line 2
        + _row("https://f.example.org/", added="2024-02-30")  # 8
        + _row("https://g.example.org/", added="31/01/2024")  # 9
        + "https://h.example.org/,NEWS,News Media,2024-01-31\n"  # 10
        + _row("https://i.example.org/", notes="a\tb"),  # 11
    )
    assert [(p.line, p.field, p.reason) for p in validate([path])] == [
        (3, "url", "scheme must be http or https, not 'ftp'"),
        (4, "category_code", "unknown category 'NOPE'"),
        (5, "category_code", "obsolete category 'FEXP' (now NEWS)"),
        (6, "category_description", "'News' does not match NEWS (expected 'News Media')"),
        (7, "url", "duplicate URL (first on line 2)"),
        (8, "date_added", "'2024-02-30' is not a valid date: day is out of range for month"),
        (9, "date_added", "'31/01/2024' is not a date in YYYY-MM-DD form"),
        (10, "row", "expected 6 columns, got 4"),
        (11, "notes", "contains a newline, tab or backslash"),
    ]
    assert {p.file for p in validate([path])} == {str(path)}


def test_line_numbers_count_physical_lines_of_multiline_fields(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "xx.csv",
        HEADER + _row("https://a.example.org/", notes="two\nlines") + _row("nope"),
    )
    assert validate([path]) == [
        Problem(str(path), 2, "notes", "contains a newline, tab or backslash"),
        Problem(str(path), 4, "url", "no scheme: write http:// or https://"),
    ]


def test_wrong_encoding_names_line_and_byte_offset(tmp_path: Path) -> None:
    good = HEADER + _row("https://a.example.org/")
    bad = b"https://b.example.org/caf\xe9/,NEWS,News Media,2024-01-31,test,\n"
    path = _write(
        tmp_path / "xx.csv", good.encode() + bad + _row("https://c.example.org/").encode()
    )
    offset = len(good.encode()) + bad.index(b"\xe9")
    assert validate([path])[0] == Problem(
        str(path), 3, "encoding", f"not valid UTF-8: byte 0xe9 at byte offset {offset}"
    )
    with pytest.raises(ListError, match=rf"xx.csv:3: encoding: .* offset {offset}$"):
        list(iter_test_list(path))


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (
            "url,category,category_description,date_added,source,notes\n",
            "wrong test-list header 'url,category,category_description,date_added,source,notes':"
            " expected url,category_code,category_description,date_added,source,notes",
        ),
        (
            "a,b\n",
            "unknown header 'a,b': expected a test list "
            "(url,category_code,category_description,date_added,source,notes), a keyword list "
            "(keyword,language,category,source) or a Citizen Lab keyword list (a column named "
            "keyword, Keyword, word, keyword_combination, keyword_added, Person, "
            "Extenuating combination)",
        ),
        (
            "keyword,language,category\n",
            "wrong keyword-list header 'keyword,language,category': "
            "expected keyword,language,category,source",
        ),
    ],
)
def test_bad_header(tmp_path: Path, header: str, reason: str) -> None:
    path = _write(tmp_path / "xx.csv", header + _row())
    with pytest.raises(ListError) as caught:
        detect_kind(path)
    assert str(caught.value) == f"{path}:1: header: {reason}"
    assert validate([path]) == [Problem(str(path), 1, "header", reason)]


@pytest.mark.parametrize("text", ["", "\n\n", ",,,\n"])
def test_empty_file(tmp_path: Path, text: str) -> None:
    path = _write(tmp_path / "xx.csv", text)
    assert validate([path]) == [
        Problem(str(path), 1, "header", "empty file: expected a header line")
    ]


def test_header_must_be_the_first_line(tmp_path: Path) -> None:
    path = _write(tmp_path / "xx.csv", "\n" + HEADER + _row())
    assert validate([path]) == [
        Problem(str(path), 1, "header", "the header must be on the first line")
    ]


def test_country_list_must_not_repeat_global(tmp_path: Path) -> None:
    glob = _write(tmp_path / "global.csv", HEADER + _row("https://a.example.org/"))
    country = _write(
        tmp_path / "zz.csv",
        HEADER + _row("https://b.example.org/") + _row("https://a.example.org/"),
    )
    expected = Problem(str(country), 3, "url", f"duplicate URL: already in {glob}:2")
    assert validate([country, glob]) == [expected]
    assert validate([country, glob], against_global=False) == []
    assert validate([country]) == []


def test_missing_file_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "missing.csv"
    assert validate([path]) == [
        Problem(str(path), 0, "file", "cannot read: No such file or directory")
    ]


def test_validate_command_prints_and_exits_2(tmp_path: Path) -> None:
    good = _write(tmp_path / "good.csv", HEADER + _row())
    bad = _write(tmp_path / "bad.csv", HEADER + _row(code="NOPE") + _row(url="x"))
    out = io.StringIO()
    assert validate_command([good, bad], out) == 2
    assert out.getvalue().splitlines() == [
        f"{bad}:2: category_code: unknown category 'NOPE'",
        f"{bad}:3: url: no scheme: write http:// or https://",
        "2 problem(s) in 1 of 2 file(s)",
    ]
    out = io.StringIO()
    assert validate_command([good], out) == 0
    assert out.getvalue() == "OK: 1 file(s), 1 row(s)\n"
    assert validate_command([], io.StringIO()) == 2


def test_iterator_raises_on_column_count_and_bad_urls_when_asked(tmp_path: Path) -> None:
    path = _write(tmp_path / "xx.csv", HEADER + _row() + "https://b.example.org/,NEWS\n")
    entries = iter_test_list(path)
    assert next(entries).url == "https://example.org/"
    with pytest.raises(ListError, match=r"xx.csv:3: row: expected 6 columns, got 2"):
        next(entries)
    path = _write(tmp_path / "yy.csv", HEADER + _row() + _row("gopher://x.example.org/"))
    assert len(list(iter_test_list(path))) == 2
    with pytest.raises(ListError, match=r"yy.csv:3: url: scheme must be"):
        list(iter_test_list(path, check_urls=True))


def test_keyword_file_is_not_a_test_list(tmp_path: Path) -> None:
    path = _write(tmp_path / "k.csv", "keyword,language,category,source\nx,en,c,s\n")
    with pytest.raises(ListError, match="not a test list: this is a keywords-ours file"):
        list(iter_test_list(path))
    with pytest.raises(ListError, match="not a keyword list: this is a testlist file"):
        list(iter_keywords(_write(tmp_path / "t.csv", HEADER + _row())))


# --- inputs for the runner -------------------------------------------------------------------


def test_iter_inputs_explicit_first_then_lists_lazily(tmp_path: Path) -> None:
    one = _write(
        tmp_path / "one.csv",
        HEADER + _row("https://a.example.org/") + _row("https://b.example.org/"),
    )
    missing = tmp_path / "not-there.csv"
    inputs = iter_inputs([one, missing], ["https://x.example.org/", "  ", " example.net "])
    assert inspect.isgenerator(inputs)
    taken = [next(inputs) for _ in range(4)]
    assert taken == [
        "https://x.example.org/",
        "example.net",
        "https://a.example.org/",
        "https://b.example.org/",
    ]
    with pytest.raises(FileNotFoundError):  # the second list is opened only when reached
        next(inputs)


def test_iter_inputs_refuses_a_bad_url_in_a_list(tmp_path: Path) -> None:
    path = _write(tmp_path / "one.csv", HEADER + _row("https://a.example.org"))
    with pytest.raises(ListError, match=r"one.csv:2: url: no path"):
        list(iter_inputs([path], []))


# --- streaming -------------------------------------------------------------------------------


def test_streaming_200k_rows_keeps_memory_flat(tmp_path: Path) -> None:
    path = tmp_path / "big.csv"
    with path.open("w", encoding="utf-8") as fh:
        fh.write(HEADER)
        for number in range(200_000):
            fh.write(f"https://site{number}.example.org/page,NEWS,News Media,2024-01-31,gen,\n")
    entries = iter_test_list(path)
    assert inspect.isgenerator(entries)
    tracemalloc.start()
    try:
        count = sum(1 for _ in entries)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == 200_000
    # A materialised list of 200k entries would take well over 50 MB.
    assert peak < 1_000_000, f"peak {peak} bytes"

    keywords_path = tmp_path / "big.txt"
    keywords_path.write_text("".join(f"word{n}+other{n}\n" for n in range(200_000)), "utf-8")
    assert inspect.isgenerator(iter_keywords(keywords_path))
    keywords = iter_keywords(keywords_path)
    tracemalloc.start()
    try:
        assert sum(len(k.parts) for k in keywords) == 400_000
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000, f"peak {peak} bytes"


# --- keyword lists ---------------------------------------------------------------------------

# (path under keywords/, kind, rows from shared/data/README.md)
KEYWORD_FILES = [
    (
        "citizenlab-chat-censorship/wechat/one_app_two_systems/wechat_blocked_keywords.csv",
        "keywords-citizenlab",
        177,
    ),
    (
        "citizenlab-chat-censorship/wechat/one_app_two_systems/wechat_url_blocked_messages.txt",
        "keywords-txt",
        31,
    ),
    ("citizenlab-chat-censorship/wechat/709crackdown/all-keywords.csv", "keywords-citizenlab", 862),
    (
        "citizenlab-chat-censorship/wechat/lxb/liu_xiaobo_keywords_wechat.csv",
        "keywords-citizenlab",
        60,
    ),
    ("citizenlab-chat-censorship/wechat/ncpc19/ncpc19_wechat.csv", "keywords-citizenlab", 245),
    ("citizenlab-chat-censorship/coronavirus/wechat.csv", "keywords-citizenlab", 516),
    ("citizenlab-chat-censorship/coronavirus/yy.csv", "keywords-citizenlab", 53),
    ("citizenlab-chat-censorship/june-4/june-4-censored-keywords.csv", "keywords-citizenlab", 3439),
    ("citizenlab-chat-censorship/qqmail/censored.txt", "keywords-txt", 173),
    ("citizenlab-chat-censorship/qqmail/extenuating.csv", "keywords-citizenlab", 43),
    (
        "citizenlab-chat-censorship/TOM-Skype--Sina-UC/blocked-words.csv",
        "keywords-citizenlab",
        4256,
    ),
    ("citizenlab-chat-censorship/LINE/raw-block-lists/line-v20.txt", "keywords-txt", 223),
    ("citizenlab-chat-censorship/LINE/raw-block-lists/line-v21.txt", "keywords-txt", 370),
    ("citizenlab-chat-censorship/LINE/raw-block-lists/line-v22.txt", "keywords-txt", 535),
    ("citizenlab-chat-censorship/LINE/raw-block-lists/line-v23.txt", "keywords-txt", 536),
    ("citizenlab-chat-censorship/LINE/raw-block-lists/line-v24.txt", "keywords-txt", 578),
    ("citizenlab-chat-censorship/LINE/raw-block-lists/line-v25.txt", "keywords-txt", 578),
    ("citizenlab-chat-censorship/LINE/raw-block-lists/line-internal.byte_.txt", "keywords-txt", 50),
    (
        "citizenlab-chat-censorship/LINE/translated-block-lists/hirakujira_translations.csv",
        "keywords-citizenlab",
        150,
    ),
    (
        "citizenlab-chat-censorship/LINE/translated-block-lists/v21-Translated-Citizen_Lab.csv",
        "keywords-citizenlab",
        370,
    ),
    (
        "citizenlab-chat-censorship/LINE/translated-block-lists/v22-Translated-Citizen_Lab.csv",
        "keywords-citizenlab",
        682,
    ),
    (
        "citizenlab-chat-censorship/livestream/livestream_keywords_02_15_05_15.csv",
        "keywords-citizenlab",
        17042,
    ),
    (
        "citizenlab-chat-censorship/livestream/livestream_keywords_05_15_09_16.csv",
        "keywords-citizenlab",
        2430,
    ),
    ("citizenlab-chat-censorship/olympics/illegalwords.txt", "keywords-txt", 2442),
    ("citizenlab-chat-censorship/apple/cn.txt", "keywords-txt", 1045),
    ("citizenlab-chat-censorship/apple/hk.txt", "keywords-txt", 542),
    ("citizenlab-chat-censorship/apple/tw.txt", "keywords-txt", 397),
    ("citizenlab-chat-censorship/apple/jp.txt", "keywords-txt", 192),
    ("citizenlab-chat-censorship/apple/ca.txt", "keywords-txt", 206),
    ("citizenlab-chat-censorship/apple/us.txt", "keywords-txt", 170),
    (
        "citizenlab-chat-censorship/microsoft-bing/censored-chinese-character-names/"
        "mainland-china-domestic.csv",
        "keywords-citizenlab",
        146,
    ),
    (
        "citizenlab-chat-censorship/microsoft-bing/censored-chinese-character-names/"
        "northam-usa-chinese.csv",
        "keywords-citizenlab",
        33,
    ),
    (
        "jasonqng-chinese-keywords/csv/no-dummy-vars-for-categories-and-themes_only-sensitive-words.csv",
        "keywords-citizenlab",
        9054,
    ),
    ("jasonqng-chinese-keywords/csv/individual/gfw (gb2312).csv", "keywords-citizenlab", 669),
    ("jasonqng-chinese-keywords/csv/individual/condop (gb2312).csv", "keywords-citizenlab", 133),
    ("jasonqng-chinese-keywords/csv/individual/qq (gb2312).csv", "keywords-citizenlab", 986),
    ("jasonqng-chinese-keywords/csv/individual/google (gb2312).csv", "keywords-citizenlab", 456),
    ("jasonqng-chinese-keywords/csv/individual/163 (gb2312).csv", "keywords-citizenlab", 383),
    (
        "jasonqng-chinese-keywords/csv/individual/blogprovider (gb2312).csv",
        "keywords-citizenlab",
        1028,
    ),
    ("jasonqng-chinese-keywords/csv/individual/line (gb2312).csv", "keywords-citizenlab", 535),
    ("jasonqng-chinese-keywords/csv/individual/sinashow (gb2312).csv", "keywords-citizenlab", 1224),
    (
        "jasonqng-chinese-keywords/csv/individual/CDT-cleaned up (gb2312).csv",
        "keywords-citizenlab",
        2577,
    ),
]


@needs_data
@pytest.mark.parametrize(("relative", "kind", "rows"), KEYWORD_FILES)
def test_keyword_files_load_with_published_row_counts(relative: str, kind: str, rows: int) -> None:
    path = KEYWORDS / relative
    assert detect_kind(path) == kind
    keywords = list(iter_keywords(path))
    assert len(keywords) == rows
    assert all(k.parts and all(k.parts) for k in keywords)
    assert all(k.file == str(path) and k.line >= 1 for k in keywords)


@needs_data
def test_gb2312_files_decode() -> None:
    path = JASONQNG / "individual/gfw (gb2312).csv"
    raw = path.read_bytes()
    assert raw[:3] == b"\xef\xbb\xbf"
    with pytest.raises(UnicodeDecodeError):
        raw.decode("utf-8-sig")
    first = next(iter_keywords(path))
    assert (first.text, first.category, first.line) == ("新公民运动", "Event-2014", 2)
    assert first.metadata == {"gfw_category": "Event-2014", "list_gfw": "1", "gfw_length": "5"}
    sinashow = [k.text for k in iter_keywords(JASONQNG / "individual/sinashow (gb2312).csv")]
    assert sinashow[0] == "毛泽东"
    # The CDT list joins parts with the full-width plus.
    cdt = next(iter_keywords(JASONQNG / "individual/CDT-cleaned up (gb2312).csv"))
    assert cdt.parts == ("莎车", "爆炸")


def test_encoding_override_and_gb_name(tmp_path: Path) -> None:
    body = "keyword,list_x\r\n天安门,1\r\n".encode("gb18030")
    named = _write(tmp_path / "x (gb2312).csv", b"\xef\xbb\xbf" + body)
    assert [k.text for k in iter_keywords(named)] == ["天安门"]
    plain = _write(tmp_path / "x.csv", body)
    with pytest.raises(
        ListError, match=r"x.csv:2: encoding: not valid UTF-8: byte 0xcc at byte offset 16"
    ):
        list(iter_keywords(plain))
    assert [k.text for k in iter_keywords(plain, encoding="gb18030")] == ["天安门"]


@needs_data
def test_combinations_split_right() -> None:
    censored = list(iter_keywords(CHAT / "qqmail/censored.txt"))
    assert Counter(len(k.parts) for k in censored) == {1: 101, 2: 70, 3: 2}
    # 709crackdown states the number of components of each keyword.
    for k in iter_keywords(CHAT / "wechat/709crackdown/all-keywords.csv"):
        assert len(k.parts) == int(k.metadata["# of Components"]), k
    lxb = next(iter_keywords(CHAT / "wechat/lxb/liu_xiaobo_keywords_wechat.csv"))
    assert lxb.parts == ("六四", "刘晓波")
    assert lxb.language == "simplified Chinese"


@needs_data
def test_one_app_two_systems_splits_combos_on_spaces() -> None:
    path = CHAT / "wechat/one_app_two_systems/wechat_blocked_keywords.csv"
    keywords = list(iter_keywords(path))
    by_text = {k.text: k for k in keywords}
    assert by_text["退党 退团 退队"].parts == ("退党", "退团", "退队")
    assert by_text["退出中共"].parts == ("退出中共",)
    kinds = Counter(k.metadata["Keyword Type"].strip() for k in keywords)
    assert kinds == {"phrase": 97, "combo": 80}
    # Two rows marked combo are not space-separated in the published file (line 176 uses 'x'):
    # warnings, and each row kept as written (one keyword).
    assert [(p.line, p.reason, p.severity) for p in validate([path])] == [
        (
            152,
            "marked 'combo' but has one part (parts separated by spaces); kept as written "
            "(one keyword)",
            "warning",
        ),
        (
            176,
            "marked 'combo' but has one part (parts separated by spaces); its parts seem "
            "joined by 'x'; kept as written (one keyword)",
            "warning",
        ),
    ]
    assert by_text["天安门事件"].parts == ("天安门事件",)
    assert by_text["15日实行x全市大罢工x灌云x连云港"].parts == ("15日实行x全市大罢工x灌云x连云港",)
    assert sum(k.is_combination for k in keywords) == 78


@needs_data
def test_validate_reports_the_real_problems_in_published_keyword_files() -> None:
    files = sorted(p for p in KEYWORDS.rglob("*") if p.suffix in (".csv", ".txt"))
    found = [
        (p.file.removeprefix(f"{KEYWORDS}/"), p.line, p.field, p.reason) for p in validate(files)
    ]
    expected = [
        (
            "citizenlab-chat-censorship/livestream/categories_keyword_censorship.csv",
            1,
            "header",
            "not a keyword list: a table of themes or",
        ),
        (
            "citizenlab-chat-censorship/livestream/livestream_keywords_02_15_05_15.csv",
            1151,
            "keyword",
            "contains a control character",
        ),  # c<TAB>o<TAB>m
        (
            "citizenlab-chat-censorship/livestream/themes_keyword_censorship.csv",
            1,
            "header",
            "not a keyword list: a table of themes or",
        ),
        (
            "citizenlab-chat-censorship/wechat/one_app_two_systems/wechat_blocked_keywords.csv",
            152,
            "keyword",
            "marked 'combo' but has one part (parts s",
        ),
        (
            "citizenlab-chat-censorship/wechat/one_app_two_systems/wechat_blocked_keywords.csv",
            176,
            "keyword",
            "marked 'combo' but has one part (parts s",
        ),
        (
            "citizenlab-chat-censorship/wechat/one_app_two_systems/wechat_blocked_urls.csv",
            1,
            "header",
            "not a keyword list: a table of URLs (a t",
        ),
        # a stray quote in machine_translation ("li?s?,"Six four") merges two columns
        (
            "jasonqng-chinese-keywords/csv/no-dummy-vars-for-categories-and-themes_only-sensitive-words.csv",
            927,
            "row",
            "expected 39 columns, got 38",
        ),
    ]
    assert [row[:3] for row in found] == [row[:3] for row in expected]
    for row, want in zip(found, expected, strict=True):
        assert row[3].startswith(want[3]), row


def test_our_keyword_format(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "k.csv",
        "keyword,language,category,source\n"
        "天气,zh,control,ours\n"  # 2
        "a+b+c,en,x,ours\n"  # 3
        " spaced ,en,x,ours\n"  # 4
        "a++b,EN,x,\n"  # 5
        "天气,zh,other,ours\n"  # 6 duplicate of 2
        "天气,en,control,ours\n"  # 7 same word, other language: fine
        "x,en\n"  # 8
        ",en,x,ours\n",  # 9
    )
    assert detect_kind(path) == "keywords-ours"
    assert [(p.line, p.field, p.reason) for p in validate([path])] == [
        (4, "keyword", "leading or trailing whitespace"),
        (5, "language", "'EN' is not a language tag (such as en, zh, zh-TW)"),
        (5, "source", "empty: say where the keyword comes from"),
        (5, "keyword", "empty part in combination 'a++b'"),
        (6, "keyword", "duplicate keyword (first on line 2)"),
        (8, "row", "expected 4 columns, got 2"),
        (9, "keyword", "empty keyword"),
    ]
    keywords = iter_keywords(path)
    assert next(keywords) == Keyword(("天气",), "天气", "zh", "control", "ours", {}, str(path), 2)
    assert next(keywords).parts == ("a", "b", "c")
    assert [next(keywords).parts for _ in range(4)] == [
        ("spaced",),
        ("a", "b"),
        ("天气",),
        ("天气",),
    ]
    with pytest.raises(ListError, match=r"k.csv:8: row: expected 4 columns, got 2"):
        next(keywords)


def test_combination_semantics() -> None:
    assert split_combination("A + B＋C") == ["A", "B", "C"]
    combo = Keyword(("六四", "刘晓波"), "六四+刘晓波", "zh", "", "", {}, "f", 1)
    assert combo.is_combination
    assert combo.matches("刘晓波 and 六四 together")
    assert not combo.matches("only 六四")


def test_blank_records_are_skipped_in_citizenlab_files(tmp_path: Path) -> None:
    path = _write(tmp_path / "yy.csv", "keyword_added,language\r\nA,zh\r\n,\r\n\r\nB+C,zh\r\n")
    assert [(k.parts, k.line, k.language) for k in iter_keywords(path)] == [
        (("A",), 2, "zh"),
        (("B", "C"), 5, "zh"),
    ]
    assert validate([path]) == []


# --- bundled lists ---------------------------------------------------------------------------


def test_bundled_lists_validate_cleanly() -> None:
    assert DEFAULT_TESTLIST == BUNDLED / "default.csv"
    out = io.StringIO()
    bundled = [DEFAULT_TESTLIST, BUNDLED / "keywords-example.csv"]
    assert validate_command(bundled, out, strict=True) == 0, out.getvalue()
    entries = list(iter_test_list(DEFAULT_TESTLIST))
    assert 40 <= len(entries) <= 60
    assert len({e.category_code for e in entries}) >= 15
    keywords = list(iter_keywords(BUNDLED / "keywords-example.csv"))
    assert {k.language for k in keywords} == {"en", "zh"}
    assert sum(k.is_combination for k in keywords) >= 3


@needs_data
def test_bundled_sources_are_true() -> None:
    global_list = {e.url: e.category_code for e in iter_test_list(LISTS / "global.csv")}
    for entry in iter_test_list(DEFAULT_TESTLIST):
        if "cf. citizenlab global.csv" in entry.source:
            assert global_list.get(entry.url) == entry.category_code, entry
    for keyword in iter_keywords(BUNDLED / "keywords-example.csv"):
        if keyword.source.startswith("cf. citizenlab/chat-censorship "):
            cited = keyword.source.split()[2]
            assert keyword.parts in {k.parts for k in iter_keywords(CHAT / cited)}, keyword


# --- published keyword lists as they are (issue 15 item 5) -----------------------------------

# The published tables that hold no keywords, refused as such.
NOT_KEYWORD_LISTS = {
    "citizenlab-chat-censorship/livestream/categories_keyword_censorship.csv": "themes",
    "citizenlab-chat-censorship/livestream/themes_keyword_censorship.csv": "themes",
    "citizenlab-chat-censorship/wechat/one_app_two_systems/wechat_blocked_urls.csv": "URLs",
}
# Every oddity of the published keyword lists: a warning with file:line, the row kept.
PUBLISHED_WARNINGS = [
    ("citizenlab-chat-censorship/livestream/livestream_keywords_02_15_05_15.csv", 1151, "keyword"),
    ("citizenlab-chat-censorship/wechat/one_app_two_systems/wechat_blocked_keywords.csv", 152,
     "keyword"),
    ("citizenlab-chat-censorship/wechat/one_app_two_systems/wechat_blocked_keywords.csv", 176,
     "keyword"),
    ("jasonqng-chinese-keywords/csv/no-dummy-vars-for-categories-and-themes_only-sensitive-words.csv",
     927, "row"),
]  # fmt: skip


@needs_data
def test_every_published_keyword_file_loads_as_published() -> None:
    files = sorted(p for p in KEYWORDS.rglob("*") if p.is_file() and p.name != "README.md")
    assert len(files) == 45
    warnings: list[Problem] = []
    refused: dict[str, str] = {}
    loaded = 0
    for path in files:
        relative = str(path.relative_to(KEYWORDS))
        try:
            keywords = list(iter_keywords(path, on_warning=warnings.append))
        except ListError as exc:
            assert (exc.line, exc.field) == (1, "header"), exc
            refused[relative] = exc.reason
            continue
        loaded += 1
        assert keywords, relative
        assert all(k.parts and all(k.parts) for k in keywords), relative
    assert loaded == 42
    assert set(refused) == set(NOT_KEYWORD_LISTS)
    for relative, what in NOT_KEYWORD_LISTS.items():
        assert refused[relative].startswith(f"not a keyword list: a table of {what}"), refused
    assert [(str(Path(w.file).relative_to(KEYWORDS)), w.line, w.field) for w in warnings] == (
        PUBLISHED_WARNINGS
    )
    assert all(w.is_warning and str(w).startswith(f"{w.file}:{w.line}: ") for w in warnings)
    # the rows are kept as written
    livestream = CHAT / "livestream/livestream_keywords_02_15_05_15.csv"
    odd = [k for k in iter_keywords(livestream) if k.line == 1151]
    assert [k.text for k in odd] == ["c\to\tm"]
    jasonqng = JASONQNG / "no-dummy-vars-for-categories-and-themes_only-sensitive-words.csv"
    short = [k for k in iter_keywords(jasonqng) if k.line == 927]
    assert len(short) == 1 and short[0].text


@needs_data
def test_published_lists_validate_with_warnings_and_fail_strict() -> None:
    path = CHAT / "wechat/one_app_two_systems/wechat_blocked_keywords.csv"
    out = io.StringIO()
    assert validate_command([path], out) == 0
    lines = out.getvalue().splitlines()
    assert lines[0].startswith(f"{path}:152: keyword: warning: marked 'combo'")
    assert lines[-1] == "OK: 1 file(s), 177 row(s); 2 warning(s), rows kept as written"
    out = io.StringIO()
    assert validate_command([path], out, strict=True) == 2
    assert out.getvalue().splitlines()[-1] == "2 problem(s) in 1 of 1 file(s)"
    out = io.StringIO()
    assert validate_command([CHAT / "wechat/one_app_two_systems/wechat_blocked_urls.csv"], out) == 2


def test_oddities_are_warnings_and_rows_are_kept(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "odd.csv",
        "Date Tested,Keyword,Keyword Type ,Language\r\n"
        "07/2016,甲乙x丙丁,combo,zh\r\n"  # 2: parts joined by x
        "07/2016,天安门,combo,zh\r\n"  # 3: one part
        "07/2016,a\tb,phrase,zh\r\n"  # 4: control character
        "07/2016,六四 方励之,combo\r\n"  # 5: a column short (and a real combination)
        "07/2016,x,y\r\n"  # 6: one column short of its own
        "07/2016,,phrase,zh\r\n",  # 7: no keyword: skipped
    )
    warned: list[Problem] = []
    keywords = list(iter_keywords(path, on_warning=warned.append))
    assert [(k.line, k.parts) for k in keywords] == [
        (2, ("甲乙x丙丁",)),
        (3, ("天安门",)),
        (4, ("a\tb",)),
        (5, ("六四", "方励之")),
        (6, ("x",)),
    ]
    assert [(w.line, w.field, w.severity) for w in warned] == [
        (2, "keyword", "warning"),
        (3, "keyword", "warning"),
        (4, "keyword", "warning"),
        (5, "row", "warning"),
        (6, "row", "warning"),
        (7, "keyword", "warning"),
    ]
    assert "joined by 'x'" in warned[0].reason and "joined" not in warned[1].reason
    assert str(warned[3]) == f"{path}:5: row: warning: expected 4 columns, got 3; kept as written"
    assert validate_command([path], io.StringIO()) == 0
    assert validate_command([path], io.StringIO(), strict=True) == 2
    # our own format keeps today's rules: a short row is an error even without --strict
    ours = _write(tmp_path / "ours.csv", "keyword,language,category,source\nx,en\n")
    assert validate_command([ours], io.StringIO()) == 2


def test_run_reads_a_published_list_and_says_its_warnings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from probes.run_command import _check_keywords

    path = _write(
        tmp_path / "wechat.csv",
        "Date Tested,Keyword,Keyword Type ,Language\r\n07/2016,甲乙x丙丁,combo,zh\r\n"
        "07/2016,六四 方励之,combo,zh\r\n",
    )

    def fail(message: str) -> NoReturn:
        raise AssertionError(message)

    assert _check_keywords(path, fail) == 2
    err = capsys.readouterr().err
    assert f"censorscope: {path}:2: keyword: warning: marked 'combo'" in err
