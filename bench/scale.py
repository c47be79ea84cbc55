"""A store at scale through the CLI: analyze, report, publish and verify, timed, with every
process's peak memory; and the same commands on a sample with the in-process engine, whose
outputs must be byte-identical.

Input: a folder in OONI's bucket layout (`python -m bench.analysis --n N --bucket DIR` writes
one: N distinct web_connectivity measurements, 50,000 a file). Each command runs as a user runs
it (`censorscope COMMAND --ooni DIR ...`), while this script samples the command's process tree
every half second (psutil): the client's peak RSS and the largest worker's. "Within the memory
of one worker per core" is read off the worker column: it must not grow with the input.

    python -m bench.scale --bucket /tmp/b10m --out /tmp/scale --workers 2 \\
        --commands analyze,report,publish,verify --sample-files 20

`--sample-files K` first runs the commands on the bucket's first K files (a symlinked copy of
their layout) with `--engine pandas` and with `--engine dask --workers W`, and compares every
output file's sha256 (the report's HTML, the analysis tables, the published dataset);
`--sample-only` stops there (in-process publish holds every raw line: ~21 GB at 1M lines).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

COMMANDS = ("analyze", "report", "publish", "verify")
SAMPLE_EVERY_S = 0.5


@dataclass
class Run:
    command: str
    engine: str
    seconds: float = 0.0
    returncode: int = 0
    client_peak_mb: float = 0.0
    worker_peak_mb: float = 0.0
    processes: int = 0
    tail: list[str] = field(default_factory=list)


def _censorscope() -> list[str]:
    found = shutil.which("censorscope", path=str(Path(sys.executable).parent))
    return [found] if found else [sys.executable, "-m", "probes"]


def _argv(command: str, bucket: Path, out: Path, engine: str, workers: int) -> list[str]:
    base = [*_censorscope(), command]
    if command == "verify":
        return [*base, str(out / "publish"), "--engine", engine]
    target = out / ("report.html" if command == "report" else command)
    argv = [*base, "--ooni", str(bucket), "--out", str(target), "--engine", engine]
    if engine == "dask":
        argv += ["--workers", str(workers)]
    return argv


def _rss_mb(proc: psutil.Process) -> float:
    try:
        return float(proc.memory_info().rss) / 2**20
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return 0.0


def run(command: str, bucket: Path, out: Path, engine: str, workers: int) -> Run:
    """One command, timed, its process tree sampled for peak RSS."""
    argv = _argv(command, bucket, out, engine, workers)
    result = Run(command, engine)
    peaks: dict[int, float] = {}
    started = time.perf_counter()
    with subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as child:
        root = psutil.Process(child.pid)
        while child.poll() is None:
            try:
                tree = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                break
            for proc in tree:
                peaks[proc.pid] = max(peaks.get(proc.pid, 0.0), _rss_mb(proc))
            time.sleep(SAMPLE_EVERY_S)
        output = child.stdout.read() if child.stdout else ""
    result.seconds = time.perf_counter() - started
    result.returncode = child.returncode
    result.client_peak_mb = peaks.pop(child.pid, 0.0)
    result.worker_peak_mb = max(peaks.values(), default=0.0)
    result.processes = len(peaks)
    result.tail = output.strip().splitlines()[-3:]
    return result


def sample_bucket(bucket: Path, files: int, into: Path) -> Path:
    """The bucket's first FILES measurement files, symlinked in the same layout under INTO."""
    chosen = sorted(p for p in bucket.rglob("*.jsonl.gz"))[:files]
    if into.exists():
        shutil.rmtree(into)
    for path in chosen:
        link = into / path.relative_to(bucket)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(path.resolve())
    return into


def digests(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under ROOT (or of ROOT itself)."""
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    return {
        (p.name if root.is_file() else p.relative_to(root).as_posix()): hashlib.sha256(
            p.read_bytes()
        ).hexdigest()
        for p in files
    }


def _outputs(out: Path, command: str) -> Path:
    return out / ("report.html" if command == "report" else command)


def identity(bucket: Path, out: Path, commands: list[str], workers: int) -> list[str]:
    """Run COMMANDS with both engines on BUCKET; the lines of a table of what matched."""
    lines = []
    for engine in ("pandas", "dask"):
        for command in commands:
            done = run(command, bucket, out / engine, engine, workers)
            if done.returncode not in (0, 1):  # analyze/report exit 1 when something is blocked
                raise SystemExit(f"{command} --engine {engine} failed: {done.tail}")
    for command in commands:
        if command == "verify":
            continue
        ours, theirs = (
            digests(_outputs(out / "dask", command)),
            digests(_outputs(out / "pandas", command)),
        )
        differing = sorted(k for k in ours.keys() | theirs.keys() if ours.get(k) != theirs.get(k))
        verdict = "identical" if not differing else f"DIFFER: {', '.join(differing[:5])}"
        lines.append(f"{command:8} {len(ours):6} files  {verdict}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bucket", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--engine", default="dask")
    parser.add_argument("--commands", default=",".join(COMMANDS))
    parser.add_argument("--sample-files", type=int, default=0)
    parser.add_argument(
        "--sample-only", action="store_true", help="compare the engines on the sample, then stop"
    )
    args = parser.parse_args(argv)
    if args.sample_only and not args.sample_files:
        parser.error("--sample-only needs --sample-files")
    commands = [c for c in args.commands.split(",") if c]
    unknown = set(commands) - set(COMMANDS)
    if unknown:
        parser.error(f"--commands: unknown {sorted(unknown)}")
    files = sorted(args.bucket.rglob("*.jsonl.gz"))
    size = sum(p.stat().st_size for p in files)
    print(
        f"{args.bucket}: {len(files)} .jsonl.gz files, {size / 1e9:.1f} GB; "
        f"{os.cpu_count()} cores; load average {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    if args.sample_files:
        sample = sample_bucket(args.bucket, args.sample_files, args.out / "sample-bucket")
        what = f"the first {args.sample_files} files, pandas vs dask --workers {args.workers}"
        print(f"sample: {what}")
        for line in identity(sample, args.out / "sample", commands, args.workers):
            print("  " + line, flush=True)
        if args.sample_only:
            return 0
    print(f"{'command':8} {'engine':6} {'seconds':>8} {'client MB':>9} {'worker MB':>9} procs exit")
    for command in commands:
        done = run(command, args.bucket, args.out / "full", args.engine, args.workers)
        print(
            f"{command:8} {args.engine:6} {done.seconds:8.1f} {done.client_peak_mb:9.0f} "
            f"{done.worker_peak_mb:9.0f} {done.processes:5} {done.returncode}",
            flush=True,
        )
        for line in done.tail:
            print(f"    | {line}")
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
