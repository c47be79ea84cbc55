"""`censorscope lab up|down|status|demo`: a typer app the main CLI mounts as `lab`."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from lab import scenario as scenario_mod
from lab import topology

app = typer.Typer(no_args_is_help=True, help="The censor lab in Linux network namespaces.")
console = Console()

ScenarioOpt = Annotated[
    Path | None, typer.Option("--scenario", help="Scenario TOML (default: bundled)")
]


def _require_root() -> None:
    if os.geteuid() != 0:
        typer.echo("censorscope lab: root is required (network namespaces, iptables)", err=True)
        raise typer.Exit(2)


def _load(path: Path | None) -> scenario_mod.Scenario:
    try:
        return scenario_mod.load(path)
    except scenario_mod.ScenarioError as exc:
        typer.echo(f"censorscope lab: {exc}", err=True)
        raise typer.Exit(2) from exc


def _up(path: Path | None) -> topology.LabInfo:
    scen = _load(path)
    try:
        return topology.up(scen)
    except topology.LabError as exc:
        typer.echo(f"censorscope lab: {exc}", err=True)
        raise typer.Exit(1) from exc


def _print_info(lab: topology.LabInfo) -> None:
    console.print(
        f"lab up: scenario [bold]{lab.scenario.name}[/] ({len(lab.scenario.domains)} domains)"
    )
    console.print(f"  resolver   {lab.resolver_v4}:53  [{lab.resolver_v6}]:53")
    console.print(f"  helper     {lab.helper_url or 'not running (see helper.log)'}")
    console.print(f"  lab CA     {lab.ca_pem}")
    for v in lab.vantages.values():
        kind = "censored" if v.censored else "open (exempt from censor rules)"
        console.print(f"  vantage {v.name:<5} {v.namespace}  {v.ipv4}  {v.ipv6}  {kind}")
        console.print(f"    run:  ip netns exec {v.namespace} COMMAND")
    console.print(
        "  probe example: ip netns exec cs-vp-cn censorscope run web_connectivity "
        f"--input http://{lab.scenario.domains[0].name}/ --resolver {lab.resolver} "
        f"--helper {lab.helper_url or 'URL'} --ca-file {lab.ca_pem} "
        f"--fingerprints {lab.fingerprints} --vantage cn"
        if lab.scenario.domains
        else "",
        soft_wrap=True,
    )
    console.print(f"  then: {_analyze_hint(Path('results'), lab)}", soft_wrap=True)


def _analyze_hint(results: Path, lab: topology.LabInfo) -> str:
    """The analysis of a lab run, with the lab's block-page fingerprints (it writes no DNS
    fingerprint file: the analysis says so and goes on)."""
    return (
        f"censorscope analyze --results {results} --fingerprints {lab.fingerprints} "
        f"--out {results}-analysis"
    )


@app.command()
def up(scenario: ScenarioOpt = None) -> None:
    """Bring the lab up (tearing down any previous one first)."""
    _require_root()
    _print_info(_up(scenario))


@app.command()
def down() -> None:
    """Tear the lab down: processes, namespaces, rules. Safe when nothing is up."""
    _require_root()
    topology.down()
    typer.echo("lab down")


@app.command()
def status() -> None:
    """Show namespaces, processes and the censor's decision counters."""
    _require_root()
    st = topology.status()
    typer.echo(
        f"lab {'up' if st.up else 'down'}" + (f" (scenario {st.scenario})" if st.scenario else "")
    )
    typer.echo(f"  namespaces: {', '.join(st.namespaces) or 'none'}")
    for name, p in st.processes.items():
        typer.echo(f"  {name}: pid {p['pid']} {'running' if p['alive'] else 'NOT running'}")
    if st.censor:
        decisions = st.censor.get("decisions", {})
        typer.echo(
            "  censor decisions: "
            + (", ".join(f"{k}={v}" for k, v in sorted(decisions.items())) or "none yet")
        )
    if not st.up:
        raise typer.Exit(1 if st.namespaces or st.processes else 0)


def _verdict(v: object) -> str:
    return "false" if v is False else "null" if v is None else str(v)


@app.command()
def demo(
    scenario: ScenarioOpt = None,
    results: Annotated[
        Path | None,
        typer.Option(help="Keep the probe's results here (default: a new temporary folder)"),
    ] = None,
    scheduled: Annotated[
        bool,
        typer.Option(
            "--scheduled",
            help="Run both vantages as scheduling daemons uploading to one collector, "
            "then analyze the collector's store",
        ),
    ] = False,
    interval: Annotated[
        float, typer.Option(min=1.0, help="With --scheduled: seconds between runs")
    ] = 3.0,
    runs: Annotated[
        int,
        typer.Option(
            min=1,
            max=20,
            help="With --scheduled: runs uploaded per vantage (5: enough for a finding)",
        ),
    ] = 5,
) -> None:
    """Up, run the probe from both vantages, print its verdicts beside the ground truth, down."""
    from lab.demo import compare, run_probe

    _require_root()
    lab = _up(scenario)
    if not lab.helper_url:
        topology.down()
        typer.echo("censorscope lab: the control helper did not start (see helper.log)", err=True)
        raise typer.Exit(1)
    if scheduled:
        _scheduled_demo(lab, results, interval, runs)
        return
    try:
        out = results or Path(tempfile.mkdtemp(prefix="censorscope-lab-demo-"))
        failed = False
        for vantage in ("cn", "open"):
            console.print(f"running web_connectivity at {vantage} ...")
            proc = run_probe(lab, vantage, out)
            if proc.returncode != 0:
                failed = True
                console.print(
                    f"[red]probe at {vantage} exited {proc.returncode}[/]: {proc.stderr[-1500:]}"
                )
        findings = compare(lab, out)
    finally:
        topology.down()
    table = Table(title=f"scenario {lab.scenario.name}: probe verdicts vs ground truth")
    for col in ("input", "mechanism", "expected (cn)", "probe at cn", "probe at open", "ok"):
        table.add_column(col)
    for f in findings:
        table.add_row(
            f.url,
            f.mechanism,
            f"{_verdict(f.expected)} {f.expected_detail or ''}",
            f"{_verdict(f.cn)} {f.cn_detail or ''}",
            _verdict(f.open),
            "[green]yes[/]" if f.correct else "[red]no[/]",
        )
    console.print(table)
    good = sum(f.correct for f in findings)
    console.print(f"{good}/{len(findings)} inputs as the scenario says; results in {out}")
    console.print(f"analyse them with: {_analyze_hint(out, lab)}", soft_wrap=True)
    if failed:
        raise typer.Exit(1)


def _scheduled_demo(lab: topology.LabInfo, work: Path | None, interval: float, runs: int) -> None:
    """The deployment of docs/deployment.md in miniature: collector, two daemons, analysis."""
    from collections import Counter

    from lab.demo import VANTAGES, run_scheduled

    out = work or Path(tempfile.mkdtemp(prefix="censorscope-lab-scheduled-"))
    try:
        result = run_scheduled(
            lab, out, interval=interval, runs=runs, progress=lambda m: console.print(m)
        )
    except topology.LabError as exc:
        typer.echo(f"censorscope lab: {exc}", err=True)
        raise typer.Exit(1) from exc
    finally:
        topology.down()
    failed = False
    for v in VANTAGES:
        stored = result.collected.get(v, [])
        dupes = sum(n - 1 for n in Counter(stored).values())
        lost = len(set(result.local[v]) - set(stored))
        console.print(
            f"vantage {v}: {len(result.local[v])} measured, {len(stored)} in the collector's "
            f"store, {dupes} duplicates, {lost} missing; daemon exit {result.daemon_status[v]}"
        )
        failed |= bool(dupes or lost or not stored or result.daemon_status[v] != 0)
    if result.analyze is None or result.analyze.returncode != 0:
        err = result.analyze.stderr[-1500:] if result.analyze else ""
        console.print(f"[red]censorscope analyze failed[/]: {err}")
        failed = True
    table = Table(title=f"scenario {lab.scenario.name}: analysis of the collector's store")
    for col in ("input", "mechanism", "expected", "analysis finding", "ok"):
        table.add_column(col)
    good = 0
    for url in result.inputs:
        got = result.findings.get(url, "missing")
        ok = got == result.expected[url]
        good += ok
        table.add_row(
            url,
            result.mechanisms[url],
            result.expected[url],
            got,
            "[green]yes[/]" if ok else "[red]no[/]",
        )
    console.print(table)
    keywords = Table(title="keyword monitoring (message_delivery, platform; http_keyword, censor)")
    for col in ("keyword", "expected", "analysis finding", "isolated", "ok"):
        keywords.add_column(col)
    found = result.keyword_findings or {}
    expected = result.keyword_expected or {}
    isolated = result.isolated or {}
    kw_good = 0
    for keyword in result.keyword_inputs or []:
        got = found.get((keyword, "relay"), "missing")
        ok = got == expected[keyword]
        kw_good += ok
        rules = " | ".join(isolated.get(" ".join(keyword.split()), []))
        keywords.add_row(
            keyword, expected[keyword], got, rules, "[green]yes[/]" if ok else "[red]no[/]"
        )
    for (keyword, placement), want in (result.http_keyword_expected or {}).items():
        got = found.get((keyword, placement), "missing")
        ok = got == want
        kw_good += ok
        keywords.add_row(
            f"{keyword} [{placement}]", want, got, "", "[green]yes[/]" if ok else "[red]no[/]"
        )
    console.print(keywords)
    n_keywords = len(result.keyword_inputs or []) + len(result.http_keyword_expected or {})
    console.print(
        f"{good}/{len(result.inputs)} web and {kw_good}/{n_keywords} keyword findings as the "
        f"scenario says; collector store in {result.collector_data}, analysis in "
        f"{out / 'analysis'}, report {result.report or '(not written)'}"
    )
    if failed or good != len(result.inputs) or kw_good != n_keywords:
        raise typer.Exit(1)
