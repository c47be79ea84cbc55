"""Reading a request body with a cap, for every route that takes one from a stranger.

Starlette's ``Request.body()`` reads the whole body before anyone can look at its size (a
200 MB POST to the relay grew the helper by 390 MB, issue 13). Here the body is streamed
and counted, and the reader stops the moment the cap is passed, or at once when the
declared Content-Length already says more.
"""

from __future__ import annotations

from fastapi import Request


class BodyTooLarge(Exception):
    """The request body is over the route's limit (the relay answers 413; the control route
    400, as oohelperd)."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"request body over {limit} bytes")
        self.limit = limit


async def read_capped(request: Request, limit: int) -> bytes:
    """At most ``limit`` bytes of the body; BodyTooLarge as soon as it is known to be more."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(limit)
        chunks.append(chunk)
    return b"".join(chunks)
