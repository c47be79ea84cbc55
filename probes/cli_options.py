"""Options that several measuring commands share (`run`, `isolate`), declared once so their
help and shown defaults stay the same."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

ResultsOption = Annotated[
    Path | None,
    typer.Option(help="Results directory (default: config probe.results, else ./results)."),
]
ConfigOption = Annotated[
    Path | None,
    typer.Option(help="TOML configuration file (default: none, built-in defaults)."),
]
