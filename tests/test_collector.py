"""The collector as a real process on loopback: protocol, tokens, validation, idempotency."""

from __future__ import annotations

import json
import time
import urllib.error
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.small_fs import fill, small_tmpfs
from tests.test_collector_support import (
    CollectorProcess,
    make_token,
    measurement,
    post,
    stored_lines,
    stored_uids,
)

MAX_BYTES = 8192


@pytest.fixture(scope="module")
def tokens() -> dict[str, str]:
    return {"alpha": make_token(), "beta": make_token()}


@pytest.fixture(scope="module")
def collector(
    tmp_path_factory: pytest.TempPathFactory, tokens: dict[str, str]
) -> Iterator[CollectorProcess]:
    base = tmp_path_factory.mktemp("collector")
    token_file = base / "tokens.txt"
    token_file.write_text(
        "# vantage token\n" + "".join(f"{v} {t}  # {v}'s probe\n" for v, t in tokens.items())
    )
    proc = CollectorProcess(data=base / "data", tokens=token_file)
    proc.start("--max-measurement-bytes", str(MAX_BYTES))
    yield proc
    proc.stop()


def open_report(collector: CollectorProcess, token: str, test_name: str = "web_connectivity"):
    status, body = post(
        collector.url + "/report",
        orjson.dumps({"test_name": test_name, "probe_cc": "ZZ", "probe_asn": "AS0"}),
        token,
    )
    assert status == 200, body
    assert body["supported_formats"] == ["json"]
    return body["report_id"]


def submit(
    collector: CollectorProcess, report_id: str, content: Any, token: str | None
) -> tuple[int, Any]:
    return post(
        f"{collector.url}/report/{report_id}",
        orjson.dumps({"format": "json", "content": content}),
        token,
    )


def test_open_submit_close_stores_the_measurement_once(
    collector: CollectorProcess, tokens: dict[str, str]
) -> None:
    report_id = open_report(collector, tokens["alpha"])
    m = measurement("alpha", report_id, 1).to_dict()
    status, body = submit(collector, report_id, m, tokens["alpha"])
    assert (status, body) == (200, {"measurement_uid": m["measurement_uid"], "duplicate": False})
    # A retry of the same measurement is acknowledged and not stored again.
    assert submit(collector, report_id, m, tokens["alpha"])[1]["duplicate"] is True
    assert post(f"{collector.url}/report/{report_id}/close", b"{}", tokens["alpha"])[0] == 200
    assert submit(collector, report_id, m, tokens["alpha"])[0] == 409  # closed
    data = collector.data
    assert stored_uids(data).count(m["measurement_uid"]) == 1
    files = list((data / "raw").rglob(f"{m['report_id']}.jsonl"))
    assert len(files) == 1
    rel = files[0].relative_to(data / "raw")
    assert rel.parts[1:3] == ("vantage=alpha", "test_name=web_connectivity")
    assert json.loads(files[0].read_bytes()) == m
    assert collector.get("/stats", tokens["alpha"])["vantages"]["alpha"] >= 1
    assert collector.get("/health")["status"] == "ok"


def test_tokens_are_required_and_bound_to_a_vantage(
    collector: CollectorProcess, tokens: dict[str, str]
) -> None:
    report_id = open_report(collector, tokens["alpha"])
    m = measurement("alpha", report_id, 1).to_dict()
    status, body = submit(collector, report_id, m, None)
    assert status == 401 and "Authorization" in body["error"]
    assert submit(collector, report_id, m, "not-a-token-at-all-000000")[0] == 401
    assert post(collector.url + "/report", b'{"test_name": "web_connectivity"}', None)[0] == 401
    # beta may not submit into alpha's report, nor claim to be alpha in its own.
    status, body = submit(collector, report_id, m, tokens["beta"])
    assert status == 403 and "another vantage" in body["error"]
    beta_report = open_report(collector, tokens["beta"])
    status, body = submit(collector, beta_report, m, tokens["beta"])
    assert status == 403 and "annotations.vantage" in body["error"]
    assert m["measurement_uid"] not in stored_uids(collector.data)


@pytest.mark.parametrize(
    ("mutate", "status", "names"),
    [
        (lambda m: m.pop("measurement_uid"), 400, "content.measurement_uid: missing"),
        (lambda m: m.update(test_keys=[1, 2]), 400, "content.test_keys"),
        (lambda m: m.update(test_name="no_such_test"), 400, "unknown test name"),
        (lambda m: m.update(probe_cc="zz"), 400, "content.probe_cc"),
        (lambda m: m.update(measurement_start_time="yesterday"), 400, "measurement_start_time"),
        (lambda m: m["annotations"].pop("vantage"), 400, "annotations.vantage"),
        (lambda m: m.update(report_id="../../etc/passwd"), 400, "content.report_id"),
        (lambda m: m.update(padding="x" * MAX_BYTES), 413, "over 8192 bytes"),
    ],
)
def test_bad_submissions_get_a_4xx_naming_the_problem(
    collector: CollectorProcess, tokens: dict[str, str], mutate: Any, status: int, names: str
) -> None:
    report_id = open_report(collector, tokens["alpha"])
    m = measurement("alpha", report_id, 1).to_dict()
    mutate(m)
    got, body = submit(collector, report_id, m, tokens["alpha"])
    assert got == status
    assert names in body["error"]


def test_bad_envelopes_and_bodies(collector: CollectorProcess, tokens: dict[str, str]) -> None:
    report_id = open_report(collector, tokens["alpha"])
    url = f"{collector.url}/report/{report_id}"
    token = tokens["alpha"]
    status, body = post(url, b"{not json", token)
    assert status == 400 and "not valid JSON" in body["error"]
    status, body = post(url, b"[1, 2]", token)
    assert status == 400 and "JSON object" in body["error"]
    status, body = post(url, b'{"format": "yaml", "content": {}}', token)
    assert status == 400 and "format" in body["error"]
    status, body = post(url, b'{"format": "json"}', token)
    assert status == 400 and "content" in body["error"]
    status, body = post(collector.url + "/report/nope", b"{}", token)
    assert status == 404 and "POST /report" in body["error"]
    status, body = post(collector.url + "/report", b'{"test_name": "bogus"}', token)
    assert status == 400 and "unknown test name" in body["error"]
    # A measurement of another test than the report's.
    m = measurement("alpha", report_id, 1).to_dict()
    m["test_name"] = "dns_consistency"
    status, body = submit(collector, report_id, m, token)
    assert status == 400 and "this report is 'web_connectivity'" in body["error"]


def test_concurrent_retries_of_one_measurement_store_it_once(
    collector: CollectorProcess, tokens: dict[str, str]
) -> None:
    report_id = open_report(collector, tokens["beta"])
    m = measurement("beta", report_id, 1).to_dict()
    with ThreadPoolExecutor(16) as pool:
        replies = list(
            pool.map(lambda _: submit(collector, report_id, m, tokens["beta"]), range(32))
        )
    assert all(status == 200 for status, _ in replies)
    assert sum(1 for _, body in replies if not body["duplicate"]) == 1
    assert stored_uids(collector.data).count(m["measurement_uid"]) == 1


def test_token_file_reloads_without_restart(
    collector: CollectorProcess, tokens: dict[str, str]
) -> None:
    new = make_token()
    original = collector.tokens.read_text()
    collector.tokens.write_text(original + f"gamma {new}\n")
    deadline = time.monotonic() + 20
    status = 0
    while time.monotonic() < deadline:
        status, _ = post(collector.url + "/report", b'{"test_name": "web_connectivity"}', new)
        if status == 200:
            break
        time.sleep(0.1)
    assert status == 200
    # Revoked again: refused once the file changes back (a broken file keeps the old tokens).
    collector.tokens.write_text(original + "this line is broken\n")
    time.sleep(1.2)  # longer than the reload check interval: the broken file must be ignored
    assert post(collector.url + "/report", b'{"test_name": "web_connectivity"}', new)[0] == 200
    collector.tokens.write_text(original)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        status, _ = post(collector.url + "/report", b'{"test_name": "web_connectivity"}', new)
        if status == 401:
            break
        time.sleep(0.1)
    assert status == 401


def test_restart_rebuilds_the_index_and_moves_a_torn_tail_aside(
    tmp_path: Path, tokens: dict[str, str]
) -> None:
    token_file = tmp_path / "tokens"
    token_file.write_text(f"alpha {tokens['alpha']}\n")
    proc = CollectorProcess(data=tmp_path / "data", tokens=token_file).start()
    try:
        report_id = open_report(proc, tokens["alpha"])
        ms = [measurement("alpha", report_id, i).to_dict() for i in range(3)]
        for m in ms:
            assert submit(proc, report_id, m, tokens["alpha"])[0] == 200
    finally:
        proc.kill()
    # A power loss could leave half a line: the restarted collector moves it aside.
    (report_file,) = (tmp_path / "data" / "raw").rglob("*.jsonl")
    with open(report_file, "ab") as handle:
        handle.write(b'{"measurement_uid": "half-a-li')
    proc.start()
    try:
        assert proc.get("/stats", tokens["alpha"]) == {"measurements": 3, "vantages": {"alpha": 3}}
        assert report_file.read_bytes().endswith(b"\n")
        assert report_file.with_name(report_file.name + ".torn").exists()
        # The report opened before the restart is still open; retries are duplicates.
        for m in ms:
            status, body = submit(proc, report_id, m, tokens["alpha"])
            assert status == 200 and body["duplicate"] is True
        assert len(stored_lines(tmp_path / "data")) == 3
    finally:
        proc.stop()


def test_a_measurement_is_filed_under_the_report_it_was_posted_to(
    collector: CollectorProcess, tokens: dict[str, str]
) -> None:
    """Content cannot choose the file: another report id is refused, a 1970 date is ignored."""
    mine = open_report(collector, tokens["alpha"])
    other = open_report(collector, tokens["alpha"])
    m = measurement("alpha", other, 1).to_dict()
    status, body = submit(collector, mine, m, tokens["alpha"])
    assert status == 400 and "not the report it was posted to" in body["error"]
    m = measurement("alpha", mine, 2).to_dict()
    m["test_start_time"] = m["measurement_start_time"] = "1970-01-01 00:00:00"
    assert submit(collector, mine, m, tokens["alpha"])[0] == 200
    (path,) = (collector.data / "raw").rglob(f"{mine}.jsonl")
    opened_day = f"{mine[:4]}-{mine[4:6]}-{mine[6:8]}"  # the report id starts with its opening
    assert path.relative_to(collector.data / "raw").parts[0] == f"date={opened_day}"
    assert not list((collector.data / "raw").glob("date=1970-*"))
    assert json.loads(path.read_bytes())["test_start_time"] == "1970-01-01 00:00:00"  # as sent


def test_stats_need_a_token_and_show_only_its_vantage(
    collector: CollectorProcess, tokens: dict[str, str]
) -> None:
    report_id = open_report(collector, tokens["beta"])
    assert submit(collector, report_id, measurement("beta", report_id, 7).to_dict(),
                  tokens["beta"])[0] == 200  # fmt: skip
    with pytest.raises(urllib.error.HTTPError) as info:
        collector.get("/stats")
    assert info.value.code == 401
    alpha = collector.get("/stats", tokens["alpha"])
    assert set(alpha["vantages"]) == {"alpha"} and "beta" not in json.dumps(alpha)
    assert set(collector.get("/stats", tokens["beta"])["vantages"]) == {"beta"}


def test_a_full_disk_is_an_error_and_no_fragment_is_stored(
    tmp_path: Path, tokens: dict[str, str]
) -> None:
    """On a real full filesystem: 507, never 200; after space is freed, every line is whole."""
    with small_tmpfs(tmp_path) as fs:
        token_file = tmp_path / "tokens"
        token_file.write_text(f"alpha {tokens['alpha']}\n")
        proc = CollectorProcess(data=fs / "data", tokens=token_file).start()
        try:
            report_id = open_report(proc, tokens["alpha"])
            acked: list[str] = []
            first = measurement("alpha", report_id, 0).to_dict()
            assert submit(proc, report_id, first, tokens["alpha"])[0] == 200
            acked.append(first["measurement_uid"])
            filler = fs / "filler"
            fill(filler, leave=4096)
            status, failed = 200, None
            for i in range(1, 20):
                m = measurement("alpha", report_id, i).to_dict()
                m["test_keys"]["padding"] = "x" * 3000
                status, body = submit(proc, report_id, m, tokens["alpha"])
                if status != 200:
                    failed = m
                    break
                acked.append(m["measurement_uid"])
            assert status == 507 and "disk is full" in body["error"]
            (path,) = (fs / "data" / "raw").rglob("*.jsonl")
            assert path.read_bytes().endswith(b"\n"), "a fragment of the refused line is left"
            filler.unlink()
            assert failed is not None
            assert submit(proc, report_id, failed, tokens["alpha"])[0] == 200  # the retry
            acked.append(failed["measurement_uid"])
            assert stored_uids(fs / "data") == acked  # every line whole, each once
        finally:
            proc.stop()


def test_stored_files_are_private_and_a_loose_tokens_file_is_warned_about(
    collector: CollectorProcess, tokens: dict[str, str]
) -> None:
    report_id = open_report(collector, tokens["alpha"])
    assert submit(collector, report_id, measurement("alpha", report_id, 3).to_dict(),
                  tokens["alpha"])[0] == 200  # fmt: skip
    files = [p for p in collector.data.rglob("*") if p.is_file()]
    assert files and all(p.stat().st_mode & 0o077 in (0, 0o040) for p in files), [
        (p.name, oct(p.stat().st_mode)) for p in files if p.stat().st_mode & 0o037
    ]
    # The module's tokens file was written with the default umask (0644): the start warned.
    assert "tokens file is readable by everyone" in collector.log_text()
