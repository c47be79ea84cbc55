"""Analysis throughput: raw JSONL -> verdicts -> findings, pandas and Dask, vs orjson and oonidata.

Synthesises N measurements from the real web_connectivity ones (../shared/data/ooni), varying
input, vantage and time, writes them as one JSONL file, then times in separate processes (so
each peak RSS is its own):
- orjson: decode every line and nothing else (the practical limit);
- pandas: analysis load + re-derived verdicts + compare (findings);
- dask: the same load + verdicts, Parquet partitioned by date/test, compare on a 2-worker
  LocalCluster;
- oonidata: `oonidata.dataclient.load_measurement` on every line (parse only), run with the
  interpreter given by --oonidata-python (oonidata 0.3.0 pins cryptography 38 and click 8.0,
  which conflict with ours, so it lives in its own virtualenv).

    python -m bench.analysis --n 1000000 [--fingerprints ../shared/data/fingerprints]
           [--oonidata-python /tmp/oonidata-venv/bin/python]
"""

from __future__ import annotations

import argparse
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
SOURCES = ("web_connectivity_real.jsonl", "web_connectivity_netem_qa_synthetic.jsonl")

OONIDATA_SCRIPT = """
import sys, time, resource, orjson
from oonidata.dataclient import load_measurement
t = time.perf_counter(); n = 0; bad = 0
with open(sys.argv[1], "rb") as fh:
    for line in fh:
        try:
            load_measurement(msmt=orjson.loads(line)); n += 1
        except Exception:
            bad += 1
print(n, bad, time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def synthesise(n: int, out: Path, data: Path) -> None:
    """N lines cycling the real measurements, each with its own input, vantage and day."""
    base = []
    for name in SOURCES:
        for line in (data / name).read_bytes().splitlines():
            if line.strip():
                m = orjson.loads(line)
                if isinstance(m.get("test_keys"), dict):
                    base.append(m)
    with out.open("wb") as fh:
        for i in range(n):
            m = dict(base[i % len(base)])
            m["input"] = f"http://site{i % 5000}.example/"
            m["probe_asn"] = f"AS{64500 + i % 20}"
            m["annotations"] = {"vantage": f"v{i % 20}"}
            m["measurement_start_time"] = f"2024-03-{1 + i % 28:02d} 12:00:00"
            m["measurement_uid"] = f"bench{i}"
            fh.write(orjson.dumps(m) + b"\n")


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _orjson(path: str) -> dict[str, Any]:
    t = time.perf_counter()
    n = 0
    with open(path, "rb") as fh:
        for line in fh:
            orjson.loads(line)
            n += 1
    return {"n": n, "seconds": time.perf_counter() - t, "peak_mb": _peak_mb()}


def _engine(path: str, engine: str, fingerprints: str | None) -> dict[str, Any]:
    from analysis.load import Filters
    from analysis.pipeline import run

    t = time.perf_counter()
    result = run(
        [], [Path(path)], Filters(), Path(fingerprints) if fingerprints else None, engine=engine
    )
    seconds = time.perf_counter() - t
    return {
        "n": len(result.loaded.measurements),
        "seconds": seconds,
        "peak_mb": _peak_mb(),
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--data", type=Path, default=SHARED / "ooni")
    parser.add_argument("--fingerprints", default=None)
    parser.add_argument("--engines", default="pandas,dask")
    parser.add_argument("--oonidata-python", default=None)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="censorscope-bench-") as tmp:
        path = Path(tmp) / "measurements.jsonl"
        synthesise(args.n, path, args.data)
        size = path.stat().st_size / 1e6
        print(f"{args.n} measurements, {size:.0f} MB JSONL; fingerprints={args.fingerprints}")
        rows = [("orjson decode only", _child(_orjson, str(path)))]
        for engine in args.engines.split(","):
            rows.append(
                (
                    f"{engine} load+classify+compare",
                    _child(_engine, str(path), engine, args.fingerprints),
                )
            )
        if args.oonidata_python:
            proc = subprocess.run(
                [args.oonidata_python, "-c", OONIDATA_SCRIPT, str(path)],
                capture_output=True,
                text=True,
                check=False,
            )
            if proc.returncode == 0:
                n, bad, seconds, rss = proc.stdout.split()
                rows.append(
                    (
                        f"oonidata 0.3.0 load_measurement (parse only; {bad} failed)",
                        {"n": int(n), "seconds": float(seconds), "peak_mb": int(rss) / 1024},
                    )
                )
            else:
                print(f"oonidata failed: {proc.stderr.strip()[-300:]}", file=sys.stderr)
        print(f"{'what':58} {'meas/s':>10} {'seconds':>8} {'peak MB':>8}")
        for name, r in rows:
            print(
                f"{name:58} {r['n'] / r['seconds']:10.0f} {r['seconds']:8.1f} {r['peak_mb']:8.0f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
