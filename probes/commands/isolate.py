"""`censorscope isolate --channel NAME --text FILE`: which words of a blocked message trigger.

Wires probes.isolation (pure search) to a tester (probes/nettests/keyword_isolation.py): a
message channel, where each test is one message between two controls (message_delivery's
method), or http_keyword in one placement (`--channel http-path`, ...). Every test is stored as
a measurement of that nettest linked to the run (`test_keys.isolation`); the result (minimal
combinations, tests used, whether the search finished) is stored as a `keyword_isolation`
measurement in its own report, pointing at the tests' report.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from probes.cli_options import ConfigOption, ResultsOption
from probes.nettests.keyword_isolation import Tester

if TYPE_CHECKING:
    from probes.measurement import Scrubber

ISOLATION_VERSION = "0.1.0"


def register(app: typer.Typer) -> None:
    app.command()(isolate)


def unspaced(text: str, mode: str) -> bool:
    """Whether to isolate substrings of the text (unspaced scripts) rather than words."""
    return mode == "chars" or (mode == "auto" and len(text.split()) == 1 and not text.isascii())


def split_words(text: str, mode: str) -> list[str]:
    """Words to isolate among: whitespace tokens, or characters for unspaced scripts."""
    if unspaced(text, mode):
        return [c for c in text if not c.isspace()]
    return text.split()


def isolate(
    channel: Annotated[
        str,
        typer.Option(
            help="relay (a message channel) or http-path, http-query, http-host, "
            "http-body, http-sni, http-dns (http_keyword in one placement)."
        ),
    ],
    text: Annotated[Path, typer.Option(help="UTF-8 file with the blocked message.")],
    helper: Annotated[
        list[str] | None,
        typer.Option(
            help="Helper URL (the relay channel's server) (default: config probe.helpers)."
        ),
    ] = None,
    results: ResultsOption = None,
    config: ConfigOption = None,
    vantage: Annotated[
        str | None,
        typer.Option(help="Vantage name (default: config vantage.name, else 'default')."),
    ] = None,
    budget: Annotated[int, typer.Option(min=1, help="Most tests (messages) to spend.")] = 400,
    split: Annotated[
        str,
        typer.Option(
            help="auto | words | chars (chars: the rule as substrings of an unspaced text; "
            "auto picks it for one non-ASCII token)."
        ),
    ] = "auto",
    delivery_deadline: Annotated[
        float, typer.Option(min=0.1, help="Seconds to wait for each message.")
    ] = 60.0,
    residual_window: Annotated[
        float | None,
        typer.Option(
            min=0.0, help="http-*: seconds a triggered endpoint stays tainted (default: 90)."
        ),
    ] = None,
    keyword_tries: Annotated[
        int | None,
        typer.Option(min=1, max=20, help="http-*: tries of a failing request (default: 5)."),
    ] = None,
    all_rules: Annotated[
        bool,
        typer.Option(
            "--all-rules",
            help="Unspaced text: find every rule, not only one (one test more per minimal "
            "hitting set of the rules found) (default: one rule, as Citizen Lab's method). "
            "Word messages always get every rule.",
        ),
    ] = False,
    sender: Annotated[
        str | None,
        typer.Option(
            help="relay: the sending account ([accounts.NAME]; with --receiver) "
            "(default: one anonymous mailbox)."
        ),
    ] = None,
    receiver: Annotated[
        str | None,
        typer.Option(
            help="relay: the receiving account ([accounts.NAME]; with --sender) "
            "(default: one anonymous mailbox)."
        ),
    ] = None,
) -> None:
    """Find the minimal keyword combination(s) that get a message blocked."""
    from probes.cli import EXIT_FAILURE, _config, fail  # here: probes.cli imports this module

    cfg = _config(config)
    try:
        message = text.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        fail(f"--text {text}: cannot read: {exc}")
    if split not in ("auto", "words", "chars"):
        fail(f"--split {split!r}: choose auto, words or chars")
    words = split_words(message, split)
    if not words:
        fail(f"--text {text}: no words")
    from probes.consent import require_consent

    if problem := require_consent(cfg):
        fail(problem)
    from probes.channels.base import ChannelError
    from probes.measurement import Scrubber
    from probes.nettests.base import ProbeContext, SetupError
    from probes.nettests.keyword_isolation import make_tester
    from probes.ownip import local_addresses
    from probes.run_command import locate_vantage

    helpers = list(helper or cfg.probe.helpers)
    where = locate_vantage(
        cfg, helpers=helpers, resolver=cfg.probe.resolver, ca_file=cfg.probe.ca_file, fail=fail
    )
    options = {"residual_window": residual_window, "keyword_tries": keyword_tries}
    ctx = ProbeContext(
        vantage=vantage or cfg.vantage.name,
        probe_cc=where.probe_cc,
        probe_asn=where.probe_asn,
        probe_network_name=where.probe_network_name,
        helpers=helpers,
        timeout=cfg.probe.timeout,
        ca_file=cfg.probe.ca_file or None,
        scrubber=Scrubber([*cfg.vantage.own_addresses, *local_addresses(), *where.scrub]),
        options={k: v for k, v in options.items() if v is not None},
    )
    try:
        if sender or receiver:
            tester = _account_tester(cfg, channel, sender, receiver, ctx, delivery_deadline)
        else:
            tester = make_tester(channel, ctx, deadline=delivery_deadline)
    except (KeyError, ChannelError, ValueError) as exc:
        fail(str(exc.args[0] if exc.args else exc))
    try:
        summary = asyncio.run(
            run_isolation(
                tester,
                words,
                results=results or Path(cfg.probe.results),
                vantage=ctx.vantage,
                probe_cc=ctx.probe_cc,
                probe_asn=ctx.probe_asn,
                probe_network_name=ctx.probe_network_name,
                scrubber=ctx.scrubber,
                budget=budget,
                text=message.strip() if unspaced(message, split) else None,
                all_rules=all_rules,
            )
        )
    except SetupError as exc:
        fail(str(exc))
    rules = " | ".join("+".join(r) for r in summary["rules"]) or "none"
    print(
        f"isolate: {len(words)} words, {summary['tests']} tests, rules: {rules}"
        f"{'' if summary['complete'] else ' (incomplete: ' + str(summary['stopped_by']) + ')'}"
    )
    raise typer.Exit(0 if summary["complete"] else EXIT_FAILURE)


def _account_tester(
    cfg: Any, channel: str, sender: str | None, receiver: str | None, ctx: Any, deadline: float
) -> Any:
    """A relay tester from one configured account to another (the delivery matrix's cells)."""
    from probes.accounts import account_pair, load_accounts
    from probes.channels.relay import RelayChannel
    from probes.nettests.keyword_isolation import DeliveryTester

    ends = account_pair(load_accounts(cfg), sender, receiver, channel)
    pair = RelayChannel.between(*ends, ctx.helpers, ctx.ca_file)
    return DeliveryTester(pair, deadline, 0.25)


async def run_isolation(
    tester: Tester,
    words: list[str],
    *,
    results: Path,
    vantage: str,
    probe_cc: str = "ZZ",
    probe_asn: str = "AS0",
    probe_network_name: str = "",
    scrubber: Scrubber | None = None,
    budget: int = 400,
    text: str | None = None,
    all_rules: bool = False,
) -> dict[str, Any]:
    """Search with `tester` as the oracle; store every test and the result; return the result.

    With `text` (an unspaced message: Chinese), the components of a rule are substrings of it
    (probes.isolation_text, Citizen Lab's method): each test sends fragments of the text, and
    `words` is ignored; one rule is searched (as Citizen Lab's algorithm does), every rule with
    `all_rules`. Otherwise the rules are sets of `words` (probes.isolation), every one of them.
    """
    from probes.isolation import IsolationResult
    from probes.isolation import isolate as search
    from probes.isolation_text import isolate_text
    from probes.measurement import (
        Measurement,
        base_annotations,
        new_measurement_uid,
        new_report_id,
        ooni_time,
    )
    from probes.measurement import Scrubber as _Scrubber
    from probes.store import ReportManifest, ResultsStore

    scrub = scrubber or _Scrubber()

    store = ResultsStore(results)
    now = datetime.now(UTC)
    run_id = secrets.token_hex(8)

    def open_report(test_name: str) -> tuple[ReportManifest, Any]:
        manifest = ReportManifest(
            report_id=new_report_id(test_name, probe_cc, probe_asn, now),
            test_name=test_name,
            vantage=vantage,
            date=now.strftime("%Y-%m-%d"),
            test_start_time=ooni_time(now),
            options={"isolation_run": run_id},
        )
        return manifest, store.open_report(manifest)

    def build(manifest: ReportManifest, version: str, input_: str, keys: dict[str, Any],
              started: datetime, runtime: float) -> Measurement:  # fmt: skip
        # Every measurement through the scrubber, as the runner does (the words are the user's
        # text, and a reply may reflect our address).
        return scrub.scrub(Measurement(
            test_name=manifest.test_name,
            test_version=version,
            input=input_,
            report_id=manifest.report_id,
            measurement_uid=new_measurement_uid(manifest.test_name, probe_cc, started),
            probe_cc=probe_cc,
            probe_asn=probe_asn,
            probe_network_name=probe_network_name,
            test_start_time=manifest.test_start_time,
            measurement_start_time=ooni_time(started),
            test_runtime=round(runtime, 6),
            annotations=base_annotations(vantage),
            test_keys=keys,
        ))  # fmt: skip

    tests_manifest, tests_writer = open_report(tester.test_name)
    step = 0
    evidence: Counter[tuple[str, str | None]] = Counter()

    async def oracle(chosen: list[str]) -> bool | None:
        nonlocal step
        step += 1
        started, t0 = datetime.now(UTC), time.monotonic()
        keys = await tester.test(chosen)
        keys = {"isolation": {"run_id": run_id, "step": step, "words": chosen}, **keys}
        line = build(tests_manifest, tester.test_version, " ".join(chosen), keys, started,
                     time.monotonic() - t0)  # fmt: skip
        tests_writer.append(line)
        blocking = keys["blocking"]
        if blocking not in (None, False):
            evidence[(blocking, keys.get("blocking_detail"))] += 1
        return None if blocking is None else blocking is not False

    started, t0 = datetime.now(UTC), time.monotonic()
    try:
        if text is not None:
            words = [text]
            one = await isolate_text(text, oracle, budget=budget, all_rules=all_rules)
            found = IsolationResult(
                rules=one.rules,
                tests=one.tests,
                complete=one.complete,
                blocked=one.blocked,
                stopped_by=one.stopped_by,
            )
        else:
            found = await search(words, oracle, budget=budget)
    finally:
        tests_writer.close()
        await tester.close()
    layer, detail = evidence.most_common(1)[0][0] if evidence else (None, None)
    summary: dict[str, Any] = {
        "isolation_run": run_id,
        "mode": "substrings" if text is not None else "words",
        "words": words,
        "rules": found.rules,
        "tests": found.tests,
        "complete": found.complete,
        "stopped_by": found.stopped_by,
        "message_blocked": found.blocked,
        "unconfirmed": found.unconfirmed,
        "tests_report_id": tests_manifest.report_id,
        "channel": tester.describe(),
        # the layer and evidence most of the blocked tests showed
        "blocking": (layer if found.rules else False) if found.complete else None,
        "blocking_detail": detail if found.rules else None,
    }
    result_manifest, result_writer = open_report("keyword_isolation")
    with result_writer:
        result_writer.append(
            build(
                result_manifest,
                ISOLATION_VERSION,
                " ".join(words),
                summary,
                started,
                time.monotonic() - t0,
            )
        )
    summary["report_id"] = result_manifest.report_id
    return summary
