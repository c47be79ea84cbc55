"""message_delivery: does a message carrying a keyword reach the receiver through a channel?

Per keyword (the input; `A+B` carries every part), three messages, each tagged with a nonce: a
control without keywords, the keyword message, a second control; the controls go first and
last so that a channel failing during the test shows up (the method of Citizen Lab's WeChat
and QQ studies, e.g. Knockel et al. 2020). The receiver polls until every message is in or the
deadline passes. Outcome of the keyword message: `delivered` (text intact), `modified` (arrived
altered), `rejected` (the platform refused it to the sender), `dropped` (accepted or cut off on
the way, never received while both controls were). `blocking` is "delivery" only when both
controls arrived; otherwise null.

With `--sender NAME --receiver NAME` (accounts of the config, probes/accounts.py) the messages
go from one account to another, each registered in a region the platform knows; `sender` and
`receiver` record both (name and region), so that runs for each pair of regions make a
delivery matrix (analysis: sender region x receiver region per keyword).
"""

from __future__ import annotations

import asyncio
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any

from probes.channels import channel_class
from probes.channels.base import Channel, ChannelError
from probes.nettests.base import Nettest, SetupError

# How long the receiver waits for a message; platforms deliver within seconds, and the
# Citizen Lab studies wait a minute before calling a message dropped.
DELIVERY_DEADLINE_SECONDS = 60.0
POLL_INTERVAL_SECONDS = 0.25
# What one send or fetch may take on any channel (the relay's request timeout is 10 s; SMTP and
# Matrix calls are bounded the same way).
CHANNEL_CALL_SECONDS = 15.0
CONTROL_TEXT = "censorscope control message"
NONCE_RE = re.compile(r"\[cs:([0-9a-f]{16})\]")


def new_nonce() -> str:
    return secrets.token_hex(8)


def tag(text: str, nonce: str) -> str:
    return f"{text} [cs:{nonce}]"


@dataclass
class Sent:
    nonce: str
    text: str
    receipt: dict[str, Any]


class Postman:
    """Sends tagged messages and collects them at the receiver, shared by concurrent tests."""

    def __init__(self, channel: Channel, deadline: float, poll: float) -> None:
        self.channel, self.deadline, self.poll = channel, deadline, poll
        self.inbox: dict[str, str] = {}
        self._lock = asyncio.Lock()

    async def send(self, text: str) -> Sent:
        nonce = new_nonce()
        tagged = tag(text, nonce)
        receipt = await self.channel.send(tagged)
        return Sent(nonce, tagged, receipt.__dict__)

    async def _poll_once(self) -> None:
        async with self._lock:
            for message in await self.channel.fetch():
                match = NONCE_RE.search(message.text)
                if match:
                    self.inbox[match.group(1)] = message.text

    async def collect(self, sent: list[Sent]) -> tuple[dict[str, str], str | None]:
        """The received text per nonce; stops early once every accepted message is in."""
        waiting = {s.nonce for s in sent if s.receipt["accepted"]}
        end = time.monotonic() + self.deadline
        failure = None
        while True:
            try:
                await self._poll_once()
                failure = None
            except ChannelError as exc:
                failure = str(exc)
            if waiting <= self.inbox.keys() or time.monotonic() >= end:
                break
            await asyncio.sleep(self.poll)
        return {n: self.inbox.pop(n) for n in list(waiting) if n in self.inbox}, failure


def outcome_of(sent: Sent, received: dict[str, str]) -> str:
    if not sent.receipt["accepted"]:
        return "rejected" if sent.receipt["refusal"] else "dropped"
    got = received.get(sent.nonce)
    if got is None:
        return "dropped"
    return "delivered" if got == sent.text else "modified"


def verdict(before: str, keyword: str, after: str) -> tuple[Any, str | None]:
    """(blocking, blocking_detail) from the three outcomes."""
    if keyword == "delivered":
        return False, None
    if before != "delivered" or after != "delivered":
        return None, None
    return "delivery", f"delivery.{keyword}"


async def deliver_once(postman: Postman, text: str) -> dict[str, Any]:
    """Control, message, control; their outcomes and the verdict on the message."""
    sent = [await postman.send(CONTROL_TEXT)]
    sent.append(await postman.send(text))
    sent.append(await postman.send(CONTROL_TEXT))
    received, receive_failure = await postman.collect(sent)
    outcomes = [outcome_of(s, received) for s in sent]
    blocking, detail = verdict(*outcomes)
    return {
        "outcome": outcomes[1],
        "control_before": {"nonce": sent[0].nonce, "outcome": outcomes[0], **sent[0].receipt},
        "message": {
            "nonce": sent[1].nonce,
            "text": sent[1].text,
            "received_text": received.get(sent[1].nonce),
            **sent[1].receipt,
        },
        "control_after": {"nonce": sent[2].nonce, "outcome": outcomes[2], **sent[2].receipt},
        "receive_failure": receive_failure,
        "blocking": blocking,
        "blocking_detail": detail,
    }


def make_channel(name: str, helpers: list[str], ca_file: str | None) -> Channel:
    """The adapter `name`, configured from the environment (see each adapter)."""
    cls = channel_class(name)
    factory = getattr(cls, "from_settings", None)
    if factory is None:
        raise ChannelError(f"channel {name!r} cannot be configured")
    channel: Channel = factory(helpers, ca_file)
    return channel


class MessageDelivery(Nettest):
    name = "message_delivery"
    version = "0.2.0"  # 0.2: sender and receiver accounts with their regions
    needs_input = False
    keyword_inputs = True

    @classmethod
    def default_budget(cls, options: dict[str, Any]) -> float:
        """The per-input budget that holds the method when --timeout is unset: three sends,
        then the receiver's wait up to the delivery deadline (60 s by default, more than the
        probe's 30 s: a dropped message would otherwise be cut off undecided)."""
        deadline = float(options.get("delivery_deadline") or DELIVERY_DEADLINE_SECONDS)
        return deadline + 4 * CHANNEL_CALL_SECONDS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        opts = self.ctx.options
        self.channel_name = str(opts.get("channel") or "relay")
        self.deadline = float(opts.get("delivery_deadline") or DELIVERY_DEADLINE_SECONDS)
        self.poll = float(opts.get("poll_interval") or POLL_INTERVAL_SECONDS)
        self.sender_name = opts.get("sender")
        self.receiver_name = opts.get("receiver")
        self.ends: dict[str, Any] = {}  # "sender"/"receiver" -> Account
        self.channel: Channel | None = None
        self.postman: Postman | None = None

    def _accounts(self) -> dict[str, Any]:
        """The sender and receiver accounts named by the options (SetupError if unusable)."""
        if not (self.sender_name or self.receiver_name):
            return {}
        from probes.accounts import account_pair

        try:
            sender, receiver = account_pair(
                self.ctx.accounts, self.sender_name, self.receiver_name, self.channel_name
            )
        except ValueError as exc:
            raise SetupError(str(exc)) from exc
        return {"sender": sender, "receiver": receiver}

    async def setup(self) -> None:
        self.ends = self._accounts()
        try:
            if self.ends:
                from probes.channels.relay import RelayChannel

                self.channel = RelayChannel.between(
                    self.ends["sender"], self.ends["receiver"], self.ctx.helpers, self.ctx.ca_file
                )
            else:
                self.channel = make_channel(self.channel_name, self.ctx.helpers, self.ctx.ca_file)
        except (KeyError, ChannelError) as exc:
            raise SetupError(str(exc.args[0] if exc.args else exc)) from exc
        self.postman = Postman(self.channel, self.deadline, self.poll)

    async def close(self) -> None:
        if self.channel is not None:
            await self.channel.close()

    async def measure(self, input_: str | None) -> dict[str, Any]:
        if not input_ or self.postman is None or self.channel is None:
            raise ValueError("message_delivery measures one keyword per input, after setup()")
        parts = [p for p in input_.split("+") if p]
        keys = await deliver_once(self.postman, " ".join(parts))
        ends = {role: account.describe() for role, account in self.ends.items()}
        return {
            "keyword": input_,
            "keyword_parts": parts,
            "channel": self.channel.describe(),
            **ends,
            "delivery_deadline": self.deadline,
            **keys,
        }
