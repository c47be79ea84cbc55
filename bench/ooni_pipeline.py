"""Score measurements with OONI's own pipeline (ooni/data ``oonipipeline``), ours beside OONI's.

OONI's current analysis runs in two steps: ``measurement_to_observations`` turns a measurement
into rows (one per DNS answer, TCP connect, TLS handshake, HTTP request, plus the control's
view), then an SQL "fuzzy logic" query (``analysis/web_analysis.py``, rules in
``analysis/rules.py``) scores each row's DNS, TCP and TLS layers as (blocked, down, ok). This
script runs both, unchanged, from the ``oonipipeline`` package, on any JSONL files of
web_connectivity measurements, and prints one line per measurement: the probe's ``blocking``,
the DNS rows per engine, the TLS certificate reading, and the pipeline's maximum blocked score
per layer with the rule that drove it. A layer counts as blocked when its ``*_blocked_max``
is at least 0.5 (OONI's Explorer calls a measurement an anomaly from there).

It needs ``oonipipeline`` (and ``chdb`` for the SQL step) importable, which this project does
not depend on: install them into a throwaway virtual environment and run the script with that
environment's interpreter (docs/benchmarks.md has the commands). ``--measure DIR`` (run with
the project's interpreter) first writes fresh measurements of ours on loopback to score.

Limits, as in the reference run of ``../shared/data/ooni/oonipipeline_v5_fuzzy_analysis.jsonl``:
IP-to-ASN look-ups answer nothing (OONI's netinfo database is downloaded from S3), so the
ASN and cloud-provider rules cannot fire; DNS blocking fingerprints come from the CSV given
with ``--fingerprints``. The control rows of all measurements of one file are pooled per
hostname and day, as OONI pools every probe's (``--each``: every measurement alone).

    python -m bench.ooni_pipeline --measure /tmp/ours          # project interpreter
    VENV/bin/python bench/ooni_pipeline.py /tmp/ours/*.jsonl ../shared/data/ooni/web_conn*.jsonl
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import sys
from collections import defaultdict
from collections.abc import Iterable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

BLOCKED_AT = 0.5
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
DNS_FINGERPRINTS = SHARED_DATA / "fingerprints" / "fingerprints_dns.csv"


# --- reading -------------------------------------------------------------------------------


def read_lines(paths: Iterable[Path]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(file:line, measurement) for every web_connectivity line of the files."""
    for path in paths:
        with path.open("rb") as fh:
            for number, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                msmt = json.loads(line)
                if msmt.get("test_name") == "web_connectivity":
                    yield f"{path.name}:{number}", msmt


class NoNetinfo:
    """OONI's NetinfoDB answers from IP-to-ASN files downloaded from S3; we have none."""

    def lookup_ip(self, *_a: Any) -> None:
        return None

    def lookup_asn(self, *_a: Any) -> None:
        return None


def with_uid(key: str, msmt: dict[str, Any]) -> dict[str, Any]:
    """The pipeline keys rows by measurement_uid (the collector's); synthetic lines lack it."""
    out = dict(msmt)
    if not out.get("measurement_uid"):
        out["measurement_uid"] = "bench_" + key.replace(":", "_").replace(".", "_")
    if not out.get("report_id"):
        out["report_id"] = "bench_report_" + key.split(":")[0].replace(".", "_")
    return out


@dataclasses.dataclass
class Observed:
    key: str
    msmt: dict[str, Any]
    error: str | None = None
    web: list[Any] = dataclasses.field(default_factory=list)
    ctrl: list[Any] = dataclasses.field(default_factory=list)


def observe(key: str, msmt: dict[str, Any]) -> Observed:
    """ooni/data's own model parsing and observation extraction, on one measurement."""
    from oonidata.dataclient import load_measurement
    from oonipipeline.transforms.observations import measurement_to_observations

    msmt = with_uid(key, msmt)
    out = Observed(key, msmt)
    try:
        parsed = load_measurement(msmt=msmt)
        result = measurement_to_observations(parsed, netinfodb=NoNetinfo())
    except Exception as exc:  # the pipeline's own failure, reported per line
        out.error = f"{type(exc).__name__}: {exc}"
        return out
    if result:
        out.web = list(result[0])
        out.ctrl = list(result[1]) if len(result) > 1 else []
    return out


# --- the SQL step on embedded ClickHouse -----------------------------------------------------


def _row(obs: Any) -> dict[str, Any]:
    """A table row as oonipipeline's ClickhouseConnection._consume_rows flattens it."""
    d = dataclasses.asdict(obs)
    d.update(d.pop("probe_meta", {}) or {})
    d.update(d.pop("measurement_meta", {}) or {})
    return {k: _jsonable(v) for k, v in d.items() if not isinstance(v, bytes)}


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    if isinstance(value, bytes):
        return value.decode("latin-1")
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return json.dumps(value)
    return value


def _sql_literal(value: Any) -> str:
    if isinstance(value, datetime):
        return f"'{value.strftime('%Y-%m-%d %H:%M:%S')}'"
    if isinstance(value, (list, tuple)):
        return "(" + ", ".join(_sql_literal(v) for v in value) + ")"
    if isinstance(value, str):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return str(value)


def _insert(session: Any, table: str, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    # Only the columns the table has (a row may carry more keys than the DDL in odd cases).
    body = "\n".join(json.dumps(r, default=str) for r in rows)
    session.query(
        f"INSERT INTO {table} SETTINGS input_format_skip_unknown_fields=1 FORMAT JSONEachRow\n"
        + body
    )


def _load_fingerprints(session: Any, path: Path | None) -> None:
    if path is None or not path.exists():
        return
    with path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    out = []
    for r in rows:
        r = {k: (v or "") for k, v in r.items() if k}
        r["confidence_no_fp"] = int(r.get("confidence_no_fp") or 0)
        out.append(r)
    _insert(session, "fingerprints_dns", out)


def analyse(observed: list[Observed], fingerprints: Path | None) -> dict[str, dict[str, Any]]:
    """measurement_uid -> the row oonipipeline's fuzzy-logic web analysis writes."""
    import chdb.session
    from oonipipeline.analysis.web_analysis import format_query_analysis_web_fuzzy_logic
    from oonipipeline.db.create_tables import make_create_queries

    session = chdb.session.Session()
    session.query("CREATE DATABASE IF NOT EXISTS bench; USE bench")
    wanted = {"fingerprints_dns", "obs_web", "obs_web_ctrl"}
    for query, name in make_create_queries():
        if name in wanted:
            session.query(query)
    _load_fingerprints(session, fingerprints)
    web = [_row(o) for obs in observed for o in obs.web]
    ctrl = [_row(o) for obs in observed for o in obs.ctrl]
    _insert(session, "obs_web", web)
    _insert(session, "obs_web_ctrl", ctrl)
    times = [o.measurement_meta.measurement_start_time for obs in observed for o in obs.web]
    if not times:
        return {}
    sql, params = format_query_analysis_web_fuzzy_logic(
        start_time=min(times) - timedelta(days=1),
        end_time=max(times) + timedelta(days=1),
        probe_cc=[],
    )
    sql = sql % {k: _sql_literal(v) for k, v in params.items()}
    result = session.query(sql, "JSONEachRow")
    rows = [json.loads(line) for line in result.bytes().decode().splitlines() if line.strip()]
    return {r["measurement_uid"]: r for r in rows}


def groups(observed: list[Observed], *, each: bool) -> list[list[Observed]]:
    """Analysis pools: OONI pools the control rows of every measurement of a hostname and day,
    so measurements of different sites that share a hostname (loopback: "localhost" on many
    ports) must be analysed apart (``each``); a file of real measurements is one pool."""
    if each:
        return [[obs] for obs in observed]
    by_file: dict[str, list[Observed]] = defaultdict(list)
    for obs in observed:
        by_file[obs.key.split(":")[0]].append(obs)
    return list(by_file.values())


# --- report ----------------------------------------------------------------------------------


def dns_rows(obs: Observed) -> str:
    """DNS rows per engine: 'getaddrinfo:ANY ok x2, udp:AAAA dns_no_answer'."""
    seen: dict[tuple[str, str, str], int] = defaultdict(int)
    for o in obs.web:
        if o.dns_engine is None:
            continue
        seen[(o.dns_engine, o.dns_query_type or "", o.dns_failure or "ok")] += 1
    return ", ".join(
        f"{e}:{q} {f}" + (f" x{n}" if n > 1 else "") for (e, q, f), n in sorted(seen.items())
    )


def tls_reading(obs: Observed) -> str:
    vals = [o.tls_is_certificate_valid for o in obs.web if o.tls_server_name or o.tls_failure]
    return ",".join("-" if v is None else str(int(v)) for v in vals) or "none"


def layer_verdict(row: dict[str, Any] | None) -> str:
    if row is None:
        return "no rows"
    out = []
    for layer in ("dns", "tcp", "tls"):
        blocked = float(row.get(f"{layer}_blocked_max") or 0)
        if blocked >= BLOCKED_AT:
            out.append(f"{layer}-blocked({row.get(f'top_{layer}_rule_id')})")
    return " ".join(out) or "ok"


def report(observed: list[Observed], analysis: dict[str, dict[str, Any]] | None) -> dict[str, Any]:
    totals: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for obs in observed:
        source = obs.key.split(":")[0]
        blocking = (obs.msmt.get("test_keys") or {}).get("blocking")
        totals[source]["n"] += 1
        if obs.error:
            totals[source]["unparsed"] += 1
            print(f"{obs.key}\tblocking={json.dumps(blocking)}\tPIPELINE ERROR {obs.error}")
            continue
        row = None if analysis is None else analysis.get(obs.msmt["measurement_uid"])
        verdict = "-" if analysis is None else layer_verdict(row)
        if "dns-blocked" in verdict:
            totals[source]["dns_blocked"] += 1
        if "x_expected" in obs.msmt and analysis is not None:
            # The truth of a loopback measurement (tests/loopback/pipeline_world.py).
            truth_dns = obs.msmt["x_expected"] == "dns"
            totals[source]["dns_truth_agrees"] += truth_dns == ("dns-blocked" in verdict)
        if analysis is not None and verdict != "ok":
            totals[source]["any_blocked"] += 1
        print(
            f"{obs.key}\tblocking={json.dumps(blocking)}\tdns=[{dns_rows(obs)}]"
            f"\ttls_valid={tls_reading(obs)}\tpipeline={verdict}"
        )
    print()
    for source, t in sorted(totals.items()):
        truth = f", DNS verdict right on {t['dns_truth_agrees']}" if "dns_truth_agrees" in t else ""
        print(
            f"{source}: {t['n']} measurements, {t['unparsed']} not parsed, "
            f"{t['dns_blocked']} DNS-blocked, {t['any_blocked']} blocked on some layer{truth}"
        )
    return {k: dict(v) for k, v in totals.items()}


# --- fresh measurements of ours on loopback ------------------------------------------------


def measure(out_dir: Path) -> Path:
    """Run our web_connectivity on loopback with the system resolver and our helper.

    Names come from /etc/hosts only ("localhost"), so getaddrinfo sends no DNS query off
    the machine. Writes ``out_dir/ours.jsonl``.
    """
    from tests.loopback.pipeline_world import loopback_measurements

    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / "ours.jsonl"
    with target.open("w") as fh:
        for m in loopback_measurements(out_dir / "results"):
            fh.write(json.dumps(m) + "\n")
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="*", type=Path, help="JSONL files of measurements")
    parser.add_argument("--measure", type=Path, help="first write our loopback measurements here")
    parser.add_argument("--fingerprints", type=Path, default=DNS_FINGERPRINTS)
    parser.add_argument("--json", type=Path, help="also write the totals here")
    parser.add_argument(
        "--each",
        action="store_true",
        help="analyse each measurement alone (its own control only); default: one pool per file",
    )
    args = parser.parse_args(argv)
    if args.measure:
        print(f"wrote {measure(args.measure)}")
        if not args.files:
            return 0
    try:
        import oonipipeline  # noqa: F401
    except ImportError:
        print(
            "oonipipeline is not importable: run this with the interpreter of a virtual "
            "environment that has ooni/data's oonipipeline installed (docs/benchmarks.md)",
            file=sys.stderr,
        )
        return 2
    observed = [observe(key, m) for key, m in read_lines(args.files)]
    analysis: dict[str, dict[str, Any]] | None = None
    try:
        import chdb  # noqa: F401
    except ImportError:
        print("chdb is not importable: observations only, no SQL analysis", file=sys.stderr)
    else:
        analysis = {}
        for group in groups(observed, each=args.each):
            analysis.update(analyse(group, args.fingerprints))
    totals = report(observed, analysis)
    if args.json:
        args.json.write_text(json.dumps(totals, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
