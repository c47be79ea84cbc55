"""`censorscope verify DATASET`: re-derive a published dataset's findings and say if they hold.

Exit 0: every finding holds (and every file matches SHA256SUMS); 4 (EXIT_NOT_REPRODUCED): a
table of what differs; 2: not a dataset that can be verified (the message names the file).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from probes.cli import fail
from probes.commands.analysis_commands import Scheduler, Workers
from probes.exit_status import EXIT_NOT_REPRODUCED


def register(app: typer.Typer) -> None:
    """Add verify to the censorscope app."""

    @app.command()
    def verify(
        dataset: Annotated[Path, typer.Argument(help="Folder written by `censorscope publish`.")],
        limit: Annotated[
            int, typer.Option(min=1, help="Differences listed at most (the count is complete).")
        ] = 50,
        engine: Annotated[
            str,
            typer.Option(
                help="dask (the raw files as partitions on Dask tasks: in this process below "
                "256 MB, else a LocalCluster, or --scheduler's cluster) or pandas (one process, "
                "every row in memory); the same result."
            ),
        ] = "dask",
        scheduler: Scheduler = None,
        workers: Workers = None,
    ) -> None:
        """Re-derive a dataset's findings from its raw measurements; exit 4 if any changed."""
        from analysis.verify import DatasetError, render
        from analysis.verify import verify as run_verify
        from probes.commands.analysis_commands import engine_workers
        from probes.fingerprints import FingerprintError

        workers = engine_workers(engine, scheduler, workers)
        try:
            report = run_verify(dataset, engine=engine, workers=workers, scheduler=scheduler)
        except (DatasetError, FingerprintError) as exc:
            fail(str(exc))
        for line in render(report, limit):
            typer.echo(line)
        if not report.holds:
            raise typer.Exit(EXIT_NOT_REPRODUCED)
