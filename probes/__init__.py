"""censorscope's measurement engine: nettests, network primitives, results store, CLI."""

__version__ = "0.1.0"
