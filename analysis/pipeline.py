"""From sources to tables: load + re-derive verdicts, then compare (pandas or Dask).

The glue the `analyze`, `report` and `publish` commands share, so each command only chooses
what to write.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from analysis.compare import DEFAULT_WINDOW, Comparison, Gates, compare
from analysis.keywords import KeywordFindings, findings_of, findings_on_dask
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
    loaded: Loaded
    comparison: Comparison
    gates: Gates | None = None  # the finding gates used; publish recomputes with the same
    fingerprints_used: str = "none"  # analysis.verdicts.describe_fingerprints
    keywords: KeywordFindings | None = None  # per keyword, placement/channel (analysis.keywords)
    window: str | None = DEFAULT_WINDOW


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
    workers: int = 2,
    observations: bool = False,
    gates: Gates | None = None,
) -> Analysis:
    """Load, classify and compare; with engine "dask" the comparison runs over Parquet.

    The observations frame (one row per DNS answer, connect, handshake, response) is built only
    when asked: no command writes it, and it costs as much as the verdicts.
    """
    classifier = default_classifier(fingerprints)
    used = describe_fingerprints(classifier)
    loaded = load_classified(
        results, ooni, filters, fingerprints, observations=observations, classifier=classifier
    )
    if engine == "pandas":
        comparison = compare(loaded.measurements, window, gates)
        keywords = findings_of(loaded.keyword_rows, loaded.isolations, window, gates)
        return Analysis(loaded, comparison, gates, used, keywords, window)
    if engine != "dask":
        raise ValueError(f"unknown engine {engine!r} (use one of {', '.join(ENGINES)})")
    from analysis.dask_engine import compare_parquet, local_cluster, write_partitioned

    with tempfile.TemporaryDirectory(prefix="censorscope-dask-") as tmp:
        write_partitioned(loaded.measurements, Path(tmp))
        with local_cluster(workers):
            comparison = compare_parquet(Path(tmp), window, gates)
            keywords = findings_on_dask(
                loaded.keyword_rows, loaded.isolations, window, gates, workers
            )
    return Analysis(loaded, comparison, gates, used, keywords, window)
