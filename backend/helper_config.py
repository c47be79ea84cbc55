"""Settings of the control helper, in one frozen object shared by the app and the measurer."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property

from backend.ssrf import AddressGuard
from probes.net.resolver_pool import ResolverPool


@dataclass(frozen=True)
class HelperConfig:
    """What an operator can tune; defaults follow oohelperd where it has one.

    `resolver` ("IP[:PORT]") sends the helper's DNS queries to that server over UDP instead
    of the system resolver (the lab and the tests need it). `allow_private` lets the helper
    connect to private, loopback, link-local and other special addresses; `exempt_networks`
    opens only the listed CIDRs (e.g. a lab's "internet" subnet) and keeps the rest shut.
    `asn_lookup` (IP -> ASN, None or 0 when unknown) fills `ip_info`'s `asn`, as oohelperd does
    from its MaxMind database; without one every `asn` is 0 (oohelperd's AS0 for "unknown").
    """

    resolver: str | None = None
    allow_private: bool = False
    timeout: float = 10.0  # seconds per step (DNS, each connect/handshake, the whole GET)
    body_cap: int = 1 << 24  # bytes of a measured page kept, like oohelperd's 16 MiB
    max_request_bytes: int = 1 << 24  # control request bodies, like oohelperd
    max_tcp_endpoints: int = 64  # endpoints a probe may name in one request
    ca_file: str | None = None  # extra trust anchors (tests, the lab); None = system store
    max_inflight: int = 100  # concurrent control requests before answering 503
    exempt_networks: tuple[str, ...] = field(default_factory=tuple)
    resolver_threads: int = 64  # the system resolver's own threads (probes/net/resolver_pool.py)
    asn_lookup: Callable[[str], int | None] | None = None

    def __post_init__(self) -> None:
        if self.timeout <= 0:
            raise ValueError(f"timeout must be positive, got {self.timeout}")
        for name in (
            "body_cap",
            "max_request_bytes",
            "max_tcp_endpoints",
            "max_inflight",
            "resolver_threads",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        self.guard  # noqa: B018 - validate the exempt networks now, not on the first request

    @cached_property
    def resolver_pool(self) -> ResolverPool:
        """Threads for the system resolver that nothing else competes for."""
        return ResolverPool(self.resolver_threads)

    def close_resolver_pool(self) -> None:
        """Shut the pool's threads down when an app stops; a later app gets a new pool."""
        pool = self.__dict__.pop("resolver_pool", None)
        if pool is not None:
            pool.close()

    @cached_property
    def guard(self) -> AddressGuard:
        """The address guard these settings describe."""
        return AddressGuard.build(self.allow_private, self.exempt_networks)
