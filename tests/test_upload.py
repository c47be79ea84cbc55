"""The uploader against a real collector process: queue, index, outages, refusals, the CLI."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from probes.measurement import Measurement
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


def _store_with_a_bad_measurement(root: Path, **bad_keys: str) -> Measurement:
    """A report of probe-a: one measurement with `bad_keys` (refused by the collector), one good."""
    manifest = ReportManifest("20240101T000000Z_webconnectivity_ZZ_0_n1_x", "web_connectivity",
                              "probe-a", "2024-01-01", "2024-01-01 00:00:00")  # fmt: skip
    bad = measurement("probe-a", manifest.report_id, 0)
    for key, value in bad_keys.items():
        setattr(bad, key, value)
    with ResultsStore(root).open_report(manifest) as writer:
        writer.append(bad)
        writer.append(measurement("probe-a", manifest.report_id, 1))
    return bad


def test_a_refused_measurement_is_set_aside_alone_not_retried_forever(
    tmp_path: Path, collector: tuple[CollectorProcess, str]
) -> None:
    proc, token = collector
    fill_store(tmp_path / "results", "probe-a", 3)
    # One measurement the collector refuses for good (a malformed base key): only that one.
    bad = _store_with_a_bad_measurement(tmp_path / "results", probe_asn="not-an-asn")
    summary = asyncio.run(upload_store(tmp_path / "results", settings(proc.url, token)))
    assert (summary.uploaded, summary.rejected) == (4, 1)
    assert summary.complete and not summary.ok  # nothing left, but not all is well
    assert "probe_asn" in summary.rejections[0]
    rejected = UploadIndex(tmp_path / "results", proc.url).rejected_path.read_text()
    assert rejected.startswith(bad.measurement_uid) and "HTTP 400" in rejected
    again = asyncio.run(upload_store(tmp_path / "results", settings(proc.url, token)))
    assert (again.uploaded, again.rejected) == (0, 0)


def test_another_vantages_token_rejects_nothing_and_the_right_one_sends_all(
    tmp_path: Path, collector: tuple[CollectorProcess, str]
) -> None:
    """A 403 is a credential the user must fix: every measurement stays pending."""
    proc, token = collector
    other = make_token()
    proc.tokens.write_text(proc.tokens.read_text() + f"probe-b {other}\n")
    uids = fill_store(tmp_path / "results", "probe-a", 5)
    deadline = time.monotonic() + 20
    while True:  # the collector re-reads its tokens file within a second
        summary = asyncio.run(upload_store(tmp_path / "results", settings(proc.url, other)))
        if summary.credential or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert summary.credential and "probe-a" in summary.credential
    assert (summary.uploaded, summary.rejected, summary.pending) == (0, 0, 5)
    assert not summary.complete
    assert not UploadIndex(tmp_path / "results", proc.url).rejected_path.exists()
    right = asyncio.run(upload_store(tmp_path / "results", settings(proc.url, token)))
    assert (right.uploaded, right.rejected) == (5, 0) and right.ok
    assert sorted(stored_uids(proc.data)) == sorted(uids)


class _NotACollector(BaseHTTPRequestHandler):
    """A web server that is not a collector (a wrong URL, a proxy that redirects to https)."""

    status = 405

    def do_POST(self) -> None:
        self.send_response(self.status)
        if self.status in (301, 302, 307, 308):
            self.send_header("location", "https://collector.example/report")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.parametrize("status", [404, 405, 301, 307])
def test_a_report_the_collector_will_not_open_stays_pending(
    tmp_path: Path, collector: tuple[CollectorProcess, str], status: int
) -> None:
    """A wrong path (404 from the collector), 405 or a redirect when opening a report:
    temporary, nothing rejected, and the right URL then sends everything."""
    proc, token = collector
    uids = fill_store(tmp_path / "results", "probe-a", 4, reports=4)
    server = None
    if status == 404:
        wrong = proc.url + "/nowhere"
    else:
        handler = type("Handler", (_NotACollector,), {"status": status})
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        wrong = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        summary = asyncio.run(upload_store(tmp_path / "results", settings(wrong, token)))
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
    assert (summary.uploaded, summary.rejected, summary.pending) == (0, 0, 4)
    assert summary.not_opened[0].startswith(f"opening a report: HTTP {status}")
    assert not summary.complete and summary.stopped  # 3 reports refused: the run stops
    assert not UploadIndex(tmp_path / "results", wrong).rejected_path.exists()
    assert count_pending(tmp_path / "results", wrong) == 4
    right = asyncio.run(upload_store(tmp_path / "results", settings(proc.url, token)))
    assert right.uploaded == 4 and sorted(stored_uids(proc.data)) == sorted(uids)


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
    wrong = tmp_path / "wrong-token"
    wrong.write_text(make_token() + "\n")
    wrong.chmod(0o600)
    bad = _cli("upload", "--collector", proc.url, "--token-file", str(wrong),
               "--results", str(tmp_path / "more"))  # fmt: skip
    assert bad.returncode == 2
    assert "refused the token" in bad.stderr and len(bad.stderr.splitlines()) == 1
    missing = _cli("upload", "--collector", proc.url, "--results", str(tmp_path / "results"))
    assert missing.returncode == 2 and "no token" in missing.stderr


def test_upload_command_keeps_tokens_off_the_command_line_and_private(
    tmp_path: Path, collector: tuple[CollectorProcess, str]
) -> None:
    proc, token = collector
    fill_store(tmp_path / "results", "probe-a", 2)
    results = str(tmp_path / "results")
    # --token still works, with a warning: argv is readable by every user (ps).
    done = _cli("upload", "--collector", proc.url, "--token", token, "--results", results)
    assert done.returncode == 0 and "--token is visible" in done.stderr
    # A token file or a config holding the token, readable by others: a warning naming it.
    token_file = tmp_path / "token"
    token_file.write_text(f"# upload token\n{token}\n")
    token_file.chmod(0o644)
    done = _cli("upload", "--collector", proc.url, "--token-file", str(token_file),
                "--results", results)  # fmt: skip
    assert (
        done.returncode == 0 and f"{token_file}: the upload token file is readable" in done.stderr
    )
    config = tmp_path / "probe.toml"
    config.write_text(f'[upload]\ncollector = "{proc.url}"\ntoken = "{token}"\n')
    config.chmod(0o640)
    done = _cli("upload", "--config", str(config), "--results", results)
    assert done.returncode == 0 and "readable by its group" in done.stderr
    config.chmod(0o600)
    done = _cli("upload", "--config", str(config), "--results", results)
    assert done.returncode == 0 and done.stderr == ""


def test_upload_command_refuses_plain_http_to_another_host(tmp_path: Path) -> None:
    fill_store(tmp_path / "results", "probe-a", 1)
    env = {"CENSORSCOPE_UPLOAD_TOKEN": make_token()}
    done = _cli("upload", "--collector", "http://192.0.2.1:8081", "--results",
                str(tmp_path / "results"), env=env)  # fmt: skip
    assert done.returncode == 2 and "use https://" in done.stderr
    assert not (tmp_path / "results" / "upload").exists()  # nothing was attempted


def test_upload_command_exit_status_for_a_refused_token_and_a_rejection(
    tmp_path: Path, collector: tuple[CollectorProcess, str]
) -> None:
    proc, token = collector
    _store_with_a_bad_measurement(tmp_path / "results", probe_cc="lowercase")
    results = str(tmp_path / "results")
    done = _cli("upload", "--collector", proc.url, "--results", results,
                env={"CENSORSCOPE_UPLOAD_TOKEN": token})  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert "1 uploaded" in done.stdout and "1 rejected" in done.stdout
    assert "rejected:" in done.stderr and "probe_cc" in done.stderr
    # Another vantage's token: exit 2, the token is named as the problem, nothing rejected.
    fill_store(tmp_path / "b", "probe-b", 2)
    done = _cli("upload", "--collector", proc.url, "--results", str(tmp_path / "b"),
                env={"CENSORSCOPE_UPLOAD_TOKEN": token})  # fmt: skip
    assert done.returncode == 2 and "refused the token" in done.stderr
    assert count_pending(tmp_path / "b", proc.url) == 2


def test_an_https_collector_behind_the_configured_ca(tmp_path: Path) -> None:
    """[probe] ca_file reaches the uploader: a lab's collector keeps https (and the token stays
    off the wire in clear) instead of needing allow_http."""
    import uvicorn

    from backend.collector import CollectorConfig, create_app
    from probes.config import Config
    from probes.upload import settings_from_config
    from tests.loopback.certs import TestCA
    from tests.loopback.control_helper import uvicorn_on

    ca = TestCA(tmp_path / "ca")
    leaf = ca.ca.issue_cert("127.0.0.1")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_bytes(b"".join(pem.bytes() for pem in leaf.cert_chain_pems))
    key.write_bytes(leaf.private_key_pem.bytes())
    token = make_token()
    (tmp_path / "tokens").write_text(f"probe-a {token}\n")
    app = create_app(CollectorConfig(data=tmp_path / "collected", tokens=tmp_path / "tokens"))
    config = uvicorn.Config(app, log_level="warning", ssl_certfile=str(cert), ssl_keyfile=str(key))
    uids = fill_store(tmp_path / "results", "probe-a", 3)
    cfg = Config()
    cfg.upload.token = token
    cfg.probe.ca_file = ca.ca_pem_path
    with uvicorn_on(config) as port:
        cfg.upload.collector = f"https://127.0.0.1:{port}"
        upload, _warnings = settings_from_config(cfg)
        summary = asyncio.run(upload_store(tmp_path / "results", upload))
    assert summary.uploaded == 3 and summary.ok, summary.describe()
    assert sorted(stored_uids(tmp_path / "collected")) == sorted(uids)
