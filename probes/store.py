"""The results store: crash-safe appends, the partition layout, and the resume index.

Layout (DESIGN 3, a contract):
    RESULTS/raw/date=YYYY-MM-DD/vantage=NAME/test_name=NETTEST/<report_id>.jsonl
    RESULTS/reports/<report_id>.json     the report's manifest (what resume needs)

One report is one file: its date partition is the day the report started (a run crossing
midnight stays in one file; each line still carries its own measurement_start_time).
Each line is written whole with one write() on an O_APPEND descriptor and fsynced, so a crash
leaves complete lines only; should a torn line exist anyway (power loss), readers skip and report
it, and the writer moves it aside before appending again.
"""

from __future__ import annotations

import os
import re
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import orjson

from probes.measurement import Measurement, MeasurementError

RAW_DIR = "raw"
REPORTS_DIR = "reports"
# Stored files are the owner's, readable by its group (an analysis account), not by everyone:
# measurements name the vantage's network and what it looked at.
FILE_MODE = 0o640
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class StoreError(Exception):
    """A problem with the results store (bad name, unknown report, unreadable file)."""


@dataclass(frozen=True)
class LineProblem:
    """A line a reader skipped: where it is and why."""

    path: Path
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.reason}"


def check_name(kind: str, value: str) -> str:
    """Vantage and test names become directory names: keep them to a safe alphabet."""
    if not SAFE_NAME.match(value):
        raise StoreError(
            f"{kind} {value!r}: use 1-64 letters, digits, '.', '_' or '-' (it names a directory)"
        )
    return value


@dataclass
class ReportManifest:
    """What a report is, so that `--resume REPORT_ID` can carry it on."""

    report_id: str
    test_name: str
    vantage: str
    date: str
    test_start_time: str
    options: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> bytes:
        return orjson.dumps(self.__dict__, option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes) -> None:
    """Write a whole file or nothing: temp file, fsync, rename, fsync the directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    try:
        with open(fd, "wb", closefd=False) as handle:
            handle.write(data)
            handle.flush()
            os.fsync(fd)
    except OSError:
        os.close(fd)
        tmp.unlink(missing_ok=True)  # a full disk must not leave temp files behind
        raise
    os.close(fd)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _quarantine_torn_tail(path: Path) -> Path | None:
    """If the file ends inside a line, move that fragment to a side file and cut it off."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return None
    if size == 0:
        return None
    with open(path, "rb+") as handle:
        handle.seek(size - 1)
        if handle.read(1) == b"\n":
            return None
        # Walk back to the last newline; lines are small, read the tail in chunks.
        pos = size
        chunk = 65536
        cut = 0
        while pos > 0:
            start = max(0, pos - chunk)
            handle.seek(start)
            block = handle.read(pos - start)
            idx = block.rfind(b"\n")
            if idx >= 0:
                cut = start + idx + 1
                break
            pos = start
        handle.seek(cut)
        fragment = handle.read()
        side = path.with_name(path.name + ".torn")
        with open(os.open(side, os.O_WRONLY | os.O_APPEND | os.O_CREAT, FILE_MODE), "ab") as out:
            out.write(fragment + b"\n")
            out.flush()
            os.fsync(out.fileno())
        handle.truncate(cut)
        handle.flush()
        os.fsync(handle.fileno())
        return side


class ReportWriter:
    """Appends measurements of one report; safe to call from several threads."""

    def __init__(self, path: Path, *, fsync: bool = True) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.torn_tail = _quarantine_torn_tail(path)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, FILE_MODE)
        self._fsync = fsync
        self._lock = threading.Lock()
        self._dirty = False  # a failed write could not be cut back: repair before appending
        self.written = 0
        _fsync_dir(path.parent)

    def append(self, measurement: Measurement) -> None:
        self.append_line(measurement.to_json_line())

    def append_line(self, line: bytes) -> None:
        """Write one complete line, then make it durable before returning."""
        self.append_lines([line])

    def append_lines(self, lines: list[bytes]) -> None:
        """Write each line with its own write() (never torn), then one fsync for the batch.

        Group commit: under load the runner hands over every line finished since the last
        batch, so the durability cost is one fsync per batch, not per measurement.
        """
        for line in lines:
            if not line.endswith(b"\n") or b"\n" in line[:-1]:
                raise StoreError("a stored measurement must be exactly one newline-terminated line")
        with self._lock:
            if self._fd < 0:
                raise StoreError(f"{self.path}: the report is closed")
            if self._dirty:
                self._repair()
            start = os.fstat(self._fd).st_size
            try:
                for line in lines:
                    view = memoryview(line)
                    while view:
                        n = os.write(self._fd, view)
                        view = view[n:]
                if self._fsync:
                    os.fsync(self._fd)
            except OSError:
                # A short write (ENOSPC, EFBIG, EDQUOT) leaves a fragment; the next line would
                # be appended after it and both be lost. Cut the file back to where this batch
                # started before anyone appends again; the caller gets the error (not stored).
                self._cut(start)
                raise
            self.written += len(lines)

    def _cut(self, size: int) -> None:
        """Truncate back to `size` (a line boundary); if even that fails, repair before the next
        append (the fragment is then moved aside as a torn tail)."""
        try:
            os.ftruncate(self._fd, size)
            os.fsync(self._fd)
        except OSError:
            self._dirty = True

    def _repair(self) -> None:
        _quarantine_torn_tail(self.path)
        self._dirty = False

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.fsync(self._fd)
                os.close(self._fd)
                self._fd = -1

    def __enter__(self) -> ReportWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ResultsStore:
    """A directory of results in the DESIGN 3 layout."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    def report_path(self, manifest: ReportManifest) -> Path:
        return (
            self.root
            / RAW_DIR
            / f"date={manifest.date}"
            / f"vantage={check_name('vantage', manifest.vantage)}"
            / f"test_name={check_name('test name', manifest.test_name)}"
            / f"{manifest.report_id}.jsonl"
        )

    def manifest_path(self, report_id: str) -> Path:
        if not SAFE_NAME.match(report_id[:64]) or "/" in report_id:
            raise StoreError(f"report id {report_id!r} is not a valid report id")
        return self.root / REPORTS_DIR / f"{report_id}.json"

    def open_report(self, manifest: ReportManifest) -> ReportWriter:
        """Record the manifest (once) and open the report file for appending."""
        mpath = self.manifest_path(manifest.report_id)
        if not mpath.exists():
            atomic_write(mpath, manifest.to_json())
        return ReportWriter(self.report_path(manifest))

    def load_manifest(self, report_id: str) -> ReportManifest:
        path = self.manifest_path(report_id)
        try:
            data = orjson.loads(path.read_bytes())
        except FileNotFoundError as exc:
            raise StoreError(f"no report {report_id!r} in {self.root} (looked for {path})") from exc
        except orjson.JSONDecodeError as exc:
            raise StoreError(f"{path}: not valid JSON: {exc}") from exc
        try:
            return ReportManifest(**data)
        except TypeError as exc:
            raise StoreError(f"{path}: not a report manifest: {exc}") from exc

    def done_inputs(self, manifest: ReportManifest) -> Counter[str | None]:
        """How many measurements each input already has in this report (the resume index)."""
        done: Counter[str | None] = Counter()
        path = self.report_path(manifest)
        if not path.exists():
            return done
        for _path, _lineno, data in iter_json_lines(path):
            done[data.get("input")] += 1
        return done

    def iter_report_files(
        self,
        *,
        since: date | None = None,
        until: date | None = None,
        vantages: set[str] | None = None,
        test_names: set[str] | None = None,
    ) -> Iterator[Path]:
        """Report files in the layout, filtered on the partition names without opening files."""
        raw = self.root / RAW_DIR
        for date_dir in sorted(raw.glob("date=*")):
            try:
                day = date.fromisoformat(date_dir.name.removeprefix("date="))
            except ValueError:
                continue
            if (since and day < since) or (until and day > until):
                continue
            for vantage_dir in sorted(date_dir.glob("vantage=*")):
                if vantages and vantage_dir.name.removeprefix("vantage=") not in vantages:
                    continue
                for test_dir in sorted(vantage_dir.glob("test_name=*")):
                    if test_names and test_dir.name.removeprefix("test_name=") not in test_names:
                        continue
                    yield from sorted(test_dir.glob("*.jsonl"))

    def iter_measurements(
        self,
        *,
        since: date | None = None,
        until: date | None = None,
        vantages: set[str] | None = None,
        test_names: set[str] | None = None,
        on_problem: Callable[[LineProblem], None] | None = None,
    ) -> Iterator[Measurement]:
        """Stream every measurement of the store; bad lines go to `on_problem`, never fatal."""
        for path in self.iter_report_files(
            since=since, until=until, vantages=vantages, test_names=test_names
        ):
            for _p, lineno, data in iter_json_lines(path, on_problem=on_problem):
                try:
                    yield Measurement.from_dict(data)
                except MeasurementError as exc:
                    if on_problem:
                        on_problem(LineProblem(path, lineno, str(exc)))


def iter_json_lines(
    path: Path, *, on_problem: Callable[[LineProblem], None] | None = None
) -> Iterator[tuple[Path, int, dict[str, Any]]]:
    """Yield (path, line number, object) for each complete JSON line; report the rest."""
    with open(path, "rb") as handle:
        for lineno, line in enumerate(handle, start=1):
            if not line.endswith(b"\n"):
                if on_problem:
                    on_problem(LineProblem(path, lineno, "torn line (no newline at end of file)"))
                break
            if not line.strip():
                continue
            try:
                data = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                if on_problem:
                    on_problem(LineProblem(path, lineno, f"not valid JSON: {exc}"))
                continue
            if not isinstance(data, dict):
                if on_problem:
                    on_problem(LineProblem(path, lineno, "not a JSON object"))
                continue
            yield path, lineno, data
