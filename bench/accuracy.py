"""web_connectivity accuracy in the censor lab: probe verdicts against the scenario's truth.

A seeded random scenario (default 300 domains, every censor mechanism, 2% random loss on the
censor router) is brought up, `censorscope run web_connectivity` runs inside both vantages
over every input, and the stored verdicts are scored against `Scenario.ground_truth()`:

- per blocking type T (dns, tcp_ip, http-failure, http-diff) at the censored vantage:
  precision = correct T verdicts / T verdicts, recall = correct T verdicts / inputs truly T;
- type accuracy: of the inputs truly blocked and flagged blocked, the share with the right
  type; detail accuracy: the share of all inputs with exactly the truth's blocking_detail;
- the open vantage: any verdict other than `false` is a false positive.

Targets (docs/shared DESIGN 7): precision and recall >= 0.99 per type, type >= 0.98, zero
blocked verdicts at the open vantage. Needs root (the lab).

    python -m bench.accuracy [--domains 300] [--seed 1] [--loss 0.02] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lab import scenario as scenario_mod
from lab import topology
from lab.topology import LabInfo

# DESIGN.md section 7, "Accuracy in the lab".
TARGET_PRECISION = 0.99
TARGET_RECALL = 0.99
TARGET_TYPE_ACCURACY = 0.98
BLOCKING_TYPES = ("dns", "tcp_ip", "http-failure", "http-diff")


@dataclass
class ProbeRun:
    vantage: str
    returncode: int
    seconds: float
    max_rss_kib: int
    stderr: str
    cpu_seconds: float = 0.0


def probe_argv(
    lab: LabInfo, vantage: str, results: Path, inputs_file: Path, extra: list[str]
) -> list[str]:
    """`censorscope run web_connectivity` inside a vantage over a test list of the inputs."""
    assert lab.helper_url, "the lab's control helper is not running"
    return [
        *lab.vantages[vantage].exec_prefix,
        *topology._censorscope_argv(),
        "run",
        "web_connectivity",
        "--testlist",
        str(inputs_file),
        "--resolver",
        lab.resolver,
        "--helper",
        lab.helper_url,
        "--ca-file",
        lab.ca_pem,
        "--fingerprints",
        lab.fingerprints,
        "--results",
        str(results),
        "--vantage",
        vantage,
        "--no-progress",
        *extra,
    ]


def write_testlist(urls: list[str], path: Path) -> Path:
    """The inputs as a Citizen Lab list (one process argument per URL does not scale)."""
    lines = ["url,category_code,category_description,date_added,source,notes"]
    lines += [f"{u},NEWS,News Media,2024-01-01,censorscope-lab," for u in urls]
    path.write_text("\n".join(lines) + "\n")
    return path


def start_probe(argv: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        argv,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=topology._python_env(),
    )


def wait_probe(vantage: str, proc: subprocess.Popen[str], started: float) -> ProbeRun:
    """Wait with wait4 so the probe's own peak RSS is known (`ip netns exec` execs it)."""
    assert proc.stderr is not None
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    cpu = usage.ru_utime + usage.ru_stime
    seconds = time.monotonic() - started
    return ProbeRun(vantage, proc.returncode, seconds, usage.ru_maxrss, err, cpu)


def read_verdicts(results: Path, vantage: str) -> dict[str, dict[str, Any]]:
    """input -> test_keys from the probe's store."""
    out: dict[str, dict[str, Any]] = {}
    for path in results.glob(f"raw/date=*/vantage={vantage}/test_name=web_connectivity/*.jsonl"):
        for line in path.read_text().splitlines():
            m = json.loads(line)
            out[m["input"]] = m.get("test_keys") or {}
    return out


def _ratio(num: int, den: int) -> float | None:
    return num / den if den else None


def score(
    truth: dict[str, dict[str, Any]],
    cn: dict[str, dict[str, Any]],
    open_: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    """Precision/recall per blocking type, type and detail accuracy, open false positives."""
    per_type: dict[str, dict[str, Any]] = {}
    for t in BLOCKING_TYPES:
        said = [u for u in truth if cn.get(u, {}).get("blocking") == t]
        real = [u for u in truth if truth[u]["blocking"] == t]
        hit = [u for u in said if truth[u]["blocking"] == t]
        per_type[t] = {
            "n_truth": len(real),
            "n_said": len(said),
            "precision": _ratio(len(hit), len(said)),
            "recall": _ratio(len(hit), len(real)),
        }
    blocked_found = [
        u
        for u in truth
        if truth[u]["blocking"] not in (False, None)
        and cn.get(u, {}).get("blocking") not in (False, None)
    ]
    right_type = [u for u in blocked_found if cn[u]["blocking"] == truth[u]["blocking"]]
    exact = [
        u
        for u in truth
        if (cn.get(u, {}).get("blocking"), cn.get(u, {}).get("blocking_detail"))
        == (truth[u]["blocking"], truth[u]["blocking_detail"])
    ]
    wrong = {
        u: {
            "mechanism": truth[u]["mechanism"],
            "truth": [truth[u]["blocking"], truth[u]["blocking_detail"]],
            "probe": [cn.get(u, {}).get("blocking"), cn.get(u, {}).get("blocking_detail")],
        }
        for u in truth
        if u not in exact
    }
    open_verdicts = Counter(json.dumps(open_.get(u, {}).get("blocking", "missing")) for u in truth)
    open_blocked = {
        u: open_[u]["blocking"] for u in truth if open_.get(u, {}).get("blocking") not in (False,)
    }
    return {
        "n": len(truth),
        "per_type": per_type,
        "type_accuracy": _ratio(len(right_type), len(blocked_found)),
        "detail_accuracy": _ratio(len(exact), len(truth)),
        "missing": {"cn": len(set(truth) - set(cn)), "open": len(set(truth) - set(open_))},
        "open_verdicts": dict(open_verdicts),
        "open_not_false": open_blocked,
        "wrong_at_cn": wrong,
    }


def meets_targets(s: dict[str, Any]) -> bool:
    ok = all(
        (v["precision"] or 0) >= TARGET_PRECISION and (v["recall"] or 0) >= TARGET_RECALL
        for v in s["per_type"].values()
        if v["n_truth"]
    )
    blocked_open = [v for v in s["open_not_false"].values() if v not in (False, None)]
    return ok and (s["type_accuracy"] or 0) >= TARGET_TYPE_ACCURACY and not blocked_open


def _fmt(x: float | None) -> str:
    return "  -  " if x is None else f"{x:.4f}"


def report(scen: scenario_mod.Scenario, s: dict[str, Any], runs: list[ProbeRun]) -> None:
    kinds = Counter(d.block for d in scen.domains)
    print(f"scenario {scen.name}: {len(scen.domains)} domains, loss {scen.faults.loss:.0%}")
    print("  mechanisms: " + ", ".join(f"{k}={v}" for k, v in sorted(kinds.items())))
    for r in runs:
        print(
            f"  probe at {r.vantage}: exit {r.returncode}, {r.seconds:.1f} s, "
            f"peak RSS {r.max_rss_kib / 1024:.0f} MiB"
        )
    print(f"{'blocking type':<14} {'truth':>6} {'said':>6} {'precision':>10} {'recall':>8}")
    for t, v in s["per_type"].items():
        print(
            f"{t:<14} {v['n_truth']:>6} {v['n_said']:>6} {_fmt(v['precision']):>10} "
            f"{_fmt(v['recall']):>8}"
        )
    print(f"type accuracy (blocked and found: right type): {_fmt(s['type_accuracy'])}")
    print(f"exact blocking+detail at cn, all inputs:       {_fmt(s['detail_accuracy'])}")
    print(f"open vantage verdicts: {s['open_verdicts']}")
    blocked_open = {u: v for u, v in s["open_not_false"].items() if v not in (False, None)}
    print(f"blocked verdicts at open: {len(blocked_open)}")
    for u, w in sorted(s["wrong_at_cn"].items()):
        print(f"  wrong at cn: {u} {w['mechanism']}: probe {w['probe']} truth {w['truth']}")
    for u, v in sorted(s["open_not_false"].items()):
        print(f"  open not false: {u}: {v}")
    print("targets met" if meets_targets(s) else "targets NOT met")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.accuracy", description=__doc__)
    parser.add_argument("--domains", type=int, default=300)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--loss", type=float, default=0.02)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--keep", type=Path, help="keep the probe's results here")
    parser.add_argument("--json", type=Path, help="write the scores as JSON here")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("bench.accuracy: root is required (the censor lab)", file=sys.stderr)
        return 2
    scen = scenario_mod.generate(args.domains, args.seed, loss=args.loss)
    work = Path(tempfile.mkdtemp(prefix="censorscope-accuracy-"))
    results = args.keep or work / "results"
    lab = topology.up(scen)
    try:
        inputs = write_testlist(scen.inputs(), work / "inputs.csv")
        extra = ["--concurrency", str(args.concurrency)]
        started = time.monotonic()
        procs = {v: start_probe(probe_argv(lab, v, results, inputs, extra)) for v in ("cn", "open")}
        runs = [wait_probe(v, p, started) for v, p in procs.items()]
    finally:
        topology.down()
    for r in runs:
        if r.returncode != 0:
            print(f"probe at {r.vantage} exited {r.returncode}: {r.stderr[-2000:]}")
    s = score(scen.ground_truth(), read_verdicts(results, "cn"), read_verdicts(results, "open"))
    report(scen, s, runs)
    if args.json:
        args.json.write_text(json.dumps(s, indent=1, default=str))
    shutil.rmtree(work, ignore_errors=True)
    return 0 if meets_targets(s) and all(r.returncode == 0 for r in runs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
