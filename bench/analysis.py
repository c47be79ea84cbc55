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
INPUTS, VANTAGES, DAYS = 5000, 20, 28
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


def synthesise(n: int, out: Path, data: Path, max_body: int | None = None) -> None:
    """N lines cycling the real measurements, each with its own input, vantage and day.

    With MAX_BODY, bodies are trimmed (see `_trim`) so 1M-10M lines fit on one disk; OONI's
    typical lines are a few KB, the real ones here average 41 KB because some carry whole pages.
    """
    base = []
    for name in SOURCES:
        for line in (data / name).read_bytes().splitlines():
            if line.strip():
                m = orjson.loads(line)
                if isinstance(m.get("test_keys"), dict):
                    if max_body is not None:
                        _trim(m["test_keys"], max_body)
                    base.append(m)
    with out.open("wb") as fh:
        for i in range(n):
            m = dict(base[i % len(base)])
            # Every input is seen from every vantage (one-vs-rest tests have something to
            # compare) on several days (timelines have more than one window).
            vantage = (i // INPUTS) % VANTAGES
            m["input"] = f"http://site{i % INPUTS}.example/"
            m["probe_asn"] = f"AS{64500 + vantage}"
            m["annotations"] = {"vantage": f"v{vantage}"}
            m["measurement_start_time"] = f"2024-03-{1 + (i + i // INPUTS) % DAYS:02d} 12:00:00"
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
    """The in-memory path the commands take (every measurement a row of one frame)."""
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


def _streamed(
    path: str, engine: str, fingerprints: str | None, workers: int, repeat: int = 1
) -> dict[str, Any]:
    """The bounded-memory path (analysis.stream): pieces loaded and classified by `workers`
    processes; "stream" merges their counts in pandas, "stream-dask" writes the pieces as
    partitioned Parquet and compares on a `workers`-process Dask LocalCluster."""
    from analysis.load import Filters
    from analysis.stream import run_streamed

    t = time.perf_counter()
    fps = Path(fingerprints) if fingerprints else None
    sources = [Path(path)] * repeat
    if engine == "stream":
        result = run_streamed(sources, [], Filters(), fps, workers=workers)
        n, n_findings = result.rows, len(result.comparison.findings)
    else:
        from analysis.dask_engine import compare_parquet, local_cluster

        with tempfile.TemporaryDirectory(prefix="censorscope-bench-parquet-") as tmp:
            result = run_streamed(
                sources, [], Filters(), fps, workers=workers, parquet_dir=Path(tmp)
            )
            with local_cluster(workers):
                comparison = compare_parquet(Path(tmp))
        n, n_findings = result.rows, len(comparison.findings)
    seconds = time.perf_counter() - t
    # Peak of this process and of its (finished) worker processes, each counted on its own.
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {
        "n": n,
        "seconds": seconds,
        "peak_mb": _peak_mb(),
        "child_peak_mb": children,
        "findings": n_findings,
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
    parser.add_argument(
        "--engines",
        default="orjson,pandas,dask,stream,stream-dask",
        help="orjson: decode only; pandas, dask: in memory (the commands' path); "
        "stream, stream-dask: analysis.stream",
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--max-body", type=int, default=None, help="trim response bodies to this many characters"
    )
    parser.add_argument(
        "--jsonl", type=Path, default=None, help="keep the synthesised lines here (reused if there)"
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="stream engines read the file this many times (10M lines without 128 GB of disk)",
    )
    parser.add_argument("--oonidata-python", default=None)
    args = parser.parse_args(argv)
    engines = args.engines.split(",")
    with tempfile.TemporaryDirectory(prefix="censorscope-bench-") as tmp:
        path = args.jsonl or Path(tmp) / "measurements.jsonl"
        if not path.exists():
            synthesise(args.n, path, args.data, args.max_body)
        size = path.stat().st_size
        print(
            f"{args.n} measurements, {size / 1e6:.0f} MB JSONL ({size / args.n / 1e3:.1f} KB a "
            f"line, bodies cut at {args.max_body}); fingerprints={args.fingerprints}"
        )
        if args.repeat > 1:
            print(f"stream engines read the file {args.repeat} times")
        rows = [("orjson decode only", _child(_orjson, str(path)))] if "orjson" in engines else []
        for engine in engines:
            if engine == "orjson":
                continue
            if engine.startswith("stream"):
                result = _child(
                    _streamed, str(path), engine, args.fingerprints, args.workers, args.repeat
                )
            else:
                result = _child(_engine, str(path), engine, args.fingerprints)
            rows.append((f"{engine} load+classify+compare", result))
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
        print(f"{'what':58} {'meas/s':>10} {'seconds':>8} {'peak MB':>8} {'worker MB':>9}")
        for name, r in rows:
            child = f"{r['child_peak_mb']:9.0f}" if "child_peak_mb" in r else f"{'':9}"
            print(
                f"{name:58} {r['n'] / r['seconds']:10.0f} {r['seconds']:8.1f} "
                f"{r['peak_mb']:8.0f} {child}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
