"""Run an asyncio server on its own event loop in a background thread.

Tests run their own event loops (anyio's pytest plugin, asyncio.run); a server
living on a dedicated loop in a thread can outlive them and be shared by a whole
session, and it keeps answering while a test blocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine
from typing import Any, Protocol, TypeVar

T = TypeVar("T")


class AsyncServer(Protocol):
    async def start(self) -> None: ...
    async def stop(self) -> None: ...


class ServerThread:
    """Owns one event loop thread; start()/stop() servers on it from synchronous code."""

    def __init__(self, name: str = "loopback") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()
        self._servers: list[AsyncServer] = []

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        """Run a coroutine on the server loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(self, server: AsyncServer) -> Any:
        self.call(server.start())
        self._servers.append(server)
        return server

    def close(self) -> None:
        for server in reversed(self._servers):
            # A server that fails to stop must not keep the others running.
            with contextlib.suppress(Exception):
                self.call(server.stop(), timeout=5)
        self._servers.clear()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self.loop.close()

    def __enter__(self) -> ServerThread:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
