"""What decided a finding: censorscope's version, the rules' version, and the lists' hashes.

OONI's documentation says its own verdicts cannot be reproduced because nobody recorded which
fingerprints and test lists produced them. Every finding we write therefore names:

- `censorscope_version` (probes.__version__) and `rules_version`
  (analysis.verdicts.RULES_VERSION: bumped with any change that can change a verdict);
- `analysis_fingerprints`: "name:sha256" of each fingerprint file the analysis was given
  (`--fingerprints`), ";"-joined, or "none";
- `probe_lists`: "kind:sha256" (testlists, keywords, fingerprints) of every list the probes
  measured the finding's measurements with, from their annotations (probes.provenance), the
  distinct ones ";"-joined and sorted; empty when no measurement recorded its lists (OONI's).

A dataset's `provenance.json` holds the same for the whole package plus the gates and window,
which is what `censorscope verify` needs to re-derive it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from analysis.verdicts import CP_BLOCKPAGES, CP_FALSE_POSITIVES, RULES_VERSION
from probes import __version__
from probes.fingerprints import DNS_FILE, HTTP_FILE
from probes.provenance import file_sha256

PROVENANCE_FILE = "provenance.json"
CP_DIR = "censoredplanet"
FINDING_COLUMNS = ("censorscope_version", "rules_version", "analysis_fingerprints", "probe_lists")


def fingerprint_files(fingerprints: Path | None) -> tuple[str, dict[str, Path]]:
    """(mode, relative name -> file) of exactly the files analysis.verdicts.default_classifier
    reads from `--fingerprints`: "none", "file" (one CSV) or "dir"."""
    if fingerprints is None:
        return "none", {}
    if fingerprints.is_file():
        return "file", {fingerprints.name: fingerprints}
    found = {name: fingerprints / name for name in (DNS_FILE, HTTP_FILE)}
    cp = fingerprints / CP_DIR
    if cp.is_dir():
        found |= {f"{CP_DIR}/{name}": cp / name for name in (CP_BLOCKPAGES, CP_FALSE_POSITIVES)}
    return "dir", {name: path for name, path in found.items() if path.is_file()}


@dataclass(frozen=True)
class Provenance:
    """The versions and hashes a set of findings was derived with (see the module docstring)."""

    censorscope_version: str = __version__
    rules_version: int = RULES_VERSION
    fingerprints_mode: str = "none"
    fingerprints: dict[str, str] = field(default_factory=dict)  # relative name -> sha256
    gates: dict[str, Any] = field(default_factory=dict)
    window: str | None = None

    @classmethod
    def of_run(cls, fingerprints: Path | None, gates: Any, window: str | None) -> Provenance:
        """Hash the fingerprint files now (the bytes the analysis is about to read)."""
        mode, files = fingerprint_files(fingerprints)
        return cls(
            fingerprints_mode=mode,
            fingerprints={name: file_sha256(path) for name, path in sorted(files.items())},
            gates=asdict(gates) if gates is not None else {},
            window=window,
        )

    @property
    def fingerprints_cell(self) -> str:
        return ";".join(f"{name}:{digest}" for name, digest in self.fingerprints.items()) or "none"

    def to_json(self, probe_lists: list[str] | None = None) -> dict[str, Any]:
        out = asdict(self)
        if probe_lists is not None:
            out["probe_lists"] = probe_lists
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Provenance:
        """Raises ValueError naming the field that is missing or of the wrong type."""
        checks: dict[str, type | tuple[type, ...]] = {
            "censorscope_version": str,
            "rules_version": int,
            "fingerprints_mode": str,
            "fingerprints": dict,
            "gates": dict,
            "window": (str, type(None)),
        }
        for name, kind in checks.items():
            if name not in data or not isinstance(data[name], kind):
                raise ValueError(f"field {name!r}: missing or of the wrong type")
        if data["fingerprints_mode"] not in ("none", "file", "dir"):
            raise ValueError(f"field 'fingerprints_mode': unknown {data['fingerprints_mode']!r}")
        return cls(**{name: data[name] for name in checks})


@dataclass(frozen=True)
class FindingLists:
    """The list hashes recorded per finding key: web findings by (target, nettest), keyword
    findings by (keyword, nettest). Sets, so partitions merge by union (merge_finding_lists)."""

    web: Mapping[tuple[Any, ...], frozenset[str]] = field(default_factory=dict)
    keyword: Mapping[tuple[Any, ...], frozenset[str]] = field(default_factory=dict)


def _sets_by(keys: pd.DataFrame, lists: pd.Series) -> dict[tuple[Any, ...], frozenset[str]]:
    """Distinct list hashes per key (the key columns of `keys`)."""
    frame = keys.astype(object).assign(_lists=lists.astype(object)).dropna(subset=["_lists"])
    out: dict[tuple[Any, ...], frozenset[str]] = {}
    for key, group in frame.groupby(list(keys.columns), sort=False, dropna=False):
        parts = {part for cell in group["_lists"] for part in str(cell).split(";") if part}
        out[key if isinstance(key, tuple) else (key,)] = frozenset(parts)
    return out


def finding_lists(measurements: pd.DataFrame) -> FindingLists:
    """The list hashes of some measurements per finding key (empty without `probe_lists`)."""
    if "probe_lists" not in measurements:
        return FindingLists()
    from analysis.compare import _target

    web = pd.DataFrame({"target": _target(measurements), "test_name": measurements["test_name"]})
    lists = measurements["probe_lists"]
    return FindingLists(
        _sets_by(web, lists), _sets_by(measurements[["keyword", "test_name"]], lists)
    )


def merge_finding_lists(parts: Iterable[FindingLists]) -> FindingLists:
    """The lists of the union of the partitions (equal to `finding_lists` of all rows)."""
    web: dict[tuple[Any, ...], frozenset[str]] = {}
    keyword: dict[tuple[Any, ...], frozenset[str]] = {}
    for part in parts:
        for mine, theirs in ((web, part.web), (keyword, part.keyword)):
            for key, found in theirs.items():
                mine[key] = mine.get(key, frozenset()) | found
    return FindingLists(web, keyword)


def probe_lists(measurements: pd.DataFrame) -> list[str]:
    """Every list hash the measurements recorded, sorted (provenance.json's `probe_lists`)."""
    if "probe_lists" not in measurements:
        return []
    cells = measurements["probe_lists"].dropna().astype(str).unique()
    return sorted({part for cell in cells for part in cell.split(";") if part})


def stamp(
    findings: pd.DataFrame,
    prov: Provenance,
    measurements: pd.DataFrame | None = None,
    *,
    keyword: bool = False,
    lists: FindingLists | None = None,
) -> pd.DataFrame:
    """The findings with FINDING_COLUMNS; `probe_lists` only when the measurements (or their
    `lists`, merged from partitions) are given (web findings by target and nettest, keyword
    findings by keyword and nettest)."""
    out = findings.assign(
        censorscope_version=prov.censorscope_version,
        rules_version=prov.rules_version,
        analysis_fingerprints=prov.fingerprints_cell,
    )
    if lists is None:
        if measurements is None or "probe_lists" not in measurements:
            return out
        lists = finding_lists(measurements)
    found = lists.keyword if keyword else lists.web
    names = ["keyword", "test_name"] if keyword else ["target", "test_name"]
    wanted = out[names].astype(object).itertuples(index=False, name=None)
    return out.assign(probe_lists=[";".join(sorted(found.get(tuple(k), ()))) for k in wanted])
