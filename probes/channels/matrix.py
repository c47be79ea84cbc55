"""The `matrix` channel: messages between two accounts through the Matrix client-server API.

A homeserver that filters content for some accounts (the way WeChat filters those registered in
China) either refuses the message to the sender (an HTTP error with an `errcode`) or accepts it
and never delivers it. The sender sends `m.room.message` (PUT with a transaction ID, so a retry
cannot duplicate it); the receiver reads its room with `/sync` from a `since` token taken before
the first message, so nothing older is ever counted. Sender and receiver may sit on different
homeservers (federation). Settings come from the environment only (never the command line;
tokens and passwords never reach a measurement):

    CENSORSCOPE_MATRIX_URL            sender's homeserver (https://matrix.example)
    CENSORSCOPE_MATRIX_TOKEN          sender's access token, or
    CENSORSCOPE_MATRIX_USER, CENSORSCOPE_MATRIX_PASSWORD            (password login)
    CENSORSCOPE_MATRIX_RECEIVE_URL    receiver's homeserver (default: the sender's)
    CENSORSCOPE_MATRIX_RECEIVER_TOKEN, or
    CENSORSCOPE_MATRIX_RECEIVER_USER, CENSORSCOPE_MATRIX_RECEIVER_PASSWORD
    CENSORSCOPE_MATRIX_ROOM           room ID or alias both join (default: the sender creates a
                                      private room and invites the receiver)
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

from probes.channels.base import Channel, ChannelError, Received, SendReceipt
from probes.net.http import JSONClient, JSONReply

API = "/_matrix/client/v3"
# Per request; a homeserver slower than this is itself a finding.
REQUEST_TIMEOUT = 15.0
# Rate limiting (429) is the platform's pacing, not a refusal: wait as told, a few times.
RATE_LIMIT_TRIES = 4
RATE_LIMIT_MAX_WAIT = 10.0
TIMELINE_LIMIT = 100


@dataclass(frozen=True)
class Login:
    """One side's credentials: an access token, or a user and password to log in with."""

    token: str | None = None
    user: str | None = None
    password: str | None = None

    def __repr__(self) -> str:  # never print a secret by accident
        return f"Login(user={self.user!r}, token={'set' if self.token else None})"


@dataclass(frozen=True)
class MatrixSettings:
    url: str
    receive_url: str
    sender: Login
    receiver: Login
    room: str | None = None


def _login(env: Mapping[str, str], prefix: str, side: str) -> Login:
    login = Login(
        token=env.get(f"{prefix}TOKEN") or None,
        user=env.get(f"{prefix}USER") or None,
        password=env.get(f"{prefix}PASSWORD") or None,
    )
    if not login.token and not (login.user and login.password):
        raise ChannelError(
            f"matrix: set {prefix}TOKEN, or {prefix}USER and {prefix}PASSWORD, for the {side}"
        )
    return login


def settings_from_env(env: Mapping[str, str]) -> MatrixSettings:
    url = (env.get("CENSORSCOPE_MATRIX_URL") or "").rstrip("/")
    if not url:
        raise ChannelError("matrix: set CENSORSCOPE_MATRIX_URL (the sender's homeserver)")
    return MatrixSettings(
        url=url,
        receive_url=(env.get("CENSORSCOPE_MATRIX_RECEIVE_URL") or url).rstrip("/"),
        sender=_login(env, "CENSORSCOPE_MATRIX_", "sender"),
        receiver=_login(env, "CENSORSCOPE_MATRIX_RECEIVER_", "receiver"),
        room=env.get("CENSORSCOPE_MATRIX_ROOM") or None,
    )


def _error(reply: JSONReply) -> str:
    """What the homeserver said ("M_FORBIDDEN: ..."), or the network failure."""
    if reply.status_code is None:
        return str(reply.failure)
    data = reply.data if isinstance(reply.data, dict) else {}
    errcode, message = data.get("errcode"), data.get("error")
    text = ": ".join(str(x) for x in (errcode, message) if x)
    return text or f"HTTP {reply.status_code}"


class _SetupFailed(Exception):
    def __init__(self, what: str, reply: JSONReply) -> None:
        super().__init__(f"{what}: {_error(reply)}")
        self.reply = reply


@dataclass
class _Side:
    """A logged-in account: its client (carrying the token) and Matrix user ID."""

    url: str
    client: JSONClient
    user_id: str
    logged_in: bool  # we created this session (password login) and log it out at the end


class MatrixChannel(Channel):
    name = "matrix"

    def __init__(self, settings: MatrixSettings, *, ca_file: str | None = None) -> None:
        self.settings = settings
        self.ca_file = ca_file
        self.room_id: str | None = None
        self._sender: _Side | None = None
        self._receiver: _Side | None = None
        self._since: str | None = None
        self._filter = ""
        self._start_lock = asyncio.Lock()
        self._setup_error: _SetupFailed | None = None

    @classmethod
    def from_settings(
        cls, helpers: list[str], ca_file: str | None, env: Mapping[str, str] = os.environ
    ) -> MatrixChannel:
        return cls(settings_from_env(env), ca_file=ca_file)

    # --- setup: log in, find the room, mark where the receiver's timeline starts ----------

    async def _side(self, url: str, login: Login) -> _Side:
        token, logged_in = login.token, False
        if not token:
            anonymous = JSONClient(ca_file=self.ca_file)
            try:
                reply = await anonymous.post_json(
                    f"{url}{API}/login",
                    {
                        "type": "m.login.password",
                        "identifier": {"type": "m.id.user", "user": login.user},
                        "password": login.password,
                        "initial_device_display_name": "censorscope",
                    },
                    timeout=REQUEST_TIMEOUT,
                )
            finally:
                await anonymous.aclose()
            if reply.status_code != 200 or not isinstance(reply.data, dict):
                raise _SetupFailed("login", reply)
            token, logged_in = str(reply.data["access_token"]), True
        client = JSONClient(ca_file=self.ca_file, headers={"Authorization": f"Bearer {token}"})
        reply = await client.get_json(f"{url}{API}/account/whoami", timeout=REQUEST_TIMEOUT)
        if reply.status_code != 200 or not isinstance(reply.data, dict):
            await client.aclose()
            raise _SetupFailed("whoami", reply)
        return _Side(url, client, str(reply.data["user_id"]), logged_in)

    async def _join(self, side: _Side, room: str) -> str:
        reply = await side.client.post_json(
            f"{side.url}{API}/join/{quote(room, safe='')}", {}, timeout=REQUEST_TIMEOUT
        )
        if reply.status_code != 200 or not isinstance(reply.data, dict):
            raise _SetupFailed(f"join {room}", reply)
        return str(reply.data.get("room_id") or room)

    async def _start(self) -> None:
        s = self.settings
        self._sender = await self._side(s.url, s.sender)
        self._receiver = await self._side(s.receive_url, s.receiver)
        if s.room:
            self.room_id = await self._join(self._sender, s.room)
        else:
            reply = await self._sender.client.post_json(
                f"{s.url}{API}/createRoom",
                {"preset": "private_chat", "invite": [self._receiver.user_id]},
                timeout=REQUEST_TIMEOUT,
            )
            if reply.status_code != 200 or not isinstance(reply.data, dict):
                raise _SetupFailed("createRoom", reply)
            self.room_id = str(reply.data["room_id"])
        await self._join(self._receiver, self.room_id)
        self._filter = json.dumps(
            {
                "presence": {"not_types": ["*"]},
                "account_data": {"not_types": ["*"]},
                "room": {
                    "rooms": [self.room_id],
                    "timeline": {
                        "limit": TIMELINE_LIMIT,
                        "types": ["m.room.message"],
                        # Unique per run: Synapse answers an identical /sync from a cache for
                        # 2 minutes, which would hand a rerun an old since token.
                        "not_types": [f"org.censorscope.run.{secrets.token_hex(8)}"],
                    },
                    "state": {"not_types": ["*"]},
                    "ephemeral": {"not_types": ["*"]},
                    "account_data": {"not_types": ["*"]},
                },
            },
            separators=(",", ":"),
        )
        await self._sync()  # only the since token: what came before this run is not ours

    async def start(self) -> None:
        """Log both sides in and open the room, once; a failure is kept and reported."""
        async with self._start_lock:
            if self._receiver is not None or self._setup_error is not None:
                return
            try:
                await self._start()
            except _SetupFailed as exc:
                self._setup_error = exc

    # --- the two sides ----------------------------------------------------------------------

    async def send(self, text: str) -> SendReceipt:
        await self.start()
        if self._setup_error is not None:
            reply = self._setup_error.reply
            return SendReceipt(
                accepted=False,
                failure=reply.failure,
                status_code=reply.status_code,
                refusal=None if reply.status_code is None else str(self._setup_error),
            )
        assert self._sender is not None and self.room_id is not None
        url = (
            f"{self._sender.url}{API}/rooms/{quote(self.room_id, safe='')}"
            f"/send/m.room.message/cs{secrets.token_hex(8)}"
        )
        started = time.monotonic()
        for _ in range(RATE_LIMIT_TRIES):
            reply = await self._sender.client.put_json(
                url, {"msgtype": "m.text", "body": text}, timeout=REQUEST_TIMEOUT
            )
            if reply.status_code != 429:
                break
            data = reply.data if isinstance(reply.data, dict) else {}
            wait = float(data.get("retry_after_ms") or 1000) / 1000
            await asyncio.sleep(min(wait, RATE_LIMIT_MAX_WAIT))
        receipt = SendReceipt(accepted=reply.status_code == 200, failure=reply.failure)
        receipt.status_code = reply.status_code
        if receipt.accepted and isinstance(reply.data, dict):
            receipt.message_id = str(reply.data.get("event_id"))
        elif reply.status_code is not None:
            receipt.refusal = _error(reply)
        receipt.t = round(time.monotonic() - started, 6)
        return receipt

    async def _sync(self) -> list[dict[str, Any]]:
        assert self._receiver is not None and self.room_id is not None
        query = {"timeout": "0", "filter": self._filter}
        if self._since:
            query["since"] = self._since
        reply = await self._receiver.client.get_json(
            f"{self._receiver.url}{API}/sync?{urlencode(query)}", timeout=REQUEST_TIMEOUT
        )
        if reply.status_code != 200 or not isinstance(reply.data, dict):
            raise ChannelError(f"matrix receiver: sync: {_error(reply)}")
        self._since = str(reply.data["next_batch"])
        room = ((reply.data.get("rooms") or {}).get("join") or {}).get(self.room_id) or {}
        events = (room.get("timeline") or {}).get("events") or []
        return [e for e in events if isinstance(e, dict)]

    async def fetch(self) -> list[Received]:
        if self._receiver is None or self._sender is None:
            raise ChannelError(f"matrix receiver: not set up ({self._setup_error or 'no send'})")
        out = []
        for event in await self._sync():
            content = event.get("content") or {}
            body = content.get("body")
            if event.get("sender") == self._sender.user_id and isinstance(body, str):
                out.append(Received(str(event.get("event_id")), body))
        return out

    async def close(self) -> None:
        for side in (self._sender, self._receiver):
            if side is None:
                continue
            if side.logged_in:  # do not leave a device behind per run
                await side.client.post_json(f"{side.url}{API}/logout", {}, timeout=REQUEST_TIMEOUT)
            await side.client.aclose()
        self._sender = self._receiver = None

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "homeserver": self.settings.url,
            "receive_homeserver": self.settings.receive_url,
            "room": self.room_id,
            "sender": self._sender.user_id if self._sender else None,
            "receiver": self._receiver.user_id if self._receiver else None,
        }
