"""`censorscope analyze`, `report` and `publish` (DESIGN 2): findings from stored measurements.

Heavy libraries (pandas, matplotlib, dask) are imported inside the commands so that
`censorscope --help` stays fast.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from probes.cli import EXIT_FAILURE, fail

if TYPE_CHECKING:
    from analysis.compare import Comparison
    from analysis.load import Filters
    from analysis.pipeline import Analysis
    from analysis.stream import Streamed

Results = Annotated[
    list[Path] | None,
    typer.Option(
        "--results", help="Results store (repeatable) (default: ./results, none with --ooni)."
    ),
]
Ooni = Annotated[
    list[Path] | None,
    typer.Option(
        "--ooni",
        help="OONI measurements: JSON, JSONL, optionally .gz (repeatable) (default: none).",
    ),
]
Parquet = Annotated[
    list[Path] | None,
    typer.Option(
        "--parquet",
        help="Measurements already classified, as Parquet: a published dataset's "
        "data/measurements folder or files (repeatable) (default: none).",
    ),
]
Engine = Annotated[
    str,
    typer.Option(
        help="dask (load, classify and count as Dask tasks: in this process below 256 MB of "
        "input, else a LocalCluster, or --scheduler's cluster; memory bounded by partitions and "
        "distinct inputs x vantages x windows, not by lines) or pandas (one process, every row "
        "in memory; the same results)."
    ),
]
PublishEngine = Annotated[
    str,
    typer.Option(
        help="dask (as for report: each partition's rows are spooled under --out by output "
        "file and a second stage of tasks writes each raw and Parquet file; no process holds "
        "every row) or pandas (one process, every row in memory; the same bytes)."
    ),
]
AnalyzeEngine = Annotated[
    str,
    typer.Option(
        help="dask (as for report); pandas; stream (analysis.stream: every core of this "
        "machine, counts only)."
    ),
]
Scheduler = Annotated[
    str | None,
    typer.Option(
        help="--engine dask: address of a running Dask scheduler, tcp://HOST:8786 (inputs, "
        "--fingerprints and --out on paths every worker sees) (default: a LocalCluster here)."
    ),
]
Workers = Annotated[
    int | None,
    typer.Option(
        min=1,
        help="--engine dask: LocalCluster worker processes; 1 runs in this process (default: "
        "one per core, in this process below 256 MB of input).",
    ),
]
Since = Annotated[str | None, typer.Option(help="First day kept, YYYY-MM-DD (default: the first).")]
Until = Annotated[str | None, typer.Option(help="Last day kept, YYYY-MM-DD (default: the last).")]
Vantage = Annotated[
    list[str] | None,
    typer.Option("--vantage", help="Keep this vantage (repeatable) (default: all)."),
]
Test = Annotated[
    list[str] | None, typer.Option("--test", help="Keep this nettest (repeatable) (default: all).")
]
Input = Annotated[
    list[str] | None, typer.Option("--input", help="Keep this input (repeatable) (default: all).")
]
Fingerprints = Annotated[
    Path | None,
    typer.Option(
        help="Folder with fingerprints_dns.csv and/or fingerprints_http.csv (OONI) and "
        "optionally censoredplanet/, or one OONI fingerprint CSV file (default: none)."
    ),
]
Window = Annotated[str, typer.Option(help="Time window of rates and timelines (pandas freq).")]
MinMeasurements = Annotated[
    int,
    typer.Option(
        min=1, help="Finding gate: decisive measurements a vantage needs (docs/analysis.md)."
    ),
]
Fdr = Annotated[
    float,
    typer.Option(
        min=0.0, max=1.0, help="Finding gate: Benjamini-Hochberg q-value must be below this."
    ),
]
BlockedShare = Annotated[
    float,
    typer.Option(min=0.0, max=1.0, help="Finding gate: share of decisive results blocked."),
]


def _day(option: str, value: str | None) -> date | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        fail(f"--{option}: not a date YYYY-MM-DD: {value!r}")


@dataclass(frozen=True)
class _Sources:
    """The shared options, checked: what to read and which measurements to keep."""

    stores: list[Path]
    ooni: list[Path]
    filters: Filters
    fingerprints: Path | None
    window: str | None
    gates: Any = None  # analysis.compare.Gates
    parquet: tuple[Path, ...] = ()


def _sources(
    results: list[Path] | None,
    ooni: list[Path] | None,
    since: str | None,
    until: str | None,
    vantage: list[str] | None,
    test: list[str] | None,
    input_: list[str] | None,
    fingerprints: Path | None,
    window: str,
) -> _Sources:
    from analysis.load import Filters

    stores = list(results or [])
    if not stores and not ooni:
        stores = [Path("results")]
    for path in [*(ooni or []), *([fingerprints] if fingerprints else [])]:
        if not path.exists():
            fail(f"{path}: no such file or directory")
    if fingerprints is not None and fingerprints.is_dir():
        _say_missing_fingerprints(fingerprints)
    filters = Filters(
        since=_day("since", since),
        until=_day("until", until),
        vantages=frozenset(vantage) if vantage else None,
        test_names=frozenset(test) if test else None,
        inputs=frozenset(input_) if input_ else None,
    )
    return _Sources(stores, list(ooni or []), filters, fingerprints, window or None)


def _say_missing_fingerprints(folder: Path) -> None:
    """Name an absent OONI fingerprint file once: analysis goes on with what the folder holds."""
    from probes.fingerprints import DNS_FILE, HTTP_FILE

    for name, what in ((DNS_FILE, "DNS answers"), (HTTP_FILE, "HTTP responses")):
        if not (folder / name).is_file():
            typer.echo(
                f"censorscope: --fingerprints {folder}: no {name}; {what} are not matched "
                "against OONI fingerprints",
                err=True,
            )


def _gated(
    src: _Sources,
    min_measurements: int,
    fdr: float,
    blocked_share: float,
    parquet: list[Path] | None = None,
) -> _Sources:
    """The sources with the finding gates the options chose (and the Parquet inputs)."""
    from dataclasses import replace

    from analysis.compare import Gates

    for path in parquet or ():
        if not path.exists():
            fail(f"{path}: no such file or directory")
    stores = src.stores
    if parquet and stores == [Path("results")] and not src.ooni:
        stores = []  # --parquet alone: no default store
    return replace(
        src,
        stores=stores,
        gates=Gates(min_measurements, fdr, blocked_share),
        parquet=tuple(parquet or ()),
    )


@contextmanager
def _analysis_errors() -> Iterator[None]:
    """Bad sources, fingerprints or window: a clear message and exit 2, not a traceback."""
    from analysis.load import LoadError
    from analysis.verdicts import SignatureError
    from probes.fingerprints import FingerprintError

    try:
        yield
    except (LoadError, FingerprintError, SignatureError) as exc:
        fail(str(exc))
    except ValueError as exc:
        if "freq" in str(exc).lower() or "frequency" in str(exc).lower():
            fail(f"--window: {exc}")
        raise


def _report_problems(problems: Sequence[object], n_problems: int) -> None:
    for problem in problems[:20]:
        typer.echo(f"censorscope: skipped {problem}", err=True)
    if n_problems > 20:
        typer.echo(f"censorscope: skipped {n_problems - 20} more malformed lines", err=True)


def _analysis(
    engine: str,
    src: _Sources,
    scheduler: str | None = None,
    workers: int | None = None,
) -> Analysis:
    """Run load + classify + compare: in memory (pandas), or as Dask tasks (dask)."""
    from analysis.pipeline import run

    workers = engine_workers(engine, scheduler, workers)
    with _analysis_errors():
        result = run(
            src.stores,
            src.ooni,
            src.filters,
            src.fingerprints,
            engine=engine,
            window=src.window,
            gates=src.gates,
            scheduler=scheduler,
            workers=workers,
            parquet=src.parquet,
        )
    _report_problems(result.loaded.problems, result.loaded.n_problems)
    return result


def engine_workers(engine: str, scheduler: str | None, workers: int | None) -> int | None:
    """Check the engine options; `workers` 1 when dask is missing (the same tasks in turn)."""
    from analysis.pipeline import ENGINES

    if engine == "stream":
        fail("--engine stream is for analyze: report and publish need every measurement's row")
    if engine not in ENGINES:
        fail(f"--engine: unknown engine {engine!r} (use {' or '.join(ENGINES)})")
    if scheduler and engine != "dask":
        fail("--scheduler: only with --engine dask")
    if engine == "dask":
        try:
            import dask.distributed  # noqa: F401
        except ImportError:
            if scheduler or (workers or 1) > 1:
                fail("--engine dask needs the `dask` extra: pip install 'censorscope[dask]'")
            return 1  # the same tasks, one after the other in this process
    return workers


def _published_on_engine(
    src: _Sources,
    out: Path,
    drop_asn: list[str] | None,
    options: dict[str, Any],
    scheduler: str | None,
    workers: int | None,
) -> tuple[Analysis, Any]:
    """publish as Dask tasks (analysis.publish_engine)."""
    from analysis.publish_engine import publish_engine

    workers = engine_workers("dask", scheduler, workers)
    with _analysis_errors():
        try:
            result, done = publish_engine(
                src.stores,
                src.ooni,
                src.filters,
                src.fingerprints,
                out,
                window=src.window,
                gates=src.gates,
                drop_asn=set(drop_asn or ()),
                scheduler=scheduler,
                workers=workers,
                warn=lambda text: typer.echo(f"warning: {text}", err=True),
                **options,
            )
        except OSError as exc:
            fail(f"{out}: cannot write: {exc.strerror or exc}", EXIT_FAILURE)
    _report_problems(result.loaded.problems, result.loaded.n_problems)
    return result, done


def _streamed(src: _Sources) -> Streamed:
    """Load, classify and count piece by piece on every core (analysis.stream)."""
    from analysis.stream import run_streamed

    with _analysis_errors():
        result = run_streamed(
            src.ooni, src.stores, src.filters, src.fingerprints, window=src.window, gates=src.gates
        )
    _report_problems(result.problems, result.n_problems)
    return result


def _summary(
    comparison: Comparison, measurements: int, vantages: int, skipped: int, keywords: Any = None
) -> str:
    from analysis.keywords import summary as keyword_summary

    findings = comparison.findings
    lines = [
        f"{measurements} measurements, {vantages} vantages, "
        f"{len(findings)} inputs, {skipped} malformed lines skipped"
    ]
    if len(findings):
        finding = findings["finding"]
        counts = finding.where(~finding.str.startswith("blocked at"), "blocked somewhere")
        counts = counts.where(~finding.str.startswith("suggestive at"), "suggestive somewhere")
        lines.append(", ".join(f"{name}: {n}" for name, n in sorted(counts.value_counts().items())))
        blocked = findings[findings["blocked_at"].notna()]
        for row in blocked.head(10).itertuples():
            lines.append(
                f"  {row.target}: {row.finding} ({row.blocking_type}, {row.blocking_detail})"
            )
        if len(blocked) > 10:
            lines.append(f"  ... {len(blocked) - 10} more blocked inputs")
    if (line := keyword_summary(keywords)) is not None:
        lines.append(line)
    return "\n".join(lines)


def _summary_of(result: Analysis) -> str:
    return _summary(
        result.comparison,
        result.facts.n,
        len(result.facts.vantages),
        result.loaded.n_problems,
        result.keywords,
    )


def _with_provenance(
    src: _Sources, comparison: Comparison, keywords: Any, finding_lists: Any
) -> tuple[Comparison, Any, dict[str, Any]]:
    """Findings stamped with what decided them (analysis.provenance; the same columns for every
    engine: each finding's `probe_lists` from the engine's merged `finding_lists`) and the
    provenance record (every list hash)."""
    from dataclasses import replace

    from analysis.provenance import Provenance, stamp

    with _analysis_errors():
        prov = Provenance.of_run(src.fingerprints, src.gates, src.window)
    findings = stamp(comparison.findings, prov, lists=finding_lists)
    comparison = replace(comparison, findings=findings)
    if keywords is not None and not keywords.findings.empty:
        stamped = stamp(keywords.findings, prov, keyword=True, lists=finding_lists)
        keywords = replace(keywords, findings=stamped)
    lists = sorted(frozenset().union(*finding_lists.web.values()))
    return comparison, keywords, prov.to_json(lists)


def _write_provenance(record: dict[str, Any], out: Path) -> Path:
    import json

    from analysis.provenance import PROVENANCE_FILE

    path = out / PROVENANCE_FILE
    path.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path


def register(app: typer.Typer) -> None:
    """Add analyze, report and publish to the censorscope app."""

    @app.command()
    def analyze(
        out: Annotated[Path, typer.Option(help="Directory for the Parquet and CSV tables.")],
        results: Results = None,
        ooni: Ooni = None,
        parquet: Parquet = None,
        engine: AnalyzeEngine = "dask",
        since: Since = None,
        until: Until = None,
        vantage: Vantage = None,
        test: Test = None,
        input_: Input = None,
        fingerprints: Fingerprints = None,
        window: Window = "D",
        min_measurements: MinMeasurements = 3,
        fdr: Fdr = 0.05,
        blocked_share: BlockedShare = 0.5,
        scheduler: Scheduler = None,
        workers: Workers = None,
    ) -> None:
        """Compare vantages: findings, per-vantage rates and timelines as Parquet + CSV."""
        from analysis.keywords import write_tables as write_keyword_tables
        from analysis.tables import write_tables

        src = _sources(results, ooni, since, until, vantage, test, input_, fingerprints, window)
        src = _gated(src, min_measurements, fdr, blocked_share, parquet)
        if engine == "stream":
            if src.parquet:
                fail("--parquet: not with --engine stream (use dask or pandas)")
            streamed = _streamed(src)
            comparison = streamed.comparison
            vantages = streamed.comparison.vantages
            n_vantages = vantages["vantage"].nunique() if len(vantages) else 0
            summary = _summary(
                comparison, streamed.rows, n_vantages, streamed.n_problems, streamed.keywords
            )
            keywords = streamed.keywords
            lists = streamed.lists
        else:
            result = _analysis(engine, src, scheduler, workers)
            comparison, summary = result.comparison, _summary_of(result)
            keywords = result.keywords
            lists = result.facts.finding_lists
        comparison, keywords, record = _with_provenance(src, comparison, keywords, lists)
        try:
            written = write_tables(comparison, out)
            if keywords is not None:
                written += write_keyword_tables(keywords, out)
            written.append(_write_provenance(record, out))
        except OSError as exc:
            fail(f"{out}: cannot write: {exc.strerror or exc}", EXIT_FAILURE)
        typer.echo(summary)
        typer.echo(f"wrote {len(written)} files to {out}")

    @app.command()
    def report(
        out: Annotated[Path, typer.Option(help="The HTML file to write.")],
        results: Results = None,
        ooni: Ooni = None,
        parquet: Parquet = None,
        engine: Engine = "dask",
        since: Since = None,
        until: Until = None,
        vantage: Vantage = None,
        test: Test = None,
        input_: Input = None,
        fingerprints: Fingerprints = None,
        window: Window = "D",
        min_measurements: MinMeasurements = 3,
        fdr: Fdr = 0.05,
        blocked_share: BlockedShare = 0.5,
        scheduler: Scheduler = None,
        workers: Workers = None,
    ) -> None:
        """One self-contained HTML report (plots embedded; opens with no network)."""
        from analysis.report import render

        src = _sources(results, ooni, since, until, vantage, test, input_, fingerprints, window)
        src = _gated(src, min_measurements, fdr, blocked_share, parquet)
        result = _analysis(engine, src, scheduler, workers)
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(render(result), encoding="utf-8")
        except OSError as exc:
            fail(f"{out}: cannot write: {exc.strerror or exc}", EXIT_FAILURE)
        typer.echo(_summary_of(result))
        typer.echo(f"wrote {out}")

    @app.command()
    def publish(
        out: Annotated[Path, typer.Option(help="Directory of the dataset package.")],
        results: Results = None,
        ooni: Ooni = None,
        parquet: Parquet = None,
        engine: PublishEngine = "dask",
        since: Since = None,
        until: Until = None,
        vantage: Vantage = None,
        test: Test = None,
        input_: Input = None,
        fingerprints: Fingerprints = None,
        window: Window = "D",
        min_measurements: MinMeasurements = 3,
        fdr: Fdr = 0.05,
        blocked_share: BlockedShare = 0.5,
        drop_asn: Annotated[
            list[str] | None,
            typer.Option(
                help="At-risk vantage: publish it without ASN detail (repeatable) (default: none)."
            ),
        ] = None,
        title: Annotated[str, typer.Option(help="Dataset title.")] = "censorscope measurements",
        licence: Annotated[str, typer.Option("--license", help="SPDX licence id.")] = "CC-BY-4.0",
        scrub: Annotated[
            list[str] | None,
            typer.Option(
                help="An address to remove from every published cell (repeatable) (default: "
                "none beyond this host's interface addresses, which always are)."
            ),
        ] = None,
        scheduler: Scheduler = None,
        workers: Workers = None,
    ) -> None:
        """A citable dataset: raw JSONL (OONI's bucket layout) + Parquet + CSV, provenance,
        datapackage.json, README card, SHA256SUMS."""
        from analysis.publish import publish_dataset
        from probes.measurement import Scrubber
        from probes.net.addresses import is_ip
        from probes.ownip import local_addresses

        for address in scrub or ():
            if not is_ip(address):
                fail(f"--scrub {address!r}: not an IP address")
        src = _sources(results, ooni, since, until, vantage, test, input_, fingerprints, window)
        src = _gated(src, min_measurements, fdr, blocked_share, parquet)
        if src.parquet:
            fail(
                "--parquet: publish re-reads each measurement's raw line; give the --results or "
                "--ooni files the Parquet was published from"
            )
        options: dict[str, Any] = {
            "title": title,
            "licence": licence,
            "scrubber": Scrubber([*(scrub or ()), *local_addresses()]),
        }
        if engine == "dask":
            result, done = _published_on_engine(src, out, drop_asn, options, scheduler, workers)
        else:
            result = _analysis(engine, src, scheduler, workers)
            try:
                done = publish_dataset(
                    result,
                    out,
                    drop_asn=set(drop_asn or ()),
                    fingerprints=src.fingerprints,
                    **options,
                )
            except OSError as exc:
                fail(f"{out}: cannot write: {exc.strerror or exc}", EXIT_FAILURE)
        typer.echo(_summary_of(result))
        typer.echo(
            f"{done.raw_lines} raw measurements, {done.late} arrived late (counted in the "
            f"period they were made); {len(done.changed)} raw/Parquet files new or changed, "
            f"{len(done.removed)} removed"
        )
        typer.echo(f"wrote {len(done.files)} files to {out}")
