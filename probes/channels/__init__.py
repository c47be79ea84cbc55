"""Message-delivery channel adapters (DESIGN 4.6): one module per messaging system.

`channel_class(name)` finds an adapter by name; each implements probes.channels.base.Channel.
"""

from __future__ import annotations

import importlib

from probes.channels.base import Channel

# name -> "module:Class"
CHANNELS: dict[str, str] = {
    "matrix": "probes.channels.matrix:MatrixChannel",
    "relay": "probes.channels.relay:RelayChannel",
    "smtp": "probes.channels.smtp:SMTPChannel",
}


def channel_class(name: str) -> type[Channel]:
    """The adapter class of a channel; KeyError names the known ones."""
    try:
        target = CHANNELS[name]
    except KeyError:
        raise KeyError(f"unknown channel {name!r} (known: {', '.join(sorted(CHANNELS))})") from None
    module_name, _, class_name = target.partition(":")
    cls: type[Channel] = getattr(importlib.import_module(module_name), class_name)
    return cls
