"""The results store: layout, durable appends, torn lines, filters, the resume index."""

from __future__ import annotations

import errno
import subprocess
import sys
from collections import Counter
from datetime import date
from pathlib import Path

import pytest

from probes.measurement import Measurement
from probes.store import LineProblem, ReportManifest, ResultsStore, StoreError
from tests.small_fs import fill, small_tmpfs


def _manifest(
    report_id: str = "20260101T000000Z_webconnectivity_ZZ_0_n1_abc",
    vantage: str = "vp1",
    day: str = "2026-01-01",
    test_name: str = "web_connectivity",
) -> ReportManifest:
    return ReportManifest(
        report_id=report_id,
        test_name=test_name,
        vantage=vantage,
        date=day,
        test_start_time=f"{day} 00:00:00",
        options={"inputs": ["a", "b"]},
    )


def _m(input_: str, vantage: str = "vp1") -> Measurement:
    return Measurement(
        test_name="web_connectivity",
        test_version="0.4.3",
        input=input_,
        annotations={"vantage": vantage},
        test_keys={"blocking": False},
    )


def test_layout_and_round_trip(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path)
    manifest = _manifest()
    with store.open_report(manifest) as writer:
        writer.append(_m("http://a.org/"))
        writer.append_lines(
            [_m("http://b.org/").to_json_line(), _m("http://a.org/").to_json_line()]
        )
    path = (
        tmp_path
        / "raw/date=2026-01-01/vantage=vp1/test_name=web_connectivity"
        / f"{manifest.report_id}.jsonl"
    )
    assert path.exists()
    assert path.read_bytes().count(b"\n") == 3
    assert store.done_inputs(manifest) == Counter({"http://a.org/": 2, "http://b.org/": 1})
    assert store.load_manifest(manifest.report_id) == manifest
    assert [m.input for m in store.iter_measurements()] == [
        "http://a.org/",
        "http://b.org/",
        "http://a.org/",
    ]


def test_filters_use_partitions(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path)
    for i, (vantage, day, test) in enumerate(
        [
            ("vp1", "2026-01-01", "web_connectivity"),
            ("vp2", "2026-01-02", "web_connectivity"),
            ("vp1", "2026-01-03", "dns_consistency"),
        ]
    ):
        with store.open_report(_manifest(f"r{i}", vantage, day, test)) as w:
            w.append(_m(f"in{i}", vantage))
    assert [m.input for m in store.iter_measurements(vantages={"vp1"})] == ["in0", "in2"]
    assert [m.input for m in store.iter_measurements(since=date(2026, 1, 2))] == ["in1", "in2"]
    assert [m.input for m in store.iter_measurements(until=date(2026, 1, 1))] == ["in0"]
    assert [m.input for m in store.iter_measurements(test_names={"dns_consistency"})] == ["in2"]


def test_torn_tail_is_reported_and_moved_aside(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path)
    manifest = _manifest()
    with store.open_report(manifest) as w:
        w.append(_m("ok"))
    path = store.report_path(manifest)
    with open(path, "ab") as handle:
        handle.write(b'{"test_name": "web_conn')  # a crash in the middle of a write
    problems: list[LineProblem] = []
    assert [m.input for m in store.iter_measurements(on_problem=problems.append)] == ["ok"]
    assert len(problems) == 1 and problems[0].line == 2 and "torn" in problems[0].reason
    with store.open_report(manifest) as w:
        assert w.torn_tail is not None and w.torn_tail.read_bytes().startswith(b'{"test_name"')
        w.append(_m("next"))
    assert path.read_bytes().endswith(b"\n")
    assert [m.input for m in store.iter_measurements()] == ["ok", "next"]


def test_bad_lines_are_reported_not_fatal(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path)
    manifest = _manifest()
    with store.open_report(manifest) as w:
        w.append(_m("a"))
        w.append_line(b"not json\n")
        w.append_line(b"[1, 2]\n")
        w.append_line(b'{"input": "no test name"}\n')
        w.append(_m("b"))
    problems: list[LineProblem] = []
    assert [m.input for m in store.iter_measurements(on_problem=problems.append)] == ["a", "b"]
    assert [p.line for p in problems] == [2, 3, 4]
    assert all(str(p).startswith(str(store.report_path(manifest))) for p in problems)


def test_refuses_multi_line_records_and_unsafe_names(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path)
    with store.open_report(_manifest()) as w, pytest.raises(StoreError):
        w.append_line(b"a\nb\n")
    with pytest.raises(StoreError, match="vantage"):
        store.open_report(_manifest(vantage="../evil"))
    with pytest.raises(StoreError, match="no report"):
        store.load_manifest("nope")


def _padded(input_: str, size: int) -> Measurement:
    m = _m(input_)
    m.test_keys["padding"] = "x" * size
    return m


def test_a_full_disk_leaves_no_fragment_and_the_next_line_is_whole(tmp_path: Path) -> None:
    """ENOSPC mid-line (a real full tmpfs): the fragment is cut off before the next append."""
    with small_tmpfs(tmp_path) as fs:
        store = ResultsStore(fs / "results")
        manifest = _manifest()
        writer = store.open_report(manifest)
        filler = fs / "filler"
        fill(filler, leave=4096)  # one page left: one 3 KB line fits, the second does not
        writer.append(_padded("first", 3000))
        with pytest.raises(OSError) as info:
            for i in range(10):
                writer.append(_padded(f"lost-{i}", 3000))
        assert info.value.errno == errno.ENOSPC
        path = store.report_path(manifest)
        assert path.read_bytes().endswith(b"\n"), "a fragment of the failed line is left"
        assert [m.input for m in store.iter_measurements()] == ["first"]
        filler.unlink()  # the operator frees space: the store carries on, whole lines only
        writer.append(_padded("after", 3000))
        writer.close()
        problems: list[LineProblem] = []
        inputs = [m.input for m in store.iter_measurements(on_problem=problems.append)]
        assert (inputs, problems) == (["first", "after"], [])


def test_stored_files_are_not_world_readable(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path)
    manifest = _manifest()
    with store.open_report(manifest) as w:
        w.append(_m("a"))
    for path in (store.report_path(manifest), store.manifest_path(manifest.report_id)):
        assert path.stat().st_mode & 0o777 == 0o640, path


def test_a_run_on_a_full_disk_stops_says_so_and_resumes(tmp_path: Path) -> None:
    """Before: the writer task died, the workers waited on a full queue and the run hung."""
    cli = [sys.executable, "-c", "from probes.cli import main; main()"]
    root = Path(__file__).resolve().parents[1]
    with small_tmpfs(tmp_path, size="256k") as fs:  # room for all 80 once the filler is gone
        results = fs / "results"
        (fs / "results").mkdir()
        filler = fs / "filler"
        fill(filler, leave=12288)
        helper = "http://127.0.0.1:9/"  # nothing listens: the control is unreachable, locally
        inputs = ["--input", "127.0.0.1:9", "--input", "127.0.0.1:10", "--repeat", "40"]
        args = ["run", "tcp_connect", *inputs, "--helper", helper, "--results", str(results)]
        done = subprocess.run([*cli, *args], cwd=root, capture_output=True, text=True, timeout=120)
        assert done.returncode == 1, done.stderr
        assert "No space left on device" in done.stderr and "--resume" in done.stderr
        store = ResultsStore(results)
        problems: list[LineProblem] = []
        first = len(list(store.iter_measurements(on_problem=problems.append)))
        assert 0 < first < 80 and problems == []
        report_id = done.stderr.rsplit("--resume ", 1)[1].split()[0]
        filler.unlink()
        done = subprocess.run(
            [*cli, "run", "tcp_connect", "--resume", report_id, *inputs[4:], "--helper", helper,
             "--results", str(results)],
            cwd=root, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert "No space left" not in done.stderr, done.stderr
        measured = Counter(m.input for m in store.iter_measurements(on_problem=problems.append))
        assert measured == {"127.0.0.1:9": 40, "127.0.0.1:10": 40} and problems == []
