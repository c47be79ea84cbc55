"""Fixtures for the censor lab: one lab per session, torn down even when tests fail.

`lab` (session) yields a running lab.topology.LabInfo for the bundled default scenario.
Tests that need it are skipped, with the reason, when this machine cannot run the lab.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from lab import addresses, topology
from tests import missing


def _skip_reason() -> str | None:
    problems = topology.missing_requirements()
    if not problems:
        return None
    reason = "censor lab unavailable: " + "; ".join(problems)
    # Without root the lab cannot run at all; as root, a missing tool or package (iptables,
    # netfilterqueue: scripts/install.sh --dev brings them) is a broken install, failed by CI.
    return reason if os.geteuid() != 0 else missing.reason(reason)


@pytest.fixture(scope="session")
def lab() -> Iterator[topology.LabInfo]:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    try:
        info = topology.up()
    except topology.LabError as exc:
        # Every requirement is here (else the skip above): under CI a lab that cannot start
        # is a broken lab, never a skip (a lab brought up twice once skipped 67 tests quietly).
        why = f"censor lab could not start here: {exc}"
        if missing.in_ci():
            pytest.fail(why)
        pytest.skip(why)
    try:
        yield info
    finally:
        topology.down()
        topology.down()  # idempotent
        leftover = topology.status()
        assert not leftover.namespaces, f"namespaces left behind: {leftover.namespaces}"
        assert not leftover.processes, f"processes left behind: {leftover.processes}"


class Spares:
    """Hands out fresh server addresses so residual taint from one test never hits another."""

    def __init__(self) -> None:
        self.next = 0

    def v4(self) -> str:
        self.next += 1
        return addresses.spare_v4(self.next)

    def v6(self) -> str:
        self.next += 1
        return addresses.spare_v6(self.next)


@pytest.fixture(scope="session")
def spares() -> Spares:
    return Spares()
