"""Informed consent: the notice a person accepts before the probe measures from their network.

OONI Probe shows a first-time user the risks before the first test (ooni/spec
informed-consent/, and the "Heads-up" onboarding screen of its apps): running a
censorship-measurement tool can be illegal or dangerous in some countries, whoever watches the
network sees it, and measurements are published. We do the same on the first interactive run of
a measuring command (`run`, `isolate`, `schedule run`). The answer is remembered per user in
``$XDG_CONFIG_HOME/censorscope/consent.toml`` (default ``~/.config/...``). An unattended run
cannot be asked: it accepts through the config (``[consent] informed = true``) or the
environment (``CENSORSCOPE_CONSENT_INFORMED=true``), and without either it stops at once with
the instruction (exit 2) instead of waiting for an answer nobody can type.
"""

from __future__ import annotations

import os
import sys
import tomllib
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from probes.config import Config

# Raise when the notice changes in substance: an acceptance of an older text no longer counts.
NOTICE_VERSION = 1
ENV_VAR = "CENSORSCOPE_CONSENT_INFORMED"

NOTICE = """\
Before censorscope measures from this network, please read:

  * Measuring censorship can be against the law, or dangerous, in some countries. The
    probe connects to the sites and services it tests, which may include banned or
    objectionable ones. If in doubt, ask a lawyer who knows your country first.
  * Anyone who watches this network (your ISP, your employer, a government) can see
    that a censorship-measurement tool is running here.
  * Measurements record the country and network they were taken from. Uploaded to a
    collector, or published, they can be read by anyone who gets the data; the probe
    removes its own IP addresses from them, but the network is still named.

You can stop at any time; nothing is uploaded unless you configure a collector.
"""

INSTRUCTION = (
    "nobody has accepted the informed-consent notice for this user yet, and this run cannot "
    "ask (its input or error output is not a terminal). Read the notice (README, 'Informed "
    "consent') and accept it once interactively by running the command in a terminal, or, "
    "for an unattended run, set [consent] informed = true in the config file or "
    f"{ENV_VAR}=true in the environment."
)

REFUSED = "the informed-consent notice was not accepted; nothing was measured."


def consent_file() -> Path:
    """Where the answer is remembered: the XDG config directory of the user."""
    base = os.environ.get("XDG_CONFIG_HOME") or ""
    root = Path(base) if base and Path(base).is_absolute() else Path.home() / ".config"
    return root / "censorscope" / "consent.toml"


def remembered(path: Path | None = None) -> bool:
    """True when this user accepted the current notice before (an unreadable file: False)."""
    path = path or consent_file()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return False
    section = data.get("consent")
    if not isinstance(section, dict):
        return False
    version = section.get("notice_version")
    return (
        section.get("informed") is True and isinstance(version, int) and (version >= NOTICE_VERSION)
    )


def remember(path: Path | None = None) -> Path:
    """Write the acceptance (with the notice's version and the time) for later runs."""
    path = path or consent_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    when = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    tmp = path.with_suffix(".tmp")
    tmp.write_text(
        "# censorscope: the informed-consent notice was accepted here (delete to be asked again)\n"
        f'[consent]\ninformed = true\nnotice_version = {NOTICE_VERSION}\naccepted_at = "{when}"\n',
        encoding="utf-8",
    )
    tmp.replace(path)
    return path


def _ask(stdin: TextIO, out: TextIO) -> bool:
    out.write(NOTICE)
    out.write("\nDo you understand and accept this? Type 'yes' to continue: ")
    out.flush()
    answer = stdin.readline()
    return answer.strip().lower() in ("yes", "y")


def require_consent(
    cfg: Config, *, stdin: TextIO | None = None, out: TextIO | None = None
) -> str | None:
    """None when the notice is accepted (config, environment, remembered, or asked now);
    otherwise the message to exit 2 with."""
    if cfg.consent.informed or remembered():
        return None
    stdin = stdin or sys.stdin
    out = out or sys.stderr
    # Both ends a terminal: with stderr captured (a script, a bench) the question would be
    # invisible and the run would wait for an answer nobody knows is wanted.
    if stdin is None or not stdin.isatty() or not out.isatty():
        return INSTRUCTION
    if not _ask(stdin, out):
        return REFUSED
    try:
        where = remember()
    except OSError as exc:
        out.write(f"censorscope: accepted for this run only: cannot save the answer: {exc}\n")
    else:
        out.write(f"censorscope: accepted; remembered in {where}\n")
    return None
