"""Text from a client, made safe for one log line.

A URL or report id a client sends can carry a newline (or a carriage return, an escape
sequence, a Unicode line separator): logged as is, it starts a forged line that a reader or a
log parser takes for ours. Every character that is not printable is written as its Python
escape (`\\n`, `\\x1b`, `\\u2028`), and the text is cut to a length a line can hold.
"""

from __future__ import annotations

MAX_LOGGED = 2048


def printable(value: object, limit: int = MAX_LOGGED) -> str:
    """`value` as one log-safe line: non-printable characters escaped, at most `limit` long."""
    text = str(value)
    if not text.isprintable():
        text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return text if len(text) <= limit else text[:limit] + "..."
