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
from typing import Annotated, Any

import typer

from probes.nettests.keyword_isolation import Tester

ISOLATION_VERSION = "0.1.0"


def register(app: typer.Typer) -> None:
    app.command()(isolate)


def split_words(text: str, mode: str) -> list[str]:
    """Words to isolate among: whitespace tokens, or characters for unspaced scripts."""
    if mode == "chars" or (mode == "auto" and len(text.split()) == 1 and not text.isascii()):
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
        list[str] | None, typer.Option(help="Helper URL (the relay channel's server).")
    ] = None,
    results: Annotated[Path | None, typer.Option(help="Results directory.")] = None,
    config: Annotated[Path | None, typer.Option(help="TOML configuration file.")] = None,
    vantage: Annotated[str | None, typer.Option(help="Vantage name.")] = None,
    budget: Annotated[int, typer.Option(min=1, help="Most tests (messages) to spend.")] = 400,
    split: Annotated[str, typer.Option(help="auto | words | chars")] = "auto",
    delivery_deadline: Annotated[
        float, typer.Option(min=0.1, help="Seconds to wait for each message.")
    ] = 60.0,
    residual_window: Annotated[
        float | None,
        typer.Option(min=0.0, help="http-*: seconds a triggered endpoint stays tainted."),
    ] = None,
    keyword_tries: Annotated[
        int | None, typer.Option(min=1, max=20, help="http-*: tries of a failing request.")
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
    from probes.channels.base import ChannelError
    from probes.nettests.base import ProbeContext, SetupError
    from probes.nettests.keyword_isolation import make_tester

    options = {"residual_window": residual_window, "keyword_tries": keyword_tries}
    ctx = ProbeContext(
        vantage=vantage or cfg.vantage.name,
        helpers=list(helper or cfg.probe.helpers),
        timeout=cfg.probe.timeout,
        ca_file=cfg.probe.ca_file or None,
        options={k: v for k, v in options.items() if v is not None},
    )
    try:
        tester = make_tester(channel, ctx, deadline=delivery_deadline)
    except (KeyError, ChannelError) as exc:
        fail(str(exc.args[0] if exc.args else exc))
    try:
        summary = asyncio.run(
            run_isolation(
                tester,
                words,
                results=results or Path(cfg.probe.results),
                vantage=vantage or cfg.vantage.name,
                probe_cc=cfg.vantage.probe_cc,
                probe_asn=cfg.vantage.probe_asn,
                budget=budget,
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


async def run_isolation(
    tester: Tester,
    words: list[str],
    *,
    results: Path,
    vantage: str,
    probe_cc: str = "ZZ",
    probe_asn: str = "AS0",
    budget: int = 400,
) -> dict[str, Any]:
    """Search with `tester` as the oracle; store every test and the result; return the result."""
    from probes.isolation import isolate as search
    from probes.measurement import (
        Measurement,
        base_annotations,
        new_measurement_uid,
        new_report_id,
        ooni_time,
    )
    from probes.store import ReportManifest, ResultsStore

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
        return Measurement(
            test_name=manifest.test_name,
            test_version=version,
            input=input_,
            report_id=manifest.report_id,
            measurement_uid=new_measurement_uid(manifest.test_name, probe_cc, started),
            probe_cc=probe_cc,
            probe_asn=probe_asn,
            test_start_time=manifest.test_start_time,
            measurement_start_time=ooni_time(started),
            test_runtime=round(runtime, 6),
            annotations=base_annotations(vantage),
            test_keys=keys,
        )

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
        found = await search(words, oracle, budget=budget)
    finally:
        tests_writer.close()
        await tester.close()
    layer, detail = evidence.most_common(1)[0][0] if evidence else (None, None)
    summary: dict[str, Any] = {
        "isolation_run": run_id,
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
