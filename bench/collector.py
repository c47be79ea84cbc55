"""Collector throughput: accepted measurements/s and p99 latency with N concurrent uploaders.

Starts a real `censorscope collector` process on loopback, fills N probe stores with M
measurements each, and runs N `probes.upload` uploaders at once in this process (asyncio),
timing every submission. Each accepted measurement is fsynced by the collector before its 200.

With --slow-clients N, another process holds N slow connections to the collector for the whole
run, each from its own loopback address (127.1.x.y, as clients from N hosts would come): a
third send nothing, a third a request line alone, a third trickle a request head one byte a
second. Whenever the collector drops one (its head timeout), it reconnects at once, so N are
held throughout; the figures show what they cost the uploaders.

    python -m bench.collector [--uploaders 50] [--per-uploader 2000] [--slow-clients 500]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import resource
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


SLOW_KINDS = ("idle", "request-line", "trickle")


async def _slow_client(
    port: int, index: int, stop: asyncio.Event, stats: dict[str, int], held: list[int]
) -> None:
    """One slow client, reconnecting whenever the collector drops it, until `stop`."""
    kind = SLOW_KINDS[index % len(SLOW_KINDS)]
    source = f"127.1.{index // 250}.{index % 250 + 1}"
    head = b"POST /report HTTP/1.1\r\nHost: bench\r\nContent-Length: 10\r\n"
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, local_addr=(source, 0)
            )
        except OSError:
            stats["connect_failed"] += 1
            await asyncio.sleep(0.1)
            continue
        stats["connections"] += 1
        held[0] += 1
        held[1] = max(held[1], held[0])
        try:
            if kind == "request-line":
                writer.write(head[: head.index(b"\r\n") + 2])
            sent = 0
            while not stop.is_set():
                if kind == "trickle" and sent < len(head):
                    writer.write(head[sent : sent + 1])
                    sent += 1
                try:
                    data = await asyncio.wait_for(reader.read(4096), timeout=1.0)
                except TimeoutError:
                    continue
                if not data:
                    stats["closed_by_server"] += 1
                    break
                if data.startswith(b"HTTP/1.1 503"):
                    stats["refused_busy"] += 1
        except OSError:
            stats["closed_by_server"] += 1
        finally:
            held[0] -= 1
            writer.close()


def _slow_clients_main(port: int, count: int, stop: Any, out: Any) -> None:
    """Process body: hold `count` slow connections until `stop` is set; report to `out`."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4 * count + 64)), hard))

    async def run() -> dict[str, int]:
        stats = {"connections": 0, "closed_by_server": 0, "refused_busy": 0, "connect_failed": 0}
        held = [0, 0]
        done = asyncio.Event()
        tasks = [
            asyncio.create_task(_slow_client(port, i, done, stats, held)) for i in range(count)
        ]
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, stop.wait)
        stats["held_at_end"] = held[0]
        stats["held_max"] = held[1]
        done.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        return stats

    out.put(asyncio.run(run()))


def _wait_for_held(port: int, want: int, deadline: float) -> None:
    """Wait until the slow clients are in (the collector's open connections, per /proc)."""
    while time.monotonic() < deadline and _established_to(port) < want:
        time.sleep(0.2)


def _established_to(port: int) -> int:
    """Established TCP connections to 127.0.0.1:`port` (server side), from /proc/net/tcp."""
    hex_port = f"{port:04X}"
    count = 0
    with open("/proc/net/tcp") as table:
        for line in table.readlines()[1:]:
            fields = line.split()
            if fields[1].endswith(":" + hex_port) and fields[3] == "01":
                count += 1
    return count


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
    parser.add_argument(
        "--slow-clients", type=int, default=0, help="slow connections held during the run"
    )
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
            slow = None
            if args.slow_clients:
                stop, out = multiprocessing.Event(), multiprocessing.Queue()
                slow = multiprocessing.Process(
                    target=_slow_clients_main, args=(port, args.slow_clients, stop, out)
                )
                slow.start()
                _wait_for_held(port, args.slow_clients, time.monotonic() + 60)
                held_before = _established_to(port)
            started = time.perf_counter()
            latencies = asyncio.run(_run(base, url, args.uploaders, tokens))
            elapsed = time.perf_counter() - started
            if slow is not None:
                held_after = _established_to(port)
                stop.set()
                slow_stats = out.get(timeout=60)
                slow.join(timeout=60)
        finally:
            if slow is not None and slow.is_alive():
                slow.terminate()
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
    if slow is not None:
        print(
            f"slow clients: {args.slow_clients} held (connections open at the collector: "
            f"{held_before} before the run, {held_after} at its end); "
            f"{slow_stats['connections']} connections made, {slow_stats['closed_by_server']} "
            f"closed by the collector, {slow_stats['refused_busy']} refused busy (503), "
            f"{slow_stats['connect_failed']} connects failed; held at most "
            f"{slow_stats['held_max']}, {slow_stats['held_at_end']} at the end"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
