"""The helper's message relay: mailboxes over HTTP for message_delivery's `relay` channel.

A sender POSTs `{"text": ...}` to `/relay/{mailbox}`; a receiver GETs `/relay/{mailbox}?after=N`.
Run plainly it measures network-level filtering of message traffic between two vantages.
Given `rules` (keyword combinations, every part must appear), it behaves like a censoring
platform instead: it silently drops, refuses ("550"-style 403) or masks matching messages.
That is how the tests and the lab plant a platform filter whose ground truth is known.
"""

from __future__ import annotations

import itertools
import re
import secrets
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Literal

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

Action = Literal["drop", "reject", "modify"]
MAILBOX_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MASK = "*"
REJECT_MESSAGE = "message content denied"


@dataclass(frozen=True)
class RelayConfig:
    """Relay settings. `token`: a bearer token senders and receivers must show (None: open)."""

    rules: tuple[tuple[str, ...], ...] = ()
    action: Action = "drop"
    token: str | None = None
    max_text_bytes: int = 16 * 1024
    max_messages: int = 1000  # per mailbox; the oldest go first
    max_mailboxes: int = 10_000

    def matching_rule(self, text: str) -> tuple[str, ...] | None:
        return next((r for r in self.rules if r and all(p in text for p in r)), None)


@dataclass
class _Mailboxes:
    boxes: dict[str, deque[dict[str, object]]] = field(default_factory=dict)
    ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def mount_relay(app: FastAPI, config: RelayConfig) -> None:
    """Add the relay routes to the helper's app."""
    state = _Mailboxes()

    def authorised(request: Request) -> bool:
        if config.token is None:
            return True
        given = request.headers.get("authorization", "")
        return secrets.compare_digest(given.encode(), f"Bearer {config.token}".encode())

    @app.post("/relay/{mailbox}")
    async def post(mailbox: str, request: Request) -> JSONResponse:
        if not authorised(request):
            return _error(401, "missing or wrong bearer token")
        if not MAILBOX_RE.match(mailbox):
            return _error(400, "mailbox names are 1-64 of A-Z a-z 0-9 _ -")
        body = await request.body()
        if len(body) > config.max_text_bytes + 64:
            return _error(413, f"message over {config.max_text_bytes} bytes")
        try:
            import orjson

            text = orjson.loads(body)["text"]
        except (ValueError, KeyError, TypeError):
            return _error(400, 'body must be {"text": "..."}')
        if not isinstance(text, str):
            return _error(400, "text must be a string")
        message_id = next(state.ids)
        rule = config.matching_rule(text)
        if rule is not None and config.action == "reject":
            return _error(403, REJECT_MESSAGE)
        if rule is not None and config.action == "modify":
            for part in rule:
                text = text.replace(part, MASK * len(part))
        if rule is None or config.action != "drop":
            if mailbox not in state.boxes and len(state.boxes) >= config.max_mailboxes:
                return _error(507, "too many mailboxes")
            box = state.boxes.setdefault(mailbox, deque(maxlen=config.max_messages))
            box.append({"id": message_id, "text": text, "t": time.time()})
        # A dropped message is acknowledged like any other: platforms drop silently.
        return JSONResponse({"id": message_id})

    @app.get("/relay/{mailbox}")
    async def get(mailbox: str, request: Request, after: int = 0) -> JSONResponse:
        if not authorised(request):
            return _error(401, "missing or wrong bearer token")
        if not MAILBOX_RE.match(mailbox):
            return _error(400, "mailbox names are 1-64 of A-Z a-z 0-9 _ -")
        box = state.boxes.get(mailbox, ())
        return JSONResponse({"messages": [m for m in box if int(m["id"]) > after]})  # type: ignore[call-overload]
