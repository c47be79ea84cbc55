"""Where the collector puts accepted measurements, exactly once each.

The store itself (DESIGN 3 layout, one fsynced line per measurement) is the only record of
what was accepted. The uid index that makes submissions idempotent is derived from it: it is
rebuilt by reading the store when the collector starts and then kept in memory, so there is
no second file that a crash could leave out of step with the store. A crash after the fsync
and before the 200 leaves the line stored; the probe retries, the rebuilt index knows the uid,
and the retry is answered "duplicate" without writing again. A crash before the fsync
completes leaves no line (or, after a power loss, a torn tail that is moved aside on start),
so the retry stores it once.

Writes run on a thread pool (fsync blocks); one ReportWriter per report file serialises the
lines of that file, and a uid being written is reserved so that a concurrent retry of the same
measurement waits for the first write instead of racing it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
from collections import Counter, OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from backend.collector_validate import Submission
from probes.store import (
    LineProblem,
    ReportManifest,
    ReportWriter,
    ResultsStore,
    atomic_write,
    iter_json_lines,
)

log = logging.getLogger("censorscope.collector")

SESSIONS_DIR = "collector/reports"


class Conflict(Exception):
    """The uid is already stored for another vantage."""


@dataclass
class Session:
    """A report opened with `POST /report` (the collector's side of the protocol)."""

    report_id: str
    vantage: str
    test_name: str
    opened: str
    closed: bool = False
    meta: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> bytes:
        return orjson.dumps(self.__dict__, option=orjson.OPT_APPEND_NEWLINE)


@dataclass
class RebuildSummary:
    files: int = 0
    measurements: int = 0
    duplicates: int = 0
    problems: list[LineProblem] = field(default_factory=list)
    torn_moved: list[Path] = field(default_factory=list)


class _Writers:
    """Open ReportWriters, at most `limit` of them; a writer in use is never closed."""

    def __init__(self, store: ResultsStore, limit: int) -> None:
        self._store = store
        self._limit = limit
        self._lock = threading.Lock()
        self._open: OrderedDict[Path, tuple[ReportWriter, int]] = OrderedDict()

    def acquire(self, manifest: ReportManifest) -> ReportWriter:
        path = self._store.report_path(manifest)
        with self._lock:
            entry = self._open.get(path)
            if entry is None:
                writer = self._store.open_report(manifest)
                if writer.torn_tail:
                    log.warning("moved a torn last line aside to %s", writer.torn_tail)
                entry = (writer, 0)
            self._open[path] = (entry[0], entry[1] + 1)
            self._open.move_to_end(path)
            self._evict()
            return entry[0]

    def release(self, writer: ReportWriter) -> None:
        with self._lock:
            current, users = self._open[writer.path]
            self._open[writer.path] = (current, users - 1)
            self._evict()

    def _evict(self) -> None:
        if len(self._open) <= self._limit:
            return
        for path, (writer, users) in list(self._open.items()):
            if len(self._open) <= self._limit:
                break
            if users == 0:
                writer.close()
                del self._open[path]

    def close(self) -> None:
        with self._lock:
            for writer, _users in self._open.values():
                writer.close()
            self._open.clear()


class CollectorStore:
    """The collector's results store, its uid index and its open reports."""

    def __init__(self, root: Path, *, max_open_files: int = 256, threads: int = 64) -> None:
        self.root = Path(root)
        self.results = ResultsStore(self.root)
        self.sessions: dict[str, Session] = {}
        self.counts: Counter[str] = Counter()
        self._index: dict[str, str] = {}  # measurement_uid -> vantage
        self._pending: dict[str, asyncio.Task[None]] = {}
        self._writers = _Writers(self.results, max_open_files)
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix="collector-write")

    @property
    def total(self) -> int:
        return len(self._index)

    # --- start-up ---------------------------------------------------------------------------

    def rebuild(self) -> RebuildSummary:
        """Read the store: index every stored uid, move torn tails aside, load sessions."""
        summary = RebuildSummary()
        for path in self.results.iter_report_files():
            summary.files += 1
            vantage = path.parent.parent.name.removeprefix("vantage=")
            torn = False

            def problem(p: LineProblem) -> None:
                nonlocal torn
                summary.problems.append(p)
                torn = torn or p.reason.startswith("torn")

            for _p, _n, data in iter_json_lines(path, on_problem=problem):
                uid = data.get("measurement_uid")
                if not isinstance(uid, str):
                    continue
                if uid in self._index:
                    summary.duplicates += 1
                    continue
                self._index[uid] = vantage
                self.counts[vantage] += 1
                summary.measurements += 1
            if torn:
                writer = ReportWriter(path)  # opening a writer moves the torn tail aside
                writer.close()
                if writer.torn_tail:
                    summary.torn_moved.append(writer.torn_tail)
        sessions = self.root / SESSIONS_DIR
        for path in sorted(sessions.glob("*.json")):
            try:
                session = Session(**orjson.loads(path.read_bytes()))
            except (orjson.JSONDecodeError, TypeError) as exc:
                log.warning("%s: skipped, not a report session: %s", path, exc)
                continue
            self.sessions[session.report_id] = session
        return summary

    # --- reports ----------------------------------------------------------------------------

    def open_session(self, session: Session) -> None:
        """Record a new report durably, so it survives a restart of the collector."""
        atomic_write(self.root / SESSIONS_DIR / f"{session.report_id}.json", session.to_json())
        self.sessions[session.report_id] = session

    def close_session(self, session: Session) -> None:
        session.closed = True
        atomic_write(self.root / SESSIONS_DIR / f"{session.report_id}.json", session.to_json())

    # --- measurements -----------------------------------------------------------------------

    async def submit(self, sub: Submission, session: Session) -> bool:
        """Store a checked measurement once: True if stored now, False if already stored.

        The line is filed under the report it was posted to: that report's id, and the day the
        collector opened it (as OONI's collector files a measurement by its arrival, not by a
        date the client wrote), so no content can choose another report's file or 1970.
        """
        sub = dataclasses.replace(
            sub,
            report_id=session.report_id,
            date=session.opened[:10],
            test_start_time=session.opened,
        )
        while True:
            owner = self._index.get(sub.uid)
            if owner is not None:
                if owner != sub.vantage:
                    raise Conflict(sub.uid)
                return False
            pending = self._pending.get(sub.uid)
            if pending is None:
                break
            await asyncio.wait({pending})  # the same uid is being written: wait, then re-check
        task = asyncio.get_running_loop().create_task(self._commit(sub))
        self._pending[sub.uid] = task
        # shield: a client that goes away must not cancel a write that may already be on disk.
        await asyncio.shield(task)
        return True

    async def _commit(self, sub: Submission) -> None:
        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._append, sub)
            self._index[sub.uid] = sub.vantage
            self.counts[sub.vantage] += 1
        finally:
            del self._pending[sub.uid]

    def _append(self, sub: Submission) -> None:
        manifest = ReportManifest(
            report_id=sub.report_id,
            test_name=sub.test_name,
            vantage=sub.vantage,
            date=sub.date,
            test_start_time=sub.test_start_time,
            options={"source": "collector"},
        )
        writer = self._writers.acquire(manifest)
        try:
            writer.append_line(sub.line)
        finally:
            self._writers.release(writer)

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        self._writers.close()
