"""How often our web_connectivity verdict equals the one OONI's probe stored.

Runs probes.nettests.web_connectivity_analysis.analyze on the raw test keys of every
web_connectivity measurement in OONI's reference files and compares ``blocking`` (and the other
analysis keys) with what the measuring probe wrote. Prints, per test_version: n, agreement on
blocking and on each key, and every disagreement with file:line, ours vs OONI and the reason.

    python bench/ooni_agreement.py [--data ../shared/data/ooni] [--fingerprints DIR]

Only v0.4.x implements the algorithm we reproduce, so 100% is expected there; older versions
(Measurement Kit, ooniprobe-legacy) and v0.5.x (webconnectivitylte) decide differently.
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
from probes.nettests.web_connectivity_analysis import analyze

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
    # web_connectivity 0.5 (webconnectivitylte): a different algorithm; these are the cases
    # where running the v0.4 procedure on its 0.4-compatible keys decides otherwise.
    "web_connectivity_real.jsonl:22": _V05.format(
        "the input is an IP (DoH URL); v0.5's classic analysis only reads transactions tagged "
        "'classic' (none here) and stores null; v0.4 rule 1: HTTPS fetch succeeded -> false"
    ),
    "web_connectivity_netem_qa_synthetic.jsonl:12": _V05.format(
        "any DNS inconsistency is 'dns'; v0.4 ignores an inconsistent DNS when the page "
        "matches (ooni/probe#1975, wontfix) and v0.5 fetched from the helper's address"
    ),
    "web_connectivity_netem_qa_synthetic.jsonl:13": _V05.format(
        "as :12 with HTTPS (system resolver -> 127.0.0.1, HTTPS fetch via the right address "
        "succeeded, so v0.4 rule 1 says accessible)"
    ),
    "web_connectivity_netem_qa_synthetic.jsonl:16": _V05.format(
        "ghost DNS (helper NXDOMAIN, probe resolves) is 'dns' since probe-cli#1457; in v0.4 "
        "the helper's HTTP fetch failed, so null"
    ),
    "web_connectivity_netem_qa_synthetic.jsonl:20": _V05.format(
        "flags the censor's address as unexpected; we accept it because the probe completed "
        "a TLS handshake with it for the right SNI (netem's CA signs every host, impossible "
        "for a real censor), so the diff is blamed on HTTP, not DNS"
    ),
    "web_connectivity_netem_qa_synthetic.jsonl:25": _V05.format(
        "name resolves to 127.0.0.1 at probe and helper, the helper refuses to fetch it: v0.5 "
        "says down (false); v0.4 has nothing to compare (control HTTP failure -> null)"
    ),
    "web_connectivity_netem_qa_synthetic.jsonl:26": _V05.format("as :25 with HTTPS"),
    "web_connectivity_netem_qa_synthetic.jsonl:27": _V05.format(
        "http_invalid_redirect_location_host is http-failure; v0.4 does not classify that "
        "failure string (null)"
    ),
    "web_connectivity_netem_qa_synthetic.jsonl:28": _V05.format("as :27 with HTTPS"),
    "web_connectivity_netem_qa_synthetic.jsonl:38": _V05.format(
        "too many redirects at probe and helper: v0.5 says down (false); v0.4: control HTTP "
        "failure -> null, and the website-down rules do not apply (every connect succeeded)"
    ),
    "web_connectivity_netem_qa_synthetic.jsonl:39": _V05.format("as :38 with HTTPS"),
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
    ours = analyze(tk, url=case.measurement.get("input"), fingerprints=fingerprints)
    theirs = tk if isinstance(tk, dict) else {}
    mine = ours.as_test_keys()
    return {k: (mine[k], theirs.get(k)) for k in COMPARED}


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
        agree = {k: sum(1 for _, r in rows if r[k][0] == r[k][1]) for k in COMPARED}
        print(f"test_version {fam}: n={n}")
        for key in COMPARED:
            print(f"  {key:18} {agree[key]:3}/{n} ({100.0 * agree[key] / n:5.1f}%)")
        for case, result in rows:
            ours, theirs = result["blocking"]
            if ours == theirs:
                continue
            reason = REASONS.get(case.where)
            if reason is None and fps is not None and result["blocking"][0] in ("http-diff", "dns"):
                tk = case.measurement.get("test_keys") or {}
                named = analyze(tk, url=case.measurement.get("input"), fingerprints=fps)
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
    return 1 if unexplained else 0


if __name__ == "__main__":
    sys.exit(main())
