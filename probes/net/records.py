"""Small helpers shared by the archival records of every primitive."""

from __future__ import annotations

import base64
import time
from typing import Any


def since(t_zero: float) -> float:
    """Seconds since ``t_zero`` (a time.monotonic() value), as OONI's relative t0/t."""
    return round(time.monotonic() - t_zero, 6)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def binary_data(data: bytes) -> dict[str, str]:
    """OONI's representation of bytes that are not text (df-001 "MaybeBinaryData")."""
    return {"format": "base64", "data": b64(data)}


def maybe_binary(data: bytes) -> str | dict[str, str]:
    """A str when ``data`` is valid UTF-8, else the base64 object, as df-001 specifies."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return binary_data(data)


class Transactions:
    """Transaction ids and tags as web_connectivity 0.5 records them.

    OONI's 0.5 joins a flow's TCP connect, TLS handshake and HTTP round trip by one
    ``transaction_id`` and tags each with ``depth=N`` (the redirect it belongs to),
    ``fetch_body=true|false`` (whether it was meant to fetch the page) and ``classic`` (its
    address came from the probe's own resolver). Whoever records a step asks here.
    """

    def __init__(self) -> None:
        self._next = 0
        self.depth = 0
        self.tcp_connect: list[dict[str, Any]] = []

    def new_id(self) -> int:
        self._next += 1
        return self._next

    def tags(
        self, *, fetch_body: bool | None = None, classic: bool = True, depth: int | None = None
    ) -> list[str]:
        out = ["classic"] if classic else []
        out.append(f"depth={self.depth if depth is None else depth}")
        if fetch_body is not None:
            out.append(f"fetch_body={'true' if fetch_body else 'false'}")
        return out
