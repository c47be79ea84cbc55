"""The collector's bearer tokens: a file of `VANTAGE TOKEN` lines, reloaded when it changes.

Each token is bound to one vantage, so a leaked token lets its holder speak only for that
vantage. The file is re-read when its size, mtime or inode changes (checked at most every
`check_interval` seconds), so tokens are added or revoked without a restart; a file that no
longer parses keeps the previous tokens in force and logs why.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from pathlib import Path

from probes.store import SAFE_NAME

log = logging.getLogger("censorscope.collector")

MIN_TOKEN_LENGTH = 16


class TokenFileError(ValueError):
    """The tokens file cannot be used; the message names the file and line."""


def _digest(token: str) -> bytes:
    # Look tokens up by digest: the dict lookup then reveals nothing about a token's prefix.
    return hashlib.sha256(token.encode("utf-8")).digest()


def parse_tokens(text: str, source: str) -> dict[bytes, str]:
    """`VANTAGE TOKEN` per line (`#` comments, blank lines ignored) -> {digest: vantage}."""
    tokens: dict[bytes, str] = {}
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2:
            raise TokenFileError(f"{source}:{lineno}: expected 'VANTAGE TOKEN'")
        vantage, token = parts
        if not SAFE_NAME.match(vantage):
            raise TokenFileError(
                f"{source}:{lineno}: vantage {vantage!r}: use 1-64 letters, digits, '.', '_', '-'"
            )
        if len(token) < MIN_TOKEN_LENGTH:
            raise TokenFileError(
                f"{source}:{lineno}: token too short (at least {MIN_TOKEN_LENGTH} characters)"
            )
        key = _digest(token)
        if key in tokens and tokens[key] != vantage:
            raise TokenFileError(f"{source}:{lineno}: token already given to another vantage")
        tokens[key] = vantage
    return tokens


class TokenFile:
    """Maps a presented token to its vantage, following edits of the file."""

    def __init__(self, path: Path, *, check_interval: float = 0.5) -> None:
        self.path = path
        self.check_interval = check_interval
        self._lock = threading.Lock()
        self._signature: tuple[int, int, int] | None = None
        self._checked = 0.0
        self._tokens = self._load()  # a bad file at start is fatal (TokenFileError)

    def _stat(self) -> tuple[int, int, int]:
        st = os.stat(self.path)
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def _load(self) -> dict[bytes, str]:
        try:
            signature = self._stat()
            text = self.path.read_text(encoding="utf-8")
        except OSError as exc:
            raise TokenFileError(f"{self.path}: cannot read: {exc.strerror or exc}") from exc
        except UnicodeDecodeError as exc:
            raise TokenFileError(f"{self.path}: not UTF-8 text") from exc
        tokens = parse_tokens(text, str(self.path))
        self._signature = signature
        return tokens

    def _maybe_reload(self) -> None:
        now = time.monotonic()
        if now - self._checked < self.check_interval:
            return
        with self._lock:
            self._checked = now
            try:
                if self._stat() == self._signature:
                    return
                self._tokens = self._load()
                log.info("tokens reloaded from %s: %d tokens", self.path, len(self._tokens))
            except (OSError, TokenFileError) as exc:
                log.error("tokens file not reloaded, keeping the previous tokens: %s", exc)

    def vantage_of(self, token: str) -> str | None:
        """The vantage a token speaks for, or None if the token is unknown."""
        self._maybe_reload()
        return self._tokens.get(_digest(token))

    def __len__(self) -> int:
        return len(self._tokens)
