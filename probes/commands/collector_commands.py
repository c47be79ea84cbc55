"""`censorscope collector`, `censorscope upload` and `censorscope schedule run|list`.

The three commands that move measurements from scheduled probes at many vantages into one
store: the collector receives, upload sends, schedule runs nettests and then uploads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from probes.cli import EXIT_BAD_INPUT, EXIT_FAILURE, _config, fail
from probes.cli_options import ConfigOption, ResultsOption


def register(app: typer.Typer) -> None:
    app.command()(collector)
    app.command()(upload)
    schedule_app = typer.Typer(help="The scheduling daemon.", no_args_is_help=True)
    schedule_app.command("run")(schedule_run)
    schedule_app.command("list")(schedule_list)
    app.add_typer(schedule_app, name="schedule")


def collector(
    data: Annotated[Path, typer.Option(help="Directory of the collector's store.")],
    tokens: Annotated[Path, typer.Option(help="File of 'VANTAGE TOKEN' lines.")],
    listen: Annotated[str, typer.Option(help="HOST:PORT to listen on.")] = "127.0.0.1:8081",
    max_measurement_bytes: Annotated[
        int, typer.Option(min=1024, help="Largest submission accepted (413 above it).")
    ] = 8 * 1024 * 1024,
) -> None:
    """Serve the measurement collector (OONI collector protocol + bearer tokens)."""
    from backend.collector import CollectorConfig, serve
    from backend.collector_tokens import TokenFile, TokenFileError
    from backend.helper import parse_listen
    from probes.secret_files import loose_permissions

    try:
        parse_listen(listen)
    except ValueError as exc:
        fail(str(exc))
    try:
        TokenFile(tokens)  # check now: a bad tokens file is bad input, not a crash later
    except TokenFileError as exc:
        fail(str(exc))
    if warning := loose_permissions(tokens, "the collector's tokens file"):
        typer.echo(warning, err=True)
    serve(
        listen,
        CollectorConfig(data=data, tokens=tokens, max_measurement_bytes=max_measurement_bytes),
    )


def upload(
    collector: Annotated[
        str | None, typer.Option(help="Collector base URL (default: from the config).")
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(
            help="Deprecated: visible in ps. Use CENSORSCOPE_UPLOAD_TOKEN or --token-file "
            "(default: none)."
        ),
    ] = None,
    token_file: Annotated[
        Path | None,
        typer.Option(help="File holding the bearer token (default: [upload] token_file)."),
    ] = None,
    results: ResultsOption = None,
    config: ConfigOption = None,
    attempts: Annotated[
        int, typer.Option(min=1, max=100, help="Tries per request before giving up.")
    ] = 8,
) -> None:
    """Upload the measurements not yet uploaded to a collector; safe to rerun at any time.

    Exit status: 0 all sent; 1 something left for the next run or rejected by the collector;
    2 bad options, or the collector refused the token (the measurements stay pending).
    """
    import asyncio

    from probes.upload import UploadError, settings_from_config, upload_store

    cfg = _config(config)
    try:
        settings, warnings = settings_from_config(
            cfg, collector=collector, token=token, token_file=token_file
        )
    except UploadError as exc:
        fail(str(exc), EXIT_BAD_INPUT if exc.bad_input else EXIT_FAILURE)
    for warning in warnings:
        typer.echo(warning, err=True)
    settings.attempts = attempts
    store = results or Path(cfg.probe.results)
    try:
        summary = asyncio.run(upload_store(store, settings))
    except UploadError as exc:
        fail(str(exc), EXIT_BAD_INPUT if exc.bad_input else EXIT_FAILURE)
    typer.echo(summary.describe())
    for rejection in summary.rejections:
        typer.echo(f"rejected: {rejection}", err=True)
    if summary.credential:
        fail(f"the collector refused the token: {summary.credential}", EXIT_BAD_INPUT)
    raise typer.Exit(0 if summary.ok else EXIT_FAILURE)


def schedule_run(
    config: Annotated[Path, typer.Option(help="TOML configuration with [[schedule.jobs]].")],
) -> None:
    """Run the scheduling daemon until interrupted."""
    from probes.consent import require_consent
    from probes.schedule import ScheduleError, run_daemon

    cfg = _config(config)
    if problem := require_consent(cfg):
        fail(problem)
    try:
        run_daemon(cfg)
    except ScheduleError as exc:
        fail(str(exc))


def schedule_list(
    config: Annotated[Path, typer.Option(help="TOML configuration with [[schedule.jobs]].")],
) -> None:
    """Show the configured jobs and when each runs next."""
    from probes.schedule import ScheduleError, list_jobs

    cfg = _config(config)
    try:
        for line in list_jobs(cfg):
            typer.echo(line)
    except ScheduleError as exc:
        fail(str(exc))
