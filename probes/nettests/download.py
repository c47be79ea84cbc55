"""download: is this name's traffic throttled or frozen, compared with another name's?

The input is an https URL of a large object. The probe resolves its host (the probe's
resolver, or ``--sni-endpoint IP:PORT``) and downloads the object from that address
``rounds`` times with the URL's host as TLS SNI (the target) and as many times with a control
SNI (``--control-sni``, default example.com), alternately: same server, same path and Host
header, same size, only the name in the ClientHello differs. A censor that throttles or
freezes by SNI (Russia's throttling of Twitter in 2021, its TSPU freezing TLS to foreign
hosting after 16-20 KB) slows or stops only the target. This is the comparison OONI proposes
for SNI-based throttling: an offending and an innocuous SNI to the same server, certificate
verification off for the innocuous one (probe-cli docs/design/dd-007-throttling.md, "Future
Work"); the target's certificate is verified as usual.

Each transfer (probes.net.transfer) records its bytes-received curve as OONI's
``bytes_received_cumulative`` network events, how it ended (complete, time cap, stalled,
failure) and its rate; download_analysis decides from these test keys alone.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import urlsplit

from probes.net.addresses import is_ip, parse_host_port
from probes.net.dns import resolve_retrying
from probes.net.transfer import timed_get
from probes.nettests.base import Nettest, ProbeContext, SetupError
from probes.nettests.download_analysis import THROTTLE_RATIO, analyze

DEFAULT_CONTROL_SNI = "example.com"  # as sni_blocking and dnscheck
DEFAULT_ROUNDS = 2  # target and control transfers each
DEFAULT_MAX_BYTES = 1 << 20  # per transfer (OONI's web_connectivity caps bodies at 1 << 19)
DEFAULT_FETCH_SECONDS = 10.0  # per transfer (OONI: ten seconds for HTTP after the handshake)
# No byte for this long and a transfer has stalled. Linux's first retransmission timeouts
# add up to 3 s (0.2 + 0.4 + 0.8 + 1.6) only after four losses of the same segment in a row.
DEFAULT_STALL_SECONDS = 4.0
RESOLVE_SECONDS = 5.0  # at most a fifth of the budget


class Download(Nettest):
    name = "download"
    version = "0.1.0"

    def __init__(self, ctx: ProbeContext) -> None:
        super().__init__(ctx)
        opts = ctx.options
        self.control_sni = str(opts.get("control_sni") or DEFAULT_CONTROL_SNI).lower()
        self.endpoint = opts.get("sni_endpoint") or None
        self.rounds = int(opts.get("download_rounds") or DEFAULT_ROUNDS)
        self.max_bytes = int(opts.get("max_bytes") or DEFAULT_MAX_BYTES)
        stall = float(opts.get("stall_seconds") or DEFAULT_STALL_SECONDS)
        fetch = float(opts.get("fetch_seconds") or DEFAULT_FETCH_SECONDS)
        # Every transfer fits the per-input budget, the lookup's share set aside; a short
        # budget shortens the stall window with it (at most half a transfer's time).
        self.resolve_seconds = min(RESOLVE_SECONDS, ctx.timeout * 0.2)
        share = (ctx.timeout - self.resolve_seconds) / (2 * max(1, self.rounds))
        self.fetch_seconds = max(0.5, min(fetch, share))
        self.stall_seconds = min(stall, self.fetch_seconds / 2)

    @classmethod
    def default_budget(cls, options: dict[str, Any]) -> float | None:
        rounds = int(options.get("download_rounds") or DEFAULT_ROUNDS)
        fetch = float(options.get("fetch_seconds") or DEFAULT_FETCH_SECONDS)
        return 2 * rounds * fetch + RESOLVE_SECONDS + 5.0

    async def setup(self) -> None:
        if self.rounds < 1 or self.max_bytes < 1 or self.stall_seconds <= 0:
            raise SetupError("download: rounds, max_bytes and stall_seconds must be positive")
        if self.endpoint:
            try:
                parse_host_port(str(self.endpoint), 443)
            except ValueError as exc:
                raise SetupError(f"download --sni-endpoint {self.endpoint!r}: {exc}") from exc

    @classmethod
    def input_problem(cls, input_: str) -> str | None:
        parts = urlsplit(input_.strip())
        if parts.scheme != "https" or not parts.hostname:
            return "download needs an https:// URL (the control differs from it by SNI alone)"
        if is_ip(parts.hostname):
            return "download needs a name in the URL (it is the SNI under test)"
        return None

    async def measure(self, input_: str | None) -> dict[str, Any]:
        assert input_ is not None  # the runner checked it with input_problem()
        parts = urlsplit(input_.strip())
        host = (parts.hostname or "").lower()
        port = parts.port or 443
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        t_zero = time.monotonic()
        keys: dict[str, Any] = {
            "sni": host,
            "control_sni": self.control_sni,
            "address": None,
            "queries": [],
            "failure": None,
            "rounds": self.rounds,
            "max_bytes": self.max_bytes,
            "fetch_seconds": self.fetch_seconds,
            "stall_seconds": self.stall_seconds,
            "throttle_ratio": THROTTLE_RATIO,
            "transfers": [],
        }
        ip = await self._address(host, port, keys, t_zero)
        if ip is None:
            keys.update(blocking=None, blocking_detail=None)
            return keys
        for _ in range(self.rounds):
            for role, sni in (("target", host), ("control", self.control_sni)):
                keys["transfers"].append(
                    await timed_get(
                        ip,
                        port if not self.endpoint else keys["x_endpoint_port"],
                        sni=sni,
                        host=parts.netloc.rsplit("@", 1)[-1],
                        path=path,
                        role=role,
                        ca_file=self.ctx.ca_file,
                        verify=role == "target",
                        max_bytes=self.max_bytes,
                        fetch_seconds=self.fetch_seconds,
                        stall_seconds=self.stall_seconds,
                        t_zero=t_zero,
                    )
                )
        verdict = analyze(keys)
        keys["x_analysis"] = verdict.as_dict()
        keys["blocking"], keys["blocking_detail"] = verdict.blocking, verdict.blocking_detail
        return keys

    async def _address(
        self, host: str, port: int, keys: dict[str, Any], t_zero: float
    ) -> str | None:
        """The server's address: --sni-endpoint, else the first from the probe's resolver."""
        if self.endpoint:
            ip, endpoint_port = parse_host_port(str(self.endpoint), port)
            keys["x_endpoint_port"] = endpoint_port
            keys["address"] = ip
            return ip
        kind = "A" if self.ctx.resolver else "ANY"
        # A lost datagram must not decide the lookup: the query is sent again (dnscheck too).
        result = await resolve_retrying(
            host, query_type=kind, resolver=self.ctx.resolver, timeout=self.resolve_seconds,
            t_zero=t_zero,
        )  # fmt: skip
        keys["queries"] = result.queries
        addrs = sorted(result.addrs, key=lambda a: ":" in a)  # IPv4 first
        if not addrs:
            keys["failure"] = result.failure or "dns_no_answer"
            return None
        keys["address"] = addrs[0]
        return addrs[0]
