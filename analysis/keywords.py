"""Keyword findings: which keywords are filtered where, in which placement or channel, since when.

The keyword nettests measure one keyword (or `A+B` combination) per measurement, but not one
verdict per measurement:
- http_keyword tests every placement in one measurement: `test_keys.placements` is a dict
  `{placement: {outcome, blocking, blocking_detail, keyword_tries, residual_observed, ...}}`
  (probes/nettests/http_keyword.py);
- message_delivery sends through one channel: `test_keys.channel` is the channel's description,
  a dict with its `name` (probes/channels/*.py `describe`), the verdict in `test_keys` itself;
- keyword_isolation (the isolate command's result) holds the blocked message's `words`, the
  minimal `rules` found, the `tests` spent and whether the search was `complete`.

`KeywordCollector` turns each such measurement, while the loader has it decoded, into one row
per (measurement, placement or channel); isolation results become rows of their own (one per
rule). The tests an isolation run makes (measurements with `test_keys.isolation`) are subsets of
one message chosen by the search, not monitoring of a keyword list: they are left out of the
keyword rows (they stay in the measurements frame) and are summarised by their run's result.

Counting is engine-neutral as in analysis.compare: `prepare` + `count` are a group-by sum (pandas
or Dask), `KeywordPartial`s of pieces merge (analysis.stream), and the comparison between
vantages reuses compare.per_vantage and compare.findings on the small counts table, so keyword
findings pass the very gates of the web findings (share, n, BH q, Wilson against the open
vantage).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from analysis import compare as cmp

STR = pd.ArrowDtype(pa.string())

KEYWORD_TESTS = ("http_keyword", "message_delivery")
ISOLATION_TEST = "keyword_isolation"

# Outcome columns of a keyword row. http_keyword's `timeout` (the censor dropped the packets)
# counts as dropped, as message_delivery's `dropped` (the message never arrived); the other
# outcomes of both nettests keep their names.
OUTCOMES = (
    "delivered",
    "dropped",
    "rejected",
    "modified",
    "reset",
    "residual",
    "blockpage",
    "injected",
    "error",
)
_OUTCOME_ALIASES = {"timeout": "dropped"}

KEY = ["keyword", "where", "test_name", "vantage"]
WINDOW_KEY = [*KEY, "window"]
COUNT_COLUMNS = [
    "tries",
    "sends",
    *OUTCOMES,
    "residual_observed",
    "blocked",
    "ok",
    "inconclusive",
]
TIME_COLUMNS = ["first_seen", "last_seen", "first_blocked", "last_blocked"]
# Blocked tests kept per (keyword, where, nettest, vantage) as evidence, earliest first.
EVIDENCE_PER_KEY = 5

ROW_DTYPES: dict[str, Any] = {
    "row": "int64",  # the measurement's row in the measurements frame
    "measurement_uid": STR,
    "report_id": STR,
    "line": "int64",
    "time": "datetime64[s, UTC]",
    "vantage": STR,
    "test_name": STR,
    "keyword": STR,  # the input as measured: `A+B` for a combination
    "where": STR,  # placement (http_keyword) or channel name (message_delivery)
    "where_kind": STR,  # "placement" | "channel"
    "outcome": STR,
    "blocking": STR,  # "false", a blocking layer, or missing (inconclusive)
    "blocking_detail": STR,
    "residual_observed": "bool",
    "sends": "int64",  # keyword sends in this test (http_keyword retries a failing one)
}

ISOLATION_DTYPES: dict[str, Any] = {
    "row": "int64",
    "measurement_uid": STR,
    "report_id": STR,
    "line": "int64",
    "time": "datetime64[s, UTC]",
    "vantage": STR,
    "message": STR,  # the blocked message the search started from (its words, space-joined)
    "channel": STR,  # relay, http-path, ... (the isolate command's --channel)
    "rule": STR,  # one minimal combination, `A+B`; missing when none was found
    "rule_size": "Int64",
    "rules_found": "int64",
    "tests": "int64",
    "complete": "bool",
    "stopped_by": STR,
    "message_blocked": "boolean",
    "blocking_detail": STR,
    "tests_report_id": STR,
    "isolation_run": STR,
}


def _name(value: Any) -> str | None:
    """A channel's name from its description (a dict), or the value if it is already text."""
    if isinstance(value, dict):
        value = value.get("name")
    return value if isinstance(value, str) and value else None


def _blocking(value: Any) -> str | None:
    if value is False:
        return "false"
    return value if isinstance(value, str) and value else None


def _outcome(value: Any) -> str | None:
    if not isinstance(value, str) or not value:
        return None
    return _OUTCOME_ALIASES.get(value, value)


# message_delivery between accounts (`sender`, `receiver` with their regions): the channel
# and the region pair make the `where`, "relay CN->US", so each cell of the delivery matrix is
# a finding of its own, compared between vantages like any other.
PAIR_ARROW = "->"


def region_pair(tk: Mapping[str, Any]) -> tuple[str, str] | None:
    """(sender region, receiver region) of a message_delivery between accounts, else None."""
    regions = []
    for role in ("sender", "receiver"):
        end = tk.get(role)
        region = end.get("region") if isinstance(end, dict) else None
        if not isinstance(region, str) or not region:
            return None
        regions.append(region)
    return regions[0], regions[1]


def delivery_matrix(vantages: pd.DataFrame) -> pd.DataFrame:
    """Per (keyword, channel, sender region, receiver region), every vantage pooled: tries,
    delivered and not, and the delivery rate with its Wilson interval. Which network a message
    was sent from is the vantage tables' business; this is the account's."""
    columns = ["keyword", "channel", "sender_region", "receiver_region", "tries", "delivered",
               "dropped", "rejected", "modified", "inconclusive", "delivery_rate",
               "delivery_low", "delivery_high", "vantages"]  # fmt: skip
    if vantages.empty or "where" not in vantages:
        return pd.DataFrame({c: pd.Series(dtype="object") for c in columns})
    cells = vantages[vantages["where"].astype(str).str.contains(PAIR_ARROW, regex=False)].copy()
    if cells.empty:
        return pd.DataFrame({c: pd.Series(dtype="object") for c in columns})
    split = cells["where"].astype(str).str.rsplit(" ", n=1, expand=True)
    pair = split[1].str.split(PAIR_ARROW, n=1, expand=True)
    cells = cells.assign(channel=split[0], sender_region=pair[0], receiver_region=pair[1])
    key = ["keyword", "channel", "sender_region", "receiver_region"]
    sums = ["tries", "delivered", "dropped", "rejected", "modified", "inconclusive", "ok",
            "blocked"]  # fmt: skip
    grouped = cells.groupby(key, sort=True)
    out = grouped[sums].sum().reset_index()
    out["vantages"] = grouped["vantage"].agg(lambda v: ",".join(sorted(set(map(str, v))))).values
    out = _delivery(out).rename(columns={"ok": "_ok"})
    return out[columns].reset_index(drop=True)


def where_of(test_name: str, tk: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """(placement, channel) of a keyword measurement as the measurements frame shows them:
    http_keyword's placements comma-joined, message_delivery's channel name."""
    placements = tk.get("placements")
    if isinstance(placements, dict) and placements:
        return ",".join(str(p) for p in placements), None
    placement = tk.get("placement")
    return (placement if isinstance(placement, str) and placement else None), _name(
        tk.get("channel")
    )


@dataclass
class KeywordCollector:
    """Column lists of keyword rows and isolation rows, filled while the loader decodes."""

    def __post_init__(self) -> None:
        self.rows: dict[str, list[Any]] = {name: [] for name in ROW_DTYPES}
        self.isolations: dict[str, list[Any]] = {name: [] for name in ISOLATION_DTYPES}

    def add(
        self,
        row: int,
        data: Mapping[str, Any],
        tk: Mapping[str, Any],
        *,
        time: datetime | None,
        vantage: str,
        line: int,
    ) -> None:
        """The keyword rows of one decoded measurement (nothing for other nettests)."""
        test_name = data.get("test_name")
        common = {
            "row": row,
            "measurement_uid": _str(data.get("measurement_uid")),
            "report_id": _str(data.get("report_id")),
            "line": line,
            "time": time,
            "vantage": vantage,
        }
        if test_name == ISOLATION_TEST:
            self._isolation(common, tk)
            return
        if test_name not in KEYWORD_TESTS or isinstance(tk.get("isolation"), dict):
            return
        keyword = _str(tk.get("keyword")) or _str(data.get("input"))
        if keyword is None:
            return
        placements = tk.get("placements")
        if isinstance(placements, dict):
            for placement, result in placements.items():
                if isinstance(result, dict):
                    tries = result.get("keyword_tries")
                    self._row(
                        common, test_name, keyword, str(placement), "placement", result,
                        sends=len(tries) if isinstance(tries, list) else 1,
                    )  # fmt: skip
            return
        channel = _name(tk.get("channel")) or _str(tk.get("placement"))
        kind = "channel" if _name(tk.get("channel")) else "placement"
        pair = region_pair(tk)
        if channel is not None and pair is not None:
            channel = f"{channel} {pair[0]}{PAIR_ARROW}{pair[1]}"
        self._row(common, str(test_name), keyword, channel, kind, tk, sends=1)

    def _row(
        self,
        common: Mapping[str, Any],
        test_name: str,
        keyword: str,
        where: str | None,
        kind: str,
        result: Mapping[str, Any],
        *,
        sends: int,
    ) -> None:
        values = {
            **common,
            "test_name": test_name,
            "keyword": keyword,
            "where": where,
            "where_kind": kind,
            "outcome": _outcome(result.get("outcome")),
            "blocking": _blocking(result.get("blocking")),
            "blocking_detail": _str(result.get("blocking_detail")),
            "residual_observed": result.get("residual_observed") is True,
            "sends": sends,
        }
        for name, column in self.rows.items():
            column.append(values[name])

    def _isolation(self, common: Mapping[str, Any], tk: Mapping[str, Any]) -> None:
        words = tk.get("words")
        message = " ".join(str(w) for w in words) if isinstance(words, list) else None
        rules = [r for r in tk.get("rules") or () if isinstance(r, list) and r]
        tests = tk.get("tests")
        blocked = tk.get("message_blocked")
        base = {
            **common,
            "message": message,
            "channel": _name(tk.get("channel")),
            "rules_found": len(rules),
            "tests": tests if isinstance(tests, int) else 0,
            "complete": tk.get("complete") is True,
            "stopped_by": _str(tk.get("stopped_by")),
            "message_blocked": blocked if isinstance(blocked, bool) else None,
            "blocking_detail": _str(tk.get("blocking_detail")),
            "tests_report_id": _str(tk.get("tests_report_id")),
            "isolation_run": _str(tk.get("isolation_run")),
        }
        choices: list[list[Any] | None] = [*rules] or [None]
        for rule in choices:
            values = {
                **base,
                "rule": "+".join(str(w) for w in rule) if rule else None,
                "rule_size": len(rule) if rule else None,
            }
            for name, column in self.isolations.items():
                column.append(values[name])

    def frames(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        return _frame(self.rows, ROW_DTYPES), _frame(self.isolations, ISOLATION_DTYPES)


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _frame(columns: Mapping[str, list[Any]], dtypes: Mapping[str, Any]) -> pd.DataFrame:
    out: dict[str, pd.Series] = {}
    for name, dtype in dtypes.items():
        if dtype == "datetime64[s, UTC]":
            out[name] = pd.Series(pd.to_datetime(columns[name], utc=True), dtype=dtype)
        else:
            out[name] = pd.Series(columns[name], dtype=dtype)
    return pd.DataFrame(out)


def empty_rows() -> pd.DataFrame:
    return _frame({name: [] for name in ROW_DTYPES}, ROW_DTYPES)


def empty_isolations() -> pd.DataFrame:
    return _frame({name: [] for name in ISOLATION_DTYPES}, ISOLATION_DTYPES)


# --- counting (pandas or Dask) -----------------------------------------------------------------


def _seconds(times: pd.Series) -> pd.Series:
    """Epoch seconds as float (NaN for no time): min/max merge across pieces and engines."""
    stamps = pd.to_datetime(times, utc=True)
    return (stamps - pd.Timestamp(0, tz="UTC")).dt.total_seconds()


def prepare(rows: pd.DataFrame, window: str | None = cmp.DEFAULT_WINDOW) -> pd.DataFrame:
    """Indicator columns of keyword rows; a pandas partition in, a pandas partition out."""
    blocking = rows["blocking"].astype("string")
    outcome = rows["outcome"].astype("string")
    blocked = blocking.notna() & (blocking != "false")
    seconds = _seconds(rows["time"])
    time = pd.to_datetime(rows["time"], utc=True)
    out = pd.DataFrame(
        {
            "keyword": rows["keyword"].astype("string"),
            "where": rows["where"].astype("string").fillna(""),
            "test_name": rows["test_name"].astype("string"),
            "vantage": rows["vantage"].astype("string"),
            "window": time.dt.floor(window) if window else pd.Series(pd.NaT, index=rows.index),
            "tries": 1,
            "sends": rows["sends"].astype("int64"),
            **{name: (outcome == name).fillna(False).astype("int64") for name in OUTCOMES},
            "residual_observed": rows["residual_observed"].astype("int64"),
            "blocked": blocked.fillna(False).astype("int64"),
            "ok": (blocking == "false").fillna(False).astype("int64"),
            "inconclusive": blocking.isna().astype("int64"),
            "first_seen": seconds,
            "last_seen": seconds,
            "first_blocked": seconds.where(blocked.fillna(False).to_numpy(dtype=bool)),
            "last_blocked": seconds.where(blocked.fillna(False).to_numpy(dtype=bool)),
            "blocking": blocking,
            "blocking_detail": rows["blocking_detail"].astype("string"),
        },
        index=rows.index,
    )
    return out


_AGG = {
    **{name: "sum" for name in COUNT_COLUMNS},
    "first_seen": "min",
    "last_seen": "max",
    "first_blocked": "min",
    "last_blocked": "max",
}


def count(prepared: Any) -> pd.DataFrame:
    """Counts per (keyword, where, nettest, vantage, window); pandas or Dask in, pandas out."""
    grouped = prepared[[*WINDOW_KEY, *COUNT_COLUMNS, *TIME_COLUMNS]].groupby(
        WINDOW_KEY, dropna=False
    )
    table = grouped.agg(_AGG)
    if hasattr(table, "compute"):
        table = table.compute()
    return table.reset_index().sort_values(WINDOW_KEY, na_position="first", ignore_index=True)


def modes(prepared: Any) -> pd.DataFrame:
    """How often each (layer, detail) explains a blocked test, per (keyword, where, vantage)."""
    blocked = prepared[prepared["blocked"] == 1]
    keys = [*KEY, "blocking", "blocking_detail"]
    grouped = blocked[[*keys, "tries"]].groupby(keys, dropna=False).sum()
    if hasattr(grouped, "compute"):
        grouped = grouped.compute()
    return grouped.reset_index()


def evidence(rows: Any) -> pd.DataFrame:
    """The earliest blocked tests per (keyword, where, nettest, vantage): where to look."""
    columns = [*KEY, "time", "measurement_uid", "report_id", "outcome", "blocking_detail"]
    blocking = rows["blocking"]
    blocked = rows[blocking.notnull() & (blocking != "false")]
    picked = blocked[columns]
    if hasattr(picked, "compute"):
        picked = picked.compute()
    return _earliest(pd.DataFrame(picked))


def _earliest(frame: pd.DataFrame) -> pd.DataFrame:
    if frame.empty:
        return frame.reset_index(drop=True)
    frame = frame.assign(where=frame["where"].astype("string").fillna(""))
    ordered = frame.sort_values([*KEY, "time", "measurement_uid"], kind="stable")
    return ordered.groupby(KEY, dropna=False).head(EVIDENCE_PER_KEY).reset_index(drop=True)


@dataclass
class KeywordPartial:
    """Counts, modes, evidence and isolation rows of some keyword measurements (mergeable)."""

    counts: pd.DataFrame
    modes: pd.DataFrame
    evidence: pd.DataFrame
    isolations: pd.DataFrame


def partial(
    rows: Any, isolations: pd.DataFrame, window: str | None = cmp.DEFAULT_WINDOW
) -> KeywordPartial:
    """The partial of a frame of keyword rows: pandas, or Dask (`map_partitions(prepare)`)."""
    if hasattr(rows, "map_partitions"):
        prepared = rows.map_partitions(prepare, window, meta=prepare(rows._meta, window))
    else:
        prepared = prepare(rows, window)
    return KeywordPartial(count(prepared), modes(prepared), evidence(rows), isolations)


def merge(parts: list[KeywordPartial]) -> KeywordPartial:
    """Sum the counts of several pieces; equal to counting their union at once."""
    counts = pd.concat([p.counts for p in parts], ignore_index=True)
    counts = counts.groupby(WINDOW_KEY, dropna=False).agg(_AGG).reset_index()
    counts = counts.sort_values(WINDOW_KEY, na_position="first", ignore_index=True)
    keys = [*KEY, "blocking", "blocking_detail"]
    mode = pd.concat([p.modes for p in parts], ignore_index=True)
    mode = mode.groupby(keys, dropna=False)[["tries"]].sum().reset_index()
    found = (
        pd.concat([p.evidence for p in parts if len(p.evidence)], ignore_index=True)
        if any(len(p.evidence) for p in parts)
        else parts[0].evidence
    )
    isolations = pd.concat([p.isolations for p in parts], ignore_index=True)
    return KeywordPartial(counts, mode, _earliest(found), isolations)


# --- findings ----------------------------------------------------------------------------------


@dataclass
class KeywordFindings:
    """Every keyword table `analyze` writes (and `report` and `publish` use)."""

    findings: pd.DataFrame  # per (keyword, where, nettest)
    vantages: pd.DataFrame  # per (keyword, where, nettest, vantage), whole period, with gates
    windows: pd.DataFrame  # per (keyword, where, nettest, vantage, window)
    changes: pd.DataFrame  # when filtering starts and stops
    isolations: pd.DataFrame  # minimal combinations, each with the message it came from
    evidence: pd.DataFrame  # the earliest blocked tests per (keyword, where, nettest, vantage)

    @property
    def matrix(self) -> pd.DataFrame:
        """The delivery matrix: per keyword, sender region x receiver region."""
        return delivery_matrix(self.vantages)


TABLES = (
    "keyword_findings",
    "keyword_vantages",
    "keyword_windows",
    "keyword_changes",
    "keyword_isolations",
    "keyword_evidence",
    "keyword_delivery_matrix",
)


def _target(frame: pd.DataFrame) -> pd.Series:
    return frame["keyword"].astype("string") + " [" + frame["where"].astype("string") + "]"


def _as_compare_counts(counts: pd.DataFrame) -> pd.DataFrame:
    """The keyword counts in compare's shape (target, test_name, vantage, window + COUNTS)."""
    return pd.DataFrame(
        {
            "target": _target(counts),
            "test_name": counts["test_name"],
            "vantage": counts["vantage"],
            "window": counts["window"],
            "n": counts["tries"],
            "blocked": counts["blocked"],
            "ok": counts["ok"],
            "down": 0,
            "inconclusive": counts["inconclusive"],
            "disagree": 0,
        }
    )


def _time(seconds: pd.Series) -> pd.Series:
    return pd.to_datetime(seconds, unit="s", utc=True).astype("datetime64[s, UTC]")


def _delivery(frame: pd.DataFrame) -> pd.DataFrame:
    """Delivery rate (delivered tests / decisive tests) and its Wilson 95% interval."""
    decisive = frame["blocked"] + frame["ok"]
    with np.errstate(invalid="ignore", divide="ignore"):
        rate = frame["ok"] / decisive.replace(0, np.nan)
    low, high = cmp.wilson(frame["ok"].to_numpy(), decisive.to_numpy())
    return frame.assign(decisive=decisive, delivery_rate=rate, delivery_low=low, delivery_high=high)


def _keyword_of(target: pd.Series) -> tuple[list[str], list[str]]:
    keyword, where = [], []
    for text in target.astype(str):
        head, _, tail = text.rpartition(" [")
        keyword.append(head)
        where.append(tail[:-1])
    return keyword, where


GATED_COLUMNS = [
    "target",
    "test_name",
    "vantage",
    "rate",
    "rate_low",
    "rate_high",
    "p_value",
    "q_value",
    "significant",
    "open_rate_high",
    "gates",
    "blocks",
    "suggestive",
]


def from_partial(part: KeywordPartial, gates: cmp.Gates | None = None) -> KeywordFindings:
    """Rates, the comparison between vantages and findings from (merged) keyword counts."""
    counts = part.counts
    per_window = _delivery(counts)
    for name in TIME_COLUMNS:
        per_window[name] = _time(per_window[name])
    if counts.empty:
        empty = pd.DataFrame()
        return KeywordFindings(
            empty, empty, per_window, empty, _isolation_table(part.isolations), part.evidence
        )
    compare_counts = _as_compare_counts(counts)
    whole = counts.groupby(KEY, dropna=False).agg(_AGG).reset_index()
    whole["target"] = _target(whole)
    gated = cmp.per_vantage(compare_counts, gates)
    vantages = whole.merge(
        gated[GATED_COLUMNS],
        on=["target", "test_name", "vantage"],
        how="left",
    )
    vantages = _delivery(vantages)
    mode = part.modes.sort_values(
        [*KEY, "tries", "blocking_detail"], ascending=[True] * len(KEY) + [False, True]
    ).drop_duplicates(KEY)
    vantages = vantages.merge(
        mode[[*KEY, "blocking", "blocking_detail"]].rename(
            columns={"blocking": "blocking_type", "blocking_detail": "mechanism"}
        ),
        on=KEY,
        how="left",
    )
    for name in TIME_COLUMNS:
        vantages[name] = _time(vantages[name])
    vantages = vantages.sort_values(KEY, ignore_index=True)
    compare_modes = part.modes.assign(
        target=_target(part.modes), blocking_fingerprint=pd.NA, n=part.modes["tries"]
    )[["target", "test_name", "blocking", "blocking_detail", "blocking_fingerprint", "n"]]
    general = cmp.findings(gated, compare_modes)
    findings = _keyword_findings(general, vantages, part)
    changes = cmp.change_points(compare_counts)
    if len(changes):
        keyword, where = _keyword_of(changes["target"])
        changes = changes.assign(keyword=keyword, where=where).drop(columns=["target"])
    return KeywordFindings(
        findings, vantages, per_window, changes, _isolation_table(part.isolations), part.evidence
    )


def _rate_text(row: Any) -> str:
    if not row.decisive:
        return f"{row.vantage} no decisive test"
    return (
        f"{row.vantage} {int(row.ok)}/{int(row.decisive)} delivered "
        f"({row.delivery_low:.2f}-{row.delivery_high:.2f})"
    )


def _keyword_findings(
    general: pd.DataFrame, vantages: pd.DataFrame, part: KeywordPartial
) -> pd.DataFrame:
    """compare.findings' verdict per (keyword, where, nettest), with what a paper needs."""
    keyword, where = _keyword_of(general["target"])
    out = pd.DataFrame(
        {
            "keyword": keyword,
            "where": where,
            "test_name": general["test_name"].astype("string"),
            "finding": general["finding"],
            "blocked_at": general["blocked_at"],
            "gates": general["gates"],
            "blocking_type": general["blocking_type"],
            "mechanism": general["blocking_detail"],
            "tries": general["n"],
            "blocked": general["blocked"],
            "inconclusive": general["inconclusive"],
            "min_q_value": general["min_q_value"],
        }
    )
    out.insert(2, "where_kind", ["placement" if t == "http_keyword" else "channel"
                                 for t in out["test_name"]])  # fmt: skip
    by_key = {
        key: group for key, group in vantages.groupby(["keyword", "where", "test_name"], sort=False)
    }
    since: list[Any] = []
    rates: list[str | None] = []
    residual: list[int] = []
    for row in out.itertuples(index=False):
        group = by_key.get((row.keyword, row.where, row.test_name))
        if group is None:
            since.append(pd.NaT)
            rates.append(None)
            residual.append(0)
            continue
        blocking = group[group["blocks"].fillna(False).astype(bool)]
        since.append(blocking["first_blocked"].min() if len(blocking) else pd.NaT)
        rates.append("; ".join(_rate_text(r) for r in group.itertuples(index=False)))
        residual.append(int(blocking["residual_observed"].sum()) if len(blocking) else 0)
    out["since"] = pd.Series(since, dtype="datetime64[s, UTC]")
    out["delivery"] = pd.Series(rates, dtype="string")
    out["residual_observed"] = np.asarray(residual, dtype="int64")
    out["isolated"] = pd.Series(_isolated(out, part.isolations), dtype="string")
    ev = part.evidence
    ids = {}
    if len(ev):
        for key, group in ev.groupby(["keyword", "where", "test_name"], sort=False):
            ids[key] = ";".join(str(u) for u in group["measurement_uid"].dropna())
    out["evidence"] = pd.Series(
        [
            ids.get((k, w, t))
            for k, w, t in zip(out["keyword"], out["where"], out["test_name"], strict=True)
        ],
        dtype="string",
    )
    return out.sort_values(["blocked", "keyword", "where"], ascending=[False, True, True],
                           ignore_index=True)  # fmt: skip


def _isolated(findings: pd.DataFrame, isolations: pd.DataFrame) -> list[str | None]:
    """The minimal combinations isolation found in a message made of this keyword's parts."""
    if isolations.empty:
        return [None] * len(findings)
    by_message: dict[frozenset[str], set[str]] = {}
    for message, rule in zip(isolations["message"], isolations["rule"], strict=True):
        if isinstance(message, str) and isinstance(rule, str):
            by_message.setdefault(frozenset(message.split()), set()).add(rule)
    out: list[str | None] = []
    for keyword in findings["keyword"].astype(str):
        words = frozenset(w for part in keyword.split("+") for w in part.split())
        rules = by_message.get(words)
        out.append(" | ".join(sorted(rules)) if rules else None)
    return out


def _isolation_table(isolations: pd.DataFrame) -> pd.DataFrame:
    if isolations.empty:
        return isolations.reset_index(drop=True)
    return isolations.drop(columns=["row", "line"], errors="ignore").sort_values(
        ["message", "time", "rule"], na_position="last", ignore_index=True
    )


def findings_of(
    rows: Any,
    isolations: pd.DataFrame,
    window: str | None = cmp.DEFAULT_WINDOW,
    gates: cmp.Gates | None = None,
) -> KeywordFindings:
    """Keyword findings of a frame of keyword rows (pandas, or Dask for the dask engine)."""
    return from_partial(partial(rows, isolations, window), gates)


def tables(result: KeywordFindings) -> dict[str, pd.DataFrame]:
    """Table name -> frame, in TABLES order."""
    return {
        "keyword_findings": result.findings,
        "keyword_vantages": result.vantages,
        "keyword_windows": result.windows,
        "keyword_changes": result.changes,
        "keyword_isolations": result.isolations,
        "keyword_evidence": result.evidence,
        "keyword_delivery_matrix": result.matrix,
    }


def write_tables(result: KeywordFindings, out: Path) -> list[Path]:
    """The keyword tables as Parquet + CSV beside compare's (analysis.tables' writers)."""
    from analysis.tables import write_csv, write_parquet

    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, frame in tables(result).items():
        write_parquet(frame, out / f"{name}.parquet")
        write_csv(frame, out / f"{name}.csv")
        written += [out / f"{name}.parquet", out / f"{name}.csv"]
    return written


def summary(result: KeywordFindings | None, shown: int = 10) -> str | None:
    """Lines for the command's summary, or None without keyword measurements."""
    if result is None or (result.findings.empty and result.isolations.empty):
        return None
    if result.findings.empty:
        rules = result.isolations["rule"].dropna()
        return f"keywords: isolation runs only; {len(rules)} isolated combinations"
    findings = result.findings
    filtered = findings[findings["blocked_at"].notna()]
    rules = result.isolations["rule"].dropna() if len(result.isolations) else []
    lines = [
        f"keywords: {len(findings)} (keyword, placement or channel) findings, "
        f"{len(filtered)} filtered somewhere; {len(rules)} isolated combinations"
    ]
    for row in filtered.head(shown).itertuples(index=False):
        since = f" since {row.since:%Y-%m-%d}" if not pd.isna(row.since) else ""
        lines.append(
            f"  {row.keyword} [{row.where}] ({row.test_name}): {row.finding} "
            f"({row.mechanism}{since})"
        )
    if len(filtered) > shown:
        lines.append(f"  ... {len(filtered) - shown} more filtered keywords")
    return "\n".join(lines)


def renamed_vantages(
    rows: pd.DataFrame,
    isolations: pd.DataFrame,
    names: Mapping[str, str],
    window: str | None = cmp.DEFAULT_WINDOW,
    gates: cmp.Gates | None = None,
) -> KeywordFindings:
    """Keyword findings again with vantages renamed (publish's `--drop-asn` redaction)."""

    def rename(frame: pd.DataFrame) -> pd.DataFrame:
        vantage = frame["vantage"].astype(object).map(lambda v: names.get(v, v))
        return frame.assign(vantage=vantage.astype(frame["vantage"].dtype))

    return findings_of(rename(rows), rename(isolations), window, gates)
