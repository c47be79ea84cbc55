"""The uploader against a real collector process: queue, index, outages, refusals, the CLI."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from probes.store import ReportManifest, ResultsStore
from probes.upload import UploadError, UploadIndex, UploadSettings, count_pending, upload_store
from tests.test_collector_support import (
    CLI,
    ROOT,
    CollectorProcess,
    fill_store,
    make_token,
    measurement,
    stored_uids,
)


@pytest.fixture
def collector(tmp_path: Path) -> Iterator[tuple[CollectorProcess, str]]:
    token = make_token()
    (tmp_path / "tokens").write_text(f"probe-a {token}\n")
    proc = CollectorProcess(data=tmp_path / "collected", tokens=tmp_path / "tokens").start()
    yield proc, token
    proc.stop()


def settings(url: str, token: str, **kw: float) -> UploadSettings:
    return UploadSettings(collector=url, token=token, backoff_base=0.05, **kw)  # type: ignore[arg-type]


def test_uploads_everything_once_and_a_rerun_sends_nothing(
    tmp_path: Path, collector: tuple[CollectorProcess, str]
) -> None:
    proc, token = collector
    uids = fill_store(tmp_path / "results", "probe-a", 30, reports=3)
    summary = asyncio.run(upload_store(tmp_path / "results", settings(proc.url, token)))
    assert (summary.uploaded, summary.duplicates, summary.reports) == (30, 0, 3)
    assert summary.complete
    assert sorted(stored_uids(proc.data)) == sorted(uids)
    again = asyncio.run(upload_store(tmp_path / "results", settings(proc.url, token)))
    assert (again.uploaded, again.duplicates, again.reports) == (0, 0, 0)
    assert count_pending(tmp_path / "results", proc.url) == 0


def test_a_lost_index_resends_but_the_collector_stores_nothing_twice(
    tmp_path: Path, collector: tuple[CollectorProcess, str]
) -> None:
    proc, token = collector
    uids = fill_store(tmp_path / "results", "probe-a", 20)
    asyncio.run(upload_store(tmp_path / "results", settings(proc.url, token)))
    # A crash after the collector's 200 and before our index write: half the index is lost.
    index = UploadIndex(tmp_path / "results", proc.url)
    lines = index.uploaded_path.read_bytes().splitlines(keepends=True)
    index.uploaded_path.write_bytes(b"".join(lines[:10]) + lines[10][:5])  # and a torn line
    assert count_pending(tmp_path / "results", proc.url) == 10
    summary = asyncio.run(upload_store(tmp_path / "results", settings(proc.url, token)))
    assert (summary.uploaded, summary.duplicates) == (0, 10)
    assert sorted(stored_uids(proc.data)) == sorted(uids)


def test_an_outage_stops_the_run_and_the_next_run_resumes(
    tmp_path: Path, collector: tuple[CollectorProcess, str]
) -> None:
    proc, token = collector
    uids = fill_store(tmp_path / "results", "probe-a", 12, reports=2)
    proc.stop()
    summary = asyncio.run(upload_store(tmp_path / "results", settings(proc.url, token, attempts=3)))
    assert not summary.complete
    assert summary.pending == 12 and summary.retries >= 2
    assert "unavailable" in (summary.stopped or "")
    proc.start()
    summary = asyncio.run(upload_store(tmp_path / "results", settings(proc.url, token)))
    assert summary.complete and summary.uploaded == 12
    assert sorted(stored_uids(proc.data)) == sorted(uids)


def test_refused_measurements_are_set_aside_not_retried_forever(
    tmp_path: Path, collector: tuple[CollectorProcess, str]
) -> None:
    proc, token = collector
    fill_store(tmp_path / "results", "probe-a", 3)
    # A measurement of another vantage in this store: the token may not speak for it.
    manifest = ReportManifest("20240101T000000Z_webconnectivity_ZZ_0_n1_x", "web_connectivity",
                              "probe-b", "2024-01-01", "2024-01-01 00:00:00")  # fmt: skip
    with ResultsStore(tmp_path / "results").open_report(manifest) as writer:
        writer.append(measurement("probe-b", manifest.report_id, 0))
    summary = asyncio.run(upload_store(tmp_path / "results", settings(proc.url, token)))
    assert (summary.uploaded, summary.rejected) == (3, 1)
    assert "annotations.vantage" in summary.rejections[0]
    rejected = UploadIndex(tmp_path / "results", proc.url).rejected_path.read_text()
    assert "HTTP 403" in rejected
    again = asyncio.run(upload_store(tmp_path / "results", settings(proc.url, token)))
    assert (again.uploaded, again.rejected) == (0, 0)


def test_a_wrong_token_is_bad_input(
    tmp_path: Path, collector: tuple[CollectorProcess, str]
) -> None:
    proc, _token = collector
    fill_store(tmp_path / "results", "probe-a", 2)
    with pytest.raises(UploadError) as info:
        asyncio.run(upload_store(tmp_path / "results", settings(proc.url, make_token())))
    assert info.value.bad_input and "refused the token" in str(info.value)
    assert count_pending(tmp_path / "results", proc.url) == 2


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", CLI, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        timeout=120,
    )


def test_upload_command(tmp_path: Path, collector: tuple[CollectorProcess, str]) -> None:
    proc, token = collector
    fill_store(tmp_path / "results", "probe-a", 5)
    done = _cli(
        "upload", "--collector", proc.url, "--results", str(tmp_path / "results"),
        env={"CENSORSCOPE_UPLOAD_TOKEN": token},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "5 uploaded" in done.stdout
    fill_store(tmp_path / "more", "probe-a", 1)
    bad = _cli("upload", "--collector", proc.url, "--token", make_token(),
               "--results", str(tmp_path / "more"))  # fmt: skip
    assert bad.returncode == 2
    assert "refused the token" in bad.stderr and len(bad.stderr.splitlines()) == 1
    missing = _cli("upload", "--collector", proc.url, "--results", str(tmp_path / "results"))
    assert missing.returncode == 2 and "no token" in missing.stderr
