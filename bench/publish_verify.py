"""Publishing and verifying a dataset: seconds, peak memory and size at N measurements.

Writes a results store of N tcp_connect measurements (two vantages, 10 days, 100 inputs; the
censored vantage blocks every tenth input) with probes.store, then runs the real commands in
child processes, each timed with its peak RSS: `censorscope publish` into a fresh folder,
`censorscope verify` of it, and `publish` again into the same folder (nothing changed, so no
raw or Parquet file should be rewritten). Everything stays in a temporary folder.

`--ooni PATH` publishes those files (e.g. a bucket written by `bench.analysis --bucket`) instead
of a store. `--workers N` runs publish and verify through the distributed engine on a fresh
LocalCluster of N single-threaded worker processes for each command (given to the command with
`--scheduler`), and prints each worker's peak RSS besides the command's own (the client's).
`--engine pandas` times the in-process engine.

    python -m bench.publish_verify [--measurements 20000] [--ooni PATH] [--workers 2]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from probes.measurement import (  # noqa: E402
    Measurement,
    new_measurement_uid,
    new_report_id,
    ooni_time,
)
from probes.store import ReportManifest, ResultsStore  # noqa: E402

VANTAGES = (("censored", "XC", "AS64500"), ("open", "XO", "AS64501"))
DAYS, INPUTS = 10, 100
START = datetime(2024, 3, 1, 12, tzinfo=UTC)


def write_store(root: Path, total: int) -> int:
    """About `total` measurements (a multiple of vantages x days x inputs)."""
    repeats = max(1, total // (len(VANTAGES) * DAYS * INPUTS))
    store = ResultsStore(root)
    written = 0
    for vantage, cc, asn in VANTAGES:
        for day in range(DAYS):
            moment = START + timedelta(days=day)
            rid = new_report_id("tcp_connect", cc, asn, moment)
            manifest = ReportManifest(
                rid, "tcp_connect", vantage, moment.date().isoformat(), ooni_time(moment)
            )
            with store.open_report(manifest) as writer:
                for repeat in range(repeats):
                    for i in range(INPUTS):
                        when = moment + timedelta(seconds=repeat * INPUTS + i)
                        blocked = vantage == "censored" and i % 10 == 0
                        writer.append(
                            Measurement(
                                test_name="tcp_connect",
                                test_version="0.1.0",
                                input=f"site{i}.example:443",
                                report_id=rid,
                                measurement_uid=new_measurement_uid("tcp_connect", cc, when),
                                probe_cc=cc,
                                probe_asn=asn,
                                test_start_time=ooni_time(moment),
                                measurement_start_time=ooni_time(when),
                                test_runtime=0.5,
                                annotations={"vantage": vantage, "testlists_sha256": "ab" * 32},
                                test_keys={
                                    "blocking": "tcp_ip" if blocked else False,
                                    "blocking_detail": "tcp.rst_injected" if blocked else None,
                                },
                            )
                        )
                        written += 1
    return written


def _peak_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@contextmanager
def cluster(workers: int) -> Iterator[tuple[list[str], Any]]:
    """(`--scheduler ADDRESS` for a command, a client) of a fresh LocalCluster; none for 0."""
    if not workers:
        yield [], None
        return
    from dask.distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None
        ) as local,
        Client(local) as client,
    ):
        yield ["--scheduler", local.scheduler_address], client


def worker_peaks(client: Any) -> str:
    if client is None:
        return ""
    peaks = sorted(client.run(_peak_mb).values())
    return "  workers' peak RSS " + ", ".join(f"{p:.0f}" for p in peaks) + " MB"


def timed(args: list[str]) -> tuple[float, float, str]:
    """(seconds, peak RSS of this child in MB, its stdout): os.wait4 gives the child's own
    rusage, not the maximum over every child so far."""
    started = time.perf_counter()
    with tempfile.TemporaryFile() as captured:
        proc = subprocess.Popen(
            [sys.executable, "-m", "probes", *args], stdout=captured, stderr=subprocess.STDOUT
        )
        _pid, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - started
        captured.seek(0)
        output = captured.read().decode()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args)}: exit {proc.returncode}\n{output}")
    return seconds, usage.ru_maxrss / 1024, output


def size_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--measurements", type=int, default=20_000)
    parser.add_argument("--ooni", type=Path, default=None, help="publish these files instead")
    parser.add_argument("--workers", type=int, default=0, help="a LocalCluster of N workers")
    parser.add_argument("--engine", default="dask", choices=["dask", "pandas"])
    options = parser.parse_args()
    engine = ["--engine", options.engine]
    with tempfile.TemporaryDirectory(prefix="bench-publish-") as tmp:
        store, out = Path(tmp) / "store", Path(tmp) / "dataset"
        if options.ooni is not None:
            source = ["--ooni", str(options.ooni)]
            n = 0
            print(f"input: {options.ooni}, {size_mb(options.ooni):.1f} MB")
        else:
            source = ["--results", str(store)]
            n = write_store(store, options.measurements)
            print(f"store: {n} measurements, {size_mb(store):.1f} MB")
        with cluster(options.workers) as (scheduler, client):
            seconds, peak, stdout = timed(
                ["publish", *source, "--out", str(out), *engine, *scheduler]
            )
            peaks = worker_peaks(client)
        n = n or int(stdout.split(" raw measurements", 1)[0].rsplit("\n", 1)[-1])
        print(f"publish:   {seconds:6.1f} s  {n / seconds:7.0f} measurements/s  "
              f"peak RSS {peak:.0f} MB  dataset {size_mb(out):.1f} MB{peaks}")  # fmt: skip
        with cluster(options.workers) as (scheduler, client):
            seconds, peak, stdout = timed(["verify", str(out), *engine, *scheduler])
            peaks = worker_peaks(client)
        holds = "holds" if "every published finding holds" in stdout else "DIFFERS"
        print(f"verify:    {seconds:6.1f} s  {n / seconds:7.0f} measurements/s  "
              f"peak RSS {peak:.0f} MB  {holds}{peaks}")  # fmt: skip
        with cluster(options.workers) as (scheduler, client):
            seconds, _peak, stdout = timed(
                ["publish", *source, "--out", str(out), *engine, *scheduler]
            )
        changed = next((line for line in stdout.splitlines() if "raw/Parquet" in line), "")
        print(f"republish: {seconds:6.1f} s  {changed.split('; ', 1)[-1]}")


if __name__ == "__main__":
    main()
