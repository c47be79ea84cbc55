"""Subcommands that live beside the CLI core: each module defines `register(app)`.

`probes.cli` imports every module of this package and calls its `register`, so a new
command is one new file here; the core of cli.py (run, helper, lists) stays small.
"""
