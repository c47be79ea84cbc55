"""getaddrinfo on threads of its own, for code that resolves names a stranger chose.

asyncio's loop.getaddrinfo runs on the loop's default executor: min(32, cores + 4) threads,
6 on a 2-core helper, shared with everything else that runs in a thread. A lookup is not
cancellable once it runs (glibc blocks until its own timeouts, ~10 s per attempt), so six
names whose servers never answer starve every lookup after them, long after their callers
have timed out (issue 13). The control helper resolves names on a pool of its own instead:
a fixed number of threads, a lookup counted busy until its thread really returns, and a
lookup that finds every thread busy fails at once (as a timeout) instead of queueing.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from probes.net import failures as F

Lookup = Callable[..., list[tuple[Any, ...]]]


class ResolverPool:
    """A bounded set of resolver threads; `lookup` is socket.getaddrinfo unless a test
    needs a slow one."""

    def __init__(self, threads: int, lookup: Lookup = socket.getaddrinfo) -> None:
        if threads < 1:
            raise ValueError(f"a resolver pool needs at least one thread, got {threads}")
        self.threads = threads
        self._lookup = lookup
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix="resolver")
        self._lock = threading.Lock()
        self._busy = 0

    @property
    def busy(self) -> int:
        """Lookups whose thread has not returned yet, their callers waiting or not."""
        return self._busy

    def _done(self, _future: Future[Any]) -> None:
        with self._lock:
            self._busy -= 1

    async def getaddrinfo(
        self, host: str, port: int | None, *, family: int = 0, type: int = 0
    ) -> list[tuple[Any, ...]]:
        """socket.getaddrinfo on one of the pool's threads; NetworkFailure
        (generic_timeout_error) when none is free."""
        with self._lock:
            if self._busy >= self.threads:
                raise F.NetworkFailure(F.GENERIC_TIMEOUT_ERROR, "every resolver thread is busy")
            self._busy += 1
        future = self._executor.submit(self._lookup, host, port, family, type)
        future.add_done_callback(self._done)  # on return, or on a cancel before it ran
        return await asyncio.wrap_future(future)

    def close(self) -> None:
        """Let the threads go: a running lookup ends on its own, a queued one is cancelled."""
        self._executor.shutdown(wait=False, cancel_futures=True)
