"""`lab demo`: run the probe from both vantages and set its verdicts beside the ground truth.

The probe is only ever run as the `censorscope` command inside a namespace and read back from
its results files: the lab judges the probe, it does not import it.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lab.topology import LabInfo, _censorscope_argv, _python_env


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
