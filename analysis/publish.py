"""A citable dataset package: Parquet measurements, CSV findings, datapackage.json, card, sums.

Deterministic on purpose (a dataset is cited by its checksums): rows are sorted, Parquet is
written without the pandas metadata blob, JSON keys are sorted, and no wall-clock time goes in;
the only dates are those of the data. Probe IPs are never published: the loaded frame has no
probe_ip column, the store scrubs them at measurement time, and with a `scrubber` every text
cell of every published table is scrubbed again (stores written before a scrubbing fix, data
collected from elsewhere); `drop_asn` vantages are published without their ASN, their vantage
name redacted where it contains it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Set
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from analysis.compare import Gates, Partial, from_partial, partial_counts
from analysis.facts import Facts, facts_of, period, vantage_names
from analysis.keywords import KeywordFindings, renamed_partial
from analysis.keywords import from_partial as keyword_findings
from analysis.keywords import partial as keyword_partial
from analysis.keywords import tables as keyword_tables
from analysis.tables import TABLES, plain, write_csv, write_parquet

if TYPE_CHECKING:
    from analysis.pipeline import Analysis
    from probes.measurement import Scrubber

# Columns of the loaded frame that are not published: where the file sat on our disk.
PRIVATE_COLUMNS = ("source",)
WITHHELD = "AS-withheld"
SORT = ["time", "vantage", "test_name", "input", "measurement_uid", "line"]


# Frictionless Table Schema types for our dtypes.
def _field_type(dtype: Any) -> str:
    text = str(dtype)
    if text.startswith("datetime"):
        return "datetime"
    if text in ("int64", "Int64", "Int32", "int32"):
        return "integer"
    if text.startswith("float"):
        return "number"
    if text in ("bool", "boolean"):
        return "boolean"
    return "string"


def redact(measurements: pd.DataFrame, drop_asn: Set[str]) -> pd.DataFrame:
    """Withhold ASN detail of at-risk vantages (and drop private columns)."""
    out = plain(measurements.drop(columns=[c for c in PRIVATE_COLUMNS if c in measurements]))
    if not drop_asn:
        return out
    risky = out["vantage"].isin(list(drop_asn))
    for asn in out.loc[risky, "probe_asn"].dropna().unique():
        mask = risky & (out["probe_asn"] == asn)
        out.loc[mask, "vantage"] = out.loc[mask, "vantage"].str.replace(str(asn), WITHHELD)
    out.loc[risky, "probe_asn"] = None
    return out


def scrub_frame(frame: pd.DataFrame, scrubber: Scrubber | None) -> pd.DataFrame:
    """Every text cell through the scrubber (each distinct value once: columns repeat a lot)."""
    if scrubber is None or not scrubber.addresses:
        return frame
    out = frame
    for name in frame.columns:
        column = frame[name]
        if pd.api.types.is_numeric_dtype(column) or pd.api.types.is_datetime64_any_dtype(column):
            continue
        changed = {}
        for value in column.dropna().unique():
            if isinstance(value, str) and (cleaned := scrubber.scrub_text(value)) != value:
                changed[value] = cleaned
        if changed:
            out = out.copy() if out is frame else out
            mapped = column.map(lambda v, c=changed: c.get(v, v) if isinstance(v, str) else v)
            # A category column gets new categories: cast to its old dtype, a scrubbed value
            # would be no category of it and turn into NaN.
            categorical = isinstance(column.dtype, pd.CategoricalDtype)
            out[name] = mapped.astype("category" if categorical else column.dtype)
    return out


def day_of(frame: pd.DataFrame) -> pd.Series:
    """The `date=` partition of each row (YYYY-MM-DD, or "unknown" without a time)."""
    return frame["time"].dt.strftime("%Y-%m-%d").fillna("unknown")


def write_measurement_part(part: pd.DataFrame, path: Path) -> None:
    """One `date=/test_name=` partition: its rows in SORT order (stable), no test_name column."""
    part = part.sort_values(SORT, na_position="first", kind="stable", ignore_index=True)
    write_parquet(part.drop(columns=["test_name"]), path)


def _write_measurements(frame: pd.DataFrame, root: Path) -> list[Path]:
    written = []
    for (day, test), part in frame.groupby([day_of(frame), frame["test_name"]], sort=True):
        path = root / f"date={day}" / f"test_name={test}" / "part-0.parquet"
        write_measurement_part(part, path)
        written.append(path)
    return written


@dataclass
class Publication:
    """The measurement rows' side of a dataset, prepared by the engine that read them.

    The in-process engine builds it from its frame (`in_memory`); the distributed engine
    (analysis.engine) redacts and scrubs on the workers, which reduce the published rows to
    facts and counts and stage them for `write_measurements`: no process holds every row.
    """

    facts: Facts  # of the published (redacted, scrubbed) rows
    partial: Partial | None  # their counts, when --drop-asn renamed vantages (else None)
    drop_asn: frozenset[str]
    write_measurements: Callable[[Path], list[Path]]


def in_memory(result: Analysis, drop_asn: Set[str], scrubber: Scrubber | None) -> Publication:
    """The publication of an in-process analysis (every measurement a row of its frame)."""
    loaded = result.loaded.measurements
    frame = scrub_frame(redact(loaded, drop_asn), scrubber)
    partial = partial_counts(frame, result.window) if drop_asn else None
    return Publication(
        facts_of(frame, loaded),
        partial,
        frozenset(drop_asn),
        lambda root: _write_measurements(frame, root),
    )


def _schema(frame: pd.DataFrame) -> dict[str, Any]:
    return {
        "fields": [{"name": str(c), "type": _field_type(frame[c].dtype)} for c in frame.columns]
    }


def _evidence(result: Analysis, facts: Facts) -> str:
    """The fingerprints actually used, and where the analysis and the probes disagree."""
    out = f"Fingerprints given to the analysis: {result.fingerprints_used}."
    kept = sum(facts.kept_fingerprints.values())
    if kept:
        names = ", ".join(sorted(facts.kept_fingerprints))
        out += (
            f" {kept} block page verdicts rest on fingerprints the probes matched "
            f"themselves ({names})."
        )
    if result.fingerprints_used == "none" and not kept:
        out += " No verdict is confirmed by a fingerprint."
    elif facts.matched:
        out += f" {facts.matched} measurements matched a fingerprint."
    n = facts.disagree
    out += f" {n} re-derived verdicts differ from the probe's (column `disagreement` says why)."
    return out


def _gates(result: Analysis) -> str:
    g = result.gates or Gates()
    return (
        f"share blocked >= {g.blocked_share:g}, at least {g.min_measurements} decisive "
        f"measurements, Benjamini-Hochberg q < {g.fdr_alpha:g}, Wilson interval above the most "
        "open other vantage's (each nettest apart)"
    )


def _card(result: Analysis, facts: Facts, title: str, licence: str) -> str:
    measured = period(facts) or "unknown"
    vantages = ", ".join(sorted(facts.vantages))
    tests = ", ".join(sorted(facts.tests))
    findings = result.comparison.findings
    blocked = int(findings["blocked_at"].notna().sum()) if len(findings) else 0
    return f"""# {title}

Measurements of Internet censorship made or collected with censorscope, with the findings
derived from them.

- Period: {measured}
- Measurements: {facts.n}; nettests: {tests}
- Vantages: {vantages}
- Findings (one per input and nettest): {len(findings)}, of which {blocked} blocked at one
  vantage or more
- Licence: {licence}

## Files

- `data/measurements/date=YYYY-MM-DD/test_name=NAME/part-0.parquet`: one row per measurement
  (OONI data format fields, the probe's verdict `orig_blocking`, ours `blocking`, and
  `disagreement`: why they differ).
- `findings.csv`: one finding per input and nettest, with the gates each blocking vantage
  passed; `vantages.csv`: rates per input, nettest and vantage with 95% Wilson intervals and
  Fisher's exact test (Benjamini-Hochberg q-values); `timelines.csv`: rates per time window;
  `changes.csv`: when blocking starts and stops.
- `keyword_findings.csv`: one finding per keyword (or combination), placement or channel and
  nettest ({_keyword_count(result)}), with the vantages where it is filtered, the
  mechanism, since when, the delivery rate per vantage and the minimal combination isolation
  found; `keyword_vantages.csv` (per vantage, with the gates), `keyword_windows.csv` (per time
  window: tries, delivered, dropped, rejected, modified, reset, residual),
  `keyword_changes.csv`, `keyword_isolations.csv` (each minimal combination with the message
  it came from), `keyword_evidence.csv` (the earliest blocked measurements) and, for
  message_delivery between accounts, `keyword_delivery_matrix.csv` (per keyword, sender
  region x receiver region, every vantage pooled).
- `datapackage.json`: Frictionless Data Package (schemas, licence, sources). `SHA256SUMS`.

## Method

Verdicts are re-derived from raw observations (web_connectivity: OONI's v0.4 procedure);
see censorscope's docs/analysis.md. {_evidence(result, facts)}
A finding "blocked at V" needs every gate: {_gates(result)}; a vantage that misses one is only
"suggestive".

## Caveats

A measurement shows what one vantage saw at one time. Inconclusive measurements (control
failed, site down) are not counted as blocking or access. Vantages published without ASN
detail were judged at risk. Probe IP addresses are never included.

## How to cite

{title}, censorscope dataset, {measured}. Cite with the SHA256 of `datapackage.json` from
`SHA256SUMS`.
"""


def _keyword_count(result: Analysis) -> str:
    found = result.keywords.findings if result.keywords is not None else pd.DataFrame()
    if found.empty:
        return "no keyword measurements"
    return f"{len(found)} findings, {int(found['blocked_at'].notna().sum())} filtered somewhere"


def _keywords(result: Analysis, facts: Facts, drop_asn: Set[str]) -> KeywordFindings | None:
    """The keyword findings to publish: recounted under the published vantage names when
    vantages were redacted (from the mergeable keyword counts, not the rows)."""
    if result.keywords is None or not drop_asn:
        return result.keywords
    part = result.keyword_partial
    if part is None:
        loaded = result.loaded
        part = keyword_partial(loaded.keyword_rows, loaded.isolations, result.window)
    return keyword_findings(renamed_partial(part, vantage_names(facts)), result.gates)


def publish(
    result: Analysis,
    out: Path,
    *,
    drop_asn: Set[str] = frozenset(),
    title: str = "censorscope measurements",
    licence: str = "CC-BY-4.0",
    scrubber: Scrubber | None = None,
) -> list[Path]:
    """Write the package under OUT; returns every file written (SHA256SUMS last)."""
    out.mkdir(parents=True, exist_ok=True)
    publication = result.publication or in_memory(result, drop_asn, scrubber)
    if publication.drop_asn != frozenset(drop_asn):
        raise ValueError("the analysis was prepared for publishing with other --drop-asn")
    comparison = result.comparison
    if publication.partial is not None:
        comparison = from_partial(publication.partial, result.gates)
    data_root = out / "data" / "measurements"
    parts = publication.write_measurements(data_root)
    resources: list[dict[str, Any]] = [
        {
            "name": "measurements",
            "path": [p.relative_to(out).as_posix() for p in parts],
            "format": "parquet",
            "mediatype": "application/vnd.apache.parquet",
            "description": "One row per measurement, partitioned by date and nettest.",
        }
    ]
    files: list[Path] = list(parts)

    def add_csv(name: str, frame_: pd.DataFrame) -> None:
        """Write one table as a scrubbed CSV resource of the package."""
        table = scrub_frame(plain(frame_), scrubber)
        path = out / f"{name}.csv"
        write_csv(table, path)
        files.append(path)
        resources.append(
            {
                "name": name,
                "path": path.name,
                "format": "csv",
                "mediatype": "text/csv",
                "encoding": "utf-8",
                "schema": _schema(table),
            }
        )

    for name in TABLES:
        add_csv(name, getattr(comparison, name))
    keywords = _keywords(result, publication.facts, drop_asn)
    for name, keyword_table in (keyword_tables(keywords) if keywords is not None else {}).items():
        if not keyword_table.empty:  # no keyword measurements (or isolation...): no empty resource
            add_csv(name, keyword_table)
    sources = sorted({Path(s).name for s in result.loaded.sources})
    package = {
        "name": "censorscope-dataset",
        "title": title,
        "licenses": [{"name": licence, "path": f"https://spdx.org/licenses/{licence}.html"}],
        "sources": [{"title": s} for s in sources],
        "resources": resources,
    }
    (out / "datapackage.json").write_text(
        json.dumps(package, indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )
    (out / "README.md").write_text(
        _card(result, publication.facts, title, licence), encoding="utf-8"
    )
    files += [out / "datapackage.json", out / "README.md"]
    sums = "".join(
        f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.relative_to(out).as_posix()}\n"
        for p in sorted(files)
    )
    (out / "SHA256SUMS").write_text(sums, encoding="utf-8")
    return [*files, out / "SHA256SUMS"]
