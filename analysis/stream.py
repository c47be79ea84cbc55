"""Load, classify and count millions of measurements in parallel and in bounded memory.

The in-memory path (analysis.load + analysis.compare) keeps every measurement as a row; at ten
million lines that is gigabytes of Python objects. Here the sources are cut into pieces (byte
ranges of a JSONL file, aligned to line ends; a gzip or single-document file is one piece),
each piece is loaded and classified by a worker process into a small frame, optionally written
as one Parquet file per piece (analysis.dask_engine reads the directory), and reduced
to its counts per (target, vantage, window) and blocking modes (analysis.compare.Partial).
Counts are sums, so the parent merges them as pieces finish; memory is bounded by the piece
size and by the number of distinct (target, vantage, window), not by the number of lines.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from analysis.compare import (
    DEFAULT_WINDOW,
    Comparison,
    Gates,
    Partial,
    from_partial,
    merge_partials,
    partial_counts,
)
from analysis.keywords import KeywordFindings, KeywordPartial
from analysis.keywords import from_partial as keyword_findings
from analysis.keywords import merge as merge_keywords
from analysis.keywords import partial as keyword_partial
from analysis.load import Filters, Loader, LoadError, iter_ooni_file, iter_store_file
from analysis.provenance import FindingLists, finding_lists, merge_finding_lists
from analysis.verdicts import VERDICT_COLUMNS, Classifier, default_classifier
from probes.store import LineProblem, ResultsStore

PIECE_BYTES = 64 * 1024 * 1024
# Merge the pending partial counts once this many rows have piled up, so the parent holds
# about one table of distinct (target, vantage, window) rather than one per piece.
MERGE_ROWS = 2_000_000


@dataclass(frozen=True)
class Piece:
    """Lines [start, end) in bytes of one file (end -1: the whole file, any format)."""

    index: int
    path: str
    start: int
    end: int
    vantage: str | None = None  # from the store layout; None for OONI files
    store: bool = False
    parquet: bool = False  # classified rows (analysis.parquet_input), not lines


@dataclass
class PieceResult:
    index: int
    lines: int
    rows: int
    partial: Partial
    problems: list[LineProblem]
    n_problems: int
    keywords: KeywordPartial | None = None
    lists: FindingLists = field(default_factory=FindingLists)  # provenance: the probes' lists


@dataclass
class Streamed:
    """The comparison plus what was read, skipped and why."""

    comparison: Comparison
    rows: int
    lines: int
    pieces: int
    problems: list[LineProblem] = field(default_factory=list)
    n_problems: int = 0
    keywords: KeywordFindings | None = None
    lists: FindingLists = field(default_factory=FindingLists)  # list hashes per finding key


def _is_jsonl(path: Path) -> bool:
    with open(path, "rb") as handle:
        head = handle.read(2)
        if head == b"\x1f\x8b":
            return False
        handle.seek(0)
        first = handle.readline()
    return first.lstrip().startswith(b"{") and first.rstrip().endswith(b"}")


def pieces(
    ooni: Sequence[Path],
    results: Sequence[Path] = (),
    filters: Filters | None = None,
    piece_bytes: int = PIECE_BYTES,
) -> list[Piece]:
    """Cut the sources into pieces of about `piece_bytes`, each starting at a line start."""
    out: list[Piece] = []
    f = filters or Filters()
    for root in results:
        if not Path(root).is_dir():
            raise LoadError(f"{root}: no such results directory")
        for path in ResultsStore(Path(root)).iter_report_files(
            since=f.since,
            until=f.until,
            vantages=set(f.vantages or ()) or None,
            test_names=set(f.test_names or ()) or None,
        ):
            vantage = path.parent.parent.name.removeprefix("vantage=")
            out.append(Piece(len(out), str(path), 0, -1, vantage, store=True))
    for path in ooni:
        path = Path(path)
        size = path.stat().st_size
        if size <= piece_bytes or not _is_jsonl(path):
            out.append(Piece(len(out), str(path), 0, -1))
            continue
        start = 0
        with open(path, "rb") as handle:
            while start < size:
                handle.seek(min(start + piece_bytes, size))
                handle.readline()  # move to the end of the line the cut fell in
                end = min(handle.tell(), size)
                out.append(Piece(len(out), str(path), start, end))
                start = end
    return out


class _Lines:
    """(line number within the piece, line) of a piece; `count` is every line read, blank ones
    too, so the next piece's numbers can be offset exactly."""

    def __init__(self, piece: Piece) -> None:
        self.piece = piece
        self.count = 0

    def __iter__(self) -> Iterator[tuple[int, bytes | dict[str, Any]]]:
        piece = self.piece
        path = Path(piece.path)
        if piece.store:
            for number, line in iter_store_file(path):
                self.count = number
                yield number, line
            return
        if piece.end < 0:
            for number, line in iter_ooni_file(path):
                self.count = number
                yield number, line
            return
        with open(path, "rb") as handle:
            handle.seek(piece.start)
            remaining = piece.end - piece.start
            for line in handle:
                if remaining <= 0:
                    break
                remaining -= len(line)
                self.count += 1
                if line.strip():
                    yield self.count, line


_CLASSIFIER: dict[str | None, Classifier] = {}


def _classifier(fingerprints: str | None) -> Classifier:
    """One classifier per worker process (fingerprint files are read once, not per piece)."""
    if fingerprints not in _CLASSIFIER:
        _CLASSIFIER[fingerprints] = default_classifier(Path(fingerprints) if fingerprints else None)
    return _CLASSIFIER[fingerprints]


def process_piece(
    piece: Piece,
    filters: Filters,
    fingerprints: str | None,
    window: str | None,
    parquet_dir: str | None,
) -> PieceResult:
    """Load + classify one piece, write it as Parquet if asked, return its partial counts."""
    loader = Loader(
        filters,
        classifier=_classifier(fingerprints),
        classifier_columns=VERDICT_COLUMNS,
        observations=False,
    )
    lines = _Lines(piece)
    loader._add_lines(Path(piece.path), lines, vantage=piece.vantage)
    loaded = loader.frames()
    frame = loaded.measurements
    if parquet_dir is not None and len(frame):
        from analysis.dask_engine import write_piece

        write_piece(frame, Path(parquet_dir) / f"piece-{piece.index:06d}.parquet")
    return PieceResult(
        piece.index,
        lines.count,
        len(frame),
        partial_counts(frame, window),
        loader.problems,
        loader.n_problems,
        keyword_partial(loaded.keyword_rows, loaded.isolations, window),
        finding_lists(frame),
    )


def _work(args: tuple[Piece, Filters, str | None, str | None, str | None]) -> PieceResult:
    return process_piece(*args)


def run_streamed(
    ooni: Sequence[Path],
    results: Sequence[Path] = (),
    filters: Filters | None = None,
    fingerprints: Path | None = None,
    *,
    window: str | None = DEFAULT_WINDOW,
    workers: int | None = None,
    parquet_dir: Path | None = None,
    piece_bytes: int = PIECE_BYTES,
    gates: Gates | None = None,
) -> Streamed:
    """Compare every measurement of the sources with `workers` processes (default: all cores).

    Problems keep exact file:line: a piece's line numbers are offset by the lines of the pieces
    before it in the same file. Parquet parts (with `parquet_dir`) keep `line` relative to
    their piece, whose index names the file (`piece-NNNNNN.parquet`).
    """
    filters = filters or Filters()
    todo = pieces(ooni, results, filters, piece_bytes)
    jobs = [
        (p, filters, str(fingerprints) if fingerprints else None, window, _str(parquet_dir))
        for p in todo
    ]
    workers = workers or os.cpu_count() or 1
    pending: list[Partial] = []
    keyword_parts: list[KeywordPartial] = []
    lists: list[FindingLists] = []
    pending_rows = 0
    rows = lines = n_problems = 0
    problems: list[LineProblem] = []
    line_base: dict[str, int] = {}

    def collect(result: PieceResult) -> None:
        nonlocal pending, pending_rows, rows, lines, n_problems
        piece = todo[result.index]
        base = line_base.get(piece.path, 0)
        line_base[piece.path] = base + result.lines
        for problem in result.problems:
            if len(problems) < Loader.MAX_PROBLEMS_KEPT:
                problems.append(LineProblem(problem.path, problem.line + base, problem.reason))
        n_problems += result.n_problems
        rows += result.rows
        lines += result.lines
        pending.append(result.partial)
        lists[:] = [merge_finding_lists([*lists, result.lists])]
        pending_rows += len(result.partial.counts)
        if result.keywords is not None:
            keyword_parts.append(result.keywords)
            pending_rows += len(result.keywords.counts)
        if pending_rows > MERGE_ROWS:
            pending = [merge_partials(pending)]
            keyword_parts[:] = [merge_keywords(keyword_parts)] if keyword_parts else []
            pending_rows = len(pending[0].counts) + sum(len(k.counts) for k in keyword_parts)

    if workers == 1 or len(jobs) == 1:
        for job in jobs:
            collect(_work(job))
    else:
        with get_context("spawn").Pool(workers) as pool:
            for result in pool.imap(_work, jobs):  # in order: line offsets need it
                collect(result)
    if not pending:
        empty = Loader(filters, classifier_columns=VERDICT_COLUMNS, observations=False).frames()
        pending.append(partial_counts(empty.measurements, window))
        keyword_parts.append(keyword_partial(empty.keyword_rows, empty.isolations, window))
    merged = merge_partials(pending)
    keywords = keyword_findings(merge_keywords(keyword_parts), gates)
    return Streamed(
        from_partial(merged, gates),
        rows,
        lines,
        len(todo),
        problems,
        n_problems,
        keywords,
        merge_finding_lists(lists),
    )


def _str(path: Path | None) -> str | None:
    return None if path is None else str(path)
