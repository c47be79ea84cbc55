"""Compare vantages: rates with confidence intervals, tests of difference, findings, change points.

Engine-neutral by construction: the only step that touches every measurement is `count` (a
group-by sum of indicator columns), which pandas and Dask DataFrames both run; everything after
it works on the small table of counts per (target, vantage, window), in pandas.

Statuses of one measurement (from our re-derived `blocking`, see analysis.verdicts):
blocked (a blocking type), ok (`false` and the site was up), down (`false` because the site is
down at the vantage and at the control), inconclusive (null). Rates are blocked / decisive,
where decisive = blocked + ok: down and inconclusive say nothing about censorship.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

# Two-sided 95% intervals; Wilson's score interval (Wilson 1927) because it keeps its coverage
# for the small n and rates near 0 or 1 that censorship data is full of, where the Wald
# interval fails (Brown, Cai & DasGupta 2001, "Interval Estimation for a Binomial Proportion").
CONFIDENCE = 0.95
# Benjamini-Hochberg false discovery rate over every (input, vantage) test (Benjamini &
# Hochberg 1995); 5% is the conventional level.
FDR_ALPHA = 0.05
# A vantage blocks an input when at least half of its decisive measurements are blocked: the
# majority rule OONI Explorer's MAT uses for "confirmed/anomaly" shares is a comparable choice;
# a lower share is reported as a rate but not called blocking.
BLOCKED_SHARE = 0.5
# Change points: a state must hold for this many consecutive windows with data before it counts,
# so one flaky measurement day does not start or stop "blocking" (ooni/data's event detector
# uses a similar minimum duration before it opens or closes an event).
MIN_RUN_WINDOWS = 2
DEFAULT_WINDOW = "D"
# Gates a vantage's rate must pass before `findings` calls a target blocked there (issue 14).
# Fewer decisive measurements than this are never a finding: with 1 or 2, one flaky network
# path or one mis-set resolver is indistinguishable from a censor, and the Wilson interval of
# 1/1 (0.21-1.0) or 2/2 (0.34-1.0) still reaches below BLOCKED_SHARE. 3 is the smallest n at
# which an all-blocked vantage's interval (0.44-1.0) and an all-ok one's (0-0.56) can be told
# apart from each other, and OONI's MAT likewise counts repeated anomalies before "confirmed".
MIN_MEASUREMENTS = 3
# Gate names recorded in `vantages.gates` / `findings.gates`.
GATE_SHARE = "share"  # rate >= BLOCKED_SHARE
GATE_N = "n"  # decisive >= MIN_MEASUREMENTS
GATE_Q = "q"  # Benjamini-Hochberg q-value < FDR_ALPHA
GATE_WILSON = "wilson"  # Wilson lower bound above the most open other vantage's upper bound


@dataclass(frozen=True)
class Gates:
    """The thresholds of a finding; `censorscope analyze` exposes each as an option."""

    min_measurements: int = MIN_MEASUREMENTS
    fdr_alpha: float = FDR_ALPHA
    blocked_share: float = BLOCKED_SHARE


GROUP = ["target", "test_name", "vantage", "window"]
PAIR = ["target", "test_name"]
# `disagree`: measurements whose re-derived verdict differs from the probe's (analysis.verdicts)
COUNTS = ["n", "blocked", "ok", "down", "inconclusive", "disagree"]


def _target(frame: pd.DataFrame) -> pd.Series:
    """What a finding is about: the input, or keyword [placement/channel] for keyword tests."""
    keyword = frame["keyword"].astype("string")
    where = frame["placement"].astype("string").fillna(frame["channel"].astype("string"))
    with_where = keyword + " [" + where.fillna("") + "]"
    keyed = with_where.where(where.notna(), keyword)
    fallback = frame["input"].astype("string").fillna(frame["test_name"].astype("string"))
    return keyed.fillna(fallback)


def prepare(frame: pd.DataFrame, window: str | None = DEFAULT_WINDOW) -> pd.DataFrame:
    """Indicator columns for counting; a pandas partition in, a pandas partition out."""
    blocking = frame["blocking"].astype("string")
    down = frame["down"].astype("bool") if "down" in frame else False
    disagree = frame["disagreement"].notna().astype("int64") if "disagreement" in frame else 0
    out = pd.DataFrame(
        {
            "target": _target(frame),
            "test_name": frame["test_name"].astype("string"),
            "vantage": frame["vantage"].astype("string"),
            "window": (
                frame["time"].dt.floor(window)
                if window
                else pd.Series(pd.NaT, index=frame.index, dtype=frame["time"].dtype)
            ),
            "n": 1,
            "blocked": (blocking.notna() & (blocking != "false")).astype("int64"),
            "ok": ((blocking == "false") & ~down).fillna(False).astype("int64"),
            "down": ((blocking == "false") & down).fillna(False).astype("int64"),
            "inconclusive": blocking.isna().astype("int64"),
            "disagree": disagree,
            "blocking": blocking,
            "blocking_detail": frame["blocking_detail"].astype("string"),
            "blocking_fingerprint": frame["blocking_fingerprint"].astype("string"),
        },
        index=frame.index,
    )
    return out


def count(prepared: Any) -> pd.DataFrame:
    """Counts per (target, vantage, window); accepts a pandas or a Dask DataFrame."""
    grouped = prepared[[*GROUP, *COUNTS]].groupby(GROUP, dropna=False).sum()
    if hasattr(grouped, "compute"):
        grouped = grouped.compute()
    return grouped.reset_index().sort_values(GROUP, na_position="first", ignore_index=True)


def blocking_modes(prepared: Any) -> pd.DataFrame:
    """How often each (type, detail, fingerprint) explains a blocked measurement, per target."""
    blocked = prepared[prepared["blocked"] == 1]
    keys = [*PAIR, "blocking", "blocking_detail", "blocking_fingerprint"]
    grouped = blocked[[*keys, "n"]].groupby(keys, dropna=False).sum()
    if hasattr(grouped, "compute"):
        grouped = grouped.compute()
    return grouped.reset_index()


def wilson(successes: np.ndarray, n: np.ndarray, confidence: float = CONFIDENCE) -> tuple[Any, Any]:
    """Wilson score interval, vectorised; NaN where n is 0."""
    from scipy.stats import norm

    z = norm.ppf(0.5 + confidence / 2)
    successes = np.asarray(successes, dtype=float)
    n = np.asarray(n, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = successes / n
        denom = 1 + z * z / n
        centre = (p + z * z / (2 * n)) / denom
        half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return np.clip(centre - half, 0, 1), np.clip(centre + half, 0, 1)


def rates(counts: pd.DataFrame) -> pd.DataFrame:
    """Add decisive, rate and its Wilson interval to a counts table."""
    out = counts.copy()
    out["decisive"] = out["blocked"] + out["ok"]
    with np.errstate(invalid="ignore", divide="ignore"):
        out["rate"] = out["blocked"] / out["decisive"].replace(0, np.nan)
    low, high = wilson(out["blocked"].to_numpy(), out["decisive"].to_numpy())
    out["rate_low"], out["rate_high"] = low, high
    return out


def per_vantage(counts: pd.DataFrame, gates: Gates | None = None) -> pd.DataFrame:
    """Whole-period rates per (target, test, vantage), a one-vs-rest Fisher test (BH-corrected)
    and the gates of a finding.

    Fisher's exact test (scipy.stats.fisher_exact, two-sided) on the 2x2 table
    [[blocked, ok] at this vantage, [blocked, ok] at every other vantage of the same nettest]:
    exact for the small counts of a measurement campaign, where a chi-squared approximation is
    not. Each nettest is tested apart: a web_connectivity block and a tcp_connect success of
    one URL are different evidence, and pooling them let one measurement make a finding.

    `blocks` is true only when every gate passes (`gates` lists those that did); a vantage whose
    share reaches `blocked_share` but fails another gate is `suggestive`, never a finding.
    """
    from scipy.stats import false_discovery_control, fisher_exact

    gates = gates or Gates()
    keys = [*PAIR, "vantage"]
    whole = counts.groupby(keys, dropna=False)[COUNTS].sum().reset_index()
    whole = rates(whole)
    pair = whole.groupby(PAIR, dropna=False)
    totals = pair[["blocked", "ok"]].transform("sum")
    n_vantages = pair["vantage"].transform("size")
    p_values = np.full(len(whole), np.nan)
    # Many (input, vantage) pairs share the same 2x2 table (all ok, all blocked at one
    # vantage...); fisher_exact costs ~100 us, so each distinct table is tested once.
    tested_tables: dict[tuple[int, int, int, int], float] = {}
    for i, (b, o, tb, to, nv) in enumerate(
        zip(
            whole["blocked"],
            whole["ok"],
            totals["blocked"],
            totals["ok"],
            n_vantages,
            strict=True,
        )
    ):
        rest_b, rest_o = tb - b, to - o
        if nv < 2 or (b + o) == 0 or (rest_b + rest_o) == 0:
            continue
        table = (int(b), int(o), int(rest_b), int(rest_o))
        p_value = tested_tables.get(table)
        if p_value is None:
            p_value = tested_tables[table] = float(fisher_exact([[b, o], [rest_b, rest_o]]).pvalue)
        p_values[i] = p_value
    whole["p_value"] = p_values
    q = np.full(len(whole), np.nan)
    tested = ~np.isnan(p_values)
    if tested.any():
        q[tested] = false_discovery_control(p_values[tested], method="bh")
    whole["q_value"] = q
    whole["significant"] = whole["q_value"] < gates.fdr_alpha
    # The open vantage of a (target, test): the other decisive vantage with the lowest rate;
    # its Wilson upper bound is what this vantage's lower bound must clear.
    # Vectorised: rank the decisive vantages of each pair by (rate, upper bound); the open
    # vantage of the most open one is the second, of every other one the first.
    pair_id = whole.groupby(PAIR, dropna=False, sort=False).ngroup().to_numpy()
    ranked = whole.assign(_pair=pair_id)[whole["decisive"] > 0].sort_values(
        ["_pair", "rate", "rate_high"], kind="stable"
    )
    rank = ranked.groupby("_pair").cumcount().to_numpy()
    first = ranked[rank == 0].set_index("_pair")
    second = ranked[rank == 1].set_index("_pair")["rate_high"]
    first_high = first["rate_high"].reindex(pair_id).to_numpy(dtype=float)
    second_high = second.reindex(pair_id).to_numpy(dtype=float)
    first_row = pd.Series(ranked.index[rank == 0], index=first.index).reindex(pair_id)
    is_first = first_row.to_numpy() == np.arange(len(whole))
    open_high = np.where(is_first, second_high, first_high)
    whole["open_rate_high"] = open_high
    share = (whole["decisive"] > 0) & (whole["rate"] >= gates.blocked_share)
    passed = {
        GATE_SHARE: share,
        GATE_N: whole["decisive"] >= gates.min_measurements,
        GATE_Q: whole["significant"].astype(bool),
        GATE_WILSON: (whole["rate_low"] > whole["open_rate_high"]).fillna(False).astype(bool),
    }
    whole["gates"] = pd.Series(
        [
            ";".join(name for name, ok in zip(passed, row, strict=True) if ok) or None
            for row in zip(*(v.to_numpy(dtype=bool) for v in passed.values()), strict=True)
        ],
        index=whole.index,
        dtype="string",
    )
    every = np.logical_and.reduce([v.to_numpy(dtype=bool) for v in passed.values()])
    whole["blocks"] = every
    whole["suggestive"] = share.to_numpy(dtype=bool) & ~every
    return whole.sort_values(keys, ignore_index=True)


def _missed(passed: Any) -> str:
    """Why a suggestive vantage is not a finding: the gates it missed."""
    have = set(str(passed).split(";")) if isinstance(passed, str) else set()
    return ",".join(g for g in (GATE_N, GATE_Q, GATE_WILSON) if g not in have)


def findings(vantages: pd.DataFrame, modes: pd.DataFrame) -> pd.DataFrame:
    """One finding per (target, nettest) from its per-vantage rates and its blocking modes.

    Vectorised (group-by aggregates, one pass over the blocking rows): a Python loop over
    pandas groups cost ~1 ms per target, which dominated the whole analysis at 5,000 inputs.
    A vantage whose share reaches the threshold but which misses another gate makes the finding
    `suggestive at V (missed: gates)` when no vantage passes them all.
    """
    if vantages.empty:
        return pd.DataFrame()
    key = pd.MultiIndex.from_frame(vantages[PAIR].astype(object).fillna("<NA>"))
    grouped = vantages.groupby(key, sort=True)
    agg = pd.DataFrame(
        {
            "vantages": grouped.size(),
            "n": grouped["n"].sum(),
            "blocked": grouped["blocked"].sum(),
            "inconclusive": grouped["inconclusive"].sum(),
            "disagree": grouped["disagree"].sum(),
            "down": grouped["down"].sum(),
            "decisive": grouped["decisive"].sum(),
            "accessible": (
                pd.Series(
                    (
                        vantages["decisive"].gt(0) & ~vantages["blocks"] & ~vantages["suggestive"]
                    ).to_numpy(),
                    index=key,
                )
                .groupby(level=[0, 1], sort=True)
                .all()
            ),
            "min_q_value": grouped["q_value"].min(),
            "significant": grouped["significant"].any(),
        }
    )
    at: dict[Any, list[str]] = {}
    maybe: dict[Any, list[str]] = {}
    gates_at: dict[Any, list[str]] = {}
    blocks = vantages["blocks"].to_numpy(dtype=bool)
    suggestive = vantages["suggestive"].to_numpy(dtype=bool)
    vantage = vantages["vantage"].astype(str).to_numpy(dtype=object)
    passed = vantages["gates"].to_numpy(dtype=object)
    for i in np.flatnonzero(blocks):
        at.setdefault(key[i], []).append(vantage[i])
        gates_at.setdefault(key[i], []).append(f"{vantage[i]}: {passed[i]}")
    for i in np.flatnonzero(suggestive):
        missing = _missed(passed[i])
        maybe.setdefault(key[i], []).append(f"{vantage[i]} (missed: {missing})")
    blocked_at = [sorted(at.get(k, ())) for k in agg.index]
    suggest = [sorted(maybe.get(k, ())) for k in agg.index]
    has_block = np.array([bool(b) for b in blocked_at], dtype=bool)
    finding = np.where(
        has_block,
        ["blocked at " + ", ".join(b) for b in blocked_at],
        np.where(
            [bool(s) for s in suggest],
            ["suggestive at " + ", ".join(s) for s in suggest],
            np.where(
                (agg["down"] > 0) & (agg["decisive"] == 0),
                "down everywhere",
                np.where(agg["accessible"], "accessible everywhere", "inconclusive"),
            ),
        ),
    )
    mode_key = modes[PAIR].astype(object).fillna("<NA>")
    best = (
        modes.assign(_t=mode_key["target"], _n=mode_key["test_name"])
        .sort_values(
            ["_t", "_n", "n", "blocking", "blocking_detail"],
            ascending=[True, True, False, True, True],
        )
        .drop_duplicates(["_t", "_n"])
        .set_index(["_t", "_n"])
        .reindex(agg.index)
    )
    keep = pd.Series(has_block, index=agg.index)
    out = pd.DataFrame(
        {
            "target": [t for t, _ in agg.index],
            "test_name": [None if n == "<NA>" else n for _, n in agg.index],
            "finding": finding.tolist(),
            "blocked_at": [";".join(b) or None for b in blocked_at],
            "gates": ["; ".join(sorted(gates_at.get(k, ()))) or None for k in agg.index],
            "vantages": agg["vantages"].to_numpy(dtype="int64"),
            "n": agg["n"].to_numpy(dtype="int64"),
            "blocked": agg["blocked"].to_numpy(dtype="int64"),
            "inconclusive": agg["inconclusive"].to_numpy(dtype="int64"),
            "disagreements": agg["disagree"].to_numpy(dtype="int64"),
            "blocking_type": best["blocking"].where(keep).tolist(),
            "blocking_detail": best["blocking_detail"].where(keep).tolist(),
            "blocking_fingerprint": best["blocking_fingerprint"].where(keep).tolist(),
            "min_q_value": agg["min_q_value"].to_numpy(dtype=float),
            "significant": agg["significant"].to_numpy(dtype=bool),
        }
    )
    for name in (
        "test_name",
        "blocked_at",
        "gates",
        "blocking_type",
        "blocking_detail",
        "blocking_fingerprint",
    ):
        out[name] = out[name].astype("string")
    return out


def change_points(counts: pd.DataFrame, min_run: int = MIN_RUN_WINDOWS) -> pd.DataFrame:
    """Periods of blocking and of access per (target, vantage), and when each starts.

    Each window with decisive measurements is "blocked" (share >= BLOCKED_SHARE) or
    "accessible". Runs shorter than `min_run` windows are dropped as noise and the neighbours
    they separated are joined; each remaining run is a period, and every period after the first
    is a change point (`event` "start" or "stop" of blocking). Run-length encoding on sorted
    arrays, so the cost is one sort, not a Python loop per (target, vantage).
    """
    columns = ["target", "test_name", "vantage", "state", "start", "end", "windows", "event"]
    timed = rates(counts[counts["window"].notna()])
    timed = timed[(timed["decisive"] > 0) & timed["target"].notna() & timed["vantage"].notna()]
    if timed.empty:
        return pd.DataFrame([], columns=columns)
    timed = timed.sort_values(
        ["target", "test_name", "vantage", "window"], kind="stable", ignore_index=True
    )
    target = timed["target"].to_numpy(dtype=object)
    test = timed["test_name"].astype(object).fillna("").to_numpy(dtype=object)
    vantage = timed["vantage"].to_numpy(dtype=object)
    blocked = (timed["rate"] >= BLOCKED_SHARE).to_numpy(dtype=bool)
    new_pair = np.ones(len(timed), dtype=bool)
    new_pair[1:] = (
        (target[1:] != target[:-1]) | (test[1:] != test[:-1]) | (vantage[1:] != vantage[:-1])
    )
    # runs of one state within a pair
    run_start = new_pair.copy()
    run_start[1:] |= blocked[1:] != blocked[:-1]
    starts = np.flatnonzero(run_start)
    ends = np.append(starts[1:], len(timed)) - 1
    lengths = ends - starts + 1
    kept = lengths >= min_run
    starts, ends, lengths = starts[kept], ends[kept], lengths[kept]
    if len(starts) == 0:
        return pd.DataFrame([], columns=columns)
    pair_id = np.cumsum(new_pair) - 1
    run_pair, run_state = pair_id[starts], blocked[starts]
    # kept runs of the same state in the same pair join up across the dropped ones
    first_of_period = np.ones(len(starts), dtype=bool)
    first_of_period[1:] = (run_pair[1:] != run_pair[:-1]) | (run_state[1:] != run_state[:-1])
    p_first = np.flatnonzero(first_of_period)
    p_last = np.append(p_first[1:], len(starts)) - 1
    p_windows = np.add.reduceat(lengths, p_first)
    p_start_row, p_end_row = starts[p_first], ends[p_last]
    p_state = run_state[p_first]
    p_pair = run_pair[p_first]
    first_in_pair = np.ones(len(p_first), dtype=bool)
    first_in_pair[1:] = p_pair[1:] != p_pair[:-1]
    window = timed["window"]
    event = [
        None if first else ("start" if state else "stop")
        for first, state in zip(first_in_pair, p_state, strict=True)
    ]
    return pd.DataFrame(
        {
            "target": target[p_start_row].tolist(),
            "test_name": timed["test_name"].iloc[p_start_row].tolist(),
            "vantage": vantage[p_start_row].tolist(),
            "state": np.where(p_state, "blocked", "accessible").tolist(),
            "start": window.iloc[p_start_row].reset_index(drop=True),
            "end": window.iloc[p_end_row].reset_index(drop=True),
            "windows": p_windows.astype("int64"),
            "event": event,
        },
        columns=columns,
    )


@dataclass
class Partial:
    """Counts per (target, vantage, window) and blocking modes per target of some measurements."""

    counts: pd.DataFrame
    modes: pd.DataFrame


@dataclass
class Comparison:
    """Everything `censorscope analyze` writes."""

    findings: pd.DataFrame
    vantages: pd.DataFrame
    timelines: pd.DataFrame
    changes: pd.DataFrame


def partial_counts(frame: pd.DataFrame, window: str | None = DEFAULT_WINDOW) -> Partial:
    """Counts and blocking modes of one chunk of measurements: both are sums, so the chunks of
    a store too large for memory can be counted one at a time and merged (`merge_partials`)."""
    prepared = prepare(frame, window)
    return Partial(count(prepared), blocking_modes(prepared))


def merge_partials(parts: list[Partial]) -> Partial:
    """Sum the counts and modes of several chunks; equal to counting their union at once."""
    counts = pd.concat([p.counts for p in parts], ignore_index=True)
    modes = pd.concat([p.modes for p in parts], ignore_index=True)
    counts = count(counts)
    keys = [*PAIR, "blocking", "blocking_detail", "blocking_fingerprint"]
    modes = modes.groupby(keys, dropna=False)[["n"]].sum().reset_index()
    return Partial(counts, modes)


def from_partial(part: Partial, gates: Gates | None = None) -> Comparison:
    """The comparison from (merged) counts and modes."""
    vantages = per_vantage(part.counts, gates)
    return Comparison(
        findings=findings(vantages, part.modes),
        vantages=vantages,
        timelines=rates(part.counts),
        changes=change_points(part.counts),
    )


def compare(
    frame: Any, window: str | None = DEFAULT_WINDOW, gates: Gates | None = None
) -> Comparison:
    """The whole comparison for a measurements frame (pandas or Dask) with verdict columns."""
    if hasattr(frame, "map_partitions"):
        meta = prepare(frame._meta, window)
        prepared = frame.map_partitions(prepare, window, meta=meta)
    else:
        prepared = prepare(frame, window)
    counts = count(prepared)
    modes = blocking_modes(prepared)
    vantages = per_vantage(counts, gates)
    return Comparison(
        findings=findings(vantages, modes),
        vantages=vantages,
        timelines=rates(counts),
        changes=change_points(counts),
    )
