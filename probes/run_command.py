"""`censorscope run`: from flags and config to a stored report.

Kept apart from cli.py so the flow (resolve settings, open or resume a report, stream inputs,
run, summarise) reads top to bottom and can be called from the scheduler too.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from probes.config import Config
from probes.gc_tuning import tuned_gc
from probes.measurement import Scrubber, new_report_id, ooni_time
from probes.net.addresses import is_ip, parse_host_port
from probes.nettests import nettest_class
from probes.nettests.base import ProbeContext, SetupError
from probes.ownip import local_addresses
from probes.runner import RunOptions, RunSummary, expand_repeats, run_nettest
from probes.store import ReportManifest, ResultsStore, StoreError

T = TypeVar("T")

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_BAD_INPUT = 2


@dataclass
class RunRequest:
    """What the user asked for on the command line (None: take the config's value)."""

    nettest: str
    inputs: list[str] = field(default_factory=list)
    testlists: list[Path] = field(default_factory=list)
    keywords: Path | None = None
    vantage: str | None = None
    results: Path | None = None
    helpers: list[str] = field(default_factory=list)
    resolver: str | None = None
    concurrency: int | None = None
    timeout: float | None = None
    repeat: int = 1
    resume: str | None = None
    fingerprints: list[Path] = field(default_factory=list)
    ca_file: Path | None = None
    progress: bool | None = None
    # Nettest-specific options (dns_consistency's resolvers, --pcap, ...): into ctx.options.
    nettest_options: dict[str, Any] = field(default_factory=dict)


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when installed (it roughly halves the probe's CPU per input), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """asyncio.run with the fastest event loop available."""
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        return runner.run(coro)


def _inputs(testlists: list[Path], inputs: list[str]) -> Iterator[str]:
    from probes.testlists import iter_inputs

    return iter_inputs(testlists, inputs)


def _keyword_inputs(path: Path) -> Iterator[str]:
    """Keyword nettests (`keyword_inputs = True`): one input per keyword, `A+B` a combination."""
    from probes.testlists import iter_keywords

    for keyword in iter_keywords(path):
        yield "+".join(keyword.parts)


def _check_keywords(path: Path, fail: Callable[[str], NoReturn]) -> None:
    from probes.testlists import ListError

    try:
        next(_keyword_inputs(path), None)
    except ListError as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"{path}: cannot read: {exc.strerror or exc}")


def _check_lists(testlists: list[Path], fail: Callable[[str], NoReturn]) -> None:
    """Open each list and read its first row now, so a bad file fails before measuring."""
    from probes.testlists import ListError, iter_inputs

    for path in testlists:
        try:
            next(iter_inputs([path], []), None)
        except ListError as exc:
            fail(str(exc))
        except OSError as exc:
            fail(f"{path}: cannot read: {exc.strerror or exc}")


def execute_run(cfg: Config, req: RunRequest, *, fail: Callable[[str], NoReturn]) -> int:
    """Run a nettest as asked; returns the exit status (fail() exits on bad input)."""
    try:
        cls = nettest_class(req.nettest)
    except KeyError as exc:
        fail(str(exc.args[0]))
    store = ResultsStore(req.results or Path(cfg.probe.results))
    options: dict[str, Any] = {
        "inputs": req.inputs,
        "testlists": [str(p) for p in req.testlists],
        "keywords": str(req.keywords) if req.keywords else None,
        "repeat": req.repeat,
        "nettest_options": req.nettest_options,
    }
    vantage = req.vantage or cfg.vantage.name
    if req.resume:
        try:
            manifest = store.load_manifest(req.resume)
        except StoreError as exc:
            fail(str(exc))
        if manifest.test_name != cls.name:
            fail(f"--resume {req.resume}: that report is {manifest.test_name}, not {cls.name}")
        if req.vantage and req.vantage != manifest.vantage:
            fail(f"--resume {req.resume}: that report is of vantage {manifest.vantage!r}")
        vantage = manifest.vantage
        # The report's own inputs and repeat count, unless the user names new ones.
        saved = manifest.options
        if not req.inputs and not req.testlists:
            req.inputs = list(saved.get("inputs") or [])
            req.testlists = [Path(p) for p in saved.get("testlists") or []]
        if req.repeat == 1:
            req.repeat = int(saved.get("repeat") or 1)
        if req.keywords is None and saved.get("keywords"):
            req.keywords = Path(saved["keywords"])
        if not req.nettest_options:
            req.nettest_options = dict(saved.get("nettest_options") or {})
    else:
        now = datetime.now(UTC)
        manifest = ReportManifest(
            report_id=new_report_id(cls.name, cfg.vantage.probe_cc, cfg.vantage.probe_asn, now),
            test_name=cls.name,
            vantage=vantage,
            date=now.strftime("%Y-%m-%d"),
            test_start_time=ooni_time(now),
            options=options,
        )
    if cls.needs_input and not req.inputs and not req.testlists:
        fail(f"{cls.name} needs inputs: give --input URL or --testlist FILE")
    for value in req.inputs:
        problem = cls.input_problem(value)
        if problem:
            fail(f"--input {value!r}: {problem}")
    resolver = req.resolver or cfg.probe.resolver
    if resolver:
        try:
            host, _port = parse_host_port(resolver, 53)
        except ValueError as exc:
            fail(f"--resolver {resolver!r}: {exc}")
        if not is_ip(host):
            fail(f"--resolver {resolver!r}: give an IP address, optionally with :PORT")
    _check_lists(req.testlists, fail)
    keyword_inputs = getattr(cls, "keyword_inputs", False) and not req.inputs
    if keyword_inputs:
        if req.keywords is None:
            fail(f"{cls.name} needs --keywords FILE (or --input KEYWORD)")
        _check_keywords(req.keywords, fail)

    ctx = ProbeContext(
        vantage=vantage,
        probe_cc=cfg.vantage.probe_cc,
        probe_asn=cfg.vantage.probe_asn,
        probe_network_name=cfg.vantage.network_name,
        resolver=resolver,
        helpers=req.helpers or list(cfg.probe.helpers),
        timeout=req.timeout or cls.default_budget(req.nettest_options) or cfg.probe.timeout,
        ca_file=str(req.ca_file) if req.ca_file else cfg.probe.ca_file,
        fingerprint_files=[str(p) for p in req.fingerprints] or list(cfg.probe.fingerprints),
        scrubber=Scrubber([*cfg.vantage.own_addresses, *local_addresses()]),
        options={**req.nettest_options, "keywords": req.keywords},
    )
    run_options = RunOptions(
        concurrency=req.concurrency or cfg.probe.concurrency,
        timeout=ctx.timeout,
        repeat=req.repeat,
        per_host_concurrency=cfg.probe.per_host_concurrency,
        per_host_interval=cfg.probe.per_host_interval,
    )
    try:
        writer = store.open_report(manifest)
    except (StoreError, OSError) as exc:
        fail(f"results store {store.root}: {exc}")
    if writer.torn_tail:
        print(f"censorscope: moved a torn last line aside to {writer.torn_tail}", file=sys.stderr)
    done = store.done_inputs(manifest) if req.resume else {}
    nettest = cls(ctx)
    source = (
        _keyword_inputs(req.keywords)
        if keyword_inputs and req.keywords
        else _inputs(req.testlists, req.inputs)
    )
    inputs = expand_repeats(source, req.repeat, dict(done))

    async def go() -> RunSummary:
        await nettest.setup()
        try:
            return await run_nettest(
                nettest, inputs, manifest, writer, run_options, progress=req.progress
            )
        finally:
            await nettest.close()

    try:
        with tuned_gc():
            summary = run_async(go())
    except SetupError as exc:
        writer.close()
        fail(str(exc))
    except KeyboardInterrupt:
        writer.close()
        print(
            f"censorscope: interrupted after {writer.written} measurements; "
            f"continue with --resume {manifest.report_id}",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    writer.close()
    print(
        f"{cls.name}: {summary.measured} measured, {summary.blocked} blocked, "
        f"{summary.inconclusive} inconclusive in {summary.elapsed:.1f} s "
        f"({summary.rate:.1f}/s); report {manifest.report_id} -> {store.report_path(manifest)}"
    )
    for warning in nettest.warnings:
        print(f"censorscope: {warning}", file=sys.stderr)
    if summary.errors:
        print(
            f"censorscope: {summary.errors} inputs failed with an internal error (not stored); "
            f"retry them with --resume {manifest.report_id}",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    if summary.interrupted:
        print(
            f"censorscope: interrupted; what finished is stored. "
            f"Continue with --resume {manifest.report_id}",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    return getattr(nettest, "exit_status", EXIT_OK)
