"""Stream measurements (our store, OONI's published files) into tidy pandas frames.

One pass per line: decode with orjson, pull out the columns we need into plain lists, hand the
decoded test keys to an optional classifier (so a verdict is re-derived while the object is in
memory), then drop the object. Frames are built once at the end from the column lists with
explicit dtypes; nothing appends rows to a DataFrame.

Two frames come out (ooni/data's "flat observation rows" idea):
- measurements: one row per measurement (see `MEASUREMENT_DTYPES`);
- observations: one row per DNS answer, TCP connect, TLS handshake and HTTP response, joined to
  its measurement by `row`.

A line that is not a JSON object, or a measurement without a test name, is counted and reported
as file:line with the reason, and loading carries on.
"""

from __future__ import annotations

import functools
import gzip
import math
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import IO, Any, cast
from urllib.parse import urlsplit

import orjson
import pandas as pd
import pyarrow as pa

from analysis.keywords import (
    ISOLATION_TEST,
    KEYWORD_TESTS,
    KeywordCollector,
    empty_isolations,
    empty_rows,
    where_of,
)
from probes.store import LineProblem, ResultsStore

STR = pd.ArrowDtype(pa.string())
CAT = "category"

# Column -> dtype of the measurements frame (a contract for compare/report/publish).
MEASUREMENT_DTYPES: dict[str, Any] = {
    "row": "int64",
    "measurement_uid": STR,
    "report_id": STR,
    "time": "datetime64[s, UTC]",
    "vantage": CAT,
    "probe_cc": CAT,
    "probe_asn": CAT,
    "test_name": CAT,
    "test_version": CAT,
    "software": CAT,
    "input": STR,
    "domain": STR,
    "keyword": STR,
    "placement": STR,
    "channel": STR,
    # The probe's own verdict, OONI vocabulary as text: "false" (not blocked), a blocking type,
    # or missing (null = inconclusive).
    "orig_blocking": CAT,
    "orig_blocking_detail": STR,
    "dns_failure": STR,
    "tcp_failure": STR,
    "tls_failure": STR,
    "http_failure": STR,
    "control_failure": STR,
    "runtime": "float64",
    "source": CAT,
    "line": "int64",
}

OBSERVATION_DTYPES: dict[str, Any] = {
    "row": "int64",
    "kind": CAT,  # dns | tcp | tls | quic | http
    "hostname": STR,
    "address": STR,
    "port": "Int32",
    "answer_type": CAT,
    "failure": STR,
    "server_name": STR,
    "tls_version": CAT,
    "url": STR,
    "status_code": "Int32",
    "body_length": "Int64",
    "t": "float64",
}

# A classifier sees the decoded measurement and returns extra columns for its row.
Classifier = Callable[[Mapping[str, Any]], Mapping[str, Any]]


@dataclass(frozen=True)
class Filters:
    """What to keep. Date, vantage and test name push down to the store's partition layout."""

    since: date | None = None
    until: date | None = None
    vantages: frozenset[str] | None = None
    test_names: frozenset[str] | None = None
    inputs: frozenset[str] | None = None

    def keeps(self, day: date | None, vantage: str, test_name: str, input_: str | None) -> bool:
        if day is not None and (
            (self.since and day < self.since) or (self.until and day > self.until)
        ):
            return False
        if self.vantages and vantage not in self.vantages:
            return False
        if self.test_names and test_name not in self.test_names:
            return False
        return not (self.inputs and input_ not in self.inputs)


@dataclass
class Loaded:
    """The frames plus every line that was skipped and why."""

    measurements: pd.DataFrame
    observations: pd.DataFrame
    problems: list[LineProblem] = field(default_factory=list)
    n_problems: int = 0
    sources: list[str] = field(default_factory=list)
    # one row per (keyword measurement, placement or channel); isolation results (analysis.keywords)
    keyword_rows: pd.DataFrame = field(default_factory=empty_rows)
    isolations: pd.DataFrame = field(default_factory=empty_isolations)


# --- reading lines ----------------------------------------------------------------------------


_GZIP_MAGIC = b"\x1f\x8b"
_INFLATE_ERRORS: tuple[type[BaseException], ...] = (EOFError, zlib.error, gzip.BadGzipFile)
_igzip: Any
try:  # python-isal's igzip: the same gzip format, inflated about twice as fast as zlib's
    from isal import igzip as _igzip
    from isal import isal_zlib

    _INFLATE_ERRORS += (cast(type[BaseException], isal_zlib.error),)
except ImportError:  # pragma: no cover - isal is a dependency; stock gzip still works
    _igzip = None


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as probe:
        return probe.read(2) == _GZIP_MAGIC


def _open(path: Path) -> IO[bytes]:
    if _is_gzip(path):
        return cast(IO[bytes], gzip.open(path, "rb"))
    return open(path, "rb")


def iter_ooni_file(path: Path) -> Iterator[tuple[int, bytes | dict[str, Any]]]:
    """(line number, raw line or decoded object) for an OONI file: JSONL or one JSON document.

    OONI publishes one measurement per line (JSONL, often gzipped), streamed here line by line;
    a single measurement fetched from its API is one (possibly pretty-printed) JSON document,
    or a list of them. A file whose first line is not JSON is read whole as a document.

    Gzip is inflated with igzip (isal). A damaged file is read again from where igzip stopped
    with the standard library's gzip, which hands over every line before the damage (igzip's
    larger read-ahead would drop a few) and raises the error the callers already report.
    """
    if _igzip is None or not _is_gzip(path):
        with _open(path) as handle:
            yield from _iter_ooni_handle(handle)
        return
    done = 0
    try:
        with _igzip.open(path, "rb") as handle:
            for item in _iter_ooni_handle(cast(IO[bytes], handle)):
                yield item
                done += 1
        return
    except _INFLATE_ERRORS:
        pass
    with gzip.open(path, "rb") as handle:
        for index, item in enumerate(_iter_ooni_handle(cast(IO[bytes], handle))):
            if index >= done:
                yield item


def _iter_ooni_handle(handle: IO[bytes]) -> Iterator[tuple[int, bytes | dict[str, Any]]]:
    first = handle.readline()
    try:
        orjson.loads(first)
        is_lines = True
    except orjson.JSONDecodeError:
        is_lines = not first.strip()
    if not is_lines:
        data = first + handle.read()
        try:
            doc = orjson.loads(data)
        except orjson.JSONDecodeError:
            doc = None
        if isinstance(doc, dict):
            yield 1, doc
            return
        if isinstance(doc, list):
            for item in doc:
                yield 1, item
            return
        for number, line in enumerate(data.split(b"\n"), 1):
            if _has_text(line):
                yield number, line
        return
    if first.strip():
        yield 1, first
    for number, line in enumerate(handle, 2):
        if _has_text(line):
            yield number, line


def _has_text(line: bytes) -> bool:
    """``bool(line.strip())`` without copying the line (strip copies all 12 KB of it)."""
    return bool(line) and not line.isspace()


def iter_store_file(path: Path) -> Iterator[tuple[int, bytes | dict[str, Any]]]:
    """Lines of one store file; a final line without newline is torn (the store contract)."""
    data = path.read_bytes()
    lines = data.split(b"\n")
    for number, line in enumerate(lines, 1):
        if number == len(lines) and line:
            yield number, b"\x00torn"
        elif _has_text(line):
            yield number, line


# --- column extraction ------------------------------------------------------------------------


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _list(value: Any) -> list[Any]:
    """A JSON list, or nothing: a mangled file may hold any type where a list belongs."""
    return value if isinstance(value, list) else []


def _seconds(value: Any) -> float | None:
    """An OONI relative time (t, t0) as a float, or None when it is not a finite number."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:  # an integer past a float's range
        return None
    return number if math.isfinite(number) else None


@functools.lru_cache(maxsize=1 << 16)
def domain_of(input_: str | None) -> str | None:
    """The host name of a URL input, or the input itself when it is a bare name."""
    if not input_:
        return None
    if "://" in input_:
        try:
            host = urlsplit(input_).hostname
        except ValueError:
            return None
        return host or None
    return input_.strip().lower() or None


_TIME_YEARS = (1678, 2262)  # inside pandas' nanosecond range, where both parsers agree


def parse_time(text: str) -> datetime:
    """A measurement time in UTC (naive times are UTC, as OONI writes them).

    datetime.fromisoformat (C) reads OONI's "YYYY-MM-DD HH:MM:SS" and ISO 8601 about 20 times
    faster than pd.Timestamp, which stays the fallback for anything else it understands.
    """
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        parsed = None
    if parsed is None or not _TIME_YEARS[0] < parsed.year < _TIME_YEARS[1]:
        # pd.Timestamp's answer, error included, for what it alone reads or cannot hold
        return pd.Timestamp(text, tz="UTC").to_pydatetime()
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def blocking_text(value: Any) -> str | None:
    """test_keys.blocking as text: False -> "false", a type stays, null/other -> None."""
    if value is False:
        return "false"
    if isinstance(value, str) and value:
        return value
    return None


def ooni_vantage(data: Mapping[str, Any]) -> str:
    """Our vantage name, else OONI's notion of a vantage: the network, CC-ASN."""
    annotations = data.get("annotations")
    if isinstance(annotations, dict) and isinstance(annotations.get("vantage"), str):
        return str(annotations["vantage"])
    return f"{data.get('probe_cc') or 'ZZ'}-{data.get('probe_asn') or 'AS0'}"


def _first_failure(items: Any, key: str = "failure") -> str | None:
    if not isinstance(items, list):
        return None
    for item in items:
        if isinstance(item, dict):
            status = item.get("status")
            failure = status.get("failure") if isinstance(status, dict) else item.get(key)
            if isinstance(failure, str) and failure:
                return failure
    return None


def _body_length(body: Any) -> int | None:
    if isinstance(body, str):
        return len(body)
    if isinstance(body, dict) and isinstance(body.get("data"), str):
        return len(body["data"]) * 3 // 4  # base64 -> bytes, close enough for a length column
    return None


_OBS_VALUE_COLUMNS = tuple(name for name in OBSERVATION_DTYPES if name not in ("row", "kind"))


class _Columns:
    """Column lists for both frames."""

    def __init__(self, extra_columns: Iterable[str]) -> None:
        self.m: dict[str, list[Any]] = {name: [] for name in MEASUREMENT_DTYPES}
        self.extra: dict[str, list[Any]] = {name: [] for name in extra_columns}
        self.o: dict[str, list[Any]] = {name: [] for name in OBSERVATION_DTYPES}
        self._obs_value_lists = [self.o[name] for name in _OBS_VALUE_COLUMNS]

    def add_observation(self, row: int, kind: str, **values: Any) -> None:
        # One append per column; `_OBS_VALUE_COLUMNS` is precomputed (this runs per answer).
        o = self.o
        o["row"].append(row)
        o["kind"].append(kind)
        get = values.get
        for name, column in zip(_OBS_VALUE_COLUMNS, self._obs_value_lists, strict=True):
            column.append(get(name))

    def observations(self, row: int, tk: Mapping[str, Any]) -> None:
        for part in observation_parts(tk):
            self._observations_of(row, part)

    def _observations_of(self, row: int, tk: Mapping[str, Any]) -> None:
        for query in _list(tk.get("queries")):
            if not isinstance(query, dict):
                continue
            answers = [a for a in _list(query.get("answers")) if isinstance(a, dict)]
            host = _str(query.get("hostname"))
            if not answers:
                self.add_observation(
                    row,
                    "dns",
                    hostname=host,
                    failure=_str(query.get("failure")),
                    t=_seconds(query.get("t")),
                )
            for answer in answers:
                self.add_observation(
                    row,
                    "dns",
                    hostname=host,
                    address=_str(
                        answer.get("ipv4") or answer.get("ipv6") or answer.get("hostname")
                    ),
                    answer_type=_str(answer.get("answer_type")),
                    failure=_str(query.get("failure")),
                    t=_seconds(query.get("t")),
                )
        for conn in [*_list(tk.get("tcp_connect")), *_list(tk.get("tcp_connects"))]:
            if isinstance(conn, dict):
                status = _dict(conn.get("status"))
                port = conn.get("port")
                self.add_observation(
                    row,
                    "tcp",
                    address=_str(conn.get("ip")),
                    port=port if isinstance(port, int) and 0 <= port <= 65535 else None,
                    failure=_str(status.get("failure")),
                    t=_seconds(conn.get("t")),
                )
        for key, kind in (("tls_handshakes", "tls"), ("quic_handshakes", "quic")):
            for hs in _list(tk.get(key)):
                if isinstance(hs, dict):
                    self.add_observation(
                        row,
                        kind,
                        address=_str(hs.get("address")),
                        server_name=_str(hs.get("server_name")),
                        tls_version=_str(hs.get("tls_version")),
                        failure=_str(hs.get("failure")),
                        t=_seconds(hs.get("t")),
                    )
        for req in _list(tk.get("requests")):
            if not isinstance(req, dict):
                continue
            request = _dict(req.get("request"))
            response = _dict(req.get("response"))
            code = response.get("code")
            self.add_observation(
                row,
                "http",
                url=_str(request.get("url")),
                status_code=code if isinstance(code, int) and 0 < code < 1000 else None,
                body_length=_body_length(response.get("body")),
                failure=_str(req.get("failure")),
                t=_seconds(req.get("t")),
            )


def _nested(tk: Mapping[str, Any], key: str) -> str | None:
    """The first failure of ``key`` in dnscheck's lookups (None for other nettests)."""
    if not isinstance(tk.get("lookups"), dict):
        return None
    for part in observation_parts(tk)[1:]:
        failure = _first_failure(part.get(key))
        if failure is not None:
            return failure
    return None


def _transfer_failure(tk: Mapping[str, Any], operation: str) -> str | None:
    """download's first target transfer failure at ``operation`` (None for other nettests):
    its transfers carry failures, not df-005/df-006 records."""
    transfers = tk.get("transfers")
    if not isinstance(transfers, list):
        return None
    for t in transfers:
        if not isinstance(t, dict) or t.get("role") != "target":
            continue
        if t.get("failed_operation") == operation:
            return _str(t.get("failure"))
    return None


def observation_parts(tk: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The parts of test keys that hold queries, connects, handshakes and requests: the keys
    themselves, and dnscheck's (OONI ts-028) urlgetter results nested in ``bootstrap`` and
    ``lookups``."""
    parts: list[Mapping[str, Any]] = [tk]
    bootstrap = tk.get("bootstrap")
    if isinstance(bootstrap, dict):
        parts.append(bootstrap)
    lookups = tk.get("lookups")
    if isinstance(lookups, dict):
        parts.extend(lk for lk in lookups.values() if isinstance(lk, dict))
    return parts


# --- the loader --------------------------------------------------------------------------------


class Loader:
    """Accumulates measurements from any number of sources, then builds the frames."""

    MAX_PROBLEMS_KEPT = 1000  # keep the first ones verbatim; the count covers them all

    def __init__(
        self,
        filters: Filters | None = None,
        *,
        classifier: Classifier | None = None,
        classifier_columns: Mapping[str, Any] | None = None,
        observations: bool = True,
    ) -> None:
        self.filters = filters or Filters()
        self.classifier = classifier
        self.classifier_dtypes = dict(classifier_columns or {})
        self.want_observations = observations
        self.cols = _Columns(self.classifier_dtypes)
        self.keywords = KeywordCollector()
        self.problems: list[LineProblem] = []
        self.n_problems = 0
        self.sources: list[str] = []
        self._row = 0

    def problem(self, path: Path, line: int, reason: str) -> None:
        self.n_problems += 1
        if len(self.problems) < self.MAX_PROBLEMS_KEPT:
            self.problems.append(LineProblem(path, line, reason))

    def add_store(self, root: Path) -> None:
        """Every report file of a results store that the partition filters let through."""
        store = ResultsStore(root)
        f = self.filters
        for path in store.iter_report_files(
            since=f.since,
            until=f.until,
            vantages=set(f.vantages or ()) or None,
            test_names=set(f.test_names or ()) or None,
        ):
            vantage = path.parent.parent.name.removeprefix("vantage=")
            self._add_lines(path, iter_store_file(path), vantage=vantage)

    def add_ooni(self, path: Path) -> None:
        """One OONI file (JSON or JSONL, optionally gzip).

        A gzip file cut short or corrupted part-way keeps the lines read before the damage,
        which is reported as a problem on the line after them.
        """
        read = [0]

        def counted() -> Iterator[tuple[int, bytes | dict[str, Any]]]:
            for number, raw in iter_ooni_file(path):
                read[0] = number
                yield number, raw

        try:
            self._add_lines(path, counted(), vantage=None)
        except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
            self.problem(path, read[0] + 1, f"damaged compressed file: {exc}")
        except OSError as exc:
            raise LoadError(f"{path}: cannot read: {exc.strerror or exc}") from exc

    def _add_lines(
        self, path: Path, lines: Iterable[tuple[int, bytes | dict[str, Any]]], vantage: str | None
    ) -> None:
        source = str(path)
        self.sources.append(source)
        inputs = self.filters.inputs
        for number, raw in lines:
            if isinstance(raw, bytes):
                if raw == b"\x00torn":
                    self.problem(path, number, "torn line (no newline at end of file)")
                    continue
                # Cheap pre-filter: an input we want must appear in the line's bytes.
                if inputs and not any(i.encode() in raw for i in inputs):
                    continue
                try:
                    data = orjson.loads(raw)
                except orjson.JSONDecodeError as exc:
                    self.problem(path, number, f"not valid JSON: {exc}")
                    continue
            else:
                data = raw
            if not isinstance(data, dict):
                self.problem(path, number, "not a JSON object")
                continue
            self._add(path, source, number, data, vantage)

    def _add(
        self, path: Path, source: str, number: int, data: dict[str, Any], vantage: str | None
    ) -> None:
        test_name = data.get("test_name")
        if not isinstance(test_name, str) or not test_name:
            self.problem(path, number, "field test_name: missing or not a string")
            return
        when = _str(data.get("measurement_start_time")) or _str(data.get("test_start_time"))
        try:
            stamp = parse_time(when) if when else None
        except ValueError:
            self.problem(path, number, f"field measurement_start_time: bad time {when!r}")
            return
        input_ = data.get("input")
        input_ = input_ if isinstance(input_, str) else None
        vantage_name = vantage or ooni_vantage(data)
        day = stamp.date() if stamp is not None else None
        if not self.filters.keeps(day, vantage_name, test_name, input_):
            return
        tk = data.get("test_keys")
        tk = tk if isinstance(tk, dict) else {}
        extra: Mapping[str, Any] = {}
        if self.classifier is not None:
            try:
                extra = self.classifier(data)
            except Exception as exc:  # a value of a type no measurement has, deep in test_keys
                reason = f"test_keys: cannot derive a verdict ({type(exc).__name__}: {exc})"
                self.problem(path, number, reason[:300])
                return
        row = self._row
        self._row += 1
        m = self.cols.m
        m["row"].append(row)
        m["measurement_uid"].append(_str(data.get("measurement_uid")))
        m["report_id"].append(_str(data.get("report_id")))
        m["time"].append(stamp)
        m["vantage"].append(vantage_name)
        m["probe_cc"].append(_str(data.get("probe_cc")))
        m["probe_asn"].append(_str(data.get("probe_asn")))
        m["test_name"].append(test_name)
        m["test_version"].append(_str(data.get("test_version")))
        m["software"].append(_str(data.get("software_name")))
        m["input"].append(input_)
        keyword = _str(tk.get("keyword"))
        m["domain"].append(None if keyword else domain_of(input_))
        m["keyword"].append(keyword)
        placement, channel = where_of(test_name, tk)
        m["placement"].append(placement)
        m["channel"].append(channel)
        m["orig_blocking"].append(blocking_text(tk.get("blocking")))
        m["orig_blocking_detail"].append(_str(tk.get("blocking_detail")))
        m["dns_failure"].append(
            _str(tk.get("dns_experiment_failure")) or _str(tk.get("bootstrap_failure"))
        )
        m["tcp_failure"].append(
            _first_failure(tk.get("tcp_connect"))
            or _first_failure(tk.get("tcp_connects"))  # OONI echcheck's name, and ech_check's
            or _nested(tk, "tcp_connect")
            or _transfer_failure(tk, "connect")
        )
        m["tls_failure"].append(
            _first_failure(tk.get("tls_handshakes"))
            or _nested(tk, "tls_handshakes")
            or _transfer_failure(tk, "tls_handshake")
        )
        m["http_failure"].append(
            _str(tk.get("http_experiment_failure"))
            or _first_failure(tk.get("requests"))
            or _transfer_failure(tk, "http_transaction")
        )
        m["control_failure"].append(_str(tk.get("control_failure")))
        runtime = data.get("test_runtime")
        m["runtime"].append(_seconds(runtime))
        m["source"].append(source)
        m["line"].append(number)
        for name, values in self.cols.extra.items():
            values.append(extra.get(name))
        if self.want_observations:
            self.cols.observations(row, tk)
        if test_name == ISOLATION_TEST or test_name in KEYWORD_TESTS:  # nothing for the rest
            self.keywords.add(row, data, tk, time=stamp, vantage=vantage_name, line=number)

    def frames(self) -> Loaded:
        keyword_rows, isolations = self.keywords.frames()
        return Loaded(
            measurements=_frame(
                {**self.cols.m, **self.cols.extra}, {**MEASUREMENT_DTYPES, **self.classifier_dtypes}
            ),
            observations=_frame(self.cols.o, OBSERVATION_DTYPES),
            problems=list(self.problems),
            n_problems=self.n_problems,
            sources=list(self.sources),
            keyword_rows=keyword_rows,
            isolations=isolations,
        )


class LoadError(Exception):
    """A source that cannot be read at all (missing file, unreadable directory)."""


def _frame(columns: Mapping[str, list[Any]], dtypes: Mapping[str, Any]) -> pd.DataFrame:
    out: dict[str, pd.Series] = {}
    for name, dtype in dtypes.items():
        values = columns[name]
        if dtype == "datetime64[s, UTC]":
            out[name] = pd.Series(pd.to_datetime(values, utc=True), dtype=dtype)
        elif dtype == CAT:
            out[name] = pd.Series(values, dtype=object).astype(CAT)
        else:
            out[name] = pd.Series(values, dtype=dtype)
    return pd.DataFrame(out)


def load(
    results: Iterable[Path] = (),
    ooni: Iterable[Path] = (),
    filters: Filters | None = None,
    *,
    classifier: Classifier | None = None,
    classifier_columns: Mapping[str, Any] | None = None,
    observations: bool = True,
) -> Loaded:
    """Load stores and OONI files into frames (see the module docstring)."""
    loader = Loader(
        filters,
        classifier=classifier,
        classifier_columns=classifier_columns,
        observations=observations,
    )
    for root in results:
        if not Path(root).is_dir():
            raise LoadError(f"{root}: no such results directory")
        loader.add_store(Path(root))
    from analysis.ooni_bucket import ooni_files

    for path in ooni_files(list(ooni), filters):
        loader.add_ooni(path)
    return loader.frames()
