"""The `relay` channel: the helper's mailboxes over HTTP(S) (backend/helper_relay.py).

Measures network-level filtering of message traffic between two vantages, or a relay
configured with platform rules in the lab. Settings come from the environment (never the
command line): CENSORSCOPE_RELAY_URL (default: the first --helper), CENSORSCOPE_RELAY_RECEIVE_URL
(the receiver's way in, default the same), CENSORSCOPE_RELAY_MAILBOX (default: a fresh random
one, so sender and receiver must share the process unless it is set) and CENSORSCOPE_RELAY_TOKEN.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Mapping
from typing import Any

from probes.channels.base import Channel, ChannelError, Received, SendReceipt
from probes.net.http import JSONClient

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
        ca_file: str | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.receive_url = (receive_url or url).rstrip("/")
        self.mailbox = mailbox or f"cs-{secrets.token_hex(8)}"
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._sender = JSONClient(ca_file=ca_file, headers=headers)
        self._receiver = JSONClient(ca_file=ca_file, headers=headers)
        self._after = 0

    @classmethod
    def from_settings(
        cls, helpers: list[str], ca_file: str | None, env: Mapping[str, str] = os.environ
    ) -> RelayChannel:
        url = env.get("CENSORSCOPE_RELAY_URL") or (helpers[0] if helpers else "")
        if not url:
            raise ChannelError("relay: give --helper URL or set CENSORSCOPE_RELAY_URL")
        return cls(
            url,
            mailbox=env.get("CENSORSCOPE_RELAY_MAILBOX") or None,
            receive_url=env.get("CENSORSCOPE_RELAY_RECEIVE_URL") or None,
            token=env.get("CENSORSCOPE_RELAY_TOKEN") or None,
            ca_file=ca_file,
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
        return {"name": self.name, "url": self.url, "mailbox": self.mailbox}
