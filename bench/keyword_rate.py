"""Keyword tests per minute with residual censorship on, simulated on loopback.

A helper with N echo ports on 127.0.0.4, the loopback keyword censor (tests/loopback/
keyword_censor.py) on 127.0.0.5 resetting a keyword and tainting the (client, server, port)
triple for W seconds; http_keyword runs K keywords (a share of them censored) through it, one
placement, with the probe's residual window set to W. A real window is ~90 s (Bock et al.,
FOCI 2020); the loopback run uses a short W and the model below scales it:
a censored keyword taints `tries` endpoints for W seconds, so with N endpoints the probe
sustains at most N * 60 / (W * tries) censored keywords per minute.

    python bench/keyword_rate.py [--keywords 40] [--censored 0.25] [--ports 4] [--window 2]

`--lab` runs the same measurement in the censor lab instead (root; docs/lab.md): the lab's
censor plants the censored words as keyword rules with a residual window of --window seconds
(residual_action "rst"), `censorscope run http_keyword` runs at cs-vp-cn against the lab
helper's echo ports (lab.addresses.HELPER_ECHO_PORTS), with the probe's window LAB_MARGIN_S
above the censor's, and every verdict is checked against the planted rules.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx

from backend.helper import EchoConfig
from probes.nettests.base import ProbeContext
from probes.nettests.http_keyword import HTTPKeyword
from tests.loopback import ServerThread
from tests.loopback.keyword_censor import KeywordCensor, patterns_for, run_helper


async def run(url: str, words: list[str], window: float, tries: int, placement: str) -> float:
    ctx = ProbeContext(
        helpers=[url],
        timeout=10.0,
        options={"residual_window": window, "keyword_tries": tries, "placements": [placement]},
    )
    nettest = HTTPKeyword(ctx)
    await nettest.setup()
    started = time.monotonic()
    try:
        for word in words:  # one at a time, as a careful probe runs keyword tests
            await nettest.measure(word)
    finally:
        await nettest.close()
    return time.monotonic() - started


# The probe's window is set this much above the lab censor's: the two start their clocks at
# slightly different moments, and a probe that forgets a taint early reports false blocking.
LAB_MARGIN_S = 1.0


def _planted(censored: list[str], window: float, name: str) -> Any:
    """The default lab scenario with `censored` as its keyword rules, a residual window of
    `window` seconds that resets new connections."""
    from dataclasses import replace

    from lab import scenario as scenario_mod

    base = scenario_mod.load()
    return replace(
        base,
        name=name,
        censor=replace(
            base.censor,
            keywords=tuple((w,) for w in censored),
            residual_seconds=window,
            residual_action="rst",
        ),
    )


def _run_at_cn(info: Any, words: list[str], tmp: Path, *flags: str) -> tuple[float, list[Any]]:
    """`censorscope run http_keyword` over `words` at cs-vp-cn against the lab helper, with
    `flags`; (seconds taken, the stored measurements). A failed run stops the bench."""
    import json
    import subprocess

    from lab import topology

    kw = tmp / "keywords.csv"
    kw.write_text("keyword,language,category,source\n" + "".join(f"{w},en,t,b\n" for w in words))
    argv = [*info.vantages["cn"].exec_prefix, *topology._censorscope_argv(), "run",
            "http_keyword", "--keywords", str(kw), "--helper", info.helper_url, *flags,
            "--results", f"{tmp}/results", "--vantage", "cn", "--no-progress"]  # fmt: skip
    started = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, text=True, env=topology._python_env())
    elapsed = time.monotonic() - started
    if proc.returncode != 0:
        raise SystemExit(f"censorscope run failed: {proc.stderr[-2000:]}")
    stored = []
    for f in Path(tmp, "results").glob("raw/date=*/vantage=cn/test_name=http_keyword/*"):
        stored += [json.loads(line) for line in f.read_text().splitlines()]
    return elapsed, stored


def lab_main(args: argparse.Namespace, censored: list[str], words: list[str]) -> None:
    """The keyword rate through the lab's on-path censor (see the module docstring)."""
    import tempfile

    from lab import addresses, topology

    info = topology.up(_planted(censored, args.window, "keyword-rate"))
    try:
        assert info.helper_url, "the lab helper did not start"
        with tempfile.TemporaryDirectory() as tmp:
            window = args.window + LAB_MARGIN_S
            elapsed, stored = _run_at_cn(
                info, words, Path(tmp), "--residual-window", str(window), "--keyword-tries",
                str(args.tries), "--placement", args.placement, "--concurrency", "1",
                "--timeout", "600",
            )  # fmt: skip
            verdicts = {m["input"]: m["test_keys"]["blocking"] for m in stored}
        stats = info.censor_stats()
    finally:
        topology.down()
    right = sum((verdicts.get(w) not in (False, None)) == (w in censored) for w in words)
    ports = len(addresses.HELPER_ECHO_PORTS)
    bound = ports * 60 / (window * args.tries)
    print(
        f"lab: {len(words)} keywords ({len(censored)} censored), {ports} echo ports, censor "
        f"window {args.window:g} s (probe {window:g} s), {args.tries} tries, placement "
        f"{args.placement}: {elapsed:.1f} s, {len(words) * 60 / elapsed:.1f} keywords/min; "
        f"verdicts right {right}/{len(words)}; censor stats {stats}"
    )
    print(f"model: <= {bound:.1f} censored keywords/min at the probe's window {window:g} s")


def target_main(args: argparse.Namespace) -> None:
    """Issue 15's target in the lab: 1,000 words, 2% censored, every placement, a 90 s
    residual window, `censorscope run http_keyword` with its defaults (budget, concurrency,
    tries); every (word, placement) must be decided and right, within 10 minutes."""
    import tempfile

    from lab import addresses, topology

    n_censored = round(args.keywords * args.censored)
    censored = [f"blocked{i}" for i in range(n_censored)]
    words = [f"benign{i}" for i in range(args.keywords - n_censored)]
    step = max(1, len(words) // max(1, n_censored))
    for i, word in enumerate(censored):  # spread evenly through the list
        words.insert(i * (step + 1), word)
    scen = _planted(censored, args.window, "keyword-target")
    planted = set(scen.censor.keyword_placements)
    info = topology.up(scen)
    try:
        assert info.helper_url, "the lab helper did not start"
        with tempfile.TemporaryDirectory() as tmp:
            elapsed, stored = _run_at_cn(
                info, words, Path(tmp), "--residual-window", str(args.window + LAB_MARGIN_S)
            )
            cells: dict[tuple[str, str], object] = {}
            for m in stored:
                for placement, r in (m["test_keys"].get("placements") or {}).items():
                    cells[(m["input"], placement)] = r["blocking"]
    finally:
        topology.down()
    placements = sorted({p for _w, p in cells})
    undecided = sum(v is None for v in cells.values())
    right = sum(
        (v not in (False, None)) == (w in censored and p in planted)
        for (w, p), v in cells.items()
        if v is not None
    )
    missing = len(words) * len(placements) - len(cells)
    met = not undecided and not missing and right == len(cells) and elapsed <= 600
    print(
        f"lab target: {len(words)} words ({len(censored)} censored) x {len(placements)} "
        f"placements ({', '.join(placements)}), {len(addresses.HELPER_ECHO_PORTS)} + "
        f"{len(addresses.HELPER_TLS_ECHO_PORTS)} echo ports, censor window {args.window:g} s, "
        f"run defaults: {elapsed:.0f} s ({len(words) * 60 / elapsed:.0f} words/min); "
        f"cells decided {len(cells) - undecided}/{len(cells)} (missing {missing}), "
        f"right {right}/{len(cells) - undecided}; {'meets' if met else 'misses'} the target "
        "(all decided and right within 600 s)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--keywords", type=int, default=40)
    parser.add_argument("--censored", type=float, default=0.25)
    parser.add_argument("--ports", type=int, default=4)
    parser.add_argument("--window", type=float, default=2.0)
    parser.add_argument("--tries", type=int, default=2)
    parser.add_argument("--placement", default="path")
    parser.add_argument("--lab", action="store_true", help="measure in the censor lab (root)")
    parser.add_argument(
        "--target",
        action="store_true",
        help="issue 15's target in the lab: use with --keywords 1000 --censored 0.02 --window 90",
    )
    args = parser.parse_args()
    if args.target:
        target_main(args)
        return
    n_censored = round(args.keywords * args.censored)
    censored = [f"blocked{i}" for i in range(n_censored)]
    words = censored + [f"benign{i}" for i in range(args.keywords - n_censored)]
    words.sort(key=lambda w: w[-1])  # interleave censored and benign words
    if args.lab:
        lab_main(args, censored, words)
        return
    echo = EchoConfig("127.0.0.4", [0] * args.ports, [0] * args.ports)
    with run_helper("127.0.0.4", echo=echo) as (base, port):
        info = httpx.get(base + "echo", timeout=5).json()
        ports = [port, *info["tcp_ports"], *info["tls_ports"]]
        censor = KeywordCensor("127.0.0.5", "127.0.0.4", ports, patterns_for(censored), args.window)
        with ServerThread("censor") as thread:
            thread.start(censor)
            elapsed = asyncio.run(
                run(f"http://127.0.0.5:{port}/", words, args.window, args.tries, args.placement)
            )
    per_min = len(words) * 60 / elapsed
    bound = args.ports * 60 / (args.window * args.tries)
    bound90 = args.ports * 60 / (90 * args.tries)
    print(
        f"{len(words)} keywords ({n_censored} censored), {args.ports} echo ports, "
        f"window {args.window:g} s, {args.tries} tries: {elapsed:.1f} s, "
        f"{per_min:.0f} keywords/min; censor triggers {censor.triggers}, "
        f"residual resets seen {censor.residual_resets}"
    )
    print(
        f"model: <= {bound:.0f} censored keywords/min at W={args.window:g} s; "
        f"<= {bound90:.2f}/min at W=90 s with {args.ports} ports"
    )


if __name__ == "__main__":
    main()
