"""What the report says about the measurements, as mergeable counts.

The report (period, vantages, the heatmap's state per input x vantage, the disagreements
table, late arrivals and the probes' list hashes) used to read every measurement row. Each of
those is a sum, a minimum, a maximum or a set union, so a worker reduces its partition of the
measurements to `Facts` and the parent merges them (`merge_facts`): `report` then needs no
measurement row in one process, and the in-process engine takes the same path over one
partition (so the engines write the same bytes). publish takes the same facts of the rows it
publishes (analysis.publish_engine: per output partition).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from analysis import compare as cmp
from analysis.provenance import FindingLists, finding_lists, merge_finding_lists
from analysis.verdicts import PROBE_EVIDENCE

CELL_KEYS = ["target", "vantage", "blocking"]
CELL_COUNTS = ["blocked", "ok", "down"]
DISAGREEMENT_KEYS = ["test_name", "orig_blocking", "blocking", "disagreement"]


@dataclass
class Facts:
    """Counts, extremes and sets of some measurements; merged by `merge_facts`."""

    n: int = 0
    time_min: pd.Timestamp | None = None
    time_max: pd.Timestamp | None = None
    vantages: frozenset[str] = frozenset()
    tests: frozenset[str] = frozenset()
    # per (target, vantage, blocking type or NA): blocked, ok and down measurements
    cells: pd.DataFrame = field(default_factory=lambda: _empty(CELL_KEYS, CELL_COUNTS))
    # per (test, probe's verdict, ours, reason) with nulls as "null": disagreeing measurements
    disagreements: pd.DataFrame = field(default_factory=lambda: _empty(DISAGREEMENT_KEYS, ["n"]))
    probe_evidence: int = 0  # verdicts resting on a fingerprint only the probe matched
    kept_fingerprints: Counter[str] = field(default_factory=Counter)  # their names
    matched: int = 0  # measurements that matched a fingerprint
    disagree: int = 0  # measurements whose verdict differs from the probe's
    late: int = 0  # arrived more than bulk.LATE_AFTER after they were made (the report's)
    probe_lists: frozenset[str] = frozenset()  # list hashes the probes recorded (provenance)
    # the same per finding key (analysis.provenance.stamp's `probe_lists` column)
    finding_lists: FindingLists = field(default_factory=FindingLists)


def _empty(keys: list[str], counts: list[str]) -> pd.DataFrame:
    return pd.DataFrame(
        {**{k: pd.Series([], dtype=object) for k in keys}, **{c: [] for c in counts}}
    ).astype(dict.fromkeys(counts, "int64"))


def facts_of(frame: pd.DataFrame) -> Facts:
    """The facts of one partition of measurements (with verdict columns)."""
    time = frame["time"].dropna()
    prepared = cmp.prepare(frame, None)
    cells = (
        prepared[[*CELL_KEYS, *CELL_COUNTS]]
        .astype(dict.fromkeys(CELL_KEYS, object))
        .assign(blocking=prepared["blocking"].astype(object).where(prepared["blocked"] == 1))
        .groupby(CELL_KEYS, dropna=False)[CELL_COUNTS]
        .sum()
        .reset_index()
    )
    differs = frame[frame["disagreement"].notna()] if "disagreement" in frame else frame.iloc[:0]
    disagreements = (
        differs[DISAGREEMENT_KEYS]
        .astype(object)
        .fillna("null")
        .groupby(DISAGREEMENT_KEYS)
        .size()
        .rename("n")
        .reset_index()
        if len(differs)
        else _empty(DISAGREEMENT_KEYS, ["n"])
    )
    source = frame["verdict_source"] if "verdict_source" in frame else pd.Series(dtype=object)
    evidence = source == PROBE_EVIDENCE
    kept = frame.loc[evidence, "blocking_fingerprint"].dropna() if evidence.any() else []
    from analysis.bulk import arrivals, late
    from analysis.provenance import probe_lists

    n_late = int(late(frame, arrivals(frame)).sum()) if len(frame) and "source" in frame else 0
    return Facts(
        n=len(frame),
        time_min=time.min() if len(time) else None,
        time_max=time.max() if len(time) else None,
        vantages=frozenset(str(v) for v in frame["vantage"].dropna().unique()),
        tests=frozenset(str(t) for t in frame["test_name"].dropna().unique()),
        cells=cells,
        disagreements=disagreements,
        probe_evidence=int(evidence.sum()),
        kept_fingerprints=Counter(str(name) for name in kept),
        matched=int(frame["fingerprints"].notna().sum()) if "fingerprints" in frame else 0,
        disagree=len(differs),
        late=n_late,
        probe_lists=frozenset(probe_lists(frame)),
        finding_lists=finding_lists(frame),
    )


def _extreme(values: list[pd.Timestamp | None], last: bool) -> pd.Timestamp | None:
    present = sorted(v for v in values if v is not None)
    return (present[-1] if last else present[0]) if present else None


def merge_facts(parts: list[Facts]) -> Facts:
    """The facts of the union of the partitions (equal to `facts_of` on all rows at once)."""
    if not parts:
        return Facts()
    cells = pd.concat([p.cells for p in parts], ignore_index=True)
    cells = cells.groupby(CELL_KEYS, dropna=False)[CELL_COUNTS].sum().reset_index()
    disagreements = pd.concat([p.disagreements for p in parts], ignore_index=True)
    disagreements = disagreements.groupby(DISAGREEMENT_KEYS)["n"].sum().reset_index()
    kept: Counter[str] = Counter()
    for part in parts:
        kept.update(part.kept_fingerprints)
    return Facts(
        n=sum(p.n for p in parts),
        time_min=_extreme([p.time_min for p in parts], last=False),
        time_max=_extreme([p.time_max for p in parts], last=True),
        vantages=frozenset().union(*(p.vantages for p in parts)),
        tests=frozenset().union(*(p.tests for p in parts)),
        cells=cells,
        disagreements=disagreements,
        probe_evidence=sum(p.probe_evidence for p in parts),
        kept_fingerprints=kept,
        matched=sum(p.matched for p in parts),
        disagree=sum(p.disagree for p in parts),
        late=sum(p.late for p in parts),
        probe_lists=frozenset().union(*(p.probe_lists for p in parts)),
        finding_lists=merge_finding_lists(p.finding_lists for p in parts),
    )


def period(facts: Facts) -> str | None:
    """First to last day measured, or None without timestamps."""
    if facts.time_min is None or facts.time_max is None:
        return None
    return f"{facts.time_min:%Y-%m-%d} to {facts.time_max:%Y-%m-%d}"


def cell_states(facts: Facts, known: set[str], share: float = cmp.BLOCKED_SHARE) -> pd.DataFrame:
    """(target x vantage) -> the state to colour: the dominant blocking type (ties: the first
    in sorted order; one not in `known` is "other"), else accessible, down or inconclusive."""
    columns = ["target", "vantage", "state"]
    cells = facts.cells
    cells = cells[cells["target"].notna() & cells["vantage"].notna()]
    if cells.empty:
        return pd.DataFrame([], columns=columns)
    totals = cells.groupby(["target", "vantage"], sort=True)[CELL_COUNTS].sum()
    blocked = cells[cells["blocked"] > 0].sort_values(
        ["target", "vantage", "blocked", "blocking"], ascending=[True, True, False, True]
    )
    top = blocked.drop_duplicates(["target", "vantage"]).set_index(["target", "vantage"])
    # One pass over the columns: a lookup per cell (.loc on the MultiIndex) took 1.1 ms, most
    # of `report`'s time on a store of many inputs.
    kinds = top["blocking"].astype(object).map(str).rename("_kind")
    cell = totals.join(kinds, how="left")
    blocked_n, ok_n = cell["blocked"].to_numpy(), cell["ok"].to_numpy()
    decisive = blocked_n + ok_n
    with np.errstate(divide="ignore", invalid="ignore"):
        dominant = (blocked_n > 0) & (blocked_n / decisive >= share)  # share 0: not all
    kind = cell["_kind"].map(lambda k: k if k in known else "other").to_numpy(dtype=object)
    state = np.select(
        [dominant, decisive > 0, cell["down"].to_numpy() != 0],
        [kind, "accessible", "down"],
        default="inconclusive",
    )
    targets, vantages = zip(*cell.index.tolist(), strict=True)
    return pd.DataFrame(
        {"target": list(targets), "vantage": list(vantages), "state": state.tolist()},
        columns=columns,
    )


def disagreement_table(facts: Facts) -> pd.DataFrame:
    """Disagreeing measurements grouped by reason, most frequent first."""
    table = facts.disagreements
    return table.sort_values(
        ["n", *DISAGREEMENT_KEYS], ascending=[False, True, True, True, True], ignore_index=True
    )[[*DISAGREEMENT_KEYS, "n"]]
