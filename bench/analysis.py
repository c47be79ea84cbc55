"""Analysis throughput: raw lines -> verdicts -> findings, side by side with orjson and oonidata.

Synthesises N distinct measurements from the real web_connectivity ones (../shared/data/ooni),
each with its own input, vantage, day and uid, as one JSONL file (`--jsonl`) or as gzipped
JSONL files in OONI's bucket layout raw/YYYYMMDD/HH/CC/webconnectivity/ (`--bucket`: 10M lines
fit on disk that way), then times each in a fresh process (so each peak RSS is its own):
- orjson: read (and gunzip) and decode every line, nothing else: one core's practical floor,
  inflated with the standard library's gzip and with isal's igzip (which analysis.load uses);
- oonidata: `oonidata.dataclient.load_measurement` on every line (parse only), with the
  interpreter given by --oonidata-python (oonidata 0.3.0 pins cryptography 38 and click 8.0,
  which conflict with ours, so it lives in its own virtualenv);
- inprocess: our in-process path (analysis.load + re-derived verdicts, then compare), one
  process holding every row;
- engine: analysis.engine (the commands' `--engine dask`) on a LocalCluster of --workers
  single-threaded worker processes: load + classify + count on the workers, merged counts,
  compare; with each worker's peak RSS (memory flat in the input size: one partition at a time).
- stream: analysis.stream (analyze's `--engine stream`), for comparison.

    python -m bench.analysis --n 1000000 --max-body 2048 --jsonl /tmp/m1.jsonl \
        [--oonidata-python /tmp/oonidata/bin/python] [--fingerprints ../shared/data/fingerprints]
    python -m bench.analysis --n 10000000 --max-body 2048 --bucket /tmp/b10m --engines orjson,engine
"""

from __future__ import annotations

import argparse
import gzip
import os
import resource
import subprocess
import sys
import tempfile
import time
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import orjson

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
INPUTS, VANTAGES, DAYS = 5000, 20, 28
SOURCES = ("web_connectivity_real.jsonl", "web_connectivity_netem_qa_synthetic.jsonl")

OONIDATA_SCRIPT = """
import gzip, sys, time, resource, orjson
from oonidata.dataclient import load_measurement
t = time.perf_counter(); n = 0; bad = 0
for path in sys.argv[1:]:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as fh:
        for line in fh:
            try:
                load_measurement(msmt=orjson.loads(line)); n += 1
            except Exception:
                bad += 1
print(n, bad, time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""
BUCKET_LINES = 50_000  # lines per .jsonl.gz file of the bucket (one partition each)


def _trim(test_keys: dict[str, Any], max_body: int) -> None:
    """Cut response bodies to MAX_BODY characters and keep one peer certificate per handshake.

    Marked `body_is_truncated` as a probe marks a body it cut, so the verdict logic treats the
    body exactly as it would a real truncated one (no length or title comparison).
    """
    for request in test_keys.get("requests") or ():
        response = request.get("response") if isinstance(request, dict) else None
        if not isinstance(response, dict):
            continue
        body = response.get("body")
        if isinstance(body, str) and len(body) > max_body:
            response["body"] = body[:max_body]
            response["body_is_truncated"] = True
        elif isinstance(body, dict) and len(str(body.get("data") or "")) > max_body:
            response["body"] = {**body, "data": str(body["data"])[: max_body // 4 * 4]}
            response["body_is_truncated"] = True
    for handshake in test_keys.get("tls_handshakes") or ():
        if isinstance(handshake, dict) and isinstance(handshake.get("peer_certificates"), list):
            handshake["peer_certificates"] = handshake["peer_certificates"][:1]


def _base(data: Path, max_body: int | None) -> list[dict[str, Any]]:
    base = []
    for name in SOURCES:
        for line in (data / name).read_bytes().splitlines():
            if line.strip():
                m = orjson.loads(line)
                if isinstance(m.get("test_keys"), dict):
                    if max_body is not None:
                        _trim(m["test_keys"], max_body)
                    base.append(m)
    return base


def _line(base: list[dict[str, Any]], i: int) -> bytes:
    """Measurement i: a real one with its own input, vantage, day and uid (every line distinct).

    Every input is seen from every vantage (one-vs-rest tests have something to compare) on
    several days (timelines have more than one window).
    """
    m = dict(base[i % len(base)])
    vantage = (i // INPUTS) % VANTAGES
    m["input"] = f"http://site{i % INPUTS}.example/"
    m["probe_asn"] = f"AS{64500 + vantage}"
    m["annotations"] = {"vantage": f"v{vantage}"}
    m["measurement_start_time"] = f"2024-03-{1 + (i + i // INPUTS) % DAYS:02d} 12:00:00"
    m["measurement_uid"] = f"bench{i}"
    return orjson.dumps(m) + b"\n"


def synthesise(n: int, out: Path, data: Path, max_body: int | None = None) -> None:
    """N distinct lines as one JSONL file.

    With MAX_BODY, bodies are trimmed (see `_trim`) so 1M lines fit on one disk; OONI's
    typical lines are a few KB, the real ones here average 41 KB because some carry whole pages.
    """
    base = _base(data, max_body)
    with out.open("wb") as fh:
        for i in range(n):
            fh.write(_line(base, i))


def _bucket_file(args: tuple[int, int, str, str, int | None]) -> str:
    first, count, path, data, max_body = args
    base = _base(Path(data), max_body)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = path + ".tmp"
    with gzip.open(tmp, "wb", compresslevel=1) as fh:
        for i in range(first, first + count):
            fh.write(_line(base, i))
    os.replace(tmp, path)
    return path


def synthesise_bucket(
    n: int, root: Path, data: Path, max_body: int | None = None, workers: int = 2
) -> list[Path]:
    """N distinct lines as .jsonl.gz files in OONI's bucket layout (raw/YYYYMMDD/HH/CC/test/),
    BUCKET_LINES a file; files already there (a previous run) are kept."""
    jobs = []
    for number, first in enumerate(range(0, n, BUCKET_LINES)):
        day, hour = 1 + number // 24 % DAYS, number % 24
        name = f"2024-03-{day:02d}".replace("-", "")
        path = root / "raw" / name / f"{hour:02d}" / "ZZ" / "webconnectivity"
        path = path / f"{name}{hour:02d}_ZZ_webconnectivity.n{number}.jsonl.gz"
        jobs.append((first, min(BUCKET_LINES, n - first), str(path), str(data), max_body))
    todo = [job for job in jobs if not Path(job[2]).exists()]
    if todo:
        with get_context("spawn").Pool(workers) as pool:
            for _ in pool.imap_unordered(_bucket_file, todo):
                pass
    return [Path(job[2]) for job in jobs]


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _open(path: str, inflate: str = "gzip") -> Any:
    if not path.endswith(".gz"):
        return open(path, "rb")
    if inflate == "igzip":
        from isal import igzip

        return igzip.open(path, "rb")
    return gzip.open(path, "rb")


def _cpu() -> float:
    """CPU seconds of this process (user + system): robust to other jobs on the machine."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _orjson(paths: list[str], inflate: str = "gzip") -> dict[str, Any]:
    """Read, inflate (stock gzip, or isal's igzip as analysis.load does) and decode every line."""
    t, cpu = time.perf_counter(), _cpu()
    n = 0
    for path in paths:
        with _open(path, inflate) as fh:
            for line in fh:
                orjson.loads(line)
                n += 1
    seconds = time.perf_counter() - t
    return {"n": n, "seconds": seconds, "cpu_seconds": _cpu() - cpu, "peak_mb": _peak_mb()}


def _inprocess(paths: list[str], fingerprints: str | None) -> dict[str, Any]:
    """Our in-process path: every measurement a row of one frame, in one process."""
    from analysis.compare import compare
    from analysis.load import Filters
    from analysis.pipeline import load_classified

    t, cpu = time.perf_counter(), _cpu()
    fps = Path(fingerprints) if fingerprints else None
    loaded = load_classified([], [Path(p) for p in paths], Filters(), fps, observations=False)
    classified, classified_cpu = time.perf_counter() - t, _cpu() - cpu
    comparison = compare(loaded.measurements)
    return {
        "n": len(loaded.measurements),
        "seconds": time.perf_counter() - t,
        "cpu_seconds": _cpu() - cpu,
        "classify_seconds": classified,
        "classify_cpu_seconds": classified_cpu,
        "peak_mb": _peak_mb(),
        "findings": len(comparison.findings),
    }


def _worker_peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _engine(paths: list[str], fingerprints: str | None, workers: int) -> dict[str, Any]:
    """analysis.engine on a LocalCluster of `workers` processes (cluster start not timed)."""
    from dask.distributed import Client, LocalCluster

    from analysis.engine import run_engine
    from analysis.load import Filters

    fps = Path(fingerprints) if fingerprints else None
    with (
        LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        before = client.run(_cpu)
        t, cpu = time.perf_counter(), _cpu()
        result = run_engine(
            [], [Path(p) for p in paths], Filters(), fps, scheduler=cluster.scheduler_address
        )
        seconds = time.perf_counter() - t
        after = client.run(_cpu)
        worker_peaks = client.run(_worker_peak_mb)
    workers_cpu = sum(after[w] - before.get(w, 0.0) for w in after)
    return {
        "n": result.facts.n,
        "seconds": seconds,
        "cpu_seconds": workers_cpu + _cpu() - cpu,
        "peak_mb": _peak_mb(),
        "child_peak_mb": max(worker_peaks.values()),
        "findings": len(result.comparison.findings),
    }


def _streamed(paths: list[str], fingerprints: str | None, workers: int) -> dict[str, Any]:
    """analysis.stream: pieces loaded, classified and counted by `workers` processes."""
    from analysis.load import Filters
    from analysis.stream import run_streamed

    t = time.perf_counter()
    fps = Path(fingerprints) if fingerprints else None
    result = run_streamed([Path(p) for p in paths], [], Filters(), fps, workers=workers)
    seconds = time.perf_counter() - t
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {
        "n": result.rows,
        "seconds": seconds,
        "peak_mb": _peak_mb(),
        "child_peak_mb": children,
        "findings": len(result.comparison.findings),
    }


def _run_into(queue: Any, target: Any, args: tuple[Any, ...]) -> None:
    queue.put(target(*args))


def _child(target: Any, *args: Any) -> dict[str, Any]:
    """Run in a fresh non-daemon process (Dask's cluster starts processes of its own)."""
    ctx = get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_run_into, args=(queue, target, args))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def _oonidata(python: str | None, paths: list[str]) -> tuple[str, dict[str, Any]] | str:
    """oonidata's parse in its own interpreter, or why it did not run."""
    if python is None:
        return (
            "oonidata: not run (give --oonidata-python, a virtualenv with `pip install oonidata`)"
        )
    proc = subprocess.run(
        [python, "-c", OONIDATA_SCRIPT, *paths], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        return f"oonidata failed: {proc.stderr.strip()[-300:]}"
    n, bad, seconds, rss = proc.stdout.split()
    version = subprocess.run(
        [python, "-c", "import importlib.metadata as m; print(m.version('oonidata'))"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    name = f"oonidata {version} load_measurement (parse only; {bad} failed)"
    return name, {"n": int(n), "seconds": float(seconds), "peak_mb": int(rss) / 1024}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--data", type=Path, default=SHARED / "ooni")
    parser.add_argument("--fingerprints", default=None)
    parser.add_argument(
        "--engines",
        default="orjson,oonidata,inprocess,engine",
        help="orjson (decode only), oonidata, inprocess, engine (analysis.engine on --workers "
        "processes), stream (analysis.stream)",
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--max-body", type=int, default=None, help="trim response bodies to this many characters"
    )
    parser.add_argument(
        "--jsonl", type=Path, default=None, help="keep the synthesised lines here (reused if there)"
    )
    parser.add_argument(
        "--bucket",
        type=Path,
        default=None,
        help="write the lines as .jsonl.gz in OONI's bucket layout under this folder (kept; "
        "files already there are reused)",
    )
    parser.add_argument("--oonidata-python", default=None)
    args = parser.parse_args(argv)
    engines = args.engines.split(",")
    with tempfile.TemporaryDirectory(prefix="censorscope-bench-") as tmp:
        if args.bucket is not None:
            files = synthesise_bucket(args.n, args.bucket, args.data, args.max_body, args.workers)
            form = f"{len(files)} .jsonl.gz files in OONI's bucket layout"
        else:
            path = args.jsonl or Path(tmp) / "measurements.jsonl"
            if not path.exists():
                synthesise(args.n, path, args.data, args.max_body)
            files, form = [path], "one JSONL file"
        paths = [str(p) for p in files]
        size = sum(p.stat().st_size for p in files)
        print(
            f"{args.n} distinct measurements, {form}, {size / 1e6:.0f} MB on disk; bodies cut "
            f"at {args.max_body}; fingerprints={args.fingerprints}; {os.cpu_count()} cores"
        )
        rows: list[tuple[str, dict[str, Any]]] = []
        for engine in engines:
            if engine == "orjson":
                # Both floors: analysis.load inflates with igzip, so that one is the fair one.
                rows.append(("orjson decode only, stock gzip (1 process)", _child(_orjson, paths)))
                rows.append(
                    ("orjson decode only, isal igzip (1 process)", _child(_orjson, paths, "igzip"))
                )
            elif engine == "oonidata":
                outcome = _oonidata(args.oonidata_python, paths)
                if isinstance(outcome, str):
                    print(outcome, file=sys.stderr)
                else:
                    rows.append(outcome)
            elif engine == "inprocess":
                result = _child(_inprocess, paths, args.fingerprints)
                classify = {
                    **result,
                    "seconds": result["classify_seconds"],
                    "cpu_seconds": result["classify_cpu_seconds"],
                }
                rows.append(("ours in-process: load+classify (1 process)", classify))
                rows.append(("ours in-process: load+classify+compare", result))
            elif engine == "engine":
                result = _child(_engine, paths, args.fingerprints, args.workers)
                rows.append(
                    (f"ours engine, {args.workers} workers: load+classify+count+compare", result)
                )
            elif engine == "stream":
                result = _child(_streamed, paths, args.fingerprints, args.workers)
                rows.append((f"ours stream, {args.workers} processes", result))
            else:
                parser.error(f"unknown engine {engine!r}")
        print(
            f"{'what':62} {'meas/s':>10} {'seconds':>8} {'CPU us/meas':>11} {'peak MB':>8} "
            f"{'worker MB':>9}"
        )
        floors = [(name, r) for name, r in rows if name.startswith("orjson")]
        for name, r in rows:
            child = f"{r['child_peak_mb']:9.0f}" if "child_peak_mb" in r else f"{'':9}"
            cpu = f"{r['cpu_seconds'] / r['n'] * 1e6:11.1f}" if "cpu_seconds" in r else f"{'':11}"
            print(
                f"{name:62} {r['n'] / r['seconds']:10.0f} {r['seconds']:8.1f} {cpu} "
                f"{r['peak_mb']:8.0f} {child}"
            )
        for floor_name, floor in floors:
            inflate = floor_name.split(", ")[1].split(" (")[0]
            for name, r in rows:
                if name.startswith("ours engine"):
                    ratio = (r["n"] / r["seconds"]) / (floor["n"] / floor["seconds"])
                    print(f"engine / orjson decode rate ({inflate}): {ratio:.2f}x (target 1.5x)")
                    if "cpu_seconds" in r and "cpu_seconds" in floor:
                        # On dedicated cores the engine's rate is workers / CPU per measurement.
                        cpu_ratio = (args.workers * floor["cpu_seconds"] / floor["n"]) / (
                            r["cpu_seconds"] / r["n"]
                        )
                        print(
                            f"in CPU time, {args.workers} dedicated workers / one orjson core "
                            f"({inflate}): {cpu_ratio:.2f}x"
                        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
