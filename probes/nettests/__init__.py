"""The nettests, by name. Modules are imported on demand so the CLI starts fast."""

from __future__ import annotations

import importlib

from probes.nettests.base import Nettest

# name -> "module:Class"
REGISTRY: dict[str, str] = {
    "web_connectivity": "probes.nettests.web_connectivity:WebConnectivity",
}


def nettest_class(name: str) -> type[Nettest]:
    """The class of a nettest; KeyError names the known ones."""
    try:
        target = REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown nettest {name!r} (known: {', '.join(sorted(REGISTRY))})") from None
    module_name, _, class_name = target.partition(":")
    cls: type[Nettest] = getattr(importlib.import_module(module_name), class_name)
    return cls
