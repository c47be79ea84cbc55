"""`lab demo`: run the probe from both vantages and set its verdicts beside the ground truth.

`lab demo --scheduled` (run_scheduled) is the deployment in miniature: a collector in the lab
internet, one scheduling daemon per vantage uploading to it, and `censorscope analyze` and
`censorscope report` over the collector's store. Each daemon runs two jobs: web_connectivity
over a handful of the scenario's sites, and keyword monitoring (message_delivery through the
lab's message platform, over the platform's planted rules, benign words and one sentence that
holds a combination, with `isolate = true`), so the report names the planted keyword rules
filtered at cn only, with the minimal combination isolation found in the sentence.

The probe is only ever run as the `censorscope` command inside a namespace and read back from
its results files: the lab judges the probe, it does not import it.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lab.topology import LabInfo, _censorscope_argv, _python_env, start_collector, stop_collector


@dataclass(frozen=True)
class Finding:
    url: str
    mechanism: str
    expected: Any
    expected_detail: str | None
    cn: Any
    cn_detail: str | None
    open: Any

    @property
    def correct(self) -> bool:
        """Verdict and evidence as the ground truth says at cn, nothing blocked at open."""
        return (
            self.cn == self.expected
            and self.cn_detail == self.expected_detail
            and self.open is False
        )


def run_probe(
    lab: LabInfo, vantage: str, results: Path, timeout: float = 600.0
) -> subprocess.CompletedProcess[str]:
    """`censorscope run web_connectivity` over the scenario's inputs, inside the vantage."""
    argv = [*lab.vantages[vantage].exec_prefix, *_censorscope_argv(), "run", "web_connectivity"]
    for url in lab.scenario.inputs():
        argv += ["--input", url]
    argv += [
        "--resolver",
        lab.resolver,
        "--results",
        str(results),
        "--vantage",
        vantage,
        "--ca-file",
        lab.ca_pem,
        "--fingerprints",
        lab.fingerprints,
        "--no-progress",
    ]
    if lab.helper_url:
        argv += ["--helper", lab.helper_url]
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, env=_python_env(), check=False
    )


def read_verdicts(results: Path, vantage: str) -> dict[str, tuple[Any, str | None]]:
    """input URL -> (blocking, blocking_detail) from the probe's results store (last one wins)."""
    out: dict[str, tuple[Any, str | None]] = {}
    for path in sorted(
        results.glob(f"raw/date=*/vantage={vantage}/test_name=web_connectivity/*.jsonl")
    ):
        for line in path.read_text().splitlines():
            try:
                m = json.loads(line)
            except ValueError:
                continue
            keys = m.get("test_keys") or {}
            out[m.get("input")] = (keys.get("blocking"), keys.get("blocking_detail"))
    return out


def compare(lab: LabInfo, results: Path) -> list[Finding]:
    cn, open_ = read_verdicts(results, "cn"), read_verdicts(results, "open")
    findings = []
    for d in lab.scenario.domains:
        exp = d.expected
        missing: tuple[Any, str | None] = ("missing", None)
        c, o = cn.get(d.url, missing), open_.get(d.url, missing)
        findings.append(
            Finding(d.url, d.block, exp["blocking"], exp["blocking_detail"], c[0], c[1], o[0])
        )
    return findings


# -- two scheduled vantages, one collector ------------------------------------------------------
# Block kinds the probe settles in well under a second (no connect or read timeouts), so a
# short interval gives several complete runs.
FAST_KINDS = ("none", "dns_inject", "dns_nxdomain", "blockpage")
VANTAGES = ("cn", "open")
JOB_ID = "lab-web"
KEYWORD_JOB_ID = "lab-keywords"
HTTP_KEYWORD_JOB_ID = "lab-http-keywords"
HTTP_PLACEMENTS = ("path", "sni")  # two of the censor's placements, one TCP and one TLS
BENIGN_WORDS = ("weather", "tank")  # "tank": a single part of the planted `tank+man`


@dataclass
class ScheduledRun:
    """What the scheduled demo left behind, for a person or a test to check."""

    work: Path
    collector_data: Path
    inputs: list[str]
    # vantage -> measurement_uid of every line the collector stored (duplicates kept, to count)
    collected: dict[str, list[str]]
    # vantage -> measurement_uid of every measurement in the vantage's own results store
    local: dict[str, list[str]]
    # input -> the analysis finding, and what the scenario says it should be
    findings: dict[str, str]
    expected: dict[str, str]
    mechanisms: dict[str, str]
    daemon_status: dict[str, int | None]
    analyze: subprocess.CompletedProcess[str] | None = None
    # keyword monitoring: its inputs, (keyword, where) -> finding, and the isolated rules
    keyword_inputs: list[str] | None = None
    keyword_findings: dict[tuple[str, str], str] | None = None
    keyword_expected: dict[str, str] | None = None
    http_keyword_expected: dict[tuple[str, str], str] | None = None
    isolated: dict[str, list[str]] | None = None  # message -> minimal combinations found
    report: Path | None = None


def scheduled_inputs(lab: LabInfo, limit: int = 6) -> list[str]:
    """A handful of the scenario's inputs, blocked and accessible, that never time out."""
    fast = [d for d in lab.scenario.domains if d.block in FAST_KINDS]
    # One of each kind first, so the blocked ones are not crowded out by accessible ones.
    firsts = {d.block: d for d in reversed(fast)}
    chosen = [*firsts.values()] + [d for d in fast if d not in firsts.values()]
    return [d.url for d in chosen[:limit]]


def keyword_inputs(lab: LabInfo) -> tuple[list[str], str | None]:
    """The platform's planted rules (`A+B` for a combination), benign words, and a sentence
    holding the first combination among other words (for isolation), if there is one."""
    rules = ["+".join(rule) for rule in lab.scenario.platform.keywords]
    combo = next((rule for rule in lab.scenario.platform.keywords if len(rule) > 1), None)
    sentence = None
    if combo is not None:
        sentence = f"by the river a {combo[0]} and one {' and '.join(combo[1:])} stood still"
    return [*rules, *BENIGN_WORDS, *([sentence] if sentence else [])], sentence


def expected_keyword(lab: LabInfo, value: str, where: str = "relay") -> str:
    """The ground truth for a keyword input at `where` (the platform's channel, or an
    http_keyword placement the censor inspects): filtered from cn only."""
    words = {w for part in value.split("+") for w in part.split()}
    if where == "relay":
        rules = lab.scenario.platform.keywords
    elif where in lab.scenario.censor.keyword_placements:
        rules = lab.scenario.censor.keywords
    else:
        rules = ()
    planted = any(set(rule) <= words for rule in rules)
    return "blocked at cn" if planted else "accessible everywhere"


def http_keyword_words(lab: LabInfo) -> list[str]:
    """The demo's http_keyword inputs: the censor's keyword rules and the benign words."""
    return ["+".join(rule) for rule in lab.scenario.censor.keywords] + list(BENIGN_WORDS)


def http_keyword_cells(lab: LabInfo) -> dict[tuple[str, str], str]:
    """(keyword, placement) -> expected finding of the demo's http_keyword job."""
    if not lab.helper_url:
        return {}
    words = http_keyword_words(lab)
    return {(w, p): expected_keyword(lab, w, p) for w in words for p in HTTP_PLACEMENTS}


def expected_finding(lab: LabInfo, url: str) -> str:
    """The ground truth in the analysis' words: only the censored vantage sees blocking."""
    d = next(d for d in lab.scenario.domains if d.url == url)
    return "accessible everywhere" if d.expected["blocking"] is False else "blocked at cn"


def _toml_list(values: list[str]) -> str:
    return "[" + ", ".join(json.dumps(v) for v in values) + "]"


def write_vantage_config(
    lab: LabInfo,
    vantage: str,
    home: Path,
    collector: str,
    inputs: list[str],
    interval: float,
    keywords: list[str] | None = None,
) -> Path:
    """One probe's config: the lab's resolver and helper, the collector, a web job and (with
    `keywords`) a keyword-monitoring job through the platform that isolates new triggers.

    The token is not written here: the daemon reads CENSORSCOPE_UPLOAD_TOKEN, as a deployment
    keeps secrets out of config files.
    """
    home.mkdir(parents=True, exist_ok=True)
    text = f"""[vantage]
name = {json.dumps(vantage)}

[probe]
helpers = {_toml_list([lab.helper_url] if lab.helper_url else [])}
resolver = {json.dumps(lab.resolver)}
ca_file = {json.dumps(lab.ca_pem)}
fingerprints = {_toml_list([lab.fingerprints])}
results = {json.dumps(str(home / "results"))}
timeout = 10.0

[upload]
collector = {json.dumps(collector)}
allow_http = true   # the lab's collector speaks plain http inside the namespaces

[schedule]
state_file = {json.dumps(str(home / "schedule-state.json"))}
log_file = {json.dumps(str(home / "schedule.log"))}
misfire_grace_time = 60

[[schedule.jobs]]
id = {json.dumps(JOB_ID)}
nettest = "web_connectivity"
inputs = {_toml_list(inputs)}
interval = {interval:g}
time_limit = 120
"""
    if keywords:
        text += f"""
[[schedule.jobs]]
id = {json.dumps(KEYWORD_JOB_ID)}
nettest = "message_delivery"
inputs = {_toml_list(keywords)}
interval = {interval:g}
time_limit = 180
isolate = true
options = {{ channel = "relay", delivery_deadline = 1 }}
"""
    if keywords and lab.helper_url:
        words = http_keyword_words(lab)
        window = lab.scenario.censor.residual_seconds + 1  # the probe's, above the censor's
        options = (
            f"{{ placement = {_toml_list(list(HTTP_PLACEMENTS))}, keyword_tries = 2, "
            f"residual_window = {window:g} }}"
        )
        text += f"""
[[schedule.jobs]]
id = {json.dumps(HTTP_KEYWORD_JOB_ID)}
nettest = "http_keyword"
inputs = {_toml_list(words)}
helpers = {_toml_list([lab.helper_url])}
interval = {interval:g}
time_limit = 180
options = {options}
"""
    path = home / "censorscope.toml"
    path.write_text(text)
    return path


def collector_stats(lab: LabInfo, collector: str, tokens: dict[str, str]) -> dict[str, int]:
    """Stored measurements per vantage, asked from inside the open vantage (as a probe would);
    /stats shows a token its own vantage only, so each vantage's token is asked in turn."""
    counts: dict[str, int] = {}
    for token in tokens.values():
        code = (
            "import json,sys,urllib.request\n"
            f"r = urllib.request.Request({collector + '/stats'!r}, "
            "headers={'authorization': 'Bearer ' + sys.stdin.read().strip()})\n"
            "print(urllib.request.urlopen(r, timeout=5).read().decode())\n"
        )
        proc = lab.run("open", [sys.executable, "-c", code], timeout=20, input=token)
        if proc.returncode != 0:
            continue
        counts.update(json.loads(proc.stdout).get("vantages", {}))
    return counts


def read_uids(store: Path) -> dict[str, list[str]]:
    """vantage -> measurement_uid of every stored line (a duplicate appears twice)."""
    out: dict[str, list[str]] = {}
    for path in sorted(store.glob("raw/date=*/vantage=*/test_name=*/*.jsonl")):
        vantage = path.parent.parent.name.removeprefix("vantage=")
        for line in path.read_text().splitlines():
            try:
                uid = json.loads(line).get("measurement_uid")
            except ValueError:
                continue
            out.setdefault(vantage, []).append(str(uid))
    return out


def _csv_rows(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def read_findings(out: Path) -> dict[str, str]:
    """target -> finding from the analysis' findings.csv (web tests)."""
    return {
        row["target"]: row["finding"]
        for row in _csv_rows(out / "findings.csv")
        if row.get("test_name", "web_connectivity") == "web_connectivity"
    }


def read_keyword_findings(out: Path) -> dict[tuple[str, str], str]:
    """(keyword, where) -> finding from keyword_findings.csv."""
    return {
        (r["keyword"], r["where"]): r["finding"] for r in _csv_rows(out / "keyword_findings.csv")
    }


def read_isolated(out: Path) -> dict[str, list[str]]:
    """message -> the minimal combinations isolation found in it (keyword_isolations.csv)."""
    found: dict[str, list[str]] = {}
    for row in _csv_rows(out / "keyword_isolations.csv"):
        if row.get("rule"):
            found.setdefault(row["message"], []).append(row["rule"])
    return found


def _runs_finished(log: Path, job_id: str) -> int:
    try:
        text = log.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return 0
    return text.count(f"{job_id}: run finished")


def _stop_daemon(proc: subprocess.Popen[bytes], grace: float = 60.0) -> int | None:
    """SIGTERM by PID (the daemon lets its run finish and upload), SIGKILL its group if stuck."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # its own session: only the daemon and its run
        proc.wait()
        return None


def run_scheduled(
    lab: LabInfo,
    work: Path,
    *,
    interval: float = 3.0,
    # analyze's finding gates (docs/analysis.md): with 5 runs, 5/5 blocked at cn against 0/5 at
    # open gives Fisher p = 0.008 (q < 0.05 over the 6 inputs x 2 vantages) and Wilson
    # intervals 0.57-1 vs 0-0.43; with 2 runs (p = 0.33) a block is only "suggestive"
    runs: int = 5,
    inputs: list[str] | None = None,
    deadline_s: float = 300.0,
    progress: Callable[[str], None] = lambda _msg: None,
) -> ScheduledRun:
    """Collector + one scheduling daemon per vantage until each uploaded `runs` runs, then
    `censorscope analyze` over the collector's store."""
    inputs = inputs or scheduled_inputs(lab)
    keywords, _sentence = keyword_inputs(lab)
    http_cells = http_keyword_cells(lab)
    work.mkdir(parents=True, exist_ok=True)
    data = work / "collector"
    tokens = {v: secrets.token_urlsafe(24) for v in VANTAGES}
    token_file = work / "collector-tokens.txt"
    token_file.write_text("".join(f"{v} {t}\n" for v, t in tokens.items()))
    token_file.chmod(0o600)
    url = start_collector(data, token_file)
    progress(f"collector at {url}, store {data}")
    daemons: dict[str, subprocess.Popen[bytes]] = {}
    status: dict[str, int | None] = {}
    try:
        for v in VANTAGES:
            home = work / v
            config = write_vantage_config(lab, v, home, url, inputs, interval, keywords)
            env = {
                **_python_env(),
                "CENSORSCOPE_UPLOAD_TOKEN": tokens[v],
                "CENSORSCOPE_RELAY_URL": lab.platform_url,
            }
            with (home / "daemon.out").open("ab") as log:
                daemons[v] = subprocess.Popen(
                    [
                        *lab.vantages[v].exec_prefix,
                        *_censorscope_argv(),
                        "schedule",
                        "run",
                        "--config",
                        str(config),
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env=env,
                    cwd=str(home),
                    start_new_session=True,
                )
            progress(f"schedule daemon at {v}: pid {daemons[v].pid}, every {interval:g} s")
        n_http = len({w for w, _p in http_cells})
        jobs = (JOB_ID, KEYWORD_JOB_ID, *((HTTP_KEYWORD_JOB_ID,) if http_cells else ()))
        want = runs * (len(inputs) + len(keywords) + n_http)
        end = time.monotonic() + deadline_s
        counts: dict[str, int] = {}
        while time.monotonic() < end:
            counts = collector_stats(lab, url, tokens)
            finished = all(
                _runs_finished(work / v / "schedule.log", job) >= runs
                for v in VANTAGES
                for job in jobs
            )
            if finished and all(counts.get(v, 0) >= want for v in VANTAGES):
                break
            if any(p.poll() is not None for p in daemons.values()):
                break
            time.sleep(0.5)
        progress(f"collector holds {counts}; stopping the daemons")
    finally:
        for v, proc in daemons.items():
            status[v] = _stop_daemon(proc)
        stop_collector()
    out = work / "analysis"
    analyze = subprocess.run(
        [
            *_censorscope_argv(),
            "analyze",
            "--results",
            str(data),
            "--out",
            str(out),
            "--fingerprints",
            lab.fingerprints,
        ],
        capture_output=True,
        text=True,
        env=_python_env(),
        timeout=300,
        check=False,
    )
    report = work / "report.html"
    subprocess.run(
        [*_censorscope_argv(), "report", "--results", str(data), "--out", str(report),
         "--fingerprints", lab.fingerprints],
        capture_output=True, text=True, env=_python_env(), timeout=300, check=False,
    )  # fmt: skip
    local: dict[str, list[str]] = {}
    for v in VANTAGES:
        local[v] = read_uids(work / v / "results").get(v, [])
    return ScheduledRun(
        work=work,
        collector_data=data,
        inputs=inputs,
        collected=read_uids(data),
        local=local,
        findings=read_findings(out),
        expected={u: expected_finding(lab, u) for u in inputs},
        mechanisms={d.url: d.block for d in lab.scenario.domains},
        daemon_status=status,
        analyze=analyze,
        keyword_inputs=keywords,
        keyword_findings=read_keyword_findings(out),
        keyword_expected={k: expected_keyword(lab, k) for k in keywords},
        http_keyword_expected=http_cells,
        isolated=read_isolated(out),
        report=report if report.exists() else None,
    )
