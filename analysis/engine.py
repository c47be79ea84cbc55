"""The distributed engine: load, classify and count as Dask tasks, from the raw lines on.

Each partition of the input (a store report file, a ~64 MB byte range of a JSONL file cut at
a line end, a gzip file of OONI's bucket) is one task: a worker reads it, decodes and
classifies each line (analysis.load + analysis.verdicts) and reduces its rows to mergeable
tables: compare's counts and blocking modes, the keyword counts, and the report's facts
(analysis.facts). The client merges these as tasks finish; no process ever holds every row.
`publish` runs on the same partitions (analysis.publish_engine): each task also spools its
rows and raw lines by output file, and a second stage of tasks writes each raw and Parquet file.

Where it runs: `scheduler="tcp://host:8786"` joins an existing cluster; otherwise a
LocalCluster of `workers` single-threaded processes (default: every core) when the input is
large, and the same task function in this process, partition after partition, when it is
small (`SMALL_BYTES`) or `workers` is 1. Every path gives the same tables, byte for byte.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from analysis.compare import (
    DEFAULT_WINDOW,
    Gates,
    Partial,
    from_partial,
    merge_partials,
    partial_counts,
)
from analysis.dask_engine import dask_client
from analysis.facts import Facts, facts_of, merge_facts
from analysis.keywords import KeywordPartial
from analysis.keywords import from_partial as keyword_findings
from analysis.keywords import merge as merge_keywords
from analysis.keywords import partial as keyword_partial
from analysis.load import Filters, Loaded, Loader
from analysis.parquet_input import combine, parquet_files, read_measurements
from analysis.stream import PIECE_BYTES, Piece, _classifier, _Lines, pieces
from analysis.verdicts import VERDICT_COLUMNS, describe_fingerprints
from probes.store import LineProblem

# Below this many bytes of input, starting a cluster costs more than it saves.
SMALL_BYTES = 256 * 1024 * 1024
# Merge pending partial counts once they hold this many rows (bounded client memory).
MERGE_ROWS = 2_000_000


@dataclass(frozen=True)
class Job:
    """What every partition's task needs besides its partition (small, pickled once a task)."""

    filters: Filters
    fingerprints: str | None
    window: str | None


@dataclass
class PartResult:
    """A partition reduced: counts and facts and its problems."""

    index: int
    lines: int
    rows: int
    sources: list[str]
    problems: list[LineProblem]
    n_problems: int
    partial: Partial
    keywords: KeywordPartial
    facts: Facts


@dataclass(frozen=True)
class Partition:
    """One task's input: a byte range of a large JSONL file, or whole files (store report
    files, gzip or small OONI files) together up to about the partition size."""

    index: int
    pieces: tuple[Piece, ...]


def partitions(todo: Sequence[Piece], size: int) -> list[Partition]:
    """Whole files grouped, in input order, until a group reaches `size` bytes; byte ranges
    alone (each already about `size`)."""
    out: list[Partition] = []
    group: list[Piece] = []
    total = 0
    for piece in todo:
        length = _piece_bytes(piece)
        mixed = bool(group) and group[-1].parquet != piece.parquet
        if piece.end >= 0 or mixed or (group and total + length > size):
            if group:
                out.append(Partition(len(out), tuple(group)))
            group, total = [], 0
        if piece.end >= 0:
            out.append(Partition(len(out), (piece,)))
            continue
        group.append(piece)
        total += length
    if group:
        out.append(Partition(len(out), tuple(group)))
    return out


def _piece_bytes(piece: Piece) -> int:
    return os.path.getsize(piece.path) if piece.end < 0 else piece.end - piece.start


def process_part(part: Partition, job: Job) -> PartResult:
    """Load + classify one partition and reduce it (runs on a worker)."""
    return reduce_part(part, job, *load_part(part, job))


def load_part(part: Partition, job: Job) -> tuple[Loaded, pd.DataFrame, int]:
    """Load + classify one partition: (what the loader made, its measurements with any Parquet
    rows, lines read of a byte range)."""
    loader = Loader(
        job.filters,
        classifier=_classifier(job.fingerprints),
        classifier_columns=VERDICT_COLUMNS,
        observations=False,
    )
    lines = 0
    parquet: list[pd.DataFrame] = []
    for piece in part.pieces:
        if piece.parquet:
            parquet.append(read_measurements(Path(piece.path), job.filters))
        elif piece.store:
            loader._add_lines(Path(piece.path), _Lines(piece), vantage=piece.vantage)
        elif piece.end < 0:
            # A whole file (gzip, a JSON document): numbered from its first line.
            loader.add_ooni(Path(piece.path))
        else:
            reader = _Lines(piece)
            loader._add_lines(Path(piece.path), reader, vantage=None)
            lines = reader.count
    loaded = loader.frames()
    frame = combine([loaded.measurements, *parquet]) if parquet else loaded.measurements
    return loaded, frame, lines


def reduce_part(
    part: Partition, job: Job, loaded: Loaded, frame: pd.DataFrame, lines: int
) -> PartResult:
    """A loaded partition as mergeable counts and facts."""
    result = PartResult(
        part.index,
        lines,
        len(frame),
        [*loaded.sources, *(p.path for p in part.pieces if p.parquet)],
        loaded.problems,
        loaded.n_problems,
        partial_counts(frame, job.window),
        keyword_partial(loaded.keyword_rows, loaded.isolations, job.window),
        facts_of(frame),
    )
    return result


@dataclass
class _Seen:
    """What the client keeps of a finished partition once its tables are merged."""

    lines: int
    rows: int
    sources: list[str]
    problems: list[LineProblem]
    n_problems: int


@dataclass
class _Reducer:
    """Merges partition results as they arrive; keeps per-partition line and row counts."""

    todo: list[Partition]
    pending: list[Partial] = field(default_factory=list)
    keywords: list[KeywordPartial] = field(default_factory=list)
    facts: list[Facts] = field(default_factory=list)
    results: dict[int, _Seen] = field(default_factory=dict)
    pending_rows: int = 0

    def add(self, result: PartResult) -> None:
        self.pending.append(result.partial)
        self.keywords.append(result.keywords)
        self.facts.append(result.facts)
        self.pending_rows += len(result.partial.counts) + len(result.keywords.counts)
        # Keep what the offsets and problems need; drop the tables (merged below).
        self.results[result.index] = _Seen(
            result.lines,
            result.rows,
            result.sources,
            result.problems[: Loader.MAX_PROBLEMS_KEPT],
            result.n_problems,
        )
        if self.pending_rows > MERGE_ROWS:
            self.pending = [merge_partials(self.pending)]
            self.keywords = [merge_keywords(self.keywords)]
            self.facts = [merge_facts(self.facts)]
            self.pending_rows = len(self.pending[0].counts) + len(self.keywords[0].counts)

    def offsets(self) -> tuple[dict[int, int], dict[int, int]]:
        """Per partition: rows of every partition before it, lines before it in its file."""
        rows: dict[int, int] = {}
        lines: dict[int, int] = {}
        row_base = 0
        line_base: dict[str, int] = {}
        for part in self.todo:
            result = self.results[part.index]
            if part.pieces[0].parquet:  # rows and lines as stored in the Parquet
                rows[part.index] = lines[part.index] = 0
                continue
            rows[part.index] = row_base
            row_base += result.rows
            path = part.pieces[0].path if part.pieces[0].end >= 0 else None
            if path is None:
                lines[part.index] = 0
                continue
            # A file given twice is read twice: its second reading is numbered from 1 again.
            base = 0 if part.pieces[0].start == 0 else line_base.get(path, 0)
            lines[part.index] = base
            line_base[path] = base + result.lines
        return rows, lines

    def loaded(self) -> Loaded:
        """Problems with exact file:line and the sources, in input order; no measurement row."""
        _, line_offsets = self.offsets()
        problems: list[LineProblem] = []
        n_problems = 0
        sources: list[str] = []
        for part in self.todo:
            result = self.results[part.index]
            n_problems += result.n_problems
            for problem in result.problems:
                if len(problems) < Loader.MAX_PROBLEMS_KEPT:
                    line = problem.line + line_offsets[part.index]
                    problems.append(LineProblem(problem.path, line, problem.reason))
            for source in result.sources:
                if not sources or sources[-1] != source:
                    sources.append(source)
        empty = Loader(Filters(), classifier_columns=VERDICT_COLUMNS, observations=False).frames()
        return Loaded(
            measurements=empty.measurements,
            observations=empty.observations,
            problems=problems,
            n_problems=n_problems,
            sources=sources,
            keyword_rows=empty.keyword_rows,
            isolations=empty.isolations,
        )


def _input_bytes(todo: Sequence[Partition]) -> int:
    return sum(_piece_bytes(piece) for part in todo for piece in part.pieces)


@dataclass(frozen=True)
class Plan:
    """The partitions of a run and what each task needs besides its partition."""

    todo: list[Partition]
    job: Job


def plan(
    results: Sequence[Path],
    ooni: Sequence[Path],
    filters: Filters,
    fingerprints: Path | None,
    window: str | None,
    piece_bytes: int = PIECE_BYTES,
    parquet: Sequence[Path] = (),
) -> Plan:
    """Cut the inputs into partitions (in input order: the in-process engine's row order)."""
    from analysis.ooni_bucket import ooni_files

    cut = pieces(list(ooni_files(list(ooni), filters)), results, filters, piece_bytes)
    cut += [
        Piece(len(cut) + i, str(path), 0, -1, parquet=True)
        for i, path in enumerate(parquet_files(list(parquet), filters))
    ]
    return Plan(
        partitions(cut, piece_bytes),
        Job(filters, str(fingerprints) if fingerprints else None, window),
    )


Mapper = Callable[..., Iterator[Any]]


@contextmanager
def tasks(
    todo: Sequence[Partition],
    scheduler: str | None,
    workers: int | None,
    processes: bool = True,
) -> Iterator[Mapper]:
    """`map(function, items, **shared)`: the results of `function(item, **shared)` as they
    finish, on the cluster at `scheduler`, on a LocalCluster, or here one after the other (small
    inputs, `workers` 1: see the module docstring). Every map of one run uses the same workers."""
    n_workers = workers or os.cpu_count() or 1
    local = scheduler is None and (
        n_workers == 1 or (workers is None and _input_bytes(todo) < SMALL_BYTES)
    )
    if local:

        def here(
            function: Callable[..., Any], items: Sequence[Any], **shared: Any
        ) -> Iterator[Any]:
            return (function(item, **shared) for item in items)

        yield here
        return
    from dask.distributed import as_completed

    with dask_client(scheduler, n_workers, processes) as client:

        def there(
            function: Callable[..., Any], items: Sequence[Any], **shared: Any
        ) -> Iterator[Any]:
            futures = client.map(function, list(items), pure=False, **shared)
            for future in as_completed(futures):
                yield future.result()
                future.release()

        yield there


def run_engine(
    results: Sequence[Path],
    ooni: Sequence[Path],
    filters: Filters,
    fingerprints: Path | None,
    *,
    window: str | None = DEFAULT_WINDOW,
    gates: Gates | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
    piece_bytes: int = PIECE_BYTES,
    processes: bool = True,
    parquet: Sequence[Path] = (),
) -> Any:
    """Load, classify and compare as Dask tasks; returns an analysis.pipeline.Analysis.

    `workers`: LocalCluster size (default: every core; 1 runs in this process); ignored with
    `scheduler`. `processes=False` runs the LocalCluster's workers as threads (tests).
    """
    run = plan(results, ooni, filters, fingerprints, window, piece_bytes, parquet)
    reducer = _Reducer(run.todo)
    with tasks(run.todo, scheduler, workers, processes) as map_tasks:
        for result in map_tasks(process_part, run.todo, job=run.job):
            reducer.add(result)
    return analysis_of(reducer, run.job, gates)


def analysis_of(reducer: _Reducer, job: Job, gates: Gates | None) -> Any:
    """The merged partitions as an analysis.pipeline.Analysis (no measurement rows)."""
    from analysis.pipeline import Analysis

    window = job.window
    partial = merge_partials(reducer.pending or [_empty_partial(window)])
    keyword_part = merge_keywords(reducer.keywords or [_empty_keywords(window)])
    return Analysis(
        reducer.loaded(),
        from_partial(partial, gates),
        gates,
        describe_fingerprints(_classifier(job.fingerprints)),
        keyword_findings(keyword_part, gates),
        window,
        merge_facts(reducer.facts),
        keyword_part,
    )


def _empty_partial(window: str | None) -> Partial:
    empty = Loader(Filters(), classifier_columns=VERDICT_COLUMNS, observations=False).frames()
    return partial_counts(empty.measurements, window)


def _empty_keywords(window: str | None) -> KeywordPartial:
    empty = Loader(Filters(), classifier_columns=VERDICT_COLUMNS, observations=False).frames()
    return keyword_partial(empty.keyword_rows, empty.isolations, window)
