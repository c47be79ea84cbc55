"""Files that hold secrets (tokens, a config with a token): read them, and say when others can.

A bearer token on the command line is readable by every user of the machine (`ps`, /proc), so
tokens come from the environment, a token file or the config; those files should be the
owner's alone, and we warn (not refuse: the operator may have reasons) when they are not.
"""

from __future__ import annotations

import stat
from pathlib import Path


class SecretFileError(ValueError):
    """A secret file cannot be used; the message names the file."""


def loose_permissions(path: Path, what: str) -> str | None:
    """A warning if `path` is readable by its group or by everyone, else None."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return None
    if not mode & 0o044:
        return None
    who = "everyone" if mode & 0o004 else "its group"
    return (
        f"warning: {path}: {what} is readable by {who} (mode {mode:04o}); "
        f"make it private: chmod 600 {path}"
    )


def read_token_file(path: Path) -> str:
    """The token in `path`: its first line that is not blank or a `#` comment."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SecretFileError(f"{path}: cannot read the token file: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise SecretFileError(f"{path}: the token file is not UTF-8 text") from exc
    for line in text.splitlines():
        token = line.strip()
        if token and not token.startswith("#"):
            return token
    raise SecretFileError(f"{path}: the token file holds no token")
