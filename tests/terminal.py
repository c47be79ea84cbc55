"""Run a command on a pseudo-terminal, as a person at a terminal would (prompts, progress bar).

stdin, stdout and stderr are the pty's slave side, so `isatty()` is true in the child; the
parent reads everything it writes and can type answers when a prompt appears.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass
class TerminalRun:
    status: int
    output: str


def run_in_pty(
    argv: Sequence[str],
    *,
    env: dict[str, str],
    answers: Sequence[tuple[str, str]] = (),
    interrupt_when: str | None = None,
    timeout: float = 120.0,
    columns: int = 160,
) -> TerminalRun:
    """Run `argv` on a pty; when the output contains answers[i][0], type answers[i][1]. With
    `interrupt_when`, send SIGINT once that text appears (Ctrl-C at a terminal)."""
    master, slave = os.openpty()
    env = {**env, "COLUMNS": str(columns), "LINES": "40", "TERM": env.get("TERM") or "xterm"}
    proc = subprocess.Popen(
        list(argv), stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True
    )
    os.close(slave)
    chunks: list[bytes] = []
    pending = list(answers)
    interrupted = False
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: the child closed the terminal
                    data = b""
                if not data:
                    if proc.poll() is not None:
                        break
                    continue
                chunks.append(data)
            text = b"".join(chunks).decode("utf-8", "replace")
            if pending and pending[0][0] in text:
                os.write(master, pending.pop(0)[1].encode())
            if interrupt_when and not interrupted and interrupt_when in text:
                proc.send_signal(signal.SIGINT)
                interrupted = True
            if not ready and proc.poll() is not None:
                break
        else:
            proc.kill()
            raise TimeoutError(b"".join(chunks).decode("utf-8", "replace")[-3000:])
        status = proc.wait(timeout=30)
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return TerminalRun(status, b"".join(chunks).decode("utf-8", "replace"))
