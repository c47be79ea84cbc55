"""The verdict a nettest's pure analysis returns for one part of a measurement."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class Verdict:
    """OONI-style `blocking` and `blocking_detail`, and why, in words, for the stored keys."""

    blocking: str | bool | None
    blocking_detail: str | None = None
    why: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"blocking": self.blocking, "blocking_detail": self.blocking_detail, "why": self.why}
