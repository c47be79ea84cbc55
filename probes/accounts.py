"""Messaging accounts: who sends and who receives a message_delivery test, and where each is
registered.

Platforms filter by the account, not only by the network: WeChat applies its keyword filter to
accounts registered with a mainland-China phone number, wherever they connect from (Citizen
Lab, "One App, Two Systems", 2016). A delivery matrix (sender region x receiver region) needs
the two ends to be separate accounts whose regions are known, so the config names them:

    [accounts.cn-alice]
    region = "CN"                 # where the platform has the account registered
    mailbox = "cn-alice"          # relay: the account's inbox (default: the account's name)
    url = "http://platform:8025"  # optional: how this account reaches the platform
    # mailbox_key = "..."         # or CENSORSCOPE_ACCOUNT_CN_ALICE_KEY in the environment

The mailbox key is the account's secret (whoever holds it reads and writes its inbox); it
comes from the config file or the environment, never the command line, and never reaches a
measurement. Only the relay channel takes accounts today; the SMTP and Matrix channels name
their two accounts in their own settings.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from probes.config import Config, ConfigError

_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_KEYS = {"region", "mailbox", "mailbox_key", "url"}


@dataclass(frozen=True)
class Account:
    name: str
    region: str
    mailbox: str
    mailbox_key: str | None = None
    url: str | None = None

    def describe(self) -> dict[str, str]:
        """What a measurement may say of the account (no key)."""
        return {"account": self.name, "region": self.region}


def key_variable(name: str) -> str:
    """The environment variable holding an account's mailbox key."""
    return "CENSORSCOPE_ACCOUNT_" + re.sub(r"[^A-Z0-9]", "_", name.upper()) + "_KEY"


def load_accounts(cfg: Config, env: Mapping[str, str] = os.environ) -> dict[str, Account]:
    """The config's [accounts.NAME] tables; a bad one is a ConfigError naming it."""
    raw = cfg.raw.get("accounts", {})
    if not isinstance(raw, dict):
        raise ConfigError(f"{cfg.source}: [accounts] must be a table of [accounts.NAME] tables")
    out = {}
    for key_name, table in raw.items():
        name = str(key_name)
        where = f"{cfg.source}: accounts.{name}"
        if not _NAME_RE.match(name):
            raise ConfigError(f"{where}: a name is 1-64 letters, digits, '-' or '_'")
        if not isinstance(table, dict):
            raise ConfigError(f"{where}: expected a table")
        unknown = set(table) - _KEYS
        if unknown:
            raise ConfigError(
                f"{where}: unknown key {sorted(unknown)[0]!r} (known: {', '.join(sorted(_KEYS))})"
            )
        values: dict[str, Any] = {}
        for key, value in table.items():
            if not isinstance(value, str) or not value.strip():
                raise ConfigError(f"{where}.{key}: expected a non-empty string")
            values[key] = value.strip()
        if "region" not in values:
            raise ConfigError(f"{where}: 'region' is required (where the account is registered)")
        mailbox = str(values.get("mailbox", name))
        if not _NAME_RE.match(mailbox):
            raise ConfigError(f"{where}.mailbox: 1-64 letters, digits, '-' or '_'")
        out[name] = Account(
            name=name,
            region=values["region"].upper(),
            mailbox=mailbox,
            mailbox_key=values.get("mailbox_key") or env.get(key_variable(name)) or None,
            url=values.get("url"),
        )
    return out


def account_pair(
    accounts: Mapping[str, Account], sender: str | None, receiver: str | None, channel: str
) -> tuple[Account, Account]:
    """The sending and receiving accounts named on the command line; ValueError says which
    flag is missing or names no account, or that the channel takes none."""
    if not (sender and receiver):
        raise ValueError("give both --sender and --receiver (accounts of the config)")
    if channel != "relay":
        raise ValueError(
            f"--sender/--receiver: the {channel} channel names its accounts in its own "
            "settings; accounts work with --channel relay"
        )
    for flag, name in (("--sender", sender), ("--receiver", receiver)):
        if name not in accounts:
            known = ", ".join(sorted(accounts)) or "none configured"
            raise ValueError(f"{flag} {name}: no [accounts.{name}] in the config (known: {known})")
    return accounts[sender], accounts[receiver]
