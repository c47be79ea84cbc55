"""Sending stored measurements to a collector, each exactly once, across crashes and outages.

The queue is not a second copy of the data: it is the results store minus an *uploaded index*,
an append-only file of the measurement_uids the collector has acknowledged
(`RESULTS/upload/<collector>/uploaded.log`). A uid is appended (and fsynced, in batches) only
after the collector answered 200, so a crash can only forget acknowledgements, never invent
them; the forgotten ones are sent again on the next run and the collector, idempotent by
measurement_uid, answers "duplicate" without storing a second copy.

Only a definitive refusal of one measurement (400, 409 uid conflict, 413, 422 to its own
submission) moves that one measurement to `rejected.log`, so it does not block the queue on
every run. A refused credential (401, 403: the token is unknown or speaks for another vantage)
is the user's to fix: the measurements stay pending and the command says so. A report the
collector will not open (404, 405, a redirect, any other answer) is a temporary failure: its
measurements stay pending for the next run. Transient failures (no connection, timeouts, 5xx,
429, 507) are retried with exponential backoff and full jitter; when the collector stays away
past the retry budget the run stops, and the next run carries on where this one stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import hashlib
import ipaddress
import os
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson

from probes.config import Config
from probes.net.http import JSONClient, JSONReply
from probes.secret_files import SecretFileError, loose_permissions, read_token_file
from probes.store import ResultsStore

UPLOAD_DIR = "upload"
INDEX_FLUSH_EVERY = 256
RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504, 507})
# Definitive refusals of one measurement (its content), never of the credential or the report.
REJECT_STATUSES = frozenset({400, 409, 413, 422})
# A run stops after this many reports the collector would not open (a wrong URL fails them all).
MAX_OPEN_FAILURES = 3
_LOOPBACK_HOSTS = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


class UploadError(Exception):
    """The upload cannot go on; `bad_input` when the user must fix something (URL, token)."""

    def __init__(self, message: str, *, bad_input: bool = False) -> None:
        super().__init__(message)
        self.bad_input = bad_input


class _Unavailable(Exception):
    """The collector did not answer within the retry budget."""


class _ReportGone(Exception):
    """The collector no longer accepts this report (closed or unknown): open a new one."""


@dataclass
class UploadSettings:
    collector: str
    token: str
    attempts: int = 8
    backoff_base: float = 0.25
    backoff_cap: float = 30.0
    timeout: float = 30.0
    ca_file: str | None = None
    # Plain http to a collector that is not on loopback sends the token in clear: refused
    # unless the user says so (a lab, a private network).
    allow_http: bool = False


@dataclass
class UploadSummary:
    uploaded: int = 0
    duplicates: int = 0
    rejected: int = 0
    pending: int = 0
    reports: int = 0
    retries: int = 0
    stopped: str | None = None
    rejections: list[str] = field(default_factory=list)
    # Reports left pending because the collector would not open them (temporary).
    not_opened: list[str] = field(default_factory=list)
    # Set when the collector refused our token for these measurements (the user's to fix).
    credential: str | None = None

    @property
    def complete(self) -> bool:
        """Everything was sent or definitively refused: nothing left for a next run."""
        return self.stopped is None and self.credential is None and not self.not_opened

    @property
    def ok(self) -> bool:
        """Complete and nothing rejected: what exit status 0 means."""
        return self.complete and self.rejected == 0

    def describe(self) -> str:
        text = (
            f"upload: {self.uploaded} uploaded, {self.duplicates} already at the collector, "
            f"{self.rejected} rejected, {self.retries} retries, {self.reports} reports"
        )
        if self.credential:
            text += f"; token refused: {self.credential}"
        if self.not_opened:
            text += f"; {len(self.not_opened)} reports not opened: {self.not_opened[0]}"
        if self.stopped:
            text += f"; stopped: {self.stopped}"
        if self.pending:
            text += f" ({self.pending} left for the next run)"
        return text


def collector_key(url: str) -> str:
    """A directory name for one collector: readable host part plus a short hash of the URL."""
    readable = re.sub(r"[^A-Za-z0-9.-]+", "_", url.split("://", 1)[-1]).strip("_")[:48]
    return f"{readable or 'collector'}-{hashlib.sha256(url.encode()).hexdigest()[:8]}"


class UploadIndex:
    """The uploaded and rejected uids for one collector, append-only and fsynced."""

    def __init__(self, store_root: Path, collector: str) -> None:
        self.dir = Path(store_root) / UPLOAD_DIR / collector_key(collector)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.uploaded_path = self.dir / "uploaded.log"
        self.rejected_path = self.dir / "rejected.log"
        self.done: set[str] = set()
        self._buffer: list[bytes] = []
        self._lock_fd = -1

    def lock(self) -> None:
        """One uploader per store and collector at a time (the scheduler, a manual run)."""
        fd = os.open(self.dir / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            os.close(fd)
            raise UploadError(f"another upload to this collector is running ({self.dir})") from exc
        self._lock_fd = fd

    def load(self) -> None:
        for path in (self.uploaded_path, self.rejected_path):
            if not path.exists():
                continue
            with open(path, "rb") as handle:
                for line in handle:
                    if line.endswith(b"\n"):  # a torn last line is an acknowledgement lost
                        self.done.add(line.split(b" ", 1)[0].strip().decode("ascii", "replace"))

    def mark(self, uid: str) -> None:
        self.done.add(uid)
        self._buffer.append(uid.encode() + b"\n")
        if len(self._buffer) >= INDEX_FLUSH_EVERY:
            self.flush()

    def reject(self, uid: str, reason: str) -> None:
        self.done.add(uid)
        reason = " ".join(reason.split())[:300]
        _append_durably(self.rejected_path, [f"{uid} {reason}\n".encode()])

    def flush(self) -> None:
        if self._buffer:
            _append_durably(self.uploaded_path, self._buffer)
            self._buffer = []

    def close(self, *, flush: bool = True) -> None:
        try:
            if flush:
                self.flush()
        finally:
            if self._lock_fd >= 0:
                os.close(self._lock_fd)
                self._lock_fd = -1


def _append_durably(path: Path, lines: list[bytes]) -> None:
    """One write of whole lines on an O_APPEND descriptor, then fsync. A write that fails
    part-way (disk full) is cut back, so the next batch does not start inside a fragment."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    except OSError as exc:
        exc.filename = exc.filename or str(path)
        raise
    try:
        start = os.fstat(fd).st_size
        data = memoryview(b"".join(lines))
        try:
            while data:
                data = data[os.write(fd, data) :]
            os.fsync(fd)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, start)
            exc.filename = exc.filename or str(path)
            raise
    finally:
        os.close(fd)


def pending_reports(
    store: ResultsStore, done: set[str]
) -> Iterator[tuple[Path, list[tuple[str, bytes, dict[str, Any]]]]]:
    """Per report file, the measurements not yet uploaded: (uid, raw line, decoded)."""
    for path in store.iter_report_files():
        todo: list[tuple[str, bytes, dict[str, Any]]] = []
        with open(path, "rb") as handle:
            for line in handle:
                if not line.endswith(b"\n") or not line.strip():
                    continue
                try:
                    data = orjson.loads(line)
                except orjson.JSONDecodeError:
                    continue
                uid = data.get("measurement_uid") if isinstance(data, dict) else None
                if isinstance(uid, str) and uid not in done:
                    todo.append((uid, line, data))
        if todo:
            yield path, todo


def count_pending(store_root: Path, collector: str) -> int:
    """How many measurements of the store are not uploaded to this collector yet."""
    index = UploadIndex(store_root, collector)
    index.load()
    return sum(len(todo) for _p, todo in pending_reports(ResultsStore(store_root), index.done))


class _Uploader:
    def __init__(self, client: JSONClient, settings: UploadSettings, summary: UploadSummary):
        self.client = client
        self.settings = settings
        self.summary = summary
        self.base = settings.collector.rstrip("/")

    def _backoff(self, attempt: int) -> float:
        """Full jitter: uniform in [0, min(cap, base * 2**attempt)]."""
        ceiling = min(self.settings.backoff_cap, self.settings.backoff_base * 2**attempt)
        return random.uniform(0, ceiling)

    async def request(self, path: str, body: bytes) -> JSONReply:
        """POST with retries of transient failures; 401 stops the whole upload."""
        last = ""
        for attempt in range(self.settings.attempts):
            if attempt:
                self.summary.retries += 1
                await asyncio.sleep(self._backoff(attempt - 1))
            reply = await self.client.post_encoded(
                self.base + path, body, timeout=self.settings.timeout
            )
            if reply.status_code is None:
                last = reply.failure or "no answer"
                continue
            if reply.status_code in RETRY_STATUSES:
                last = f"HTTP {reply.status_code}"
                continue
            if reply.status_code == 401:
                raise UploadError(
                    f"collector {self.settings.collector} refused the token: {_reason(reply)}",
                    bad_input=True,
                )
            if reply.status_code == 403:
                raise _CredentialRefused(_reason(reply))
            return reply
        raise _Unavailable(f"collector {self.settings.collector} unavailable ({last})")

    async def open_report(self, first: dict[str, Any]) -> str:
        meta = {
            key: first.get(key, "")
            for key in (
                "data_format_version",
                "probe_asn",
                "probe_cc",
                "software_name",
                "software_version",
                "test_name",
                "test_start_time",
                "test_version",
            )
        }
        meta["format"] = "json"
        reply = await self.request("/report", orjson.dumps(meta))
        report_id = reply.data.get("report_id") if isinstance(reply.data, dict) else None
        if reply.status_code != 200 or not isinstance(report_id, str):
            raise _NotOpened(f"opening a report: HTTP {reply.status_code}: {_reason(reply)}")
        self.summary.reports += 1
        return report_id

    async def submit(self, report_id: str, data: dict[str, Any]) -> JSONReply:
        # The measurement carries the report_id the collector gave (as OONI's probe does): the
        # collector files it under that report and refuses any other.
        body = orjson.dumps({"format": "json", "content": {**data, "report_id": report_id}})
        reply = await self.request(f"/report/{report_id}", body)
        if reply.status_code in (404, 409) and _is_report_problem(reply):
            raise _ReportGone
        return reply

    async def close_report(self, report_id: str) -> None:
        # Closing is a courtesy: the measurements are stored already.
        with contextlib.suppress(_Unavailable):
            await self.request(f"/report/{report_id}/close", b"{}")


class _NotOpened(Exception):
    """The collector did not open a report for these measurements (they stay pending)."""


class _CredentialRefused(Exception):
    """403: the token may not speak for these measurements (they stay pending)."""


def _reason(reply: JSONReply) -> str:
    if isinstance(reply.data, dict) and isinstance(reply.data.get("error"), str):
        return str(reply.data["error"])
    return reply.failure or f"HTTP {reply.status_code}"


def _is_report_problem(reply: JSONReply) -> bool:
    return "report" in _reason(reply) and "measurement_uid" not in _reason(reply)


async def _upload_report(
    up: _Uploader, index: UploadIndex, todo: list[tuple[str, bytes, dict[str, Any]]]
) -> None:
    summary = up.summary
    report_id = await up.open_report(todo[0][2])
    position = 0
    reopened = 0
    while position < len(todo):
        uid, _line, data = todo[position]
        try:
            reply = await up.submit(report_id, data)
        except _ReportGone:
            reopened += 1
            if reopened > 3:
                raise _Unavailable("the collector keeps losing our report") from None
            report_id = await up.open_report(todo[position][2])
            continue
        if reply.status_code == 200:
            index.mark(uid)
            duplicate = isinstance(reply.data, dict) and reply.data.get("duplicate") is True
            if duplicate:
                summary.duplicates += 1
            else:
                summary.uploaded += 1
        elif reply.status_code in REJECT_STATUSES:
            reason = f"HTTP {reply.status_code}: {_reason(reply)}"
            index.reject(uid, reason)
            summary.rejected += 1
            if len(summary.rejections) < 20:
                summary.rejections.append(f"{uid}: {reason}")
        else:
            raise _Unavailable(f"unexpected HTTP {reply.status_code}: {_reason(reply)}")
        position += 1
    await up.close_report(report_id)


async def upload_store(
    store_root: Path, settings: UploadSettings, *, client: JSONClient | None = None
) -> UploadSummary:
    """Upload every measurement of the store not yet acknowledged by this collector."""
    check_collector_url(settings.collector, allow_http=settings.allow_http)
    root = Path(store_root)
    if not root.is_dir():
        raise UploadError(f"results directory {root} does not exist", bad_input=True)
    summary = UploadSummary()
    try:
        index = UploadIndex(root, settings.collector)
        index.lock()
    except OSError as exc:
        # The acknowledgements are recorded in the store: without that, a measurement sent now
        # would be sent again on every run. Send nothing.
        read_only = exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM)
        what = "is read-only" if read_only else "cannot record uploads"
        raise UploadError(
            f"results directory {root} {what} ({exc.strerror}: {exc.filename}): nothing was "
            "sent; the uploader records there what the collector acknowledged",
            bad_input=read_only,
        ) from exc
    own_client = client is None
    client = client or JSONClient(
        ca_file=settings.ca_file, headers={"authorization": f"Bearer {settings.token}"}
    )
    try:
        index.load()
        up = _Uploader(client, settings, summary)
        reports = pending_reports(ResultsStore(root), index.done)
        refused: set[object] = set()  # vantages whose measurements the token may not send
        for _path, todo in reports:
            left = 0
            vantage = _vantage(todo[0][2])
            if vantage in refused:
                summary.pending += len(todo)
                continue
            try:
                await _upload_report(up, index, todo)
            except _CredentialRefused as exc:
                refused.add(vantage)
                summary.credential = (
                    f"{exc}: the measurements of vantage {vantage!r} stay pending; "
                    "upload them with that vantage's token"
                )
                left = 1
            except _NotOpened as exc:
                summary.not_opened.append(str(exc))
                left = 1
                if len(summary.not_opened) >= MAX_OPEN_FAILURES:
                    summary.stopped = f"{len(summary.not_opened)} reports not opened"
            except _Unavailable as exc:
                summary.stopped = str(exc)
                left = 1
            finally:
                index.flush()
            if left:
                summary.pending += sum(1 for uid, _l, _d in todo if uid not in index.done)
            if summary.stopped:
                summary.pending += sum(len(rest) for _p, rest in reports)
                break
    except OSError as exc:
        if exc.filename is None or not str(exc.filename).startswith(str(index.dir)):
            raise
        # The disk filled or the store went read-only mid-upload: the measurements sent since
        # the last record are sent again next time, and the collector answers "duplicate".
        raise UploadError(
            f"could not record acknowledgements in {index.dir} ({exc.strerror}); the "
            "measurements not recorded stay pending and are sent again on the next run"
        ) from exc
    finally:
        # Interrupted or failed: keep what was acknowledged if the disk lets us (a failure
        # here is the one reported above, or loses acknowledgements only: sent again later).
        with contextlib.suppress(OSError):
            index.flush()
        index.close(flush=False)
        if own_client:
            await client.aclose()
    return summary


def _vantage(data: dict[str, Any]) -> object:
    annotations = data.get("annotations")
    return annotations.get("vantage") if isinstance(annotations, dict) else None


def check_collector_url(url: str, *, allow_http: bool = False) -> None:
    """http(s)://HOST[:PORT]; plain http only to loopback unless `allow_http` (bad input)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError as exc:
        raise UploadError(f"--collector {url!r}: {exc}", bad_input=True) from exc
    if parts.scheme not in ("http", "https") or not host or any(c.isspace() for c in url):
        raise UploadError(f"--collector {url!r}: expected http(s)://HOST[:PORT]", bad_input=True)
    if parts.scheme == "http" and not allow_http and not _is_loopback(host):
        raise UploadError(
            f"--collector {url!r}: plain http would send the token in clear over the network; "
            "use https:// (or, for a lab or a private network, allow_http = true in [upload])",
            bad_input=True,
        )


def _is_loopback(host: str) -> bool:
    if host.lower().rstrip(".") in _LOOPBACK_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def settings_from_config(
    cfg: Config,
    *,
    collector: str | None = None,
    token: str | None = None,
    token_file: Path | None = None,
) -> tuple[UploadSettings, list[str]]:
    """Upload settings from the options and the config, and warnings for the user.

    The token, by precedence: `token` (the deprecated --token), `token_file`, the environment
    (CENSORSCOPE_UPLOAD_TOKEN, already in `cfg.upload.token`), `[upload] token_file`, then
    `[upload] token`. The collector's certificate is checked against the system's roots plus
    `[probe] ca_file`. Raises UploadError (bad input) when there is no collector or no token.
    """
    warnings: list[str] = []
    url = collector or cfg.upload.collector
    if not url:
        raise UploadError(
            "no collector: give --collector URL or [upload] collector in the config",
            bad_input=True,
        )
    env_token = os.environ.get("CENSORSCOPE_UPLOAD_TOKEN")
    file = token_file or (Path(cfg.upload.token_file) if cfg.upload.token_file else None)
    if token:
        secret = token
        warnings.append(
            "warning: --token is visible to every user of this machine (ps, /proc); use "
            "CENSORSCOPE_UPLOAD_TOKEN, --token-file or [upload] token_file instead"
        )
    elif file is not None and (token_file or not env_token):
        try:
            secret = read_token_file(file)
        except SecretFileError as exc:
            raise UploadError(str(exc), bad_input=True) from exc
        if warning := loose_permissions(file, "the upload token file"):
            warnings.append(warning)
    else:
        secret = cfg.upload.token  # the environment's, else the config's
        if (
            not env_token
            and secret
            and (warning := loose_permissions(Path(cfg.source), "this config holds a token and"))
        ):
            warnings.append(warning)
    if not secret:
        raise UploadError(
            "no token: set CENSORSCOPE_UPLOAD_TOKEN, --token-file FILE or [upload] token_file",
            bad_input=True,
        )
    settings = UploadSettings(
        collector=url,
        token=secret,
        allow_http=cfg.upload.allow_http,
        ca_file=cfg.probe.ca_file or None,  # a lab's collector behind its own CA: https still
    )
    return settings, warnings
