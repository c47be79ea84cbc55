"""The `relay` channel: the helper's mailboxes over HTTP(S) (backend/helper_relay.py).

Measures network-level filtering of message traffic between two vantages, or a relay
configured with platform rules in the lab. Settings come from the environment (never the
command line): CENSORSCOPE_RELAY_URL (default: the first --helper), CENSORSCOPE_RELAY_RECEIVE_URL
(the receiver's way in, default the same), CENSORSCOPE_RELAY_MAILBOX (default: a fresh random
one, so sender and receiver must share the process unless it is set),
CENSORSCOPE_RELAY_MAILBOX_KEY (the mailbox's own secret, needed with a shared mailbox: whoever
holds it can read and write that mailbox, nobody else can; default: a fresh random one) and
CENSORSCOPE_RELAY_TOKEN (the relay's bearer token). Neither secret reaches a measurement.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Mapping
from typing import Any

from probes.accounts import Account, key_variable
from probes.channels.base import Channel, ChannelError, Received, SendReceipt
from probes.net.http import JSONClient

# The relay's mailbox-key header and shortest key (backend/helper_relay.py says why).
MAILBOX_KEY_HEADER = "X-Censorscope-Mailbox-Key"
# The account a message is sent from, for a platform that filters by the sender's registered
# region (the lab's platform, lab/servers.py); our helper's relay ignores it.
SENDER_HEADER = "X-Censorscope-Sender"
MIN_KEY_LENGTH = 16


def token_problem(token: str) -> str | None:
    """Why a relay bearer token cannot work, or None. HTTP header values travel as bytes that
    httpx encodes as ASCII and the server reads as Latin-1, so anything beyond visible ASCII
    (RFC 6750's b64token is a subset) either fails on the probe or never matches."""
    if not token.strip():
        return "the relay needs a bearer token (CENSORSCOPE_RELAY_TOKEN)"
    if not all("!" <= c <= "~" for c in token):
        return "the bearer token must be visible ASCII (no spaces, no other characters)"
    return None


# Per request: a relay is one HTTP hop, a slow one is itself a finding.
REQUEST_TIMEOUT = 10.0


class RelayChannel(Channel):
    name = "relay"

    def __init__(
        self,
        url: str,
        *,
        mailbox: str | None = None,
        receive_url: str | None = None,
        token: str | None = None,
        mailbox_key: str | None = None,
        ca_file: str | None = None,
        sender: str | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.receive_url = (receive_url or url).rstrip("/")
        self.mailbox = mailbox or f"cs-{secrets.token_hex(8)}"
        self.sender = sender
        headers = {MAILBOX_KEY_HEADER: mailbox_key or secrets.token_hex(16)}
        if token:
            if problem := token_problem(token):
                raise ChannelError(f"relay: CENSORSCOPE_RELAY_TOKEN: {problem}")
            headers["Authorization"] = f"Bearer {token}"
        sender_headers = {**headers, SENDER_HEADER: sender} if sender else headers
        self._sender = JSONClient(ca_file=ca_file, headers=sender_headers)
        self._receiver = JSONClient(ca_file=ca_file, headers=headers)
        self._after = 0

    @classmethod
    def from_settings(
        cls, helpers: list[str], ca_file: str | None, env: Mapping[str, str] = os.environ
    ) -> RelayChannel:
        url = env.get("CENSORSCOPE_RELAY_URL") or (helpers[0] if helpers else "")
        if not url:
            raise ChannelError("relay: give --helper URL or set CENSORSCOPE_RELAY_URL")
        mailbox = env.get("CENSORSCOPE_RELAY_MAILBOX") or None
        key = env.get("CENSORSCOPE_RELAY_MAILBOX_KEY") or None
        if mailbox and not key:
            raise ChannelError(
                "relay: CENSORSCOPE_RELAY_MAILBOX needs CENSORSCOPE_RELAY_MAILBOX_KEY "
                f"({MIN_KEY_LENGTH}+ characters shared by sender and receiver)"
            )
        if key and len(key) < MIN_KEY_LENGTH:
            raise ChannelError(
                f"relay: CENSORSCOPE_RELAY_MAILBOX_KEY needs {MIN_KEY_LENGTH}+ characters"
            )
        return cls(
            url,
            mailbox=mailbox,
            receive_url=env.get("CENSORSCOPE_RELAY_RECEIVE_URL") or None,
            token=env.get("CENSORSCOPE_RELAY_TOKEN") or None,
            mailbox_key=key,
            ca_file=ca_file,
        )

    @classmethod
    def between(
        cls,
        sender: Account,
        receiver: Account,
        helpers: list[str],
        ca_file: str | None,
        env: Mapping[str, str] = os.environ,
    ) -> RelayChannel:
        """From one account to another: the sender's way in sends into the receiver's
        mailbox, which the receiver reads its own way (its `url`, e.g. from another network)."""
        default = env.get("CENSORSCOPE_RELAY_URL") or (helpers[0] if helpers else "")
        url, receive_url = sender.url or default, receiver.url or default
        if not url or not receive_url:
            raise ChannelError(
                "relay: give --helper URL, CENSORSCOPE_RELAY_URL or the accounts' url"
            )
        key = receiver.mailbox_key
        if not key or len(key) < MIN_KEY_LENGTH:
            raise ChannelError(
                f"relay: account {receiver.name!r} needs its mailbox_key ({MIN_KEY_LENGTH}+ "
                f"characters; in the config or {key_variable(receiver.name)})"
            )
        return cls(
            url,
            mailbox=receiver.mailbox,
            receive_url=receive_url,
            token=env.get("CENSORSCOPE_RELAY_TOKEN") or None,
            mailbox_key=key,
            ca_file=ca_file,
            sender=sender.name,
        )

    async def send(self, text: str) -> SendReceipt:
        started = time.monotonic()
        reply = await self._sender.post_json(
            f"{self.url}/relay/{self.mailbox}", {"text": text}, timeout=REQUEST_TIMEOUT
        )
        receipt = SendReceipt(
            accepted=reply.status_code == 200,
            failure=reply.failure,
            status_code=reply.status_code,
            t=round(time.monotonic() - started, 6),
        )
        if reply.status_code == 200 and isinstance(reply.data, dict):
            receipt.message_id = str(reply.data.get("id"))
        elif reply.status_code is not None:
            data = reply.data if isinstance(reply.data, dict) else {}
            receipt.refusal = str(data.get("error") or f"HTTP {reply.status_code}")
        return receipt

    async def fetch(self) -> list[Received]:
        reply = await self._receiver.get_json(
            f"{self.receive_url}/relay/{self.mailbox}?after={self._after}",
            timeout=REQUEST_TIMEOUT,
        )
        if reply.status_code != 200 or not isinstance(reply.data, dict):
            raise ChannelError(f"relay receiver: {reply.failure or reply.status_code}")
        out = []
        for item in reply.data.get("messages") or []:
            self._after = max(self._after, int(item["id"]))
            out.append(Received(str(item["id"]), str(item["text"])))
        return out

    async def close(self) -> None:
        await self._sender.aclose()
        await self._receiver.aclose()

    def describe(self) -> dict[str, Any]:
        out = {"name": self.name, "url": self.url, "mailbox": self.mailbox}
        if self.sender:
            out["sender"] = self.sender
        return out
