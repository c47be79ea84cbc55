"""`censorscope run`: from flags and config to a stored report.

Kept apart from cli.py so the flow (resolve settings, open or resume a report, stream inputs,
run, summarise) reads top to bottom and can be called from the scheduler too.
"""

from __future__ import annotations

import asyncio
import errno
import shlex
import sys
from collections.abc import Callable, Coroutine, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

from probes import run_settings
from probes.config import Config
from probes.exit_status import EXIT_FAILURE, EXIT_INTERRUPTED
from probes.gc_tuning import tuned_gc
from probes.measurement import Scrubber, new_report_id, ooni_time
from probes.net.addresses import is_ip, parse_host_port
from probes.nettests import nettest_class
from probes.nettests.base import ProbeContext, SetupError
from probes.ownip import local_addresses
from probes.provenance import list_annotations
from probes.runner import RunOptions, RunSummary, RunWatch, expand_repeats, run_nettest
from probes.store import ReportManifest, ResultsStore, StoreError

# Why a results directory refuses writes before anything is stored: a read-only mount, or
# modes that do not let this user write.
_NOT_WRITABLE = frozenset({errno.EROFS, errno.EACCES, errno.EPERM})

if TYPE_CHECKING:
    from probes.vantage import Vantage

T = TypeVar("T")


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


def _keyword_inputs(path: Path, on_warning: Callable[[Any], None] | None = None) -> Iterator[str]:
    """Keyword nettests (`keyword_inputs = True`): one input per keyword, `A+B` a combination."""
    from probes.testlists import iter_keywords

    for keyword in iter_keywords(path, on_warning=on_warning):
        yield "+".join(keyword.parts)


# Warnings about odd rows of a published keyword list printed before a run; the rest counted.
MAX_LIST_WARNINGS_SHOWN = 20


def _check_keywords(path: Path, fail: Callable[[str], NoReturn]) -> int:
    """Read the keyword list through (a bad row fails now, an odd one is kept and said on
    stderr as FILE:LINE); returns how many inputs it gives."""
    from probes.testlists import ListError

    warned = 0

    def say(problem: Any) -> None:
        nonlocal warned
        warned += 1
        if warned <= MAX_LIST_WARNINGS_SHOWN:
            print(f"censorscope: {problem}", file=sys.stderr)

    try:
        n = sum(1 for _ in _keyword_inputs(path, say))
        if warned > MAX_LIST_WARNINGS_SHOWN:
            more = warned - MAX_LIST_WARNINGS_SHOWN
            print(f"censorscope: {path}: {more} more warning(s)", file=sys.stderr)
        return n
    except ListError as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"{path}: cannot read: {exc.strerror or exc}")


def _check_lists(testlists: list[Path], fail: Callable[[str], NoReturn]) -> int:
    """Read every list through before measuring: a bad row anywhere fails the run now, naming
    FILE:LINE (every problem, up to a screenful), instead of ending it partway. Returns the
    number of rows, the progress bar's total."""
    from probes.testlists import check_runnable

    problems, rows = check_runnable(testlists)
    if problems:
        for problem in problems[:20]:
            print(f"censorscope: {problem}", file=sys.stderr)
        more = f" ({len(problems) - 20} more not shown)" if len(problems) > 20 else ""
        fail(
            f"{len(problems)} problem(s) in the test list(s){more}; nothing was measured. "
            f"`censorscope lists validate FILE` checks a list."
        )
    return rows


def _total(n_inputs: int, repeat: int, done: dict[str | None, int]) -> int:
    """Measurements this run will make: each input `repeat` times, minus what a resumed report
    holds."""
    return max(0, n_inputs * repeat - sum(min(n, repeat) for n in done.values()))


def resume_command(nettest: str, manifest: ReportManifest, store: ResultsStore, cfg: Config) -> str:
    """The command that continues this report, complete enough to work typed as shown: the
    results directory (the report is looked up there) and the config file it ran with."""
    argv = ["censorscope", "run", nettest, "--resume", manifest.report_id]
    argv += ["--results", str(store.root.absolute())]  # absolute: works from any directory
    if cfg.source != "(defaults)":
        argv += ["--config", str(Path(cfg.source).absolute())]
    return shlex.join(argv)


def _locate(cfg: Config, req: RunRequest, fail: Callable[[str], NoReturn]) -> Vantage:
    return locate_vantage(
        cfg,
        helpers=req.helpers or cfg.probe.helpers,
        resolver=req.resolver or cfg.probe.resolver,
        ca_file=str(req.ca_file) if req.ca_file else cfg.probe.ca_file,
        fail=fail,
    )


def locate_vantage(
    cfg: Config,
    *,
    helpers: list[str],
    resolver: str | None,
    ca_file: str | None,
    fail: Callable[[str], NoReturn],
) -> Vantage:
    """probe_cc/probe_asn/resolver keys from [geoip] (probes/vantage.py); one line if unknown."""
    from probes.geoip import GeoIPError
    from probes.vantage import locate, source_problem

    if ca_file and (why := _ca_file_problem(ca_file)):  # isolate comes here without run's check
        fail(f"CA file {ca_file} (--ca-file or [probe] ca_file): {why}")
    problem = source_problem(cfg, helpers)
    if problem:
        fail(problem if problem.startswith("control helper") else f"{cfg.source}: {problem}")
    try:
        where = run_async(
            locate(
                cfg,
                helpers=helpers,
                resolver=resolver if resolver and _resolver_ok(resolver) else None,
                ca_file=ca_file,
            )
        )
    except GeoIPError as exc:
        fail(f"[geoip] databases: {exc}")
    for line in (where.notice, where.stale):
        if line:
            print(f"censorscope: {line}", file=sys.stderr)
    return where


def _ca_file_problem(path: str) -> str | None:
    """Why the CA file cannot be trusted (missing, unreadable, no PEM certificate), else None:
    said before measuring, not as a traceback from the first nettest that builds a client."""
    import ssl

    from probes.net.tls import verifying_context

    try:
        verifying_context(path)
    except OSError as exc:
        return exc.strerror or str(exc)
    except ssl.SSLError as exc:
        return f"not a PEM CA bundle ({exc.reason or exc})"
    return None


def _resolver_ok(resolver: str) -> bool:
    try:
        return is_ip(parse_host_port(resolver, 53)[0])
    except ValueError:
        return False


def execute_run(cfg: Config, req: RunRequest, *, fail: Callable[[str], NoReturn]) -> int:
    """Run a nettest as asked; returns the exit status (fail() exits on bad input)."""
    try:
        cls = nettest_class(req.nettest)
    except KeyError as exc:
        fail(str(exc.args[0]))
    store = ResultsStore(req.results or Path(cfg.probe.results))
    options: dict[str, Any] = {
        "inputs": req.inputs,
        "testlists": [str(p.resolve()) for p in req.testlists],
        "keywords": str(req.keywords.resolve()) if req.keywords else None,
        "repeat": req.repeat,
        "nettest_options": req.nettest_options,
    }
    vantage = req.vantage or cfg.vantage.name
    manifest: ReportManifest | None = None
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
        # Every input and setting of the interrupted run; a flag that disagrees is an error.
        settings = run_settings.restore(req, cfg, manifest.options, fail)
    else:
        settings = run_settings.resolve(req, cfg, cls.default_budget(req.nettest_options))
        options[run_settings.SETTINGS] = settings
    if cls.needs_input and not req.inputs and not req.testlists:
        fail(f"{cls.name} needs inputs: give --input URL or --testlist FILE")
    for value in req.inputs:
        problem = cls.input_problem(value)
        if problem:
            fail(f"--input {value!r}: {problem}")
    resolver = settings["resolver"]
    if resolver:
        try:
            host, _port = parse_host_port(resolver, 53)
        except ValueError as exc:
            fail(f"--resolver {resolver!r}: {exc}")
        if not is_ip(host):
            fail(f"--resolver {resolver!r}: give an IP address, optionally with :PORT")
    if settings["ca_file"] and (problem := _ca_file_problem(settings["ca_file"])):
        fail(f"CA file {settings['ca_file']} (--ca-file or [probe] ca_file): {problem}")
    n_inputs = _check_lists(req.testlists, fail) + sum(1 for v in req.inputs if v.strip())
    keyword_inputs = getattr(cls, "keyword_inputs", False) and not req.inputs
    if keyword_inputs:
        if req.keywords is None:
            fail(f"{cls.name} needs --keywords FILE (or --input KEYWORD)")
        n_inputs = _check_keywords(req.keywords, fail)

    accounts = _accounts(cfg, fail)
    from probes.consent import require_consent

    # Consent before anything leaves this machine: locating asks whoami and STUN servers.
    if problem := require_consent(cfg):
        fail(problem)
    where = _locate(cfg, req, fail)
    if manifest is None:
        now = datetime.now(UTC)
        manifest = ReportManifest(
            report_id=new_report_id(cls.name, where.probe_cc, where.probe_asn, now),
            test_name=cls.name,
            vantage=vantage,
            date=now.strftime("%Y-%m-%d"),
            test_start_time=ooni_time(now),
            options=options,
        )
    ctx = ProbeContext(
        vantage=vantage,
        probe_cc=where.probe_cc,
        probe_asn=where.probe_asn,
        probe_network_name=where.probe_network_name,
        resolver_ip=where.resolver_ip,
        resolver_asn=where.resolver_asn,
        resolver_network_name=where.resolver_network_name,
        resolver=resolver,
        helpers=list(settings["helpers"]),
        timeout=settings["timeout"],
        ca_file=settings["ca_file"],
        fingerprint_files=list(settings["fingerprints"]),
        scrubber=Scrubber([*cfg.vantage.own_addresses, *local_addresses(), *where.scrub]),
        options={**req.nettest_options, "keywords": req.keywords},
        accounts=accounts,
        annotations=list_annotations(req.testlists, req.keywords, settings["fingerprints"]),
    )
    run_options = RunOptions(
        concurrency=settings["concurrency"],
        timeout=ctx.timeout,
        repeat=req.repeat,
        per_host_concurrency=cfg.probe.per_host_concurrency,
        per_host_interval=cfg.probe.per_host_interval,
    )
    try:
        writer = store.open_report(manifest)
    except OSError as exc:
        if exc.errno in _NOT_WRITABLE:
            fail(
                f"results directory {store.root} is read-only ({exc.strerror}: {exc.filename}): "
                "nothing was measured; give a writable --results"
            )
        fail(f"results store {store.root}: {exc}")
    except StoreError as exc:
        fail(f"results store {store.root}: {exc}")
    if writer.torn_tail:
        print(f"censorscope: moved a torn last line aside to {writer.torn_tail}", file=sys.stderr)
    done = store.done_inputs(manifest) if req.resume else {}
    nettest = cls(ctx)
    source: Iterable[str | None] = (
        _keyword_inputs(req.keywords)
        if keyword_inputs and req.keywords
        else _inputs(req.testlists, req.inputs)
    )
    if not cls.needs_input and not keyword_inputs and not req.inputs and not req.testlists:
        source = [None]  # an input-less nettest (the messaging apps) measures once
        n_inputs = 1
    inputs = expand_repeats(source, req.repeat, dict(done))
    watch = RunWatch(nettest)

    async def go() -> RunSummary:
        await nettest.setup()
        try:
            return await run_nettest(
                nettest,
                inputs,
                manifest,
                writer,
                run_options,
                progress=req.progress,
                total=_total(n_inputs, req.repeat, done),
                watch=watch,
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
            f"censorscope: interrupted after {writer.written} measurements; what finished is "
            f"stored. Continue with: {resume_command(cls.name, manifest, store, cfg)}",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    writer.close()
    print(
        f"{cls.name}: {summary.measured} measured, {summary.blocked} blocked, "
        f"{summary.inconclusive} inconclusive in {summary.elapsed:.1f} s "
        f"({summary.rate:.1f}/s); report {manifest.report_id} -> {store.report_path(manifest)}"
    )
    watch.flush(lambda line: print(line, file=sys.stderr))  # warnings not said during the run
    if summary.store_error:
        print(
            f"censorscope: the results store refused a write ({summary.store_error}); measuring "
            f"stopped, {summary.unstored} measurements were not stored. Free space, then "
            f"continue with --resume {manifest.report_id}",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    if summary.interrupted:
        print(
            f"censorscope: interrupted; what finished is stored. "
            f"Continue with: {resume_command(cls.name, manifest, store, cfg)}",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    if summary.errors:
        print(
            f"censorscope: {summary.errors} inputs failed with an internal error (not stored); "
            f"retry them with: {resume_command(cls.name, manifest, store, cfg)}",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    return nettest.exit_status


def _accounts(cfg: Config, fail: Callable[[str], NoReturn]) -> dict[str, Any]:
    """The config's messaging accounts; a bad [accounts.NAME] table stops the run (exit 2)."""
    from probes.accounts import load_accounts
    from probes.config import ConfigError
    from probes.secret_files import loose_permissions

    try:
        accounts = load_accounts(cfg)
    except ConfigError as exc:
        fail(str(exc))
    raw = cfg.raw.get("accounts", {})
    if any("mailbox_key" in table for table in raw.values()):
        warning = loose_permissions(Path(cfg.source), "the config, with mailbox keys,")
        if warning:
            print(f"censorscope: {warning}", file=sys.stderr)
    return dict(accounts)
