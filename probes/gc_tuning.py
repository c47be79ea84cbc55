"""Garbage-collector settings for a measurement run.

A run keeps thousands of inputs in flight, and with them hundreds of thousands of live objects;
at CPython's default young-generation threshold (700 allocations) the collector rescanned them
every few inputs and took a quarter of the probe's CPU (dns_consistency on loopback, 8,000
names; docs/benchmarks.md). While a run goes on, what existed before it (modules, the
configuration, the nettest's clients) is frozen out of collections (gc.freeze) and the young
generation is collected every GC_YOUNG_THRESHOLD allocations: cyclic garbage then waits a few
MB at most.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

GC_YOUNG_THRESHOLD = 100_000


class _Tuning:
    """Reference-counted, so overlapping runs in one process (tests) restore the settings once,
    when the last one ends."""

    def __init__(self) -> None:
        self.users = 0
        self.saved: tuple[int, int, int] | None = None

    def acquire(self) -> None:
        if self.users == 0:
            self.saved = gc.get_threshold()
            gc.freeze()
            gc.set_threshold(max(GC_YOUNG_THRESHOLD, self.saved[0]), *self.saved[1:])
        self.users += 1

    def release(self) -> None:
        self.users -= 1
        if self.users == 0 and self.saved is not None:
            gc.set_threshold(*self.saved)
            gc.unfreeze()
            self.saved = None


_TUNING = _Tuning()


@contextmanager
def tuned_gc() -> Iterator[None]:
    """Run the block with the collector tuned for many objects in flight."""
    _TUNING.acquire()
    try:
        yield
    finally:
        _TUNING.release()
