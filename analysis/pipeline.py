"""From sources to tables: load + re-derive verdicts, then compare (pandas or Dask).

The glue the `analyze`, `report` and `publish` commands share, so each command only chooses
what to write.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from analysis.compare import DEFAULT_WINDOW, Comparison, Gates, compare
from analysis.facts import Facts, facts_of
from analysis.keywords import KeywordFindings, KeywordPartial, findings_of
from analysis.load import Filters, Loaded, load
from analysis.verdicts import (
    VERDICT_COLUMNS,
    Classifier,
    default_classifier,
    describe_fingerprints,
)

ENGINES = ("pandas", "dask")


@dataclass
class Analysis:
    """What analyze, report and publish use. `loaded.measurements` holds every row only for
    the in-process engine; report reads `facts`, the comparison and the keyword tables
    (merged counts), so the distributed engine (analysis.engine) leaves it empty. publish on
    that engine writes the rows from its workers (analysis.publish_engine)."""

    loaded: Loaded
    comparison: Comparison
    gates: Gates | None = None  # the finding gates used; publish recomputes with the same
    fingerprints_used: str = "none"  # analysis.verdicts.describe_fingerprints
    keywords: KeywordFindings | None = None  # per keyword, placement/channel (analysis.keywords)
    window: str | None = DEFAULT_WINDOW
    facts: Facts = field(default_factory=Facts)  # analysis.facts: for the report and the card
    keyword_partial: KeywordPartial | None = None  # the merged keyword counts


def load_classified(
    results: Sequence[Path],
    ooni: Sequence[Path],
    filters: Filters,
    fingerprints: Path | None,
    *,
    observations: bool = True,
    classifier: Classifier | None = None,
) -> Loaded:
    classifier = classifier or default_classifier(fingerprints)
    return load(
        results,
        ooni,
        filters,
        classifier=classifier,
        classifier_columns=VERDICT_COLUMNS,
        observations=observations,
    )


def run(
    results: Sequence[Path],
    ooni: Sequence[Path],
    filters: Filters,
    fingerprints: Path | None,
    *,
    engine: str = "pandas",
    window: str | None = DEFAULT_WINDOW,
    workers: int | None = None,
    observations: bool = False,
    gates: Gates | None = None,
    scheduler: str | None = None,
    parquet: Sequence[Path] = (),
) -> Analysis:
    """Load, classify and compare: in one process (pandas), or as Dask tasks (analysis.engine:
    partitions loaded and classified on the workers, reduced to mergeable counts).

    The observations frame (one row per DNS answer, connect, handshake, response) is built only
    when asked, by the pandas engine: no command writes it, and it costs as much as the
    verdicts.
    """
    if engine == "dask":
        from analysis.engine import run_engine

        return run_engine(
            results,
            ooni,
            filters,
            fingerprints,
            window=window,
            gates=gates,
            workers=workers,
            scheduler=scheduler,
            parquet=parquet,
        )
    if engine != "pandas":
        raise ValueError(f"unknown engine {engine!r} (use one of {', '.join(ENGINES)})")
    classifier = default_classifier(fingerprints)
    used = describe_fingerprints(classifier)
    loaded = load_classified(
        results, ooni, filters, fingerprints, observations=observations, classifier=classifier
    )
    if parquet:
        from analysis.parquet_input import combine, parquet_files, read_measurements

        files = list(parquet_files(parquet, filters))
        frames = [read_measurements(path, filters) for path in files]
        loaded.measurements = combine([loaded.measurements, *frames])
        loaded.sources += [str(path) for path in files]
    comparison = compare(loaded.measurements, window, gates)
    keywords = findings_of(loaded.keyword_rows, loaded.isolations, window, gates)
    facts = facts_of(loaded.measurements)
    return Analysis(loaded, comparison, gates, used, keywords, window, facts)
