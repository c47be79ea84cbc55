"""web_connectivity throughput in the censor lab: inputs/s and the probe's peak RSS.

A generated scenario (default 1,200 domains, every mechanism in bench's default mix, no loss)
is brought up and `censorscope run web_connectivity` runs once from cs-vp-cn over all of its
inputs. inputs/s = inputs stored / wall time of the probe process (start-up included); peak
RSS comes from wait4(2) on the probe process. DESIGN 7 target: >= 200 inputs/s on 2 cores.

Blocked inputs that end in a timeout (blackhole, injected DNS pointing nowhere, sites that
are down) hold a slot for seconds, so the figure depends on --concurrency and --timeout as
much as on CPU; `--mix accessible` measures the CPU-bound case alone. The run ends with a
tail as long as the connect timeout (20% of --timeout) in which the last blocked inputs wait
and the CPU idles, so a second figure is printed: the steady rate, inputs finished per second
while the probe was saturated (from SATURATED_FROM_S after the first start to the last start,
from the stored measurements' start times and runtimes), which is what a long run sustains.

    python -m bench.lab_throughput [--domains 1200] [--concurrency 256] [--timeout 30]
        [--mix default|accessible] [--profile FILE.prof]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from bench.accuracy import (
    probe_argv,
    read_verdicts,
    start_probe,
    stored,
    wait_probe,
    write_testlist,
)
from lab import scenario as scenario_mod
from lab import topology
from probes.measurement import parse_ooni_time

TARGET_INPUTS_PER_S = 200.0  # DESIGN.md section 7
# The first concurrency-many inputs start together; the rate is counted from this long after.
SATURATED_FROM_S = 2
# A steady rate over a shorter window says little (starts are stored to the second).
MIN_WINDOW_S = 5


def steady_rate(results: Path, vantage: str = "cn") -> tuple[float, int] | None:
    """(inputs finished per second while the probe was saturated, window in seconds).

    Saturated: after SATURATED_FROM_S and before the last input started (every slot freed was
    taken at once). None when that window is shorter than MIN_WINDOW_S.
    """
    spans = [
        (parse_ooni_time(m.measurement_start_time).timestamp(), m.test_runtime)
        for m in stored(results, vantage, "web_connectivity")
    ]
    if not spans:
        return None
    first = min(start for start, _ in spans)
    last_start = max(start for start, _ in spans) - first
    window = int(last_start) - SATURATED_FROM_S
    if window < MIN_WINDOW_S:
        return None
    ends = [start - first + runtime for start, runtime in spans]
    done = sum(1 for end in ends if SATURATED_FROM_S <= end < last_start)
    return done / window, window


def lab_cpu_seconds() -> dict[str, float]:
    """CPU seconds (user + system) used so far by each process the lab recorded."""
    ticks = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    pids_file = topology.STATE_DIR / "pids.json"
    if not pids_file.exists():
        return out
    for name, rec in json.loads(pids_file.read_text()).items():
        try:
            stat = Path(f"/proc/{rec['pid']}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        # utime and stime are fields 14 and 15 of proc(5); fields[0] here is field 3.
        out[name] = (int(fields[11]) + int(fields[12])) / ticks
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.lab_throughput", description=__doc__)
    parser.add_argument("--domains", type=int, default=1200)
    parser.add_argument("--seed", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument("--mix", choices=("default", "accessible"), default="default")
    parser.add_argument("--keep", type=Path, help="keep the probe's results here")
    parser.add_argument(
        "--profile", type=Path, help="run the probe under cProfile, write stats here"
    )
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("bench.lab_throughput: root is required (the censor lab)", file=sys.stderr)
        return 2
    mix: dict[str, float] | None = {} if args.mix == "accessible" else None
    scen = scenario_mod.generate(args.domains, args.seed, mix=mix)
    work = Path(tempfile.mkdtemp(prefix="censorscope-throughput-"))
    results = args.keep or work / "results"
    lab = topology.up(scen)
    try:
        inputs = write_testlist(scen.inputs(), work / "inputs.csv")
        extra = ["--concurrency", str(args.concurrency), "--timeout", str(args.timeout)]
        cmd = probe_argv(lab, "cn", results, inputs, extra)
        if args.profile:
            # Same command, the entry point run under cProfile instead of the console script.
            at = len(lab.vantages["cn"].exec_prefix)
            cmd = [
                *cmd[:at],
                sys.executable,
                "-m",
                "cProfile",
                "-o",
                str(args.profile),
                "-m",
                "probes.cli",
                *cmd[at + len(topology._censorscope_argv()) :],
            ]
        cpu_before = lab_cpu_seconds()
        started = time.monotonic()
        run = wait_probe("cn", start_probe(cmd), started)
        cpu_after = lab_cpu_seconds()
    finally:
        topology.down()
    verdicts = read_verdicts(results, "cn")
    steady = steady_rate(results)
    shutil.rmtree(work, ignore_errors=True)
    rate = len(verdicts) / run.seconds
    kinds = Counter(d.block for d in scen.domains)
    outcomes = Counter(str(k.get("blocking")) for k in verdicts.values())
    print(f"scenario {scen.name}: {len(scen.domains)} domains")
    print("  mechanisms: " + ", ".join(f"{k}={v}" for k, v in sorted(kinds.items())))
    print(
        f"  probe: concurrency {args.concurrency}, timeout {args.timeout:g} s, "
        f"exit {run.returncode}"
    )
    print(f"  verdicts: {dict(outcomes)}")
    print(f"inputs stored: {len(verdicts)} in {run.seconds:.1f} s = {rate:.1f} inputs/s")
    if steady is None:
        print("steady rate: n/a (the saturated part of the run was too short)")
    else:
        print(f"steady rate while saturated ({steady[1]} s): {steady[0]:.1f} inputs/s")
    print(f"peak RSS of the probe: {run.max_rss_kib / 1024:.0f} MiB")
    n = max(len(verdicts), 1)
    print(f"CPU per input: probe {run.cpu_seconds / n * 1000:.1f} ms", end="")
    for name in sorted(cpu_after):
        used = cpu_after[name] - cpu_before.get(name, 0.0)
        print(f", {name} {used / n * 1000:.1f} ms", end="")
    print()
    if run.returncode != 0:
        print(f"probe exited {run.returncode}: {run.stderr[-2000:]}")
    ok = run.returncode == 0 and len(verdicts) == len(scen.domains)

    def said(value: float | None) -> str:
        if value is None:
            return "n/a"
        return "met" if value >= TARGET_INPUTS_PER_S else "NOT met"

    print(
        f"target >= {TARGET_INPUTS_PER_S:g} inputs/s: end to end {said(rate)}, "
        f"steady {said(steady[0] if steady else None)}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
