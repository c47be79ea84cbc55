"""Small helpers shared by the archival records of every primitive."""

from __future__ import annotations

import base64
import time


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
