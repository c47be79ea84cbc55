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

GROUP = ["target", "vantage", "window"]
COUNTS = ["n", "blocked", "ok", "down", "inconclusive"]


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
    out = pd.DataFrame(
        {
            "target": _target(frame),
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
    keys = ["target", "blocking", "blocking_detail", "blocking_fingerprint"]
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


def per_vantage(counts: pd.DataFrame) -> pd.DataFrame:
    """Whole-period rates per (target, vantage), with a one-vs-rest Fisher test, BH-corrected.

    Fisher's exact test (scipy.stats.fisher_exact, two-sided) on the 2x2 table
    [[blocked, ok] at this vantage, [blocked, ok] at every other vantage]: exact for the
    small counts of a measurement campaign, where a chi-squared approximation is not.
    """
    from scipy.stats import false_discovery_control, fisher_exact

    whole = counts.groupby(["target", "vantage"], dropna=False)[COUNTS].sum().reset_index()
    whole = rates(whole)
    totals = whole.groupby("target")[["blocked", "ok"]].transform("sum")
    n_vantages = whole.groupby("target")["vantage"].transform("size")
    p_values = np.full(len(whole), np.nan)
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
        p_values[i] = fisher_exact([[b, o], [rest_b, rest_o]]).pvalue
    whole["p_value"] = p_values
    q = np.full(len(whole), np.nan)
    tested = ~np.isnan(p_values)
    if tested.any():
        q[tested] = false_discovery_control(p_values[tested], method="bh")
    whole["q_value"] = q
    whole["significant"] = whole["q_value"] < FDR_ALPHA
    whole["blocks"] = (whole["decisive"] > 0) & (whole["rate"] >= BLOCKED_SHARE)
    return whole.sort_values(["target", "vantage"], ignore_index=True)


def findings(vantages: pd.DataFrame, modes: pd.DataFrame) -> pd.DataFrame:
    """One finding per target from its per-vantage rates and its blocking modes."""
    best = (
        modes.sort_values(
            ["target", "n", "blocking", "blocking_detail"], ascending=[True, False, True, True]
        )
        .drop_duplicates("target")
        .set_index("target")
    )
    rows = []
    for target, group in vantages.groupby("target", sort=True):
        blocking_at = sorted(group.loc[group["blocks"], "vantage"].astype(str))
        accessible = group["decisive"].gt(0) & ~group["blocks"]
        if blocking_at:
            finding = "blocked at " + ", ".join(blocking_at)
        elif group["down"].sum() > 0 and group["decisive"].sum() == 0:
            finding = "down everywhere"
        elif accessible.all():
            finding = "accessible everywhere"
        else:
            finding = "inconclusive"
        mode = best.loc[target] if blocking_at and target in best.index else None
        rows.append(
            {
                "target": target,
                "finding": finding,
                "blocked_at": ";".join(blocking_at) or None,
                "vantages": len(group),
                "n": int(group["n"].sum()),
                "blocked": int(group["blocked"].sum()),
                "inconclusive": int(group["inconclusive"].sum()),
                "blocking_type": None if mode is None else mode["blocking"],
                "blocking_detail": None if mode is None else mode["blocking_detail"],
                "blocking_fingerprint": None if mode is None else mode["blocking_fingerprint"],
                "min_q_value": group["q_value"].min(skipna=True),
                "significant": bool(group["significant"].any()),
            }
        )
    out = pd.DataFrame(rows)
    for name in ("blocked_at", "blocking_type", "blocking_detail", "blocking_fingerprint"):
        if name in out:
            out[name] = out[name].astype("string")
    return out


def change_points(counts: pd.DataFrame, min_run: int = MIN_RUN_WINDOWS) -> pd.DataFrame:
    """Periods of blocking and of access per (target, vantage), and when each starts.

    Each window with decisive measurements is "blocked" (share >= BLOCKED_SHARE) or
    "accessible". Runs shorter than `min_run` windows are dropped as noise and the neighbours
    they separated are joined; each remaining run is a period, and every period after the first
    is a change point (`event` "start" or "stop" of blocking).
    """
    timed = rates(counts[counts["window"].notna()])
    timed = timed[timed["decisive"] > 0]
    rows: list[dict[str, Any]] = []
    for (target, vantage), group in timed.groupby(["target", "vantage"], sort=True):
        group = group.sort_values("window")
        states = np.where(group["rate"] >= BLOCKED_SHARE, "blocked", "accessible")
        windows = list(group["window"])
        runs: list[list[Any]] = []  # [state, first, last, windows]
        for state, when in zip(states, windows, strict=True):
            if runs and runs[-1][0] == state:
                runs[-1][2] = when
                runs[-1][3] += 1
            else:
                runs.append([state, when, when, 1])
        kept: list[list[Any]] = []
        for run in runs:
            if run[3] < min_run:
                continue
            if kept and kept[-1][0] == run[0]:
                kept[-1][2] = run[2]
                kept[-1][3] += run[3]
            else:
                kept.append(list(run))
        for index, (state, first, last, length) in enumerate(kept):
            event = None
            if index > 0:
                event = "start" if state == "blocked" else "stop"
            rows.append(
                {
                    "target": target,
                    "vantage": vantage,
                    "state": state,
                    "start": first,
                    "end": last,
                    "windows": length,
                    "event": event,
                }
            )
    columns = ["target", "vantage", "state", "start", "end", "windows", "event"]
    return pd.DataFrame(rows, columns=columns)


@dataclass
class Comparison:
    """Everything `censorscope analyze` writes."""

    findings: pd.DataFrame
    vantages: pd.DataFrame
    timelines: pd.DataFrame
    changes: pd.DataFrame


def compare(frame: Any, window: str | None = DEFAULT_WINDOW) -> Comparison:
    """The whole comparison for a measurements frame (pandas or Dask) with verdict columns."""
    if hasattr(frame, "map_partitions"):
        meta = prepare(frame._meta, window)
        prepared = frame.map_partitions(prepare, window, meta=meta)
    else:
        prepared = prepare(frame, window)
    counts = count(prepared)
    modes = blocking_modes(prepared)
    vantages = per_vantage(counts)
    return Comparison(
        findings=findings(vantages, modes),
        vantages=vantages,
        timelines=rates(counts),
        changes=change_points(counts),
    )
