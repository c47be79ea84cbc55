"""Skips for a missing package or program, which become failures under CI.

A developer's machine without chromium or Dovecot may skip the tests that need them. CI
(`CI=true`, set by .ci/run) installs everything with `scripts/install.sh --dev`, so there a
missing package is a broken install, and a skip would hide it: tests/conftest.py turns every
skip whose reason starts with PREFIX into a failure when CI is set.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest

PREFIX = "missing: "


def in_ci() -> bool:
    """True when the environment says CI (`CI=true`, as most CI services set it)."""
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def reason(what: str) -> str:
    """A skip reason CI reads as a failure."""
    return PREFIX + what


def skip_if(condition: bool, what: str) -> pytest.MarkDecorator:
    """`pytest.mark.skipif` for a missing package or program."""
    return pytest.mark.skipif(condition, reason=reason(what))


def skip(what: str) -> NoReturn:
    """Skip now for a missing package or program."""
    pytest.skip(reason(what))


def capture_skip_if(unavailable: str | None) -> pytest.MarkDecorator:
    """Skip when packet capture is unavailable: for want of root it is a plain skip, for want
    of scapy or libpcap (which the install brings) a missing package."""
    if unavailable and "root" not in unavailable:
        return skip_if(True, f"packet capture: {unavailable}")
    return pytest.mark.skipif(unavailable is not None, reason=f"packet capture: {unavailable}")
