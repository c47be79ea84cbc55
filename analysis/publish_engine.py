"""`publish` on the distributed engine: the same package, byte for byte, with no process holding
every row.

Two stages of tasks on the engine's workers (analysis.engine.tasks):

1. Per input partition (analysis.engine.partitions): load and classify it, reduce it as for
   `analyze` (counts, keyword partials, facts), and spool its rows, redacted and scrubbed as
   publish_dataset does, by the output file they go to: the Parquet partition (date, country,
   test) and the raw bucket (arrival hour, country, test). A row's raw line is re-read from its
   partition's own lines (a byte range numbered from its start, as the loader numbered it) and
   spooled deflated on its own (isal level 1: ~3 KB for a 12.8 KB line, ~23 us each way), so
   the spool of 10M bench lines took 35 GB of disk, not the 128 GB of their text.
   The task returns small things: the counts, which output files it spooled rows for, the AS
   numbers of `--drop-asn` vantages it saw and their published vantage names.
2. Per output file: read its spooled rows from every partition, give them their global row and
   line numbers (the engine's offsets), finish what needs the whole dataset (the AS numbers
   withheld from report ids), sort them in publishing order (SORT, ties in load order: the
   in-process stable sort) and write the file only if its bytes change (late arrivals keep
   every other file's bytes and mtime). Parquet tasks return the facts and list hashes of
   their published rows (the card, provenance) and, with `--drop-asn`, their counts (the
   comparison of the redacted vantages).

The client merges, writes the CSV tables and the package around the files (analysis.publish
write_package) and removes the spool. The spool is under OUT (`.spool-publish/`), so workers on
other machines need OUT on a path they all see (as `--scheduler` already asks of the inputs).
"""

from __future__ import annotations

import hashlib
import os
import pickle
import shutil
from collections.abc import Callable, Iterator, Sequence, Set
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import pandas as pd
from isal import isal_zlib

from analysis import bulk as bulk_files
from analysis.compare import (
    DEFAULT_WINDOW,
    Gates,
    Partial,
    from_partial,
    merge_partials,
    partial_counts,
)
from analysis.engine import (
    Job,
    Partition,
    PartResult,
    _piece_bytes,
    _Reducer,
    analysis_of,
    load_part,
    plan,
    reduce_part,
    tasks,
)
from analysis.facts import Facts, facts_of, merge_facts
from analysis.keywords import KeywordPartial
from analysis.keywords import from_partial as keyword_findings
from analysis.keywords import merge as merge_keywords
from analysis.load import Filters
from analysis.publish import (
    SORT,
    Package,
    Published,
    _previous_files,
    redact,
    scrub_frame,
    withheld_numbers,
    write_package,
)
from analysis.stream import PIECE_BYTES, _Lines
from probes.measurement import UNKNOWN_CC

if TYPE_CHECKING:
    from analysis.pipeline import Analysis
    from probes.measurement import Scrubber

SPOOL = ".spool-publish"
_RID = "_withheld_report_id"  # an at-risk row's report id before the dataset's AS numbers
_START, _END = "_line_start", "_line_end"  # a raw line's span in its spooled .lines file
_LEVEL = 1  # isal's deflate level for a spooled line: ~5x faster than zlib's level 1
_PART = "_part"
_ROW = "_row"  # the row's position in the load (not published): ties in the sort keep it

ParquetKey = tuple[str, str, str]  # (date, probe_cc, test_name) as publish groups them
RawKey = tuple[str, str, str]  # (YYYYMMDDHH, CC folder, testname folder)


@dataclass(frozen=True)
class Options:
    """What both stages need besides their item (pickled once per task)."""

    job: Job
    spool: str
    drop_asn: frozenset[str]
    scrubber: Scrubber | None


@dataclass
class Spooled:
    """Stage 1's answer: the partition reduced, and where its rows wait."""

    result: PartResult
    parquet: list[ParquetKey]
    raw: list[RawKey]
    numbers: set[int]
    names: dict[str, str]  # vantage as loaded -> as published (the partition's last row's)


def _spool_file(spool: str, kind: str, key: tuple[str, ...], index: int) -> Path:
    digest = hashlib.sha256("\0".join(key).encode()).hexdigest()[:24]
    return Path(spool) / kind / digest / f"{index:08d}.pickle"


def _dump(frame: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        pickle.dump(frame, handle, protocol=pickle.HIGHEST_PROTOCOL)


def _records(part: Partition) -> Any:
    """A source's (line number, line) as the loader numbered them within this partition."""
    by_source = {str(Path(piece.path)): piece for piece in part.pieces}
    return lambda source: iter(_Lines(by_source[source]))


# Spool bytes per input byte, measured on the bench's 10M web_connectivity lines (12.8 KB of
# text, 1.83 KB gzipped in OONI's files): 35.3 GB of spool for 18.3 GB of .jsonl.gz (1.93; 3.2 KB
# a line deflated alone, since whole-file gzip shares the keys between lines, plus ~0.4 KB of
# pickled row), about 0.28 of the lines' text. Shorter lines share less: an estimate.
SPOOL_PER_GZIP_BYTE = 2.0
SPOOL_PER_TEXT_BYTE = 0.3


def space_short(todo: Sequence[Partition], out: Path) -> str | None:
    """A warning when OUT's disk has less free space than the spool will likely need (it is
    removed at the end; the published files come on top)."""
    need = 0.0
    for part in todo:
        for piece in part.pieces:
            gzipped = piece.path.endswith(".gz")
            need += _piece_bytes(piece) * (SPOOL_PER_GZIP_BYTE if gzipped else SPOOL_PER_TEXT_BYTE)
    free = shutil.disk_usage(out).free
    if need <= free:
        return None
    return (
        f"{out}: publish spools the measurements under {out / SPOOL} first, about "
        f"{need / 1e9:.1f} GB for these inputs, and the disk has {free / 1e9:.1f} GB free: "
        "it may run out of space (free some, or publish to another disk)"
    )


def spool_part(part: Partition, options: Options) -> Spooled:
    """Stage 1 (on a worker): load, classify, reduce and spool one partition."""
    loaded, frame, lines = load_part(part, options.job)
    result = reduce_part(part, options.job, loaded, frame, lines)
    frame = frame.reset_index(drop=True)
    drop_asn, scrubber = options.drop_asn, options.scrubber
    numbers = withheld_numbers(frame, drop_asn) if drop_asn else set()
    # Everything publish_dataset does to a row but the dataset-wide AS numbers in report ids.
    published = scrub_frame(redact(frame, drop_asn, frozenset()), scrubber)
    published[_ROW] = frame["row"].to_numpy()
    risky = frame["vantage"].astype(object).isin(list(drop_asn))
    names = dict(zip(frame["vantage"].astype(str), published["vantage"].astype(str), strict=True))
    if risky.any():
        published[_RID] = frame["report_id"].astype(object).where(risky, None)
    days = published["time"].dt.strftime("%Y-%m-%d").fillna("unknown")
    ccs = published["probe_cc"].astype(object).fillna(UNKNOWN_CC)
    tests = published["test_name"].astype(object)
    parquet_keys: list[ParquetKey] = []
    for key, rows in published.groupby([days, ccs, tests], sort=True):
        parquet_keys.append(key)
        _dump(rows, _spool_file(options.spool, "parquet", key, part.index))
    # Raw lines: scrubbed, at-risk ones withheld, as bulk.write_bulk makes them, each written
    # to its bucket's spool file as it is made (a partition's lines are never all in memory).
    keys = bulk_files.raw_keys(published, bulk_files.arrivals(frame))
    key_of = list(zip(keys["stamp"], keys["cc"], keys["test"], strict=True))
    vantages = frame["vantage"].astype(object)
    with _LineSpool(options.spool, part.index) as spool:
        for position, data in bulk_files.raw_measurements(frame, _records(part)):
            key = key_of[position]
            if not isinstance(key[0], str):  # no time at all: write_raw files it nowhere
                continue
            if vantages[position] in drop_asn:
                data = bulk_files.withheld(data, str(published["vantage"].iloc[position]))
            line = orjson.dumps(
                bulk_files.scrubbed(data, scrubber), option=orjson.OPT_APPEND_NEWLINE
            )
            spool.write(key, position, line)
    order = published[[*SORT, _ROW]]
    for key, (positions, starts, ends) in spool.spans.items():
        path = _spool_file(options.spool, "raw", key, part.index)
        _dump(order.iloc[positions].assign(**{_START: starts, _END: ends}), path)
    return Spooled(result, parquet_keys, sorted(spool.spans), numbers, names)


class _LineSpool:
    """Raw lines, each deflated on its own (raw deflate, no header), appended to one .lines
    spool file per bucket, with each line's span; at most OPEN files open at once (a partition
    of many countries and hours has many buckets)."""

    OPEN = 64

    def __init__(self, spool: str, index: int) -> None:
        self.spool, self.index = spool, index
        self.spans: dict[RawKey, tuple[list[int], list[int], list[int]]] = {}
        self.sizes: dict[RawKey, int] = {}
        self.handles: dict[RawKey, Any] = {}

    def __enter__(self) -> _LineSpool:
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self.handles.values():
            handle.close()
        self.handles.clear()

    def write(self, key: RawKey, position: int, line: bytes) -> None:
        handle = self.handles.pop(key, None)
        if handle is None:
            if len(self.handles) >= self.OPEN:
                self.handles.pop(next(iter(self.handles))).close()  # the least recently used
            path = _spool_file(self.spool, "raw", key, self.index).with_suffix(".lines")
            path.parent.mkdir(parents=True, exist_ok=True)
            # "wb" the first time: a task run again (a worker lost) starts the file afresh
            mode = "ab" if key in self.sizes else "wb"
            handle = open(path, mode)  # noqa: SIM115 (closed in __exit__ or when evicted)
        self.handles[key] = handle  # most recently used last
        start = self.sizes.get(key, 0)
        line = isal_zlib.compress(line, _LEVEL, -15)
        handle.write(line)
        self.sizes[key] = start + len(line)
        positions, starts, ends = self.spans.setdefault(key, ([], [], []))
        positions.append(position)
        starts.append(start)
        ends.append(start + len(line))


@dataclass(frozen=True)
class Finish:
    """What stage 2 needs from stage 1: offsets and the dataset-wide withheld AS numbers."""

    options: Options
    out: str
    rows: dict[int, int]  # partition -> rows of every partition before it
    lines: dict[int, int]  # partition -> lines before it in its file
    numbers: frozenset[int]
    window: str | None
    counts: bool  # return the published rows' counts (the vantages were renamed)


@dataclass
class Written:
    """Stage 2's answer for one output file (or one raw bucket's files)."""

    key: tuple[str, ...]
    files: list[Path]
    changed: list[Path]
    raw_lines: int = 0
    facts: Facts | None = None
    partial: Partial | None = None


def _gather(kind: str, key: tuple[str, ...], parts: list[int], finish: Finish) -> pd.DataFrame:
    """The spooled rows of one output file from every partition, numbered as one load."""
    frames = []
    for index in sorted(parts):
        with open(_spool_file(finish.options.spool, kind, key, index), "rb") as handle:
            frame = pickle.load(handle)
        frame["line"] += finish.lines[index]
        frame[_ROW] += finish.rows[index]
        if kind == "raw":
            frame[_PART] = index
        frames.append(frame)
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]


def _in_order(frame: pd.DataFrame) -> pd.DataFrame:
    """Publishing order: SORT, then load order (the in-process engine's stable sort)."""
    ordered = frame.sort_values([*SORT, _ROW], na_position="first", kind="stable")
    return ordered.drop(columns=[_ROW]).reset_index(drop=True)


def write_parquet_file(item: tuple[ParquetKey, list[int]], finish: Finish) -> Written:
    """Stage 2: one Parquet partition."""
    key, parts = item
    frame = _gather("parquet", key, parts, finish)
    if _RID in frame:
        risky = frame[_RID].notna()
        if risky.any():
            ids = frame.loc[risky, _RID].map(
                lambda v: bulk_files.without_asn(v, finish.numbers) if isinstance(v, str) else v
            )
            scrubber = finish.options.scrubber
            if scrubber is not None and scrubber.addresses:
                ids = ids.map(lambda v: scrubber.scrub_text(v) if isinstance(v, str) else v)
            frame.loc[risky, "report_id"] = ids
        frame = frame.drop(columns=[_RID])
    frame = _in_order(frame)
    bulk = bulk_files.Bulk()
    bulk_files.write_parquet_partitions(frame, Path(finish.out), bulk)
    partial = partial_counts(frame, finish.window) if finish.counts else None
    return Written(key, bulk.files, bulk.changed, facts=facts_of(frame), partial=partial)


def write_raw_files(item: tuple[RawKey, list[int]], finish: Finish) -> Written:
    """Stage 2: one raw bucket (arrival hour, country, test), MAX_LINES lines a file: the sort
    keys of every line first, then each line read from its spooled .lines file and compressed
    as it comes (only the compressed file is held)."""
    key, parts = item
    frame = _in_order(_gather("raw", key, parts, finish))
    spans = frame[[_PART, _START, _END]].to_numpy()
    bulk = bulk_files.Bulk()
    with ExitStack() as stack:
        spooled = {}
        for index in parts:
            lines_file = _spool_file(finish.options.spool, "raw", key, index).with_suffix(".lines")
            spooled[index] = stack.enter_context(open(lines_file, "rb")).fileno()

        def lines(chunk: Any) -> Iterator[bytes]:
            for index, start, end in chunk:
                packed = os.pread(spooled[int(index)], int(end - start), int(start))
                line = isal_zlib.decompress(packed, -15)
                if finish.numbers:  # report ids in test_keys too (an isolation names reports)
                    line = bulk_files.without_asn(line.decode(), finish.numbers).encode()
                yield line

        for counter, first in enumerate(range(0, len(spans), bulk_files.MAX_LINES)):
            chunk = spans[first : first + bulk_files.MAX_LINES]
            bulk_files.write_raw_file(key, counter, lines(chunk), Path(finish.out), bulk)
    return Written(key, bulk.files, bulk.changed, raw_lines=bulk.raw_lines)


@dataclass
class _Outputs:
    parquet: dict[ParquetKey, list[int]] = field(default_factory=dict)
    raw: dict[RawKey, list[int]] = field(default_factory=dict)
    numbers: set[int] = field(default_factory=set)
    names: dict[int, dict[str, str]] = field(default_factory=dict)


def _renamed(part: KeywordPartial, names: dict[str, str]) -> KeywordPartial:
    """Keyword counts with the vantages as published (merge regroups what the names join)."""

    def rename(frame: pd.DataFrame) -> pd.DataFrame:
        if "vantage" not in frame or frame.empty:
            return frame
        vantage = frame["vantage"].astype(object).map(lambda v: names.get(v, v))
        return frame.assign(vantage=vantage.astype(frame["vantage"].dtype))

    renamed = KeywordPartial(
        rename(part.counts), rename(part.modes), rename(part.evidence), rename(part.isolations)
    )
    return merge_keywords([renamed])


def publish_engine(
    results: list[Path],
    ooni: list[Path],
    filters: Filters,
    fingerprints: Path | None,
    out: Path,
    *,
    window: str | None = DEFAULT_WINDOW,
    gates: Gates | None = None,
    drop_asn: Set[str] = frozenset(),
    title: str = "censorscope measurements",
    licence: str = "CC-BY-4.0",
    scrubber: Scrubber | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
    piece_bytes: int = PIECE_BYTES,
    processes: bool = True,
    warn: Callable[[str], None] | None = None,
) -> tuple[Analysis, Published]:
    """Analyse and publish as Dask tasks (see the module docstring); returns the analysis (for
    the summary) and what was written, equal to analysis.publish.publish_dataset's."""
    out.mkdir(parents=True, exist_ok=True)
    previous = _previous_files(out)
    run = plan(results, ooni, filters, fingerprints, window, piece_bytes)
    spool = out / SPOOL
    shutil.rmtree(spool, ignore_errors=True)  # a killed run's
    if warn is not None:
        short = space_short(run.todo, out)
        if short:
            warn(short)
    options = Options(run.job, str(spool), frozenset(drop_asn), scrubber)
    reducer = _Reducer(run.todo)
    outputs = _Outputs()
    try:
        with tasks(run.todo, scheduler, workers, processes) as map_tasks:
            for spooled in map_tasks(spool_part, run.todo, options=options):
                index = spooled.result.index
                reducer.add(spooled.result)
                for key in spooled.parquet:
                    outputs.parquet.setdefault(key, []).append(index)
                for raw_key in spooled.raw:
                    outputs.raw.setdefault(raw_key, []).append(index)
                outputs.numbers |= spooled.numbers
                outputs.names[index] = spooled.names
            rows, lines = reducer.offsets()
            finish = Finish(
                options, str(out), rows, lines, frozenset(outputs.numbers), window, bool(drop_asn)
            )
            parquet = list(
                map_tasks(write_parquet_file, sorted(outputs.parquet.items()), finish=finish)
            )
            raw = list(map_tasks(write_raw_files, sorted(outputs.raw.items()), finish=finish))
    finally:
        shutil.rmtree(spool, ignore_errors=True)
    result = analysis_of(reducer, run.job, gates)
    bulk = bulk_files.Bulk(late=result.facts.late)
    for written in [*sorted(parquet, key=lambda w: w.key), *sorted(raw, key=lambda w: w.key)]:
        bulk.files += written.files
        bulk.changed += written.changed
        bulk.raw_lines += written.raw_lines
    facts = merge_facts([w.facts for w in parquet if w.facts is not None])
    comparison, keywords = result.comparison, result.keywords
    if drop_asn:
        partials = [w.partial for w in parquet if w.partial is not None]
        comparison = from_partial(merge_partials(partials), gates) if partials else comparison
        names: dict[str, str] = {}
        for index in sorted(outputs.names):  # load order: the last row's name wins
            names.update(outputs.names[index])
        if result.keyword_partial is not None:
            keywords = keyword_findings(_renamed(result.keyword_partial, names), gates)
    package = Package(comparison, keywords, set(outputs.numbers), facts, bulk, previous)
    done = write_package(
        result,
        out,
        package,
        title=title,
        licence=licence,
        scrubber=scrubber,
        fingerprints=fingerprints,
    )
    return result, done
