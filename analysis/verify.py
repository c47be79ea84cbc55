"""`censorscope verify DATASET`: do a published dataset's findings still hold?

The dataset carries what decided it (provenance.json: versions, gates, window, fingerprint
hashes; fingerprints/: the files themselves) and its own measurements (raw/). Verifying
re-derives every table from raw/ with today's rules and the dataset's fingerprints, writes each
as publish would, and compares it with the published CSV: equal bytes hold without parsing
either (a block at a time, so a large timelines table is never held twice); otherwise cell by
cell, version columns left out. It also checks every
file against SHA256SUMS. The versions are reported, not compared: a finding that holds under
newer rules holds.
"""

from __future__ import annotations

import csv
import filecmp
import io
import json
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from analysis import bulk
from analysis.compare import Gates
from analysis.keywords import TABLES as KEYWORD_TABLES
from analysis.provenance import PROVENANCE_FILE, Provenance
from analysis.publish import FINGERPRINTS_DIR, SUMS, published_tables
from analysis.publish import sha256_of as file_digest
from analysis.tables import TABLES, write_csv
from probes.provenance import file_sha256

# Key columns of each table: a difference is reported per key, column by column.
KEYS: dict[str, tuple[str, ...]] = {
    "findings": ("target", "test_name"),
    "vantages": ("target", "test_name", "vantage"),
    "timelines": ("target", "test_name", "vantage", "window"),
    "keyword_findings": ("keyword", "where", "test_name"),
    "keyword_vantages": ("keyword", "where", "test_name", "vantage"),
}
VERSION_COLUMNS = ("censorscope_version", "rules_version")  # reported, never a difference


class DatasetError(ValueError):
    """The dataset cannot be verified (missing or malformed file); the message names it."""


@dataclass(frozen=True)
class Difference:
    table: str
    key: str  # the row's key columns, " | "-joined (or the whole row for unkeyed tables)
    column: str  # a column name, or "(row)" for a row only one side has
    published: str
    rederived: str


@dataclass
class Verification:
    published_with: Provenance
    rederived_with: Provenance
    measurements: int
    tables: list[str] = field(default_factory=list)
    checksum_problems: list[str] = field(default_factory=list)
    differences: list[Difference] = field(default_factory=list)

    @property
    def holds(self) -> bool:
        return not self.differences and not self.checksum_problems


def _read_json(path: Path) -> dict[str, object]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise DatasetError(f"{path}: missing (not a censorscope dataset, or published before "
                           "datasets carried their provenance)") from exc  # fmt: skip
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{path}: cannot read: {exc}") from exc
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: not a JSON object")
    return data


def load_provenance(dataset: Path) -> Provenance:
    path = dataset / PROVENANCE_FILE
    try:
        return Provenance.from_json(_read_json(path))
    except ValueError as exc:
        if isinstance(exc, DatasetError):
            raise
        raise DatasetError(f"{path}: {exc}") from exc


def check_sums(dataset: Path) -> list[str]:
    """Files that differ from SHA256SUMS or are missing ("path: why"); SHA256SUMS must exist."""
    sums = dataset / SUMS
    try:
        lines = sums.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise DatasetError(f"{sums}: cannot read: {exc.strerror or exc}") from exc
    problems = []
    for number, line in enumerate(lines, 1):
        digest, sep, name = line.partition("  ")
        if not sep or len(digest) != 64 or ".." in Path(name).parts:
            raise DatasetError(f"{sums}:{number}: not 'SHA256  PATH'")
        path = dataset / name
        if not path.is_file():
            problems.append(f"{name}: missing")
        elif file_digest(path) != digest:
            problems.append(f"{name}: content differs from SHA256SUMS")
    return problems


def dataset_fingerprints(dataset: Path, prov: Provenance) -> Path | None:
    """The fingerprints the dataset was published with (its copies, hash-checked)."""
    if prov.fingerprints_mode == "none":
        return None
    folder = dataset / FINGERPRINTS_DIR
    for name, digest in prov.fingerprints.items():
        path = folder / name
        if not path.is_file():
            raise DatasetError(f"{path}: missing (provenance.json names it)")
        if file_sha256(path) != digest:
            raise DatasetError(f"{path}: sha256 differs from provenance.json's")
    if prov.fingerprints_mode == "file":
        if len(prov.fingerprints) != 1:
            raise DatasetError(f"{dataset / PROVENANCE_FILE}: mode 'file' needs one fingerprint")
        return folder / next(iter(prov.fingerprints))
    return folder


def _rows(text: str) -> tuple[list[str], list[list[str]]]:
    rows = list(csv.reader(io.StringIO(text)))
    return (rows[0], rows[1:]) if rows else ([], [])


def compare_csv(table: str, published: str, rederived: str) -> list[Difference]:
    """Cell differences between two CSV texts of one table (version columns left out)."""
    head_p, rows_p = _rows(published)
    head_r, rows_r = _rows(rederived)
    keep = [c for c in head_p if c not in VERSION_COLUMNS]
    if [c for c in head_r if c not in VERSION_COLUMNS] != keep:
        return [Difference(table, "(columns)", "(columns)", ",".join(head_p), ",".join(head_r))]
    pick_p = [head_p.index(c) for c in keep]
    pick_r = [head_r.index(c) for c in keep]
    left = [[row[i] for i in pick_p] for row in rows_p]
    right = [[row[i] for i in pick_r] for row in rows_r]
    key_columns = [keep.index(c) for c in KEYS.get(table, ()) if c in keep]
    out: list[Difference] = []
    if key_columns:
        by_p = {" | ".join(r[i] for i in key_columns): r for r in left}
        by_r = {" | ".join(r[i] for i in key_columns): r for r in right}
        if len(by_p) == len(left) and len(by_r) == len(right):
            for key in sorted(by_p.keys() | by_r.keys()):
                a, b = by_p.get(key), by_r.get(key)
                if a is None or b is None:
                    out.append(Difference(table, key, "(row)", "present" if a else "absent",
                                          "present" if b else "absent"))  # fmt: skip
                    continue
                for name, x, y in zip(keep, a, b, strict=True):
                    if x != y:
                        out.append(Difference(table, key, name, x, y))
            return out
    count_p, count_r = Counter(map(tuple, left)), Counter(map(tuple, right))
    for row in sorted((count_p - count_r).keys() | (count_r - count_p).keys()):
        n_p, n_r = count_p.get(row, 0), count_r.get(row, 0)
        out.append(Difference(table, ",".join(row), "(row)", f"{n_p}x", f"{n_r}x"))
    return out


def verify(
    dataset: Path,
    *,
    engine: str = "dask",
    workers: int | None = None,
    scheduler: str | None = None,
) -> Verification:
    """Re-derive DATASET's tables from its raw measurements and compare (see module doc).

    `engine` "dask" (analysis.engine: the raw files are partitions, reduced to counts and
    facts; no process holds every row) or "pandas" (in one process); the same tables."""
    from analysis.load import Filters
    from analysis.pipeline import run

    if not dataset.is_dir():
        raise DatasetError(f"{dataset}: no such dataset folder")
    prov = load_provenance(dataset)
    problems = check_sums(dataset)
    fingerprints = dataset_fingerprints(dataset, prov)
    try:
        gates = Gates(**prov.gates)
    except TypeError as exc:
        raise DatasetError(f"{dataset / PROVENANCE_FILE}: field 'gates': {exc}") from exc
    raw = bulk.raw_files(dataset)
    if not raw and (dataset / bulk.MEASUREMENTS_DIR).is_dir():
        raise DatasetError(f"{dataset / bulk.RAW_DIR}: no raw measurements to re-derive from")
    result = run(
        [],
        raw,
        Filters(),
        fingerprints,
        engine=engine,
        window=prov.window,
        gates=gates,
        workers=workers,
        scheduler=scheduler,
    )
    if result.loaded.n_problems:
        first = result.loaded.problems[0]
        problems.append(f"{result.loaded.n_problems} raw lines unreadable, first: {first}")
    now = Provenance.of_run(fingerprints, gates, prov.window)
    # The facts' list hashes per finding: of every row, merged from partitions on the engine.
    tables = published_tables(
        result.comparison, result.keywords, result.facts.finding_lists, now, None
    )
    names = [
        n for n in (*TABLES, *KEYWORD_TABLES) if n in tables or (dataset / f"{n}.csv").exists()
    ]
    report = Verification(prov, now, result.facts.n, names, problems)
    with tempfile.TemporaryDirectory(prefix="censorscope-verify-") as tmp:
        for name in names:
            published_path = dataset / f"{name}.csv"
            again = Path(tmp) / f"{name}.csv"
            if name in tables:
                write_csv(tables[name], again)
                del tables[name]  # the stamped copy is written; free it before the next
            else:
                again.write_text("", encoding="utf-8")
            # Equal bytes are the common case: compared a block at a time, no table is parsed.
            if published_path.exists() and filecmp.cmp(published_path, again, shallow=False):
                continue
            published = (
                published_path.read_text(encoding="utf-8") if published_path.exists() else ""
            )
            rederived = again.read_text(encoding="utf-8")
            report.differences += compare_csv(name, published, rederived)
    return report


def render(report: Verification, limit: int = 50) -> Sequence[str]:
    """The report's lines: versions, checks, then a table of differing findings."""
    p, r = report.published_with, report.rederived_with
    lines = [
        f"published with censorscope {p.censorscope_version} (rules {p.rules_version}); "
        f"re-derived with censorscope {r.censorscope_version} (rules {r.rules_version})",
        f"{report.measurements} measurements re-read from raw/; tables compared: "
        + ", ".join(report.tables),
    ]
    lines += [f"SHA256SUMS: {problem}" for problem in report.checksum_problems]
    if report.holds:
        lines.append("every published finding holds")
        return lines
    diffs = report.differences
    tables = Counter(d.table for d in diffs)
    lines.append(
        f"{len(diffs)} differences ("
        + ", ".join(f"{t}: {n}" for t, n in sorted(tables.items()))
        + ")"
        if diffs
        else "no finding differs, but the files above do not match SHA256SUMS"
    )
    if diffs:
        header = ("table", "key", "column", "published", "re-derived")
        rows = [(d.table, d.key, d.column, d.published, d.rederived) for d in diffs[:limit]]
        widths = [min(48, max(len(str(x[i])) for x in (header, *rows))) for i in range(5)]
        for row in (header, *rows):
            lines.append("  ".join(str(v)[:48].ljust(w) for v, w in zip(row, widths, strict=True)))
        if len(diffs) > limit:
            lines.append(f"... {len(diffs) - limit} more")
    return lines
