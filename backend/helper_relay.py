"""The helper's message relay: mailboxes over HTTP for message_delivery's `relay` channel.

A sender POSTs `{"text": ...}` to `/relay/{mailbox}`; a receiver GETs `/relay/{mailbox}?after=N`.
Run plainly it measures network-level filtering of message traffic between two vantages.
Given `rules` (keyword combinations, every part must appear), it behaves like a censoring
platform instead: it silently drops, refuses ("550"-style 403) or masks matching messages.
That is how the tests and the lab plant a platform filter whose ground truth is known.

Who may use it (issue 13): every request shows the relay's bearer token (there is no open
relay), and the mailbox's own key in `X-Censorscope-Mailbox-Key`. A mailbox is the pair
(name, key): a caller without the key reaches a different, empty mailbox, so nobody can read
or plant messages in a mailbox whose key they do not hold, and no name can be claimed first.
Memory is bounded by a cap on bytes held in all mailboxes together and on a message's age;
the oldest messages go first. Bodies are streamed and refused (413) once over the cap.
"""

from __future__ import annotations

import hashlib
import itertools
import re
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from backend.http_body import BodyTooLarge, read_capped
from probes.channels.relay import MAILBOX_KEY_HEADER, MIN_KEY_LENGTH, token_problem

Action = Literal["drop", "reject", "modify"]
MAILBOX_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MASK = "*"
REJECT_MESSAGE = "message content denied"
# What a stored message costs besides its text (dict, deque slot, id, time): a rough
# figure, so that a flood of empty messages is bounded by max_total_bytes too.
MESSAGE_OVERHEAD = 256
# The JSON around the text ({"text": "..."}) and its escapes; the text itself is checked
# against max_text_bytes once decoded.
BODY_SLACK = 1024
# Text bytes (with overhead) one GET returns at most; the receiver asks again with `after`.
REPLY_BYTES = 1 << 20


@dataclass(frozen=True)
class RelayConfig:
    """Relay settings. `token`: the bearer token every sender and receiver must show; a
    relay without one cannot be built (nothing runs open by accident)."""

    token: str
    rules: tuple[tuple[str, ...], ...] = ()
    action: Action = "drop"
    max_text_bytes: int = 16 * 1024
    max_messages: int = 1000  # per mailbox; the oldest go first
    max_mailboxes: int = 10_000
    max_total_bytes: int = 64 * 1024 * 1024  # all mailboxes together; the oldest go first
    max_age: float = 3600.0  # seconds a message is kept

    def __post_init__(self) -> None:
        if not isinstance(self.token, str):
            raise ValueError("the relay needs a bearer token (CENSORSCOPE_RELAY_TOKEN)")
        if problem := token_problem(self.token):
            raise ValueError(problem)
        for name in ("max_text_bytes", "max_messages", "max_mailboxes", "max_age"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.max_total_bytes < self.max_text_bytes + MESSAGE_OVERHEAD:
            raise ValueError("max_total_bytes must hold at least one message")

    def matching_rule(self, text: str) -> tuple[str, ...] | None:
        return next((r for r in self.rules if r and all(p in text for p in r)), None)


@dataclass
class _Message:
    id: int
    text: str
    t: float  # wall clock, sent to receivers
    stored: float  # monotonic, for the age limit
    size: int


BoxId = tuple[str, bytes]  # (mailbox name, SHA-256 of its key)


@dataclass
class _Mailboxes:
    """Every mailbox, and the arrival order across them (for eviction by age and bytes)."""

    config: RelayConfig
    clock: Callable[[], float] = time.monotonic
    boxes: dict[BoxId, deque[_Message]] = field(default_factory=dict)
    order: deque[tuple[BoxId, int]] = field(default_factory=deque)
    total: int = 0
    ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def _drop_oldest(self, box_id: BoxId) -> None:
        box = self.boxes[box_id]
        self.total -= box.popleft().size
        if not box:
            del self.boxes[box_id]

    def evict(self, room: int = 0) -> None:
        """Drop messages past their age, then the oldest until `room` more bytes fit."""
        horizon = self.clock() - self.config.max_age
        while self.order:
            box_id, message_id = self.order[0]
            box = self.boxes.get(box_id)
            if box is None or box[0].id != message_id:  # already gone (per-mailbox limit)
                self.order.popleft()
                continue
            if box[0].stored > horizon and self.total + room <= self.config.max_total_bytes:
                break
            self._drop_oldest(box_id)
            self.order.popleft()

    def add(self, box_id: BoxId, message_id: int, text: str) -> bool:
        """Store a message; False when a new mailbox would be one too many."""
        size = len(text.encode("utf-8", "surrogatepass")) + MESSAGE_OVERHEAD
        self.evict(size)
        box = self.boxes.get(box_id)
        if box is None:
            if len(self.boxes) >= self.config.max_mailboxes:
                return False
            box = self.boxes[box_id] = deque()
        if len(box) >= self.config.max_messages:
            self._drop_oldest(box_id)
            box = self.boxes.setdefault(box_id, deque())
        box.append(_Message(message_id, text, time.time(), self.clock(), size))
        self.order.append((box_id, message_id))
        self.total += size
        return True

    def read(self, box_id: BoxId, after: int) -> list[dict[str, object]]:
        """Messages after `after`, oldest first, at most REPLY_BYTES of text (at least one):
        a receiver pages with `after`, and one GET cannot make the relay buffer 16 MB."""
        self.evict()
        out: list[dict[str, object]] = []
        size = 0
        for m in self.boxes.get(box_id, ()):
            if m.id <= after:
                continue
            size += m.size
            if out and size > REPLY_BYTES:
                break
            out.append({"id": m.id, "text": m.text, "t": m.t})
        return out


def _error(status: int, message: str) -> JSONResponse:
    headers = {"www-authenticate": 'Bearer realm="relay"'} if status == 401 else None
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _box_id(mailbox: str, request: Request) -> BoxId | JSONResponse:
    """The mailbox this request may use, or the refusal to send."""
    if not MAILBOX_RE.match(mailbox):
        return _error(400, "mailbox names are 1-64 of A-Z a-z 0-9 _ -")
    key = request.headers.get(MAILBOX_KEY_HEADER, "")
    if len(key) < MIN_KEY_LENGTH:
        return _error(
            401, f"missing mailbox key: send {MAILBOX_KEY_HEADER} of {MIN_KEY_LENGTH}+ characters"
        )
    return mailbox, hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


def mount_relay(app: FastAPI, config: RelayConfig) -> None:
    """Add the relay routes to the helper's app."""
    state = _Mailboxes(config)
    expected = f"Bearer {config.token}".encode()
    body_limit = config.max_text_bytes + BODY_SLACK

    def authorised(request: Request) -> bool:
        given = request.headers.get("authorization", "").encode("latin-1", "replace")
        return secrets.compare_digest(given, expected)

    @app.post("/relay/{mailbox}")
    async def post(mailbox: str, request: Request) -> JSONResponse:
        if not authorised(request):
            return _error(401, "missing or wrong bearer token")
        box_id = _box_id(mailbox, request)
        if isinstance(box_id, JSONResponse):
            return box_id
        try:
            body = await read_capped(request, body_limit)
        except BodyTooLarge:
            return _error(413, f"message over {config.max_text_bytes} bytes")
        try:
            text = orjson.loads(body)["text"]
        except (ValueError, KeyError, TypeError):
            return _error(400, 'body must be {"text": "..."}')
        if not isinstance(text, str):
            return _error(400, "text must be a string")
        if len(text.encode("utf-8", "surrogatepass")) > config.max_text_bytes:
            return _error(413, f"message over {config.max_text_bytes} bytes")
        message_id = next(state.ids)
        rule = config.matching_rule(text)
        if rule is not None and config.action == "reject":
            return _error(403, REJECT_MESSAGE)
        if rule is not None and config.action == "modify":
            for part in rule:
                text = text.replace(part, MASK * len(part))
        if (rule is None or config.action != "drop") and not state.add(box_id, message_id, text):
            return _error(507, "too many mailboxes")
        # A dropped message is acknowledged like any other: platforms drop silently.
        return JSONResponse({"id": message_id})

    @app.get("/relay/{mailbox}")
    async def get(mailbox: str, request: Request, after: int = 0) -> JSONResponse:
        if not authorised(request):
            return _error(401, "missing or wrong bearer token")
        box_id = _box_id(mailbox, request)
        if isinstance(box_id, JSONResponse):
            return box_id
        return JSONResponse({"messages": state.read(box_id, after)})
