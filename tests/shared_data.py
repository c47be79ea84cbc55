"""Where the shared reference data lives: `../shared/data` beside the clone, unless
CENSORSCOPE_SHARED_DATA says otherwise. Tests read it there and never copy it."""

from __future__ import annotations

import os
from pathlib import Path

SHARED_DATA = Path(
    os.environ.get("CENSORSCOPE_SHARED_DATA")
    or Path(__file__).resolve().parents[2] / "shared" / "data"
)
