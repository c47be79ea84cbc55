"""What every nettest shares: the context it runs in and the interface the runner drives.

A nettest turns one input into `test_keys`; the runner wraps them into a Measurement with the
base keys, scrubs the probe's addresses and stores it.  Network failures go *into* test_keys;
`measure` raises only when there is nothing worth storing (as probe-cli's Measurer does).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any

# `censorscope run` exits with EXIT_HELPER_UNREACHABLE (3) when no control helper answered:
# every input is still measured and stored, verdicts null (nettests import it from here).
from probes.exit_status import EXIT_HELPER_UNREACHABLE as EXIT_HELPER_UNREACHABLE
from probes.measurement import Scrubber
from probes.net.addresses import parse_host_port


@dataclass
class ProbeContext:
    """Settings one run of a nettest shares across inputs."""

    vantage: str = "default"
    probe_cc: str = "ZZ"
    probe_asn: str = "AS0"
    probe_network_name: str = ""
    # The resolver the base keys name (the configured one, else the system's as learned by a
    # whoami lookup; "" unknown) and its network (probes/vantage.py).
    resolver_ip: str = ""
    resolver_asn: str = "AS0"
    resolver_network_name: str = ""
    resolver: str | None = None
    helpers: list[str] = field(default_factory=list)
    timeout: float = 30.0
    ca_file: str | None = None
    fingerprint_files: list[str] = field(default_factory=list)
    scrubber: Scrubber = field(default_factory=Scrubber)
    options: dict[str, Any] = field(default_factory=dict)
    # The config's messaging accounts by name (probes/accounts.py), for message_delivery.
    accounts: dict[str, Any] = field(default_factory=dict)
    # Extra annotations of every measurement (probes.provenance: hashes of the lists used).
    annotations: dict[str, str] = field(default_factory=dict)


class SetupError(Exception):
    """The nettest cannot start with these settings (bad usage or input: exit status 2)."""


class Nettest(abc.ABC):
    """One measurement kind. Subclasses set `name` and `version` and implement `measure`."""

    name: str = ""
    version: str = ""
    # Whether the nettest needs an input per measurement (web_connectivity does).
    needs_input: bool = True

    def __init__(self, ctx: ProbeContext) -> None:
        self.ctx = ctx
        # Warnings the CLI prints once at the end (e.g. "control helper unreachable").
        self.warnings: list[str] = []
        # The run's exit status when every input was measured (EXIT_HELPER_UNREACHABLE: no
        # control, verdicts null); setup sets it.
        self.exit_status = 0

    async def setup(self) -> None:  # noqa: B027 - optional hook
        """Prepare shared resources (clients, helper checks) before the first input."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release shared resources."""

    @abc.abstractmethod
    async def measure(self, input_: str | None) -> dict[str, Any]:
        """Measure one input and return its test_keys (with `blocking` and `blocking_detail`)."""

    @classmethod
    def default_budget(cls, options: dict[str, Any]) -> float | None:
        """The per-input budget this nettest needs when --timeout is unset (None: the
        probe's, `probe.timeout`); a paced nettest computes it from its pacing."""
        return None

    def pacing(self, input_: str | None) -> tuple[str, int] | None:
        """The server an input occupies and how many inputs may occupy it at once, when the
        runner's per-host pacing (the input's host) is not the right queue: the runner waits
        for the slot before the input's budget starts, so a queue cannot eat it."""
        return None

    @classmethod
    def input_problem(cls, input_: str) -> str | None:
        """Why an input cannot be measured by this nettest (None: it can)."""
        return None

    def invalid_input_keys(self, problem: str) -> dict[str, Any]:
        """test_keys for an input this nettest cannot measure (a bad row must not stop a run)."""
        return {"failure": f"unknown_failure: {problem}", "blocking": None, "blocking_detail": None}

    def timeout_keys(self, input_: str | None, failure: str) -> dict[str, Any]:
        """test_keys for an input the runner had to abandon (its time budget ran out)."""
        return {"failure": failure, "blocking": None, "blocking_detail": None}

    @property
    def resolver_ip(self) -> str:
        """The resolver address written into the base keys (the system's when none is set)."""
        if not self.ctx.resolver:
            return self.ctx.resolver_ip
        return parse_host_port(self.ctx.resolver, 53)[0]
