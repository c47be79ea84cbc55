"""The tests keyword isolation can run: a message through a channel, or an http_keyword request.

Each tester sends the chosen words once, with its controls, and returns the test_keys of one
measurement of its nettest (`blocking` says whether the words were blocked). Isolation
(probes.isolation) decides which words to try; the isolate command stores what comes back.
"""

from __future__ import annotations

from typing import Any, Protocol

from probes.nettests.base import ProbeContext
from probes.nettests.keyword_placements import PLACEMENTS

HTTP_PREFIX = "http-"


class Tester(Protocol):
    test_name: str
    test_version: str

    async def test(self, words: list[str]) -> dict[str, Any]: ...
    def describe(self) -> dict[str, Any]: ...
    async def close(self) -> None: ...


class DeliveryTester:
    """One message_delivery exchange (control, words, control) per test."""

    test_name = "message_delivery"

    def __init__(self, channel: Any, deadline: float, poll: float) -> None:
        from probes.nettests.message_delivery import MessageDelivery, Postman

        self.test_version = MessageDelivery.version
        self.channel = channel
        self.postman = Postman(channel, deadline, poll)

    async def test(self, words: list[str]) -> dict[str, Any]:
        from probes.nettests.message_delivery import deliver_once

        return {
            "channel": self.channel.describe(),
            **await deliver_once(self.postman, " ".join(words)),
        }

    def describe(self) -> dict[str, Any]:
        return dict(self.channel.describe())

    async def close(self) -> None:
        await self.channel.close()


class HTTPKeywordTester:
    """One http_keyword measurement, in one placement, per test (residual rules apply)."""

    test_name = "http_keyword"

    def __init__(self, ctx: ProbeContext) -> None:
        from probes.nettests.http_keyword import HTTPKeyword

        self.nettest = HTTPKeyword(ctx)
        self.test_version = HTTPKeyword.version
        self._ready = False

    async def test(self, words: list[str]) -> dict[str, Any]:
        if not self._ready:
            await self.nettest.setup()
            self._ready = True
        return await self.nettest.measure("+".join(words))

    def describe(self) -> dict[str, Any]:
        return {"name": f"{HTTP_PREFIX}{self.nettest.placements[0]}"}

    async def close(self) -> None:
        await self.nettest.close()


def channel_names() -> list[str]:
    from probes.channels import CHANNELS

    return sorted(CHANNELS) + [f"{HTTP_PREFIX}{p}" for p in PLACEMENTS]


def make_tester(
    name: str,
    ctx: ProbeContext,
    *,
    deadline: float,
    poll: float = 0.25,
) -> Tester:
    """The tester for `--channel name` (KeyError names the known ones)."""
    if name.startswith(HTTP_PREFIX):
        placement = name[len(HTTP_PREFIX) :]
        if placement not in PLACEMENTS:
            raise KeyError(f"unknown channel {name!r} (known: {', '.join(channel_names())})")
        ctx.options = {**ctx.options, "placements": [placement]}
        return HTTPKeywordTester(ctx)
    from probes.nettests.message_delivery import make_channel

    try:
        channel = make_channel(name, ctx.helpers, ctx.ca_file)
    except KeyError:
        raise KeyError(f"unknown channel {name!r} (known: {', '.join(channel_names())})") from None
    return DeliveryTester(channel, deadline, poll)
