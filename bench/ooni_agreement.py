"""How often our web_connectivity verdict equals the one OONI's probe stored.

Runs probes.nettests.web_connectivity_analysis.analyze on the raw test keys of every
web_connectivity measurement in OONI's reference files and compares ``blocking`` (and the other
analysis keys) with what the measuring probe wrote. Prints, per test_version: n, agreement on
blocking and on each key, and every disagreement with file:line, ours vs OONI and the reason.

    python bench/ooni_agreement.py [--data ../shared/data/ooni] [--fingerprints DIR]

Each measurement is re-derived by the procedure its test_version names
(probes.nettests.web_connectivity_verdict): v0.4's below 0.5, v0.5's (webconnectivitylte's
classic engine and x_ flags) from 0.5 on, so 100% is expected for 0.4.x and 0.5.x; older
versions (Measurement Kit, ooniprobe-legacy) decided differently.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from probes.fingerprints import Fingerprints
from probes.nettests.web_connectivity_verdict import analyze_measurement, uses_v05

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
DEFAULT_DATA = SHARED_DATA / "ooni"
DEFAULT_FINGERPRINTS = SHARED_DATA / "fingerprints"
FILES = (
    "web_connectivity_real.jsonl",
    "web_connectivity_netem_qa_synthetic.jsonl",
    "spec_examples.jsonl",
)
COMPARED = (
    "blocking",
    "accessible",
    "dns_consistency",
    "body_length_match",
    "status_code_match",
    "headers_match",
    "title_match",
)
V05_COMPARED = ("x_dns_flags", "x_blocking_flags", "x_null_null_flags")

# Why a verdict differs, found by reading each measurement (docs/benchmarks.md repeats these).
# Keys are "file:line". Anything not listed here is printed as "UNEXPLAINED".
_LEGACY = "pre-0.4 algorithm ({}); v0.4 {}"
_V05 = "v0.5 rule: {}"
REASONS: dict[str, str] = {
    # Measurement Kit (0.0.1) and ooniprobe-legacy (0.1.0-0.3.x) measurements.
    "web_connectivity_real.jsonl:2": _LEGACY.format(
        "ooniprobe-legacy 0.3.0 called every request failure http-failure",
        "leaves an unclassified failure ('unknown_failure ... ascii codec') unknown",
    ),
    "web_connectivity_real.jsonl:8": _LEGACY.format(
        "MK called http_invalid_redirect_url http-failure",
        "does not classify that failure string (null)",
    ),
    "web_connectivity_real.jsonl:11": _LEGACY.format(
        "MK: the TLS error 'ssl_error ... certificate verify failed' on an HTTP->HTTPS "
        "redirect counted as accessible",
        "leaves unclassified failures unknown",
    ),
    "web_connectivity_real.jsonl:14": _LEGACY.format(
        "MK blamed the inconsistent DNS for http_invalid_redirect_url",
        "only blames DNS for classified failures, so null",
    ),
    "web_connectivity_real.jsonl:19": _LEGACY.format(
        "ooniprobe-legacy 0.1.0 mapped response_never_received to false/false",
        "does not classify that failure string (null)",
    ),
    # web_connectivity 0.5 releases older than the probe-cli code we reproduce (commit
    # 7cb22410, the "classic" engine over the minipipeline).
    "web_connectivity_real.jsonl:22": _V05.format(
        "0.5.28 stored null for this IP input (no DNS lookup at all); the classic engine at "
        "commit 7cb22410 keeps an endpoint whose address came from no lookup (classic.go, "
        "unknown origin) and reads its successful HTTPS fetch as accessible"
    ),
    "web_connectivity_real.jsonl:23": _V05.format(
        "0.5.26 predates the classic engine we reproduce and stored null; the classic engine "
        "calls a connect that failed at the probe and the helper alike down (blocking false, "
        "accessible false, x_null_null_flags 2)"
    ),
}


@dataclass(frozen=True)
class Case:
    file: str
    line: int
    version: str
    measurement: dict[str, Any]

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"


def cases(data: Path) -> Iterator[Case]:
    """Every web_connectivity measurement, numbered by line (1-based)."""
    for name in FILES:
        path = data / name
        if not path.exists():
            continue
        with path.open(encoding="utf-8") as fh:
            for number, text in enumerate(fh, 1):
                if not text.strip():
                    continue
                m = json.loads(text)
                if m.get("test_name") == "web_connectivity":
                    yield Case(name, number, str(m.get("test_version")), m)


def family(version: str) -> str:
    parts = version.split(".")
    return ".".join(parts[:2]) + ".x" if len(parts) >= 2 else version


def compare(case: Case, fingerprints: Fingerprints | None) -> dict[str, tuple[Any, Any]]:
    """Key -> (ours, OONI's) for every compared key."""
    tk = case.measurement.get("test_keys")
    ours = analyze_measurement(
        tk, case.version, url=case.measurement.get("input"), fingerprints=fingerprints
    )
    theirs = tk if isinstance(tk, dict) else {}
    mine = ours.as_test_keys()
    if uses_v05(case.version) and fingerprints is None:
        # OONI's probe wrote its own v0.5 keys; ours sit beside them (x_v05_*).
        mine = {**mine, "blocking": mine["x_v05_blocking"], "accessible": mine["x_v05_accessible"]}
    keys = COMPARED + (V05_COMPARED if uses_v05(case.version) else ())
    return {k: (mine.get(k), theirs.get(k)) for k in keys}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument(
        "--fingerprints",
        type=Path,
        default=None,
        help=f"also confirm block pages with these fingerprints (e.g. {DEFAULT_FINGERPRINTS}); "
        "OONI's probe does not, so agreement is measured without them by default",
    )
    args = parser.parse_args(argv)
    fps = Fingerprints.from_dir(args.fingerprints) if args.fingerprints else None

    by_family: dict[str, list[tuple[Case, dict[str, tuple[Any, Any]]]]] = defaultdict(list)
    for case in cases(args.data):
        by_family[family(case.version)].append((case, compare(case, fps)))
    if not by_family:
        print(f"no web_connectivity measurements under {args.data}", file=sys.stderr)
        return 2

    unexplained = 0
    for fam in sorted(by_family, key=lambda f: [int(p) for p in f[:-2].split(".")]):
        rows = by_family[fam]
        n = len(rows)
        keys = [k for k in (*COMPARED, *V05_COMPARED) if all(k in r for _, r in rows)]
        agree = {k: sum(1 for _, r in rows if r[k][0] == r[k][1]) for k in keys}
        print(f"test_version {fam}: n={n}")
        for key in keys:
            print(f"  {key:18} {agree[key]:3}/{n} ({100.0 * agree[key] / n:5.1f}%)")
        for case, result in rows:
            ours, theirs = result["blocking"]
            if ours == theirs:
                continue
            reason = REASONS.get(case.where)
            if reason is None and fps is not None and result["blocking"][0] in ("http-diff", "dns"):
                tk = case.measurement.get("test_keys") or {}
                named = analyze_measurement(
                    tk, case.version, url=case.measurement.get("input"), fingerprints=fps
                )
                if named.blocking_fingerprint:
                    reason = (
                        f"confirmed by fingerprint {named.blocking_fingerprint} "
                        "(OONI's probe does not match fingerprints; its pipeline does)"
                    )
            if reason is None:
                unexplained += 1
                reason = "UNEXPLAINED"
            print(
                f"  - {case.where} ({case.version}) ours={json.dumps(ours)} "
                f"ooni={json.dumps(theirs)}: {reason}"
            )
    print_beyond(list(cases(args.data)), fps)
    return 1 if unexplained else 0


def diff_rule_applies(keys: dict[str, Any]) -> bool:
    """Our rule beyond v0.5 (docs/methodology.md): inconsistent DNS and a page of another
    length and title, called accessible only thanks to shared header names."""
    return (
        keys.get("accessible") is True
        and keys.get("dns_consistency") == "inconsistent"
        and keys.get("body_length_match") is False
        and keys.get("title_match") is False
    )


def print_beyond(all_cases: list[Case], fps: Fingerprints | None) -> None:
    """The false-positive cost of our rules beyond v0.5 on OONI's measurements: how many
    verdicts they change. On 0.4.x and older the rule is not applied (v0.4 is re-derived as
    it was); it is evaluated on their keys to show what it would have changed."""
    changed: list[str] = []
    would: list[str] = []
    n05 = n_old = accessible_old = 0
    for case in all_cases:
        tk = case.measurement.get("test_keys")
        if not isinstance(tk, dict):
            continue
        verdict = analyze_measurement(
            tk, case.version, url=case.measurement.get("input"), fingerprints=fps
        )
        keys = verdict.as_test_keys()
        if uses_v05(case.version):
            n05 += 1
            if (keys["blocking"], keys["accessible"]) != (
                keys["x_v05_blocking"],
                keys["x_v05_accessible"],
            ) and not keys.get("blocking_fingerprint"):
                changed.append(f"{case.where}: v0.5 {keys['x_v05_blocking']} -> {keys['blocking']}")
        else:
            n_old += 1
            accessible_old += keys["accessible"] is True
            if diff_rule_applies(keys):
                would.append(case.where)
    print("our rules beyond v0.5 (partial control, inconsistent DNS with another page):")
    print(f"  0.5.x: {len(changed)} of {n05} verdicts changed")
    for line in changed:
        print(f"    - {line}")
    print(
        f"  older: the inconsistent-DNS rule would change {len(would)} of {n_old} "
        f"({accessible_old} accessible)" + (f": {', '.join(would)}" if would else "")
    )


if __name__ == "__main__":
    sys.exit(main())
