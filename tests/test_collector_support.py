"""Shared by the collector, upload and schedule tests: a real collector process on loopback,
measurements shaped like ours, and a store of them. (No tests here.)"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from probes.measurement import Measurement, new_measurement_uid, new_report_id, ooni_time
from probes.store import ReportManifest, ResultsStore

ROOT = Path(__file__).resolve().parents[1]
CLI = "from probes.cli import main; main()"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_token() -> str:
    return secrets.token_urlsafe(24)


def measurement(
    vantage: str, report_id: str, index: int, *, test_name: str = "web_connectivity"
) -> Measurement:
    now = datetime.now(UTC)
    return Measurement(
        test_name=test_name,
        test_version="0.4.3",
        input=f"http://site-{index}.example/",
        report_id=report_id,
        measurement_uid=new_measurement_uid(test_name, "ZZ", now),
        test_start_time=ooni_time(now),
        measurement_start_time=ooni_time(now),
        annotations={"vantage": vantage, "engine_name": "censorscope"},
        test_keys={"blocking": False, "accessible": True, "n": index},
    )


def fill_store(root: Path, vantage: str, count: int, *, reports: int = 1) -> list[str]:
    """A results store with `count` measurements of `vantage` over `reports` reports."""
    store = ResultsStore(root)
    uids: list[str] = []
    per = -(-count // reports)
    for r in range(reports):
        now = datetime.now(UTC)
        manifest = ReportManifest(
            report_id=new_report_id("web_connectivity", "ZZ", "AS0", now),
            test_name="web_connectivity",
            vantage=vantage,
            date=now.strftime("%Y-%m-%d"),
            test_start_time=ooni_time(now),
        )
        lines = []
        for i in range(r * per, min(count, (r + 1) * per)):
            m = measurement(vantage, manifest.report_id, i)
            uids.append(m.measurement_uid)
            lines.append(m.to_json_line())
        with ResultsStore(root).open_report(manifest) as writer:
            writer.append_lines(lines)
    del store
    return uids


def stored_lines(data: Path) -> list[bytes]:
    """Every line of every report file in a store (all must be whole: asserted by callers)."""
    out: list[bytes] = []
    for path in sorted((data / "raw").rglob("*.jsonl")):
        out.extend(path.read_bytes().splitlines(keepends=True))
    return out


def stored_uids(data: Path) -> list[str]:
    uids = []
    for line in stored_lines(data):
        assert line.endswith(b"\n"), f"partial line: {line[:80]!r}"
        uids.append(json.loads(line)["measurement_uid"])
    return uids


@dataclass
class CollectorProcess:
    """`censorscope collector` in a subprocess, on a free loopback port."""

    data: Path
    tokens: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    log: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, *extra: str) -> CollectorProcess:
        self.log = self.data.parent / f"collector-{self.port}.log"
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    CLI,
                    "collector",
                    "--listen",
                    f"127.0.0.1:{self.port}",
                    "--data",
                    str(self.data),
                    "--tokens",
                    str(self.tokens),
                    *extra,
                ],
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
            )
        self.wait_ready()
        return self

    def wait_ready(self, within: float = 30.0) -> None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"collector exited: {self.log_text()}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=1) as reply:
                    if reply.status == 200:
                        return
            except (OSError, urllib.error.URLError):
                time.sleep(0.05)
        raise RuntimeError(f"collector not ready: {self.log_text()}")

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log and self.log.exists() else ""

    def get(self, path: str, token: str | None = None) -> Any:
        request = urllib.request.Request(self.url + path)
        if token is not None:
            request.add_header("authorization", f"Bearer {token}")
        with urllib.request.urlopen(request, timeout=5) as reply:
            return json.loads(reply.read())

    def kill(self) -> None:
        """kill -9: no chance to flush or close anything."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def post(
    url: str, body: bytes, token: str | None = None, *, timeout: float = 10.0
) -> tuple[int, Any]:
    """A plain HTTP POST (urllib): status and decoded JSON body."""
    request = urllib.request.Request(url, data=body, method="POST")
    request.add_header("content-type", "application/json")
    if token is not None:
        request.add_header("authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            return reply.status, json.loads(reply.read() or b"null")
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            return exc.code, json.loads(raw)
        except ValueError:
            return exc.code, raw
