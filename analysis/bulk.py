"""A dataset's bulk files: raw measurements in OONI's bucket layout, Parquet by date/country/test.

Raw (`raw/`), as OONI lays out `s3://ooni-data-eu-fra/raw/` (ooni/backend
docs/MeasurementUploader.md, "Compressed JSONL from measurements starting from 20201020"):

    raw/YYYYMMDD/HH/CC/testname/YYYYMMDDHH_CC_testname.censorscope.N.jsonl.gz

`testname` without underscores, one scrubbed measurement per line. As in OONI's bucket, the
date and hour are those of the measurement's *arrival*, not of its start: for a store file the
start of its report as the store recorded it (the report manifest's `test_start_time`: when a
collector opened the report, or when a local run began), else its `date=` partition; for an
OONI file already in the bucket layout, its bucket; otherwise the measurement's own hour.
`censorscope` stands where OONI's uploader writes its host id (`n0`, `n1`) and N counts files of
MAX_LINES lines. oonidata parses such names with `get_filename_meta_v2` (timestamp, probe_cc,
testname; tests/test_analysis_bulk.py reproduces it). The naming rules are analysis.ooni_bucket's,
which reads the same layout back.

Parquet (`data/measurements/`), hive-partitioned so that DuckDB, Spark, pyarrow and pandas
read it without our code:

    data/measurements/date=YYYY-MM-DD/probe_cc=CC/test_name=NAME/part-0.parquet

by the measurement's own date (UTC), so a measurement that arrives days late is counted in
the period it belongs to.

Late arrivals: each file is written only when its bytes change, so a publish after new uploads
rewrites the Parquet partitions the new measurements belong to and adds raw buckets for their
arrival hour; every other raw and Parquet file keeps its bytes and its modification time.
"""

from __future__ import annotations

import gzip
import io
import re
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Set
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from analysis import ooni_bucket
from analysis.load import iter_ooni_file, iter_store_file
from analysis.ooni_bucket import bucket_test_name
from analysis.tables import plain, replacing
from probes.measurement import UNKNOWN_ASN, UNKNOWN_CC, Scrubber, asn_number

RAW_DIR = ooni_bucket.RAW_DIR
MEASUREMENTS_DIR = "data/measurements"
HOST_ID = "censorscope"
MAX_LINES = 100_000  # lines per raw file before the counter moves on
LATE_AFTER = timedelta(hours=24)  # arrived this long after it was made: "late"
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"

_STORE_FILE = re.compile(r"/raw/date=([0-9-]{10})/vantage=[^/]+/test_name=[^/]+/([^/]+)\.jsonl$")


# --- where and when ----------------------------------------------------------------------------


def _store_arrival(path: Path, day: str, report_id: str) -> datetime | None:
    root = path.parents[4]
    try:
        manifest = orjson.loads((root / "reports" / f"{report_id}.json").read_bytes())
        return datetime.strptime(manifest["test_start_time"], TIME_FORMAT).replace(tzinfo=UTC)
    except (OSError, orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        pass
    try:
        return datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError:
        return None


def source_arrival(source: str) -> datetime | None:
    """When the measurements of one source file arrived (None: the file does not say)."""
    text = Path(source).as_posix()
    if found := _STORE_FILE.search(text):
        return _store_arrival(Path(source), found.group(1), found.group(2))
    return ooni_bucket.bucket_hour(text)


def arrivals(measurements: pd.DataFrame) -> pd.Series:
    """Arrival hour per row (see the module docstring); the measurement's hour when unknown."""
    by_source = {s: source_arrival(s) for s in measurements["source"].dropna().unique()}
    known = measurements["source"].astype(object).map(by_source)
    arrived = pd.to_datetime(known, utc=True).dt.floor("h")
    return arrived.fillna(measurements["time"].dt.floor("h"))


def late(measurements: pd.DataFrame, arrived: pd.Series) -> pd.Series:
    """Rows that arrived more than LATE_AFTER after they were made (arrival hours are whole)."""
    return (arrived - measurements["time"].dt.floor("h")) > LATE_AFTER


# --- reading the measurements back -------------------------------------------------------------


def _records(source: str) -> Iterator[tuple[int, bytes | dict[str, Any]]]:
    path = Path(source)
    if _STORE_FILE.search(path.as_posix()):
        return iter_store_file(path)
    return iter_ooni_file(path)


def raw_measurements(
    measurements: pd.DataFrame,
    records: Callable[[str], Iterable[tuple[int, bytes | dict[str, Any]]]] = _records,
) -> Iterator[tuple[int, dict[str, Any]]]:
    """(frame position, decoded measurement) of every row, re-read from its source file by line
    (and uid, for JSON documents whose measurements share line 1). Sources are read one at a
    time; rows whose line has gone from the file since loading are skipped. `records`: a
    source's (line number, line) as the loader numbered them (a partition's byte range is
    numbered from its start: analysis.publish_engine)."""
    wanted: dict[str, dict[int, list[tuple[int, str | None]]]] = {}
    uids = (
        measurements["measurement_uid"]
        .astype(object)
        .where(measurements["measurement_uid"].notna(), None)
    )
    for position, (source, line, uid) in enumerate(
        zip(measurements["source"].astype(object), measurements["line"], uids, strict=True)
    ):
        wanted.setdefault(str(source), {}).setdefault(int(line), []).append((position, uid))
    for source in sorted(wanted):
        lines = wanted[source]
        shared: dict[tuple[int, str | None], dict[str, Any]] = {}
        for number, raw in records(source):
            candidates = lines.get(number)
            if not candidates:
                continue
            try:
                data = orjson.loads(raw) if isinstance(raw, bytes) else raw
            except orjson.JSONDecodeError:
                continue
            if not isinstance(data, dict):
                continue
            uid = data.get("measurement_uid")
            uid = uid if isinstance(uid, str) else None
            for i, (position, want) in enumerate(candidates):
                if want == uid:
                    del candidates[i]
                    if candidates:  # more rows of this line: the file was given twice?
                        shared[(number, uid)] = data
                    yield position, data
                    break
        # A file loaded twice (`--ooni X --ooni X`) has two rows per line: both are published.
        for number, candidates in lines.items():
            for position, want in candidates:
                if (number, want) in shared:
                    yield position, shared[(number, want)]


# --- what is published of a measurement --------------------------------------------------------


def scrubbed(data: dict[str, Any], scrubber: Scrubber | None) -> dict[str, Any]:
    """probe_ip set to OONI's placeholder and our addresses removed (the probes' Scrubber, on
    the decoded JSON: no round trip through Measurement)."""
    return (scrubber or Scrubber()).scrub_dict(data)


# A report id names its network: 20230307T142542Z_webconnectivity_US_7922_n1_<random>.
_REPORT_ID_ASN = re.compile(r"(?<=[0-9]Z_)([a-z0-9]+_[A-Z]{2}_)([0-9]+)(?=_n[0-9]+_)")


def without_asn(text: str, numbers: Set[int]) -> str:
    """`text` with the AS number inside every report id of those ASNs set to 0 (OONI's
    unknown), as for a probe that did not share its network."""
    if not numbers:
        return text
    return _REPORT_ID_ASN.sub(
        lambda m: m.group(1) + ("0" if int(m.group(2)) in numbers else m.group(2)), text
    )


def withheld(data: dict[str, Any], vantage: str) -> dict[str, Any]:
    """An at-risk vantage's measurement without its network: probe ASN and network name (and
    the resolver's when it is the same network), the ASN inside report_id, the vantage name as
    analysis.publish.redact publishes it."""
    out = dict(data)
    asn = out.get("probe_asn")
    if isinstance(asn, str) and out.get("resolver_asn") == asn:
        out["resolver_asn"] = UNKNOWN_ASN
        out["resolver_network_name"] = ""
    out["probe_asn"] = UNKNOWN_ASN
    out["probe_network_name"] = ""
    number = asn_number(asn) if isinstance(asn, str) else 0
    report_id = out.get("report_id")
    if number and isinstance(report_id, str):
        out["report_id"] = without_asn(report_id, {number})
    annotations = out.get("annotations")
    kept = annotations if isinstance(annotations, dict) else {}
    out["annotations"] = {**kept, "vantage": vantage}
    return out


# --- writing -----------------------------------------------------------------------------------


def put(path: Path, data: bytes) -> bool:
    """Write `data` unless the file already holds exactly it (True: written). Atomic: a crash
    leaves the old file or the new one, never half of one."""
    try:
        if path.stat().st_size == len(data) and path.read_bytes() == data:
            return False
    except OSError:
        pass
    with replacing(path) as tmp:
        tmp.write_bytes(data)
    return True


def parquet_bytes(frame: pd.DataFrame) -> bytes:
    """analysis.tables.write_parquet's file, in memory (no pandas metadata, zstd, statistics)."""
    table = pa.Table.from_pandas(plain(frame), preserve_index=False).replace_schema_metadata(None)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd", write_statistics=True)
    return bytes(sink.getvalue().to_pybytes())


@dataclass
class Bulk:
    """What write_bulk wrote: every file of the layout, those whose bytes changed, late rows."""

    files: list[Path] = field(default_factory=list)
    changed: list[Path] = field(default_factory=list)
    late: int = 0
    raw_lines: int = 0


def _hive(value: Any) -> str:
    """A partition value as a path segment (hive style: `/` and `=` would break the layout)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", str(value)) or "_"


def write_parquet_partitions(frame: pd.DataFrame, out: Path, bulk: Bulk) -> None:
    """`frame` (sorted) as date=/probe_cc=/test_name= partitions under out/MEASUREMENTS_DIR."""
    dates = frame["time"].dt.strftime("%Y-%m-%d").fillna("unknown")
    ccs = frame["probe_cc"].astype(object).fillna(UNKNOWN_CC)
    tests = frame["test_name"].astype(object)
    for (day, cc, test), part in frame.groupby([dates, ccs, tests], sort=True):
        path = (
            out / MEASUREMENTS_DIR / f"date={day}" / f"probe_cc={_hive(cc)}"
            / f"test_name={_hive(test)}" / "part-0.parquet"
        )  # fmt: skip
        data = parquet_bytes(part.drop(columns=["probe_cc", "test_name"]))
        bulk.files.append(path)
        if put(path, data):
            bulk.changed.append(path)


class Lines:
    """Lines by frame position, packed in one buffer: orjson's bytes objects keep about 8 KB
    of allocation each (measured: 20,000 kept lines of 760 bytes cost 160 MB), the packed
    buffer only their length."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._spans: dict[int, tuple[int, int]] = {}

    def __setitem__(self, position: int, line: bytes) -> None:
        start = len(self._buffer)
        self._buffer += line
        self._spans[position] = (start, len(self._buffer))

    def __contains__(self, position: object) -> bool:
        return position in self._spans

    def __getitem__(self, position: int) -> bytes:
        start, end = self._spans[position]
        return bytes(self._buffer[start:end])


def write_raw(
    frame: pd.DataFrame,
    records: Lines | Mapping[int, bytes],
    arrived: pd.Series,
    out: Path,
    bulk: Bulk,
) -> None:
    """Each row's line (`records`, by frame position) into its arrival bucket, in frame order."""
    for (stamp, cc, test), rows in (
        raw_keys(frame, arrived).groupby(["stamp", "cc", "test"], sort=True).indices.items()
    ):
        lines = [records[int(p)] for p in sorted(rows) if int(p) in records]
        write_raw_group((stamp, cc, test), lines, out, bulk)


def raw_keys(frame: pd.DataFrame, arrived: pd.Series) -> pd.DataFrame:
    """Per published row: its raw file's arrival hour (YYYYMMDDHH), country and test folder."""
    ccs = frame["probe_cc"].astype(object).fillna(UNKNOWN_CC).map(_hive)
    tests = frame["test_name"].astype(object).map(lambda t: _hive(bucket_test_name(str(t))))
    stamps = arrived.reset_index(drop=True).dt.strftime("%Y%m%d%H")
    return pd.DataFrame(
        {"stamp": stamps, "cc": ccs.reset_index(drop=True), "test": tests.reset_index(drop=True)}
    )


def write_raw_group(key: tuple[str, str, str], lines: list[bytes], out: Path, bulk: Bulk) -> None:
    """The lines of one (arrival hour, country, test), in publishing order, MAX_LINES a file."""
    for counter, start in enumerate(range(0, len(lines), MAX_LINES)):
        write_raw_file(key, counter, lines[start : start + MAX_LINES], out, bulk)


def write_raw_file(
    key: tuple[str, str, str], counter: int, lines: Iterable[bytes], out: Path, bulk: Bulk
) -> None:
    """File number `counter` of a raw bucket: `lines` (at most MAX_LINES), gzip with mtime 0,
    compressed as they come (a file of 100,000 lines of 12 KB is never whole in memory)."""
    stamp, cc, test = key
    path = out / ooni_bucket.bucket_key(stamp, cc, test, HOST_ID, counter)
    # The bytes of gzip.compress(b"".join(lines), mtime=0) (zlib's gzip wrapper, level 9):
    # deflate's output does not depend on how its input is cut.
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    chunks = []
    n = 0
    for line in lines:
        chunks.append(packer.compress(line))
        n += 1
    chunks.append(packer.flush())
    bulk.files.append(path)
    bulk.raw_lines += n
    if put(path, b"".join(chunks)):
        bulk.changed.append(path)


def write_bulk(
    loaded: pd.DataFrame,
    published: pd.DataFrame,
    out: Path,
    *,
    scrubber: Scrubber | None = None,
    drop_asn: Set[str] = frozenset(),
) -> Bulk:
    """Raw and Parquet files of one dataset. `loaded` is the frame as loaded (with source and
    line, to read each measurement back), `published` the same rows as published (redacted,
    scrubbed, sorted the same way), both indexed alike."""
    bulk = Bulk()
    write_parquet_partitions(published, out, bulk)
    arrived = arrivals(loaded).reset_index(drop=True)
    bulk.late = int(late(loaded.reset_index(drop=True), arrived).sum())
    vantages = loaded["vantage"].astype(object).reset_index(drop=True)
    names = published["vantage"].astype(object).reset_index(drop=True)
    numbers = {
        asn_number(str(a))
        for a in loaded.loc[loaded["vantage"].astype(object).isin(list(drop_asn)), "probe_asn"]
        .dropna()
        .unique()
    } - {0}
    records = Lines()
    for position, data in raw_measurements(loaded.reset_index(drop=True)):
        if vantages[position] in drop_asn:
            data = withheld(data, str(names[position]))
        line = orjson.dumps(scrubbed(data, scrubber), option=orjson.OPT_APPEND_NEWLINE)
        if numbers:  # report ids inside test_keys too (an isolation names its tests' report)
            line = without_asn(line.decode(), numbers).encode()
        records[position] = line
    write_raw(published.reset_index(drop=True), records, arrived, out, bulk)
    return bulk


def read_back(out: Path) -> pd.DataFrame:
    """The Parquet measurements through pyarrow's hive partitioning (no censorscope code in the
    way: what DuckDB's `hive_partitioning` and Spark's partition discovery do too)."""
    import pyarrow.dataset as ds

    dataset = ds.dataset(out / MEASUREMENTS_DIR, format="parquet", partitioning="hive")
    return dataset.to_table().to_pandas()


def raw_files(out: Path) -> list[Path]:
    """Every raw file of a dataset, in path order."""
    return sorted((out / RAW_DIR).glob(f"*/*/*/*/*{ooni_bucket.FILE_SUFFIX}"))


def arrival_text(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime(TIME_FORMAT)


def decode_lines(data: bytes) -> list[dict[str, Any]]:
    """The measurements of one raw file's bytes (gzip of JSON lines)."""
    with gzip.GzipFile(fileobj=io.BytesIO(data)) as handle:
        return [orjson.loads(line) for line in handle if line.strip()]
