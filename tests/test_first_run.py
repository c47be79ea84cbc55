"""A first run that explains itself (issue 12, section 6): the progress bar, problems said at
once, a bad list refused before measuring, Ctrl-C, --version and the help text."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from typer.core import TyperOption
from typer.main import get_command
from typer.testing import CliRunner

from probes.cli import app
from probes.nettests import REGISTRY
from tests.loopback import FakeDNSServer
from tests.loopback.web import closed_port
from tests.terminal import run_in_pty

CENSORSCOPE = [sys.executable, "-m", "probes"]
ROOT = Path(__file__).resolve().parents[1]
HEADER = "url,category_code,category_description,date_added,source,notes\n"


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def _offline_run(tmp_path: Path, n: int = 6) -> list[str]:
    """web_connectivity with the probe's resolver and the helper both refusing (as offline)."""
    dead = closed_port("127.0.0.1")
    args = [*CENSORSCOPE, "run", "web_connectivity"]
    for i in range(n):
        args += ["--input", f"http://n{i}.test/"]
    return [
        *args, "--resolver", f"127.0.0.1:{dead}", "--helper", f"http://127.0.0.1:{dead}/",
        "--timeout", "3", "--results", str(tmp_path / "r"),
    ]  # fmt: skip


def test_progress_bar_shows_total_inconclusive_and_says_problems_at_once(tmp_path: Path) -> None:
    run = run_in_pty([*_offline_run(tmp_path), "--progress"], env=_env())
    out = run.output
    assert run.status == 3, out
    assert "6/6" in out and "100%" in out and "ETA" in out, out
    assert "6 inconclusive" in out and "0 blocked" in out, out
    summary = out.index("web_connectivity: 6 measured")
    # Said while the run goes on, before its summary line; and said once.
    assert 0 <= out.index("control helper unreachable") < summary, out
    assert 0 <= out.index("looks offline") < summary, out
    assert out.count("looks offline") == 1 and out.count("control helper unreachable") == 1


def test_offline_and_helper_lines_without_a_terminal(tmp_path: Path) -> None:
    proc = subprocess.run(
        _offline_run(tmp_path), capture_output=True, text=True, timeout=120, env=_env()
    )
    assert proc.returncode == 3  # helper unreachable: its own status, not bad usage (2)
    assert proc.stderr.count("control helper unreachable") == 1
    assert proc.stderr.count("looks offline") == 1


def test_no_offline_line_when_only_some_names_fail(
    tmp_path: Path, dns_server: Callable[..., FakeDNSServer]
) -> None:
    names = {f"n{i}.test": ["127.0.0.2"] for i in range(6)}
    server = dns_server(zone=names, mode="servfail", targets=["n1.test", "n2.test"])
    args = _offline_run(tmp_path)
    args[args.index("--resolver") + 1] = server.address
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120, env=_env())
    assert "looks offline" not in proc.stderr, proc.stderr


def test_bad_rows_anywhere_in_a_list_fail_before_measuring(tmp_path: Path) -> None:
    listing = tmp_path / "list.csv"
    listing.write_text(
        HEADER
        + "http://a.test/,NEWS,News Media,2024-01-01,me,\n"
        + "http://b.test/,NEWS,News Media,2024-01-01,me,\n"
        + "notaurl,NEWS,News Media,2024-01-01,me,\n"
        + "http://c.test/,NEWS,News Media,2024-01-01,me,\n"
        + "http://d.test/,NEWS\n",
        encoding="utf-8",
    )
    proc = subprocess.run(
        [*CENSORSCOPE, "run", "web_connectivity", "--testlist", str(listing),
         "--results", str(tmp_path / "r"), "--helper", "http://127.0.0.1:9/"],
        capture_output=True, text=True, timeout=60, env=_env(),
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert f"{listing}:4: url:" in proc.stderr and f"{listing}:6: row:" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not list((tmp_path / "r").rglob("*.json*"))  # no empty report or manifest left


def test_ctrl_c_exits_130_and_its_hint_resumes_as_typed(tmp_path: Path) -> None:
    config = tmp_path / "probe.toml"
    dead = closed_port("127.0.0.1")
    config.write_text(
        f'[probe]\nhelpers = ["http://127.0.0.1:{dead}/"]\ntimeout = 5.0\nper_host_interval = 0.3\n'
    )
    results = tmp_path / "my results"
    proc = subprocess.Popen(
        [*CENSORSCOPE, "run", "tcp_connect", "--input", f"127.0.0.2:{closed_port('127.0.0.2')}",
         "--repeat", "20", "--no-packet-capture", "--config", str(config),
         "--results", str(results), "--no-progress"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env(),
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    try:
        end = time.monotonic() + 60
        while time.monotonic() < end and proc.poll() is None:
            files = list(results.glob("raw/*/*/*/*.jsonl"))
            if files and files[0].read_bytes().count(b"\n") >= 2:
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    text = err.decode()
    hint = text.split("Continue with: ", 1)[1].splitlines()[0]
    argv = shlex.split(hint)
    assert argv[0] == "censorscope" and "--results" in argv and "--config" in argv
    again = subprocess.run(
        [*CENSORSCOPE, *argv[1:]], capture_output=True, text=True, timeout=120, env=_env()
    )
    assert again.returncode == 3, again.stderr  # finished; the config's helper is down
    [path] = list(results.glob("raw/*/*/*/*.jsonl"))
    assert path.read_bytes().count(b"\n") == 20


def test_version() -> None:
    from probes import __version__

    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"censorscope {__version__}"


def test_run_help_lists_the_nettests() -> None:
    result = CliRunner().invoke(app, ["run", "--help"], env={"COLUMNS": "250"})
    assert result.exit_code == 0
    for name in REGISTRY:
        assert name in result.output


def _commands(command: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[str, Any]]:
    if hasattr(command, "commands"):
        for name, sub in command.commands.items():
            yield from _commands(sub, (*path, name))
    else:
        yield " ".join(path), command


def test_every_option_of_every_command_has_help_and_a_default_shown() -> None:
    commands = dict(_commands(get_command(app)))
    assert {"run", "isolate", "analyze", "schedule run", "lab demo"} <= set(commands)
    for name, command in commands.items():
        for param in command.params:
            if not isinstance(param, TyperOption) or param.required:
                continue
            assert param.help, f"{name} {param.opts}: no help"
            shown = param.default not in (None, (), []) and param.show_default is not False
            assert shown or "default" in param.help.lower(), f"{name} {param.opts}: no default"
    # Rich help would eat a "[default: ...]" written into a help text as markup.
    help_text = CliRunner().invoke(app, ["run", "--help"], env={"COLUMNS": "250"}).output
    assert "(default: config probe.concurrency, else 16)" in help_text


FP_HEADER = (
    "name,scope,other_names,location_found,pattern_type,pattern,confidence_no_fp,"
    "expected_countries,source,exp_url,notes\n"
)


def test_analyze_uses_the_fingerprint_files_a_folder_holds(tmp_path: Path) -> None:
    from tests.analysis_helpers import write_store

    write_store(tmp_path / "store", test_name="web_connectivity")
    http_only = tmp_path / "fp"
    http_only.mkdir()
    (http_only / "fingerprints_http.csv").write_text(
        FP_HEADER + "lab.blockpage,nat,,body,contains,Access denied by the lab,5,ZZ,lab,,\n"
    )
    runner = CliRunner()
    base = ["analyze", "--results", str(tmp_path / "store")]
    folder = runner.invoke(
        app, [*base, "--fingerprints", str(http_only), "--out", str(tmp_path / "o1")]
    )
    assert folder.exit_code == 0, folder.output
    assert "no fingerprints_dns.csv" in folder.output
    assert "no fingerprints_http.csv" not in folder.output
    one_file = runner.invoke(
        app,
        [*base, "--fingerprints", str(http_only / "fingerprints_http.csv"),
         "--out", str(tmp_path / "o2")],
    )  # fmt: skip
    assert one_file.exit_code == 0, one_file.output
    empty = tmp_path / "empty"
    empty.mkdir()
    nothing = runner.invoke(
        app, [*base, "--fingerprints", str(empty), "--out", str(tmp_path / "o3")]
    )
    assert nothing.exit_code == 2 and "no fingerprints here" in nothing.output
