"""A real, small filesystem to fill up: a tmpfs mounted in a temporary directory (root only).

Disk-full tests need the kernel's own short writes and ENOSPC, which no mock reproduces; a
64 KiB tmpfs gives them in milliseconds without touching any real disk. (No tests here.)
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def small_tmpfs(where: Path, size: str = "64k") -> Iterator[Path]:
    """Mount a tmpfs of `size` at `where`/fs; skip the test (with the reason) without root."""
    if os.geteuid() != 0:
        pytest.skip("disk-full test: mounting a small tmpfs needs root")
    mount = where / "fs"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"disk-full test: cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(path: Path, *, leave: int = 0) -> int:
    """Fill the filesystem holding `path` (a new file) until at most `leave` bytes are free;
    returns the bytes written. Delete the file to give the space back."""
    written = 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        while True:
            free = os.statvfs(path).f_bavail * os.statvfs(path).f_frsize
            if free <= leave:
                break
            try:
                written += os.write(fd, b"\0" * min(4096, free - leave))
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                break
    finally:
        os.close(fd)
    return written
