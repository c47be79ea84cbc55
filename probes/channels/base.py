"""What every channel adapter offers message_delivery and keyword isolation.

A channel has a sending side and a receiving side (possibly accounts at different vantages).
`send` reports what the platform told the sender; `fetch` returns the messages the receiver
got since the last call. Credentials come from the environment or the config file, never from
the command line, and never reach a measurement: adapters keep them out of `describe()`.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any


class ChannelError(Exception):
    """The channel cannot be used with these settings (missing URL, credentials...)."""


@dataclass
class SendReceipt:
    """The sender's view of one message."""

    accepted: bool  # the platform took the message (it may still drop it silently)
    failure: str | None = None  # OONI failure string when the network failed
    status_code: int | None = None
    refusal: str | None = None  # what the platform said when it refused the message
    message_id: str | None = None
    t: float = 0.0


@dataclass
class Received:
    """One message as the receiver got it."""

    message_id: str
    text: str


class Channel(abc.ABC):
    """One messaging system, seen from a sender and a receiver."""

    name: str = ""

    @abc.abstractmethod
    async def send(self, text: str) -> SendReceipt:
        """Send `text` from the sender to the receiver."""

    @abc.abstractmethod
    async def fetch(self) -> list[Received]:
        """Messages the receiver got since the previous fetch (raises ChannelError if it cannot
        reach its side at all)."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""

    def describe(self) -> dict[str, Any]:
        """What may be stored in a measurement about this channel (no secrets)."""
        return {"name": self.name}
