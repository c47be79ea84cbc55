"""Accuracy of every lab-testable nettest in the censor lab: probe verdicts against the truth.

A seeded random scenario is brought up: default 300 domains, every censor mechanism (4% of
them DNS-redirected to the censor's block-page server, which runs the same server software as
the sites, and the censor's own block page made with the sites' headers too), 2% random loss on
the censor router *and* on the control helper's own path (its DNS, connects and fetches),
residual censorship on (15 s: the bench waits it out between nettests, each nettest meets it
within its own run), the censor 2 routers away from the censored vantage, in-path or
(`--mode on-path`) an on-path injector that races its forgeries and lets every original
through; by default 2% of the domains are re-signed by the censor's TLS interceptor and 2%
served a CDN-like regional certificate. Each chosen nettest runs as
`censorscope run NETTEST` inside both vantages at once (nettests one after another), and the
stored verdicts are scored against the scenario's truth for that nettest:

- web_connectivity: every input URL, `Scenario.ground_truth()`;
- dns_consistency: every domain name, `Scenario.dns_truth()` (the lab resolver, the control
  helper as control: injected dns.injected, NXDOMAIN dns.nxdomain, bogon dns.bogon);
- tcp_connect: every domain's IPv4 address on its scheme's port, `Scenario.tcp_truth()`;
- sni_blocking: the SNI-blocked names and a sample of open ones, `Scenario.sni_truth()`;
- tls_interception: intercepted, regional-certificate and a sample of open names,
  `Scenario.tls_truth()`;
- whatsapp, telegram, signal, facebook_messenger: endpoint sets on open domains and sets with
  one role of the app on a blackholed (tcp.connect_timeout), SNI-reset (tls.sni_reset) or
  DNS-tampered domain (dns.inconsistent, dns.nxdomain, dns.bogon), `bench.apps_lab`;
- dnscheck: each SNI-reset domain as a DoH resolver (tls.sni_reset), each blackholed and each
  DNS-blocked domain as a DoT resolver (tcp.connect_timeout; dns.bootstrap_injected,
  _nxdomain, _bogon), and a sample of open names as both (`dnscheck_truth` here), asked for an
  open domain of the scenario;
- ech_check: the names whose ECH hellos the censor drops or resets (`--ech` share of the
  domains: `ech_drop_sni`, `ech_rst_sni`; tls.ech_dropped, tls.ech_reset) and a sample of open
  names, `Scenario.ech_truth()`, with ech_check's default extra outer SNI (cloudflare-ech.com);
- quic_sni: the names in the censor's `quic_blocked_sni` (`--quic-sni` share of the domains,
  drawn when quic_sni is scored; the censor drops their QUIC flows per triple for 180 s:
  quic.sni_blocked), a third as many whose address has UDP 443 dropped (`quic_blocked_ip`:
  quic.all_blocked, known by the helper's QUIC handshake), and a sample of open names
  (`quic_truth` here);
- download: each throttle_sni domain's large object (throttling/throttled) and each stall_sni
  one's (throttling/stalled), and a sample of open names (`Scenario.download_truth()`); the
  scenario then holds `--shaped` (2%) of each of these kinds (none when download is not run,
  so the other nettests' scenario stays as it was).

Per nettest and blocking type T at the censored vantage: precision = correct T verdicts / T
verdicts, recall = correct T verdicts / inputs truly T, and of those correct, the share with
the truth's blocking_detail. Type accuracy: of the inputs truly blocked and flagged blocked, the
share with the right type (web_connectivity: `blocking`; the others have one blocking type, so
their type is the `blocking_detail`). At the open vantage any blocked verdict (not false, not
null) is a false positive.

Targets (DESIGN 7, issue 14): precision and recall >= 0.99 per type, type >= 0.98, zero
blocked verdicts at the open vantage, zero null verdicts at either vantage; the exit status is
1 when one is missed. Needs root (the lab).

    python -m bench.accuracy [--domains 300] [--seed 1] [--loss 0.02] [--nettests a,b]
        [--helper-loss P] [--residual S] [--mode in-path|on-path] [--hops N]
        [--dns-blockpage SHARE] [--ech SHARE] [--no-fingerprints] [--quic-sni SHARE]
        [--quic-scope triple|flow] [--shaped SHARE]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import apps_lab
from lab import scenario as scenario_mod
from lab import topology
from lab.topology import LabInfo
from probes.measurement import Measurement
from probes.store import LineProblem, ResultsStore

# DESIGN.md section 7, "Accuracy in the lab".
TARGET_PRECISION = 0.99
TARGET_RECALL = 0.99
TARGET_TYPE_ACCURACY = 0.98
BLOCKING_TYPES = ("dns", "tcp_ip", "http-failure", "http-diff")
# Generated scenarios: shares of domains behind the censor's TLS interceptor.
DEFAULT_INTERCEPT_SHARE = 0.02
DEFAULT_REGIONAL_SHARE = 0.02
# Open names scored by sni_blocking and tls_interception besides the planted ones.
DEFAULT_OPEN_SAMPLE = 100
# The conditions of issue 14 (docs/benchmarks.md "Accuracy in the lab").
DEFAULT_RESIDUAL_S = 15.0
DEFAULT_HOPS = 2
DEFAULT_DNS_BLOCKPAGE_SHARE = 0.04
# Domains whose ECH ClientHellos are dropped (half) or reset (half): ech_check's truth.
DEFAULT_ECH_SHARE = 0.04
# ech_check's extra outer SNI by default (probes.nettests.ech_check.DEFAULT_OUTER_SNI).
ECH_OUTER_SNI = ("cloudflare-ech.com",)
# Shares of throttle_sni and stall_sni domains (each) when download is scored, and its open
# sample (each open input moves 4 MiB through the censor).
DEFAULT_SHAPED_SHARE = 0.02
DOWNLOAD_OPEN_SAMPLE = 30
# Rates are what download measures: dozens of 1 MiB transfers at once through the lab censor
# (one Python process) would measure the censor's load. A user's run measures one at a time.
DOWNLOAD_CONCURRENCY = 4

Truth = dict[str, dict[str, Any]]
Verdicts = dict[str, dict[str, Any]]


@dataclass
class ProbeRun:
    vantage: str
    returncode: int
    seconds: float
    max_rss_kib: int
    stderr: str
    cpu_seconds: float = 0.0
    nettest: str = "web_connectivity"


@dataclass(frozen=True)
class NettestSpec:
    """How one nettest is scored: its blocking types, truth and the verdict key typed."""

    name: str
    types: tuple[str, ...]
    truth: Callable[[scenario_mod.Scenario, int | None], Truth]
    type_key: str = "blocking_detail"
    # Flags of this nettest's own, from the scenario (dnscheck: the domain to ask for).
    args: Callable[[scenario_mod.Scenario], list[str]] = lambda _s: []


# dnscheck's verdict for a DoT resolver whose name the censor's DNS rules tamper with: the
# bootstrap lookup (the lab resolver over UDP) gets the censor's answer.
DNSCHECK_BOOTSTRAP = {
    "dns_inject": ("dns", "dns.bootstrap_injected"),  # forged answers race the genuine one
    "dns_nxdomain": ("dns", "dns.bootstrap_nxdomain"),
    "dns_bogon": ("dns", "dns.bootstrap_bogon"),
}


def _truth(verdict: tuple[Any, Any], mechanism: str) -> dict[str, Any]:
    return {"blocking": verdict[0], "blocking_detail": verdict[1], "mechanism": mechanism}


def _dnscheck_open_names(scen: scenario_mod.Scenario) -> list[str]:
    """Names whose TLS reaches their own server untouched at cn and whose DNS is not touched."""
    special = set(scen.tls_sni_names()) | set(scen.censor.blocked_sni)
    return [
        d.name
        for d in scen.domains
        if d.block in scenario_mod.TLS_OPEN_KINDS
        and d.name not in special
        and not any(w in d.name for k in scen.censor.keywords for w in k)
    ]


def dnscheck_truth(scen: scenario_mod.Scenario, open_sample: int | None) -> Truth:
    """Resolver URL -> expected dnscheck verdict at the censored vantage (see the docstring).
    Every name serves DoH on 443 and DoT on 853 in the lab (lab.servers)."""
    out: Truth = {}
    blocked_sni = set(scen.censor.blocked_sni)
    for d in scen.domains:
        if d.block == "sni_rst" or (
            d.name in blocked_sni and d.block in scenario_mod.TLS_OPEN_KINDS
        ):
            out[f"https://{d.name}/dns-query"] = _truth(("tls", "tls.sni_reset"), "sni_rst")
        elif d.block == "blackhole":
            out[f"dot://{d.name}:853"] = _truth(("tcp_ip", "tcp.connect_timeout"), "blackhole")
        elif d.block in DNSCHECK_BOOTSTRAP:
            out[f"dot://{d.name}:853"] = _truth(DNSCHECK_BOOTSTRAP[d.block], d.block)
    names = _dnscheck_open_names(scen)
    if open_sample is not None and len(names) > open_sample:
        step = len(names) / open_sample
        names = [names[int(i * step)] for i in range(open_sample)]
    for i, name in enumerate(names):
        url = f"https://{name}/dns-query" if i % 2 == 0 else f"dot://{name}:853"
        out[url] = _truth((False, None), scen.domain(name).block)
    return out


def app_args(app: str) -> Callable[[scenario_mod.Scenario], list[str]]:
    """--endpoints: the app's endpoint sets for this scenario (bench.apps_lab), in a file."""

    def args(scen: scenario_mod.Scenario) -> list[str]:
        tables, _truth = apps_lab.endpoint_sets(scen, app)
        fd, path = tempfile.mkstemp(prefix=f"censorscope-{app}-", suffix=".toml")
        with os.fdopen(fd, "w") as out:
            out.write(apps_lab.to_toml(app, tables))
        return ["--endpoints", path]

    return args


def _app_spec(app: str) -> NettestSpec:
    """A messaging app: one measurement per endpoint set, scored on `blocking`."""
    return NettestSpec(
        app,
        ("dns", "tcp_ip", "tls"),
        lambda s, _n: apps_lab.endpoint_sets(s, app)[1],
        "blocking",
        app_args(app),
    )


def dnscheck_args(scen: scenario_mod.Scenario) -> list[str]:
    """The name every resolver is asked for: an open domain of the scenario."""
    names = [n for n in _dnscheck_open_names(scen) if scen.domain(n).block == "none"]
    return ["--domain", names[0]] if names else []


DEFAULT_QUIC_SHARE = 0.05


def quic_truth(scen: scenario_mod.Scenario, open_sample: int | None) -> Truth:
    """Name -> expected quic_sni verdict at the censored vantage: the QUIC-blocked names, and
    open names whose DNS and TLS are untouched (dnscheck's, which the QUIC rule spares)."""
    blocked = set(scen.censor.quic_blocked_sni)
    out = {n: _truth(("quic", "quic.sni_blocked"), "quic_sni") for n in sorted(blocked)}
    by_ip = set(scen.censor.quic_blocked_ip)
    out |= {d.name: _truth(("quic", "quic.all_blocked"), "quic_ip")
            for d in scen.domains if d.a in by_ip}  # fmt: skip
    names = [n for n in _dnscheck_open_names(scen) if n not in out]
    if open_sample is not None and len(names) > open_sample:
        step = len(names) / open_sample
        names = [names[int(i * step)] for i in range(open_sample)]
    return out | {n: _truth((False, None), scen.domain(n).block) for n in names}


NETTESTS: dict[str, NettestSpec] = {
    spec.name: spec
    for spec in (
        NettestSpec("web_connectivity", BLOCKING_TYPES, lambda s, _n: s.ground_truth(), "blocking"),
        NettestSpec("dns_consistency", ("dns",), lambda s, _n: s.dns_truth()),
        NettestSpec("tcp_connect", ("tcp_ip",), lambda s, _n: s.tcp_truth()),
        NettestSpec("sni_blocking", ("tls",), lambda s, n: s.sni_truth(open_sample=n)),
        NettestSpec("tls_interception", ("tls",), lambda s, n: s.tls_truth(open_sample=n)),
        NettestSpec(
            "dnscheck", ("dns", "tcp_ip", "tls"), dnscheck_truth, "blocking", dnscheck_args
        ),
        *(_app_spec(app) for app in apps_lab.APPS),
        NettestSpec(
            "ech_check", ("tls",), lambda s, n: s.ech_truth(open_sample=n, outer_sni=ECH_OUTER_SNI)
        ),
        NettestSpec("quic_sni", ("quic",), quic_truth),
        NettestSpec(
            "download",
            ("throttling",),
            lambda s, n: s.download_truth(min(n or DOWNLOAD_OPEN_SAMPLE, DOWNLOAD_OPEN_SAMPLE)),
            args=lambda _s: ["--concurrency", str(DOWNLOAD_CONCURRENCY)],
        ),
    )
}


def probe_argv(
    lab: LabInfo,
    vantage: str,
    results: Path,
    inputs_file: Path,
    extra: list[str],
    fingerprints: bool = True,
) -> list[str]:
    """`censorscope run web_connectivity` inside a vantage over a test list of the inputs
    (with the lab's block-page fingerprint unless `fingerprints` is False)."""
    assert lab.helper_url, "the lab's control helper is not running"
    argv = [
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
        "--results",
        str(results),
        "--vantage",
        vantage,
        "--no-progress",
        *extra,
    ]
    return argv + (["--fingerprints", lab.fingerprints] if fingerprints else [])


def nettest_argv(
    lab: LabInfo, vantage: str, nettest: str, inputs: list[str], results: Path, extra: list[str]
) -> list[str]:
    """`censorscope run NETTEST --input ...` inside a vantage, set up as the lab tests do.

    The probe at cn trusts the censor's national root as well (a user made to install it);
    the control helper trusts only the lab's public CA.
    """
    assert lab.helper_url, "the lab's control helper is not running"
    ca = lab.cn_trust_pem if lab.vantages[vantage].censored else lab.ca_pem
    argv = [*lab.vantages[vantage].exec_prefix, *topology._censorscope_argv(), "run", nettest]
    for value in inputs:
        argv += ["--input", value]
    return [
        *argv,
        *("--resolver", lab.resolver, "--helper", lab.helper_url, "--ca-file", ca),
        *("--results", str(results), "--vantage", vantage, "--no-progress"),
        *extra,
    ]


def write_testlist(urls: list[str], path: Path) -> Path:
    """The inputs as a Citizen Lab list (one process argument per URL does not scale)."""
    lines = ["url,category_code,category_description,date_added,source,notes"]
    lines += [f"{u},NEWS,News Media,2024-01-01,censorscope-lab," for u in urls]
    path.write_text("\n".join(lines) + "\n")
    return path


def start_probe(argv: list[str], state: Path | None = None) -> subprocess.Popen[str]:
    """The probe in its vantage; with `state`, its own state directory (XDG_STATE_HOME): the
    residual taints quic_sni keeps between runs belong to one vantage and one lab."""
    env = topology._python_env()
    if state is not None:
        env = {**env, "XDG_STATE_HOME": str(state)}
    return subprocess.Popen(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env
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


def stored(results: Path, vantage: str, nettest: str) -> Iterator[Measurement]:
    """The probe's measurements of one nettest at one vantage; a bad line stops the bench."""

    def fail(problem: LineProblem) -> None:
        raise ValueError(f"bad stored measurement: {problem}")

    return ResultsStore(results).iter_measurements(
        vantages={vantage}, test_names={nettest}, on_problem=fail
    )


def read_verdicts(
    results: Path, vantage: str, nettest: str = "web_connectivity"
) -> dict[str, dict[str, Any]]:
    """input -> test_keys from the probe's store."""
    return {
        m.input: m.test_keys or {} for m in stored(results, vantage, nettest) if m.input is not None
    }


def _ratio(num: int, den: int) -> float | None:
    return num / den if den else None


def _said(verdicts: Verdicts, key: str) -> tuple[Any, Any]:
    keys = verdicts.get(key, {})
    return keys.get("blocking"), keys.get("blocking_detail")


def _blocked(value: Any) -> bool:
    return value not in (False, None)


def _per_type(truth: Truth, cn: Verdicts, t: str) -> dict[str, Any]:
    """Precision, recall and right-detail count for one blocking type."""
    said = [u for u in truth if _said(cn, u)[0] == t]
    real = [u for u in truth if truth[u]["blocking"] == t]
    hit = [u for u in said if truth[u]["blocking"] == t]
    detail = [u for u in hit if _said(cn, u)[1] == truth[u]["blocking_detail"]]
    return {
        "n_truth": len(real),
        "n_said": len(said),
        "n_hit": len(hit),
        "n_detail": len(detail),
        "precision": _ratio(len(hit), len(said)),
        "recall": _ratio(len(hit), len(real)),
        "detail_accuracy": _ratio(len(detail), len(hit)),
    }


def score(
    truth: Truth,
    cn: Verdicts,
    open_: Verdicts,
    types: tuple[str, ...] = BLOCKING_TYPES,
    type_key: str = "blocking",
) -> dict[str, Any]:
    """Precision/recall per blocking type, type and detail accuracy, open false positives."""
    index = 0 if type_key == "blocking" else 1
    truth_pair = {u: (truth[u]["blocking"], truth[u]["blocking_detail"]) for u in truth}
    found = [u for u in truth if _blocked(truth_pair[u][0]) and _blocked(_said(cn, u)[0])]
    right_type = [u for u in found if _said(cn, u)[index] == truth_pair[u][index]]
    exact = [u for u in truth if _said(cn, u) == truth_pair[u]]
    wrong = {
        u: {
            "mechanism": truth[u]["mechanism"],
            "truth": list(truth_pair[u]),
            "probe": list(_said(cn, u)),
        }
        for u in truth
        if u not in exact
    }
    open_verdicts = Counter(json.dumps(open_.get(u, {}).get("blocking", "missing")) for u in truth)
    open_not_false = {u: _said(open_, u)[0] for u in truth if _said(open_, u)[0] is not False}
    return {
        "n": len(truth),
        "type_key": type_key,
        "per_type": {t: _per_type(truth, cn, t) for t in types},
        "type_accuracy": _ratio(len(right_type), len(found)),
        "detail_accuracy": _ratio(len(exact), len(truth)),
        "null_at_cn": sum(1 for u in truth if u in cn and _said(cn, u)[0] is None),
        "null_at_open": sum(1 for u in truth if u in open_ and _said(open_, u)[0] is None),
        "missing": {"cn": len(set(truth) - set(cn)), "open": len(set(truth) - set(open_))},
        "open_verdicts": dict(open_verdicts),
        "open_not_false": open_not_false,
        "wrong_at_cn": wrong,
    }


def misses(s: dict[str, Any]) -> list[str]:
    """The DESIGN 7 targets this score misses, in words (empty: all met)."""
    out = []
    for t, v in s["per_type"].items():
        if not v["n_truth"] and not v["n_said"]:
            continue
        if (v["precision"] or 0) < TARGET_PRECISION:
            out.append(f"{t} precision {_fmt(v['precision'])} < {TARGET_PRECISION}")
        if (v["recall"] or 0) < TARGET_RECALL:
            out.append(f"{t} recall {_fmt(v['recall'])} < {TARGET_RECALL}")
    if s["type_accuracy"] is not None and s["type_accuracy"] < TARGET_TYPE_ACCURACY:
        out.append(f"type accuracy {_fmt(s['type_accuracy'])} < {TARGET_TYPE_ACCURACY}")
    blocked_open = [u for u, v in s["open_not_false"].items() if _blocked(v)]
    if blocked_open:
        out.append(f"{len(blocked_open)} blocked at open")
    nulls = {"cn": s["null_at_cn"], "open": s.get("null_at_open", 0)}
    if any(nulls.values()):
        out.append(f"null verdicts: {nulls}")
    if s["missing"]["cn"] or s["missing"]["open"]:
        out.append(f"verdicts missing: {s['missing']}")
    return out


def meets_targets(s: dict[str, Any]) -> bool:
    return not misses(s)


def _fmt(x: float | None) -> str:
    return "  -  " if x is None else f"{x:.4f}"


def report_runs(runs: list[ProbeRun]) -> None:
    for r in runs:
        print(
            f"  {r.nettest} at {r.vantage}: exit {r.returncode}, {r.seconds:.1f} s, "
            f"peak RSS {r.max_rss_kib / 1024:.0f} MiB"
        )


def report_nettest(name: str, s: dict[str, Any]) -> None:
    """One nettest's table, its wrong verdicts, and whether it meets the targets."""
    print(f"\n{name}: {s['n']} inputs")
    print(
        f"  {'blocking type':<14} {'truth':>6} {'said':>6} {'precision':>10} {'recall':>8} "
        f"{'detail ok':>10}"
    )
    for t, v in s["per_type"].items():
        print(
            f"  {t:<14} {v['n_truth']:>6} {v['n_said']:>6} {_fmt(v['precision']):>10} "
            f"{_fmt(v['recall']):>8} {v['n_detail']:>5}/{v['n_hit']:<4}"
        )
    kind = "blocking" if s["type_key"] == "blocking" else "blocking_detail"
    print(f"  type accuracy ({kind}, blocked and found): {_fmt(s['type_accuracy'])}")
    print(f"  exact blocking+detail at cn, all inputs: {_fmt(s['detail_accuracy'])}")
    print(
        f"  null at cn: {s['null_at_cn']}, at open: {s.get('null_at_open', 0)}; "
        f"missing: {s['missing']}"
    )
    blocked_open = [u for u, v in s["open_not_false"].items() if _blocked(v)]
    print(f"  open vantage verdicts: {s['open_verdicts']}; blocked at open: {len(blocked_open)}")
    for u, w in sorted(s["wrong_at_cn"].items()):
        print(f"    wrong at cn: {u} {w['mechanism']}: probe {w['probe']} truth {w['truth']}")
    for u, v in sorted(s["open_not_false"].items()):
        print(f"    open not false: {u}: {v}")
    missed = misses(s)
    print("  targets met" if not missed else "  targets NOT met: " + "; ".join(missed))


def report(
    scen: scenario_mod.Scenario, scores: dict[str, dict[str, Any]], runs: list[ProbeRun]
) -> None:
    kinds = Counter(d.block for d in scen.domains)
    c, f = scen.censor, scen.faults
    print(
        f"scenario {scen.name}: {len(scen.domains)} domains, loss {f.loss:.0%} at the censor "
        f"and {f.helper_loss:.0%} on the helper's path, censor {c.mode} {c.hops + 1} hop(s) "
        f"from cn, residual {c.residual_seconds:g} s ({c.residual_action})"
    )
    print("  mechanisms: " + ", ".join(f"{k}={v}" for k, v in sorted(kinds.items())))
    print(f"  TLS: {len(c.intercept_sni)} intercepted, {len(c.regional_cert_sni)} regional cert")
    print(f"  ECH: {len(c.ech_drop_sni)} dropped, {len(c.ech_rst_sni)} reset by outer SNI")
    report_runs(runs)
    for name, s in scores.items():
        report_nettest(name, s)


def run_nettest(
    lab: LabInfo,
    nettest: str,
    inputs: list[str],
    results: Path,
    work: Path,
    extra: list[str],
    fingerprints: bool = True,
) -> list[ProbeRun]:
    """Run one nettest in both vantages at once over the inputs; wait for both."""
    if nettest == "web_connectivity":
        listfile = write_testlist(inputs, work / "web_connectivity-inputs.csv")
        argvs = {
            v: probe_argv(lab, v, results, listfile, extra, fingerprints) for v in ("cn", "open")
        }
    else:
        argvs = {v: nettest_argv(lab, v, nettest, inputs, results, extra) for v in ("cn", "open")}
    started = time.monotonic()
    procs = {v: start_probe(argv, work / f"state-{nettest}-{v}") for v, argv in argvs.items()}
    runs = [wait_probe(v, p, started) for v, p in procs.items()]
    for r in runs:
        r.nettest = nettest
    return runs


def measure(
    lab: LabInfo,
    nettests: list[str],
    results: Path,
    work: Path,
    extra: list[str],
    open_sample: int | None = DEFAULT_OPEN_SAMPLE,
    fingerprints: bool = True,
) -> tuple[dict[str, dict[str, Any]], list[ProbeRun]]:
    """Run and score each nettest on a running lab: (nettest -> score, probe runs).

    Between nettests the scenario's residual window is waited out: each nettest's truth is
    that of a censor no earlier nettest has tainted (residual censorship within a nettest's
    own run is what it must cope with).
    """
    scores: dict[str, dict[str, Any]] = {}
    runs: list[ProbeRun] = []
    for i, name in enumerate(nettests):
        if i:
            time.sleep(lab.scenario.censor.residual_seconds)
        spec = NETTESTS[name]
        truth = spec.truth(lab.scenario, open_sample)
        own = spec.args(lab.scenario)
        runs += run_nettest(lab, name, list(truth), results, work, [*extra, *own], fingerprints)
        cn, open_ = (read_verdicts(results, v, name) for v in ("cn", "open"))
        scores[name] = score(truth, cn, open_, spec.types, spec.type_key)
    return scores, runs


def _nettests(value: str) -> list[str]:
    names = [n.strip() for n in value.split(",") if n.strip()]
    unknown = [n for n in names if n not in NETTESTS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown nettest(s) {unknown}: choose from {','.join(NETTESTS)}"
        )
    return names


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.accuracy",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--domains", type=int, default=300)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--loss", type=float, default=0.02, help="loss at the censor router")
    parser.add_argument("--helper-loss", type=float,
                        help="loss on the control helper's own path [--loss]")  # fmt: skip
    parser.add_argument("--residual", type=float, default=DEFAULT_RESIDUAL_S,
                        help="residual censorship window, seconds (0: off)")  # fmt: skip
    parser.add_argument("--mode", choices=("in-path", "on-path"), default="in-path")
    parser.add_argument("--hops", type=int, default=DEFAULT_HOPS,
                        help="routers between the censored vantage and the censor")  # fmt: skip
    parser.add_argument("--dns-blockpage", type=float, default=DEFAULT_DNS_BLOCKPAGE_SHARE,
                        help="share of domains sent to the block-page server by DNS")  # fmt: skip
    parser.add_argument("--ech", type=float, default=DEFAULT_ECH_SHARE,
                        help="share of domains whose ECH hellos are dropped or reset")  # fmt: skip
    parser.add_argument("--shaped", type=float,
                        help="share each of throttle_sni and stall_sni domains "
                        f"[{DEFAULT_SHAPED_SHARE} when download runs, else 0]")  # fmt: skip
    parser.add_argument("--no-fingerprints", action="store_true",
                        help="web_connectivity without the block-page fingerprint")  # fmt: skip
    parser.add_argument("--nettests", type=_nettests, default=list(NETTESTS),
                        help=f"comma-separated subset of {','.join(NETTESTS)} [all]")  # fmt: skip
    parser.add_argument("--intercept", type=float, default=DEFAULT_INTERCEPT_SHARE,
                        help="share of domains re-signed by the censor's interceptor")  # fmt: skip
    parser.add_argument("--regional-cert", type=float, default=DEFAULT_REGIONAL_SHARE,
                        help="share of domains with a CDN-like regional certificate")  # fmt: skip
    parser.add_argument("--open-sample", type=int, default=DEFAULT_OPEN_SAMPLE,
                        help="open names scored by sni_blocking and tls_interception")  # fmt: skip
    parser.add_argument("--quic-sni", type=float, default=DEFAULT_QUIC_SHARE,
                        help="share of domains whose QUIC the censor blocks by SNI (when "
                        "quic_sni is scored)")  # fmt: skip
    parser.add_argument("--quic-scope", choices=("triple", "flow"), default="triple",
                        help="what the censor's QUIC rule blocks after a trigger")  # fmt: skip
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--timeout", type=float, help="the probe's per-input budget [its own]")
    parser.add_argument("--keep", type=Path, help="keep the probe's results here")
    parser.add_argument("--json", type=Path, help="write the scores as JSON here")
    return parser.parse_args(argv)


def _shaped_share(args: argparse.Namespace) -> float:
    if args.shaped is not None:
        return float(args.shaped)
    return DEFAULT_SHAPED_SHARE if "download" in args.nettests else 0.0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("bench.accuracy: root is required (the censor lab)", file=sys.stderr)
        return 2
    scen = scenario_mod.generate(
        args.domains,
        args.seed,
        loss=args.loss,
        intercept=args.intercept,
        regional_cert=args.regional_cert,
        helper_loss=args.loss if args.helper_loss is None else args.helper_loss,
        residual_seconds=args.residual,
        mode=args.mode,
        hops=args.hops,
        dns_blockpage=args.dns_blockpage,
        ech=args.ech,
        quic_sni=args.quic_sni if "quic_sni" in args.nettests else 0.0,
        shaped=_shaped_share(args),
    )
    if args.quic_scope != scen.censor.quic_residual_scope:
        censor = dataclasses.replace(scen.censor, quic_residual_scope=args.quic_scope)
        scen = dataclasses.replace(scen, censor=censor)
    work = Path(tempfile.mkdtemp(prefix="censorscope-accuracy-"))
    results = args.keep or work / "results"
    results.mkdir(parents=True, exist_ok=True)
    extra = ["--concurrency", str(args.concurrency)]
    extra += ["--timeout", str(args.timeout)] if args.timeout else []
    lab = topology.up(scen)
    try:
        scores, runs = measure(
            lab,
            args.nettests,
            results,
            work,
            extra,
            args.open_sample,
            fingerprints=not args.no_fingerprints,
        )
    finally:
        topology.down()
    for r in runs:
        if r.returncode != 0:
            print(f"{r.nettest} at {r.vantage} exited {r.returncode}: {r.stderr[-2000:]}")
    report(scen, scores, runs)
    if args.json:
        args.json.write_text(json.dumps(scores, indent=1, default=str))
    shutil.rmtree(work, ignore_errors=True)
    ok = all(meets_targets(s) for s in scores.values()) and all(r.returncode == 0 for r in runs)
    print("\nall targets met" if ok else "\ntargets NOT met")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
