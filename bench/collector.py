"""Collector throughput: accepted measurements/s and p99 latency with N concurrent uploaders.

Starts a real `censorscope collector` process on loopback, fills N probe stores with M
measurements each, and runs N `probes.upload` uploaders at once in this process (asyncio),
timing every submission. Each accepted measurement is fsynced by the collector before its 200.

    python -m bench.collector [--uploaders 50] [--per-uploader 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from probes.net.http import JSONClient, JSONReply  # noqa: E402
from probes.upload import UploadSettings, upload_store  # noqa: E402


class TimedClient(JSONClient):
    """The uploader's real client, recording how long each submission took."""

    def __init__(self, latencies: list[float], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.latencies = latencies

    async def post_encoded(self, url: str, body: bytes, *, timeout: float) -> JSONReply:
        started = time.perf_counter()
        reply = await super().post_encoded(url, body, timeout=timeout)
        if "/report/" in url and not url.endswith("/close") and reply.status_code == 200:
            self.latencies.append(time.perf_counter() - started)
        return reply


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _fill(root: Path, vantage: str, count: int) -> None:
    from datetime import UTC, datetime

    from probes.measurement import Measurement, new_measurement_uid, new_report_id, ooni_time
    from probes.store import ReportManifest, ResultsStore

    now = datetime.now(UTC)
    manifest = ReportManifest(
        report_id=new_report_id("web_connectivity", "ZZ", "AS0", now),
        test_name="web_connectivity",
        vantage=vantage,
        date=now.strftime("%Y-%m-%d"),
        test_start_time=ooni_time(now),
    )
    lines = [
        Measurement(
            test_name="web_connectivity",
            test_version="0.4.3",
            input=f"http://site-{i}.example/",
            report_id=manifest.report_id,
            measurement_uid=new_measurement_uid("web_connectivity", "ZZ", now),
            test_start_time=ooni_time(now),
            measurement_start_time=ooni_time(now),
            annotations={"vantage": vantage},
            test_keys={"blocking": False, "accessible": True},
        ).to_json_line()
        for i in range(count)
    ]
    with ResultsStore(root).open_report(manifest) as writer:
        writer.append_lines(lines)


async def _run(base: Path, url: str, uploaders: int, tokens: list[str]) -> list[float]:
    latencies: list[float] = []

    async def one(i: int) -> None:
        client = TimedClient(latencies, headers={"authorization": f"Bearer {tokens[i]}"})
        try:
            summary = await upload_store(
                base / f"probe{i}", UploadSettings(collector=url, token=tokens[i]), client=client
            )
        finally:
            await client.aclose()
        if not summary.complete or summary.rejected:
            raise RuntimeError(summary.describe())

    await asyncio.gather(*(one(i) for i in range(uploaders)))
    return latencies


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uploaders", type=int, default=50)
    parser.add_argument("--per-uploader", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-collector-") as tmp:
        base = Path(tmp)
        tokens = [secrets.token_urlsafe(24) for _ in range(args.uploaders)]
        (base / "tokens").write_text("".join(f"v{i} {t}\n" for i, t in enumerate(tokens)))
        for i in range(args.uploaders):
            _fill(base / f"probe{i}", f"v{i}", args.per_uploader)
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        proc = subprocess.Popen(
            [sys.executable, "-c", "from probes.cli import main; main()", "collector",
             "--listen", f"127.0.0.1:{port}", "--data", str(base / "data"),
             "--tokens", str(base / "tokens")],
            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
        )  # fmt: skip
        try:
            for _ in range(300):
                try:
                    urllib.request.urlopen(url + "/health", timeout=1).close()
                    break
                except OSError:
                    time.sleep(0.05)
            started = time.perf_counter()
            latencies = asyncio.run(_run(base, url, args.uploaders, tokens))
            elapsed = time.perf_counter() - started
        finally:
            proc.terminate()
            proc.wait()
    total = args.uploaders * args.per_uploader
    latencies.sort()
    p50 = latencies[len(latencies) // 2] * 1000
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000
    print(
        f"collector: {args.uploaders} uploaders x {args.per_uploader} = {total} measurements "
        f"in {elapsed:.1f} s: {total / elapsed:.0f} accepted/s, "
        f"latency p50 {p50:.1f} ms, p99 {p99:.1f} ms (cores: {os.cpu_count()})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
