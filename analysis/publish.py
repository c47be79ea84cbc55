"""A citable dataset package: raw and Parquet measurements, CSV findings, provenance, card, sums.

Layout and late arrivals: analysis.bulk; what decided each finding: analysis.provenance.

Deterministic on purpose (a dataset is cited by its checksums): rows are sorted, Parquet is
written without the pandas metadata blob, JSON keys are sorted, raw files are gzip with mtime 0,
and no wall-clock time goes in; the only dates are those of the data. Probe IPs are never
published: the loaded frame has no probe_ip column, the store scrubs them at measurement
time, and with a `scrubber` every text cell of every published table and every raw measurement
is scrubbed again (stores written before a scrubbing fix, data collected from elsewhere);
`drop_asn` vantages are published without their ASN, their vantage name redacted where it
contains it (and their raw measurements without ASN and network name: analysis.bulk.withheld).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Set
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from analysis import bulk as bulk_files
from analysis.compare import Comparison, Gates, compare
from analysis.facts import Facts, facts_of
from analysis.facts import period as facts_period
from analysis.keywords import KeywordFindings, renamed_vantages
from analysis.keywords import tables as keyword_tables
from analysis.provenance import (
    PROVENANCE_FILE,
    FindingLists,
    Provenance,
    fingerprint_files,
    stamp,
)
from analysis.tables import TABLES, plain, write_csv
from probes.measurement import asn_number

if TYPE_CHECKING:
    from analysis.pipeline import Analysis
    from probes.measurement import Scrubber

# Columns of the loaded frame that are not published: where the file sat on our disk, and the
# row's position in this load (a late arrival loaded before other rows would shift every later
# row's number and rewrite files it has nothing to do with).
PRIVATE_COLUMNS = ("source", "row")
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


def withheld_numbers(measurements: pd.DataFrame, drop_asn: Set[str]) -> set[int]:
    """The AS numbers of the at-risk vantages (to take out of report ids)."""
    risky = measurements["vantage"].astype(object).isin(list(drop_asn))
    asns = measurements.loc[risky, "probe_asn"].dropna().astype(str).unique()
    return {n for n in (asn_number(a) for a in asns) if n}


def withhold_ids(frame: pd.DataFrame, numbers: Set[int]) -> pd.DataFrame:
    """Every text cell with those AS numbers taken out of the report ids it holds."""
    if not numbers:
        return frame
    out = frame.copy()
    for name in out.columns:
        column = out[name]
        if pd.api.types.is_numeric_dtype(column) or pd.api.types.is_datetime64_any_dtype(column):
            continue
        if isinstance(column.dtype, pd.CategoricalDtype):
            column = column.astype(object)
        out[name] = column.map(
            lambda v: bulk_files.without_asn(v, numbers) if isinstance(v, str) else v
        ).astype(column.dtype)
    return out


def redact(
    measurements: pd.DataFrame, drop_asn: Set[str], numbers: Set[int] | None = None
) -> pd.DataFrame:
    """Withhold ASN detail of at-risk vantages (and drop private columns): the vantage name,
    probe_asn, and the AS number inside report ids (`numbers`: those of every at-risk vantage
    of the whole dataset; default: of these rows)."""
    out = plain(measurements.drop(columns=[c for c in PRIVATE_COLUMNS if c in measurements]))
    if not drop_asn:
        return out
    if numbers is None:
        numbers = withheld_numbers(out, drop_asn)
    risky = out["vantage"].isin(list(drop_asn))
    for asn in out.loc[risky, "probe_asn"].dropna().unique():
        mask = risky & (out["probe_asn"] == asn)
        out.loc[mask, "vantage"] = out.loc[mask, "vantage"].str.replace(str(asn), WITHHELD)
    out.loc[risky, "probe_asn"] = None
    ids = out.loc[risky, "report_id"].astype(object)
    out.loc[risky, "report_id"] = ids.map(
        lambda v: bulk_files.without_asn(v, numbers) if isinstance(v, str) else v
    )
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


def _schema(frame: pd.DataFrame) -> dict[str, Any]:
    return {
        "fields": [{"name": str(c), "type": _field_type(frame[c].dtype)} for c in frame.columns]
    }


def _evidence(fingerprints_used: str, facts: Facts) -> str:
    """The fingerprints actually used, and where the analysis and the probes disagree."""
    out = f"Fingerprints given to the analysis: {fingerprints_used}."
    kept = sum(facts.kept_fingerprints.values())
    if kept:
        names = ", ".join(sorted(facts.kept_fingerprints))
        out += (
            f" {kept} block page verdicts rest on fingerprints the probes matched "
            f"themselves ({names})."
        )
    if fingerprints_used == "none" and not kept:
        out += " No verdict is confirmed by a fingerprint."
    elif facts.matched:
        out += f" {facts.matched} measurements matched a fingerprint."
    out += (
        f" {facts.disagree} re-derived verdicts differ from the probe's (column `disagreement` "
        "says why)."
    )
    return out


def _gates(result: Analysis) -> str:
    g = result.gates or Gates()
    return (
        f"share blocked >= {g.blocked_share:g}, at least {g.min_measurements} decisive "
        f"measurements, Benjamini-Hochberg q < {g.fdr_alpha:g}, Wilson interval above the most "
        "open other vantage's (each nettest apart)"
    )


def _provenance_text(prov: Provenance, facts: Facts) -> str:
    files = (
        ", ".join(f"`{name}` (sha256 {digest})" for name, digest in prov.fingerprints.items())
        or "none"
    )
    lists = facts.probe_lists
    probes = (
        f"{len(lists)} distinct lists, named by kind and sha256 in `provenance.json`"
        if lists
        else "not recorded by these measurements"
    )
    return (
        f"censorscope {prov.censorscope_version}, analysis rules version {prov.rules_version}; "
        f"fingerprint files given to the analysis: {files}; test lists, keyword lists and "
        f"fingerprints the probes measured with: {probes}."
    )


def _card(
    result: Analysis,
    facts: Facts,
    title: str,
    licence: str,
    *,
    prov: Provenance,
    late: int,
    raw_lines: int,
) -> str:
    """The README: `facts` are those of the published rows (redacted and scrubbed)."""
    period = facts_period(facts) or "unknown"
    vantages = ", ".join(sorted(facts.vantages))
    tests = ", ".join(sorted(facts.tests))
    findings = result.comparison.findings
    blocked = int(findings["blocked_at"].notna().sum()) if len(findings) else 0
    return f"""# {title}

Measurements of Internet censorship made or collected with censorscope, with the findings
derived from them.

- Period: {period}
- Measurements: {facts.n}; nettests: {tests}
- Vantages: {vantages}
- Findings (one per input and nettest): {len(findings)}, of which {blocked} blocked at one
  vantage or more
- Arrived late (more than 24 hours after they were made, counted in the period they were
  made): {late}
- Licence: {licence}

## Files

- `raw/YYYYMMDD/HH/CC/testname/YYYYMMDDHH_CC_testname.censorscope.N.jsonl.gz`: the
  {raw_lines} measurements as measured (OONI data format, probe addresses scrubbed), one per
  line, in the layout of OONI's bucket `s3://ooni-data-eu-fra/raw/`: date and hour of arrival,
  country, test name without underscores. OONI's own tools (oonidata) read these names.
- `data/measurements/date=YYYY-MM-DD/probe_cc=CC/test_name=NAME/part-0.parquet`: one row per
  measurement, partitioned by the day it was made (OONI data format fields, the probe's
  verdict `orig_blocking`, ours `blocking`, `disagreement`: why they differ, `probe_lists`:
  the lists the probe measured with). Hive partitioning: DuckDB, Spark, pyarrow and pandas
  read the folder as one table, e.g. in DuckDB:

  ```sql
  SELECT probe_cc, test_name, blocking, count(*) AS n
  FROM read_parquet('data/measurements/*/*/*/*.parquet', hive_partitioning = true)
  GROUP BY ALL ORDER BY n DESC;
  ```

  and the raw files, naming the columns to read (some of OONI's own measurements carry header
  names that differ only in case, which DuckDB's schema detection refuses):

  ```sql
  SELECT test_name, test_keys->>'$.blocking' AS probe_verdict, count(*) AS n
  FROM read_json('raw/*/*/*/*/*.jsonl.gz', format = 'newline_delimited',
                 columns = {{measurement_uid: 'VARCHAR', test_name: 'VARCHAR', test_keys: 'JSON'}})
  GROUP BY ALL ORDER BY n DESC;
  ```

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
- `provenance.json`: what decided the findings: censorscope's version, the analysis rules'
  version, the sha256 of each fingerprint file given to the analysis (copies in
  `fingerprints/`), the gates and window, and the sha256 of every test list, keyword list and
  fingerprint file the probes measured with. Each finding repeats them (`censorscope_version`,
  `rules_version`, `analysis_fingerprints`, `probe_lists`).
- `datapackage.json`: Frictionless Data Package (schemas, licence, sources). `SHA256SUMS`.

## Method

Verdicts are re-derived from raw observations (web_connectivity: OONI's v0.4 procedure);
see censorscope's docs/analysis.md. {_evidence(result.fingerprints_used, facts)}
A finding "blocked at V" needs every gate: {_gates(result)}; a vantage that misses one is only
"suggestive".

## Provenance

{_provenance_text(prov, facts)} `censorscope verify DATASET` re-derives every finding from
`raw/` with the fingerprints in `fingerprints/` and says whether each still holds.

## Caveats

A measurement shows what one vantage saw at one time. Inconclusive measurements (control
failed, site down) are not counted as blocking or access. Vantages published without ASN
detail were judged at risk. Probe IP addresses are never included.

## How to cite

{title}, censorscope dataset, {period}. Cite with the SHA256 of `datapackage.json` from
`SHA256SUMS`.
"""


def _keyword_count(result: Analysis) -> str:
    found = result.keywords.findings if result.keywords is not None else pd.DataFrame()
    if found.empty:
        return "no keyword measurements"
    return f"{len(found)} findings, {int(found['blocked_at'].notna().sum())} filtered somewhere"


def _keywords(
    result: Analysis, measurements: pd.DataFrame, drop_asn: Set[str]
) -> KeywordFindings | None:
    """The keyword findings to publish: recomputed when vantage names were redacted."""
    if result.keywords is None or not drop_asn:
        return result.keywords
    loaded = result.loaded
    names = dict(
        zip(
            loaded.measurements["vantage"].astype(str),
            measurements["vantage"].astype(str),
            strict=True,
        )
    )
    return renamed_vantages(
        loaded.keyword_rows, loaded.isolations, names, result.window, result.gates
    )


FINGERPRINTS_DIR = "fingerprints"
SUMS = "SHA256SUMS"


@dataclass
class Published:
    """What publish_dataset wrote (files: every file of the package, SHA256SUMS last)."""

    files: list[Path]
    changed: list[Path]  # raw and Parquet files whose bytes changed (new or rewritten)
    removed: list[Path]  # files of the previous publish that are no longer part of it
    late: int  # measurements that arrived more than bulk.LATE_AFTER after they were made
    raw_lines: int


def sort_order(frame: pd.DataFrame) -> Any:
    """Positions of the rows in publishing order (SORT: by time, vantage, nettest, input...)."""
    return frame.sort_values(SORT, na_position="first", kind="stable").index.to_numpy()


def published_tables(
    comparison: Comparison,
    keywords: KeywordFindings | None,
    lists: FindingLists,
    prov: Provenance,
    scrubber: Scrubber | None,
) -> dict[str, pd.DataFrame]:
    """Name -> table exactly as it goes into the package's CSV (findings stamped with their
    provenance and the `lists` of the published measurements, every cell scrubbed);
    `censorscope verify` rebuilds the same to compare."""
    tables: dict[str, pd.DataFrame] = {}
    for name in TABLES:
        table = getattr(comparison, name)
        if name == "findings":
            table = stamp(table, prov, lists=lists)
        tables[name] = scrub_frame(plain(table), scrubber)
    for name, table in (keyword_tables(keywords) if keywords is not None else {}).items():
        if table.empty:  # no keyword measurements (or isolation...): no empty resource
            continue
        if name == "keyword_findings":
            table = stamp(table, prov, keyword=True, lists=lists)
        tables[name] = scrub_frame(plain(table), scrubber)
    return tables


def _previous_files(out: Path) -> set[str]:
    """The files a previous publish listed in OUT's SHA256SUMS (relative paths)."""
    try:
        text = (out / SUMS).read_text(encoding="utf-8")
    except OSError:
        return set()
    return {line.split("  ", 1)[1] for line in text.splitlines() if "  " in line}


def _remove_stale(out: Path, previous: set[str], current: set[str]) -> list[Path]:
    """Delete what only the previous publish had (a partition the filters no longer keep), and
    the folders that leaves empty; nothing that SHA256SUMS did not list is touched."""
    removed = []
    for name in sorted(previous - current):
        path = out / name
        if ".." in Path(name).parts or not path.is_file():
            continue
        path.unlink()
        removed.append(path)
        parent = path.parent
        while parent != out and parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()
            parent = parent.parent
    return removed


def publish_dataset(
    result: Analysis,
    out: Path,
    *,
    drop_asn: Set[str] = frozenset(),
    title: str = "censorscope measurements",
    licence: str = "CC-BY-4.0",
    scrubber: Scrubber | None = None,
    fingerprints: Path | None = None,
) -> Published:
    """Write the package under OUT from the in-process frame (see docs/analysis.md "Datasets";
    analysis.publish_engine writes the same bytes on the distributed engine). Publishing the
    same inputs with the same versions gives the same bytes; publishing again into OUT rewrites
    only the files whose content changed."""
    out.mkdir(parents=True, exist_ok=True)
    previous = _previous_files(out)
    loaded = result.loaded.measurements.reset_index(drop=True)
    frame = scrub_frame(redact(loaded, drop_asn), scrubber)
    keywords = _keywords(result, frame, drop_asn)  # renames by position: before sorting
    numbers = withheld_numbers(loaded, drop_asn)
    order = sort_order(frame)
    frame = frame.iloc[order].reset_index(drop=True)
    loaded = loaded.iloc[order].reset_index(drop=True)
    comparison = compare(frame, result.window, result.gates) if drop_asn else result.comparison
    bulk = bulk_files.write_bulk(loaded, frame, out, scrubber=scrubber, drop_asn=drop_asn)
    facts = facts_of(frame)
    return write_package(
        result,
        out,
        Package(comparison, keywords, numbers, facts, bulk, previous),
        title=title,
        licence=licence,
        scrubber=scrubber,
        fingerprints=fingerprints,
    )


@dataclass
class Package:
    """What the package's tables, card and metadata are written from: the comparison and
    keyword findings as published (vantages redacted), the withheld AS numbers, the facts of
    the published rows, the bulk files written, and the files of the previous publish."""

    comparison: Comparison
    keywords: KeywordFindings | None
    numbers: set[int]
    facts: Facts
    bulk: bulk_files.Bulk
    previous: set[str]


def write_package(
    result: Analysis,
    out: Path,
    package: Package,
    *,
    title: str,
    licence: str,
    scrubber: Scrubber | None,
    fingerprints: Path | None,
) -> Published:
    """The CSV tables, fingerprint copies, provenance, datapackage.json, card and SHA256SUMS
    around bulk files already written (both engines end here)."""
    prov = Provenance.of_run(fingerprints, result.gates or Gates(), result.window)
    bulk, numbers = package.bulk, package.numbers
    parquet = [p for p in bulk.files if p.suffix == ".parquet"]
    raw = [p for p in bulk.files if p.suffix == ".gz"]
    resources: list[dict[str, Any]] = [
        {
            "name": "measurements",
            "path": [p.relative_to(out).as_posix() for p in parquet],
            "format": "parquet",
            "mediatype": "application/vnd.apache.parquet",
            "description": "One row per measurement, hive-partitioned by date, probe_cc and "
            "test_name.",
        }
    ]
    if raw:
        resources.append(
            {
                "name": "raw-measurements",
                "path": [p.relative_to(out).as_posix() for p in raw],
                "type": "file",  # not a table to Frictionless: gzip of JSON lines
                "format": "gz",
                "mediatype": "application/gzip",
                "description": "The measurements as measured (OONI data format, scrubbed), in "
                "OONI's bucket layout raw/YYYYMMDD/HH/CC/testname/ by arrival hour.",
            }
        )
    files: list[Path] = list(bulk.files)
    tables = published_tables(
        package.comparison, package.keywords, package.facts.finding_lists, prov, scrubber
    )
    for name, table in tables.items():
        table = withhold_ids(table, numbers)  # keyword evidence and isolations name reports
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
    copies = []
    for name, source in sorted(fingerprint_files(fingerprints)[1].items()):
        copy = out / FINGERPRINTS_DIR / name
        bulk_files.put(copy, source.read_bytes())
        copies.append(copy)
    if copies:
        resources.append(
            {
                "name": "fingerprints",
                "type": "file",
                "path": [p.relative_to(out).as_posix() for p in copies],
                "description": "The fingerprint files the analysis was given (verify uses them).",
            }
        )
    files += copies
    record = prov.to_json(sorted(package.facts.probe_lists))
    bulk_files.put(out / PROVENANCE_FILE, _json_bytes(record))
    # Store files are named by report id, which names the network.
    sources = sorted({bulk_files.without_asn(Path(s).name, numbers) for s in result.loaded.sources})
    datapackage = {
        "name": "censorscope-dataset",
        "title": title,
        "licenses": [{"name": licence, "path": f"https://spdx.org/licenses/{licence}.html"}],
        "sources": [{"title": s} for s in sources],
        "resources": resources,
        "censorscope": {
            "version": prov.censorscope_version,
            "rules_version": prov.rules_version,
            "provenance": PROVENANCE_FILE,
        },
    }
    bulk_files.put(out / "datapackage.json", _json_bytes(datapackage))
    card = _card(
        result, package.facts, title, licence, prov=prov, late=bulk.late, raw_lines=bulk.raw_lines
    )
    bulk_files.put(out / "README.md", card.encode("utf-8"))
    files += [out / PROVENANCE_FILE, out / "datapackage.json", out / "README.md"]
    current = {p.relative_to(out).as_posix() for p in files}
    removed = _remove_stale(out, package.previous, current | {SUMS})
    # Last, and whole or not at all: a publish killed before this line leaves the previous
    # SHA256SUMS, which no longer matches what changed, so verify names it.
    sums = "".join(f"{sha256_of(p)}  {p.relative_to(out).as_posix()}\n" for p in sorted(files))
    bulk_files.put(out / SUMS, sums.encode("utf-8"))
    return Published([*files, out / SUMS], bulk.changed, removed, bulk.late, bulk.raw_lines)


def _json_bytes(data: Any) -> bytes:
    return (json.dumps(data, indent=2, sort_keys=True) + "\n").encode("utf-8")


def sha256_of(path: Path) -> str:
    """A file's SHA256 read 1 MB at a time (raw files and partitions can be large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def publish(
    result: Analysis,
    out: Path,
    *,
    drop_asn: Set[str] = frozenset(),
    title: str = "censorscope measurements",
    licence: str = "CC-BY-4.0",
    scrubber: Scrubber | None = None,
    fingerprints: Path | None = None,
) -> list[Path]:
    """Write the package under OUT; returns every file written (SHA256SUMS last)."""
    return publish_dataset(
        result,
        out,
        drop_asn=drop_asn,
        title=title,
        licence=licence,
        scrubber=scrubber,
        fingerprints=fingerprints,
    ).files
